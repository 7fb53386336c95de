"""``translate``: photos through a trained translator, in batches (no inversion, one pass each)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Sequence

import torch
from tqdm import tqdm

from ..errors import HyperdomainError
from .inversion import PhotoLike, PreparedPhoto, prepare_photos
from .translators.files import Translator

__all__ = ["translate", "translator_alignment", "prepare_for"]


def translator_alignment(T: Translator) -> str | None:
    """How the photos of ``T``'s generator are cropped (``"ffhq"`` for face generators), from the manifest."""
    from ..files.pretrained import load_manifest

    entry = load_manifest().get(str(T.generator.get("name")))
    return entry.align if entry is not None else None


def prepare_for(T: Translator, photos: Sequence[PhotoLike], align: bool | None = None, detector=None
                ) -> list[PreparedPhoto]:
    """The photos as ``T`` reads them: at its side, aligned as its generator's photos (``align``)."""
    like = SimpleNamespace(resolution=T.config.size, alignment=translator_alignment(T), name=T.generator.get("name"))
    return prepare_photos(like, photos, align, detector)


def translate(T: Translator, photos: Sequence[PhotoLike], *, align: bool | None = None, detector=None,
              batch: int = 8, seed: int = 0, progress: bool = True) -> list[torch.Tensor]:
    """Each photo (a path, PIL image or Photo) in ``T``'s domain: ``[3, S, S]`` in ``[-1, 1]`` on the CPU.

    Photos are prepared as ``stylize`` prepares them, at the translator's side: aligned as FFHQ's
    faces (``align``; by default for a translator of a face generator) or centre-cropped. A
    stochastic (NOT) translator draws batch ``k``'s noise from ``seed + k``.
    """
    if not photos:
        raise HyperdomainError("translate: no photos given")
    if batch < 1:
        raise HyperdomainError(f"translate: batch must be >= 1, got {batch}")
    prepared = prepare_for(T, photos, align, detector)
    out: list[torch.Tensor] = []
    starts = range(0, len(prepared), batch)
    for k, start in enumerate(tqdm(starts, desc="translate", unit="batch", disable=not progress or None)):
        x = torch.cat([p.tensor() for p in prepared[start:start + batch]])
        out.extend(T(x, seed=seed + k).cpu())
    return out
