"""The image side: a person's photo into the generator's space and back out in a domain.

| module | holds |
|---|---|
| ``photos`` | reading any image safely: upright 8-bit RGB, one-line errors |
| ``alignment`` | the FFHQ crop from face landmarks (a pure function) |
| ``face_detectors`` | dlib and MediaPipe landmark detectors behind one interface |
| ``perceptual`` | LPIPS-VGG, the perceptual distance of inversion and one-shot adaptation |
| ``inversion`` | II2S: a photo to a W+ latent by optimisation |
| ``stylize`` | a photo (or its latent) rendered in domains |
| ``encoders/`` | e4e and ReStyle encoders: a photo to W+ in one pass (networks, released checkpoints, our file) |
| ``translators/`` | a photo into a domain in one pass: neural optimal transport solvers (NOT, ENOT) and their costs |
"""
