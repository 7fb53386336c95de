"""The model: the frozen StyleGAN2 generator and what adapts it.

| module | holds |
|---|---|
| ``config`` | ``GeneratorConfig``: sizes and widths read from a checkpoint's tensors |
| ``layers`` | the generator's layers under the PyTorch port's parameter names (the op lives in ``stylegan2_ops``) |
| ``generator`` | ``Generator``, ``load_generator``: mapping, synthesis with per-sample domains, sampling |
| ``domain`` | ``Domain``: one domain vector and its file, arithmetic (``scaled``, ``mix``, ``lerp``) |
| ``latent`` | ``Latent``: a W+ latent and its file (inversion's output) |
| ``compatibility`` | the one check that a domain, latent or hypernetwork fits a generator |
| ``hypernet`` | ``HyperDomainNet``: a CLIP text embedding to a domain vector |
| ``paper_checkpoints`` | the paper's released domain and hypernetwork checkpoints, imported without running their pickles |
| ``describe`` | what any of the toolkit's files holds (``hyperdomain info``) |

Public names are re-exported by ``hyperdomain`` itself; this package's ``__init__`` exports nothing.
"""
