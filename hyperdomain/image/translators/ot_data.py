"""What NOT and ENOT train on: the user's photos (read once) and the domain's images (rendered per step).

The photos of ``--photos DIR`` are read and prepared as inversion prepares them (aligned for face
generators, centre-cropped otherwise), resized to the translator's side and kept as 8-bit pixels;
each step draws a batch from them with the run's RNG. The domain's images are rendered on the fly
by the frozen generator with the domain, from random ``z`` drawn with the same RNG: nothing is
stored, and a resumed run draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...errors import HyperdomainError, one_line
from ...files.kinds import IMAGE_SUFFIXES


def photo_files(folder: str | os.PathLike, what: str = "--photos") -> list[Path]:
    """The image files directly in ``folder`` (by suffix, sorted by name); none is one line."""
    folder = Path(folder)
    if not folder.is_dir():
        why = "no such folder" if not folder.exists() else "not a folder"
        raise HyperdomainError(f"{what} {one_line(folder)}: {why}; give a folder of photos")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise HyperdomainError(f"{what} {one_line(folder)}: no images in it ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_photos(G: Any, folder: str | os.PathLike, size: int, align: bool | None = None,
                detector: Any = None) -> torch.Tensor:
    """The photos of ``folder`` as the generator sees them (``prepare_photos``), resized to ``size``:
    ``[N, 3, size, size]`` uint8 on the CPU (a quarter of float32's memory)."""
    from ..inversion import prepare_photos

    prepared = prepare_photos(G, photo_files(folder), align=align, detector=detector)
    out = torch.empty(len(prepared), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(prepared):
        img = p.image if p.image.size == (size, size) else p.image.resize((size, size), Image.LANCZOS)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return out


def photo_batch(photos: torch.Tensor, n: int, rng: torch.Generator, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """``n`` photos drawn with replacement by ``rng`` (on the CPU), as float32 ``[-1, 1]`` on ``device``."""
    index = torch.randint(0, photos.shape[0], (n,), generator=rng)
    return photos[index].to(device).float() / 127.5 - 1


def domain_batch(G: Any, domain: Any, n: int, rng: torch.Generator, truncation: float = 1.0,
                 size: int | None = None) -> torch.Tensor:
    """``n`` images of the domain, ``G(z, domain)`` from ``z`` and noise drawn by ``rng`` on the CPU,
    truncated by ``truncation``, resized to ``size`` (bicubic, antialiased); no grad."""
    with torch.no_grad():
        z = torch.randn(n, G.z_dim, generator=rng).to(G.device)
        ws = G.mapping(z, truncation=truncation)
        images = G.synthesis(ws, domain=domain, noise=G.draw_noise(n, rng, G.device)).clamp(-1, 1)
        if size is not None and images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                                                     align_corners=False).clamp(-1, 1)
    return images
