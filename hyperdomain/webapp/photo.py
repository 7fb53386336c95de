"""The Photo panel's work: a person's photo inverted once and shown in the chosen domains
(``hd.stylize``), with the latent and the row written to the app's ``downloads/``."""
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


def stylize_photo(models: AppModels, photo: str | Path | None, chosen: Sequence[str], prompt: str = "",
                  steps: int | None = None, on_step: Callable[[int, int], object] | None = None
                  ) -> tuple[np.ndarray, list[Path]]:
    """The row photo, reconstruction, then each chosen domain (``PROMPT``: the hypernetwork's domain
    for ``prompt``) as a grid ``[H, W, 3]`` uint8, and the files written (latent, row PNG)."""
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
    config = models.inversion if steps in (None, "") else \
        replace(models.inversion, steps=integer_in("inversion steps", steps, *STEPS))
    total = config.steps

    def each(step: int, losses) -> None:
        if on_step is not None:
            on_step(step, total)

    aligning = models.aligns()
    [row] = hd.stylize(models.G, [read], domains, config=config, align=aligning,
                       detector=models.face_detector() if aligning else None, lpips=models.lpips(), progress=False,
                       callback=each)
    folder = models.work_dir / PUBLISHED  # offered for download: named by our slug and digests, never as uploaded
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(Path(photo).read_bytes()).hexdigest()[:8]
    names = "+".join(_label(c, prompt) for c in chosen) or "source"
    stem = f"photo_{slug(Path(photo).stem, 30)}_{digest}_{config.steps}"
    latent_file = row.latent.save(folder / f"{stem}.safetensors")
    grid_file = hd.save_grid(row.row(), folder / f"{stem}_{hashlib.sha256(names.encode()).hexdigest()[:8]}.png",
                             nrow=len(chosen) + 2)
    return hd.make_grid(row.row(), nrow=len(chosen) + 2).numpy(), [latent_file, grid_file]


def _label(choice: str, prompt: str) -> str:
    return f"prompt:{prompt}" if choice == PROMPT else choice
