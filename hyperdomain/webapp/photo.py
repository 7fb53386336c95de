"""The Photo panel's work: a person's photo inverted once and shown in the chosen domains
(``hd.stylize``: through the app's encoder, refined by II2S or not, or by II2S alone), or put
through a translator into its domain (``hd.translate``); what it makes is written to the app's
``downloads/``."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import HyperdomainError
from ..training.adapt import slug
from .access import PUBLISHED
from .models import PROMPT, AppModels, integer_in

STEPS = (1, 5000)
MAX_DOMAINS = 16
ENCODER, REFINE, II2S = "encoder", "encoder + II2S", "II2S"  # how the photo becomes a latent


def methods(models: AppModels) -> list[str]:
    """The inversion methods the panel offers, the default first: the encoder's when there is one."""
    if models.encoder is None:
        return [II2S]
    return [REFINE, ENCODER, II2S] if models.refine else [ENCODER, REFINE, II2S]


def default_steps(models: AppModels) -> int:
    """The panel's II2S steps: the refinement's when refining is the default, else the inversion's."""
    return models.refine if models.encoder is not None and models.refine else models.inversion.steps


def stylize_photo(models: AppModels, photo: str | Path | None, chosen: Sequence[str], prompt: str = "",
                  steps: int | None = None, on_step: Callable[[int, int], object] | None = None,
                  method: str | None = None) -> tuple[np.ndarray, list[Path]]:
    """The row photo, reconstruction, then each chosen domain (``PROMPT``: the hypernetwork's domain
    for ``prompt``) as a grid ``[H, W, 3]`` uint8, and the files written (latent, row PNG).
    ``method``: one of :func:`methods` (default its first); ``steps``: II2S's steps, from the mean
    latent (``II2S``) or from the encoder's (``REFINE``)."""
    import hyperdomain as hd
    from ..image.photos import read_photos

    if photo is None:
        raise HyperdomainError("photo: upload a photo first")
    [read] = read_photos([photo])  # a broken or non-image upload: one line naming it, before any model work
    if isinstance(chosen, str):
        chosen = [chosen]
    if len(chosen) > MAX_DOMAINS:
        raise HyperdomainError(f"domains: at most {MAX_DOMAINS} at once, got {len(chosen)}")
    domains = [models.domain(c, prompt, "domain") for c in chosen]
    offered = methods(models)
    method = offered[0] if method in (None, "") else method
    if method not in offered:
        raise HyperdomainError(f"method: {str(method)[:40]!r} is not offered here (choose one of {offered})")
    config = models.inversion if steps in (None, "") else \
        replace(models.inversion, steps=integer_in("inversion steps", steps, *STEPS))
    total = config.steps
    how = dict(encoder=None) if method == II2S else \
        dict(encoder=models.encoder, restyle_steps=models.restyle_steps, refine=config.steps if method == REFINE else 0)

    def each(step: int, losses) -> None:
        if on_step is not None:
            on_step(step, total)

    aligning = models.aligns()
    [row] = hd.stylize(models.G, [read], domains, config=config, align=aligning,
                       detector=models.face_detector() if aligning else None, lpips=models.lpips(), progress=False,
                       callback=each, check=models.check, **how)
    folder = models.work_dir / PUBLISHED  # offered for download: named by our slug and digests, never as uploaded
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(Path(photo).read_bytes()).hexdigest()[:8]
    names = "+".join(_label(c, prompt) for c in chosen) or "source"
    made = {II2S: f"ii2s{config.steps}", ENCODER: models.encoder.config.kind if models.encoder else "",
            REFINE: f"{models.encoder.config.kind if models.encoder else ''}+ii2s{config.steps}"}[method]
    stem = f"photo_{slug(Path(photo).stem, 30)}_{digest}_{made}"
    latent_file = row.latent.save(folder / f"{stem}.safetensors")
    grid_file = hd.save_grid(row.row(), folder / f"{stem}_{hashlib.sha256(names.encode()).hexdigest()[:8]}.png",
                             nrow=len(chosen) + 2)
    return hd.make_grid(row.row(), nrow=len(chosen) + 2).numpy(), [latent_file, grid_file]


def _label(choice: str, prompt: str) -> str:
    return f"prompt:{prompt}" if choice == PROMPT else choice


def translate_photo(models: AppModels, photo: str | Path | None, name: str) -> tuple[np.ndarray, list[Path]]:
    """The photo as the translator ``name`` reads it (aligned for face generators, at its side)
    beside its translation, as a grid ``[H, W, 3]`` uint8, and the translated PNG written."""
    import torch

    import hyperdomain as hd
    from ..image.photos import read_photos
    from ..image.translate import prepare_for

    if photo is None:
        raise HyperdomainError("photo: upload a photo first")
    [read] = read_photos([photo])
    translator = models.translator(name)
    aligning = models.aligns()
    [prepared] = prepare_for(translator, [read], aligning, models.face_detector() if aligning else None)
    [out] = hd.translate(translator, [prepared], progress=False)
    folder = models.work_dir / PUBLISHED
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(Path(photo).read_bytes()).hexdigest()[:8]
    file = hd.save_grid(out[None], folder / f"translated_{slug(Path(photo).stem, 30)}_{digest}_{slug(name, 30)}.png",
                        padding=0)
    row = torch.stack([prepared.tensor()[0].cpu(), out])
    return hd.make_grid(row, nrow=2).numpy(), [file]
