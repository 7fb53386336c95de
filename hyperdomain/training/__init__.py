"""Everything that trains, on one loop skeleton.

| module | holds |
|---|---|
| ``loop`` | ``TrainingRun``: the loop every trainer shares (steps, progress, Ctrl-C, logs, samples, checkpoints, non-finite stops, resume, DDP agreement) |
| ``latents`` | one step's W+ latents and noise for the source and adapted passes (the paper's scheme) |
| ``run_dir`` | a run folder's files besides the checkpoint; Ctrl-C deferred to a step boundary |
| ``run_config`` | the checks and plain-data form every trainer config shares |
| ``run_inputs`` | what a run was made from (files by path and sha256), checked when it resumes |
| ``adapt`` | text-driven adaptation of one domain vector (``hd.adapt``) |
| ``one_shot`` | one-shot adaptation from a reference image (``hd.adapt_image``) |
| ``hyper`` | the multi-domain hypernetwork trainer (``hd.train_hyper``), one or many processes |
| ``encoder`` | a photo encoder (e4e, ReStyle) for a generator, on its renders and optional photos (``hd.train_encoder``) |

A new trainer subclasses ``TrainingRun`` with its losses and what it trains; it adds no loop.
"""
