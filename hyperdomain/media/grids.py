"""Images out of the generator: the only place where values are clamped to pixels; and resampling."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import HyperdomainError
from ..files.atomic import atomic_path

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` nominally in ``[-1, 1]`` -> ``[N, H, W, 3]`` uint8 (clamped, rounded)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise HyperdomainError(f"images must have shape [N, 3, H, W], got {list(images.shape)}")
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return x.round().to(torch.uint8).permute(0, 2, 3, 1)


def grid_layout(n: int, nrow: int | None = None) -> tuple[int, int]:
    """(rows, images per row) of a grid of ``n`` images: ``nrow`` a row (default a square grid), never
    more than there are images (as torchvision's ``make_grid``: no empty columns)."""
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise HyperdomainError(f"nrow must be >= 1, got {nrow}")
    nrow = min(nrow, max(n, 1))
    return math.ceil(n / nrow), nrow


def grid_size(n: int, height: int, width: int, nrow: int | None = None, padding: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of :func:`make_grid`'s image for ``n`` images of ``height`` x ``width``."""
    rows, cols = grid_layout(n, nrow)
    return rows * (height + padding) + padding, cols * (width + padding) + padding


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """Tile ``[N, 3, H, W]`` into one ``[H', W', 3]`` uint8 image, ``nrow`` images per row (at most N)."""
    pix = to_uint8(images)
    n, h, w, c = pix.shape
    _, nrow = grid_layout(n, nrow)
    grid = torch.full((*grid_size(n, h, w, nrow, padding), c), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = pix[i]
    return grid


def _save_pil(array: torch.Tensor, path: Path) -> Path:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise HyperdomainError(f"{path}: unknown image type {path.suffix!r}; use one of {sorted(_FORMATS)}")
    img = Image.fromarray(array.squeeze(-1).numpy() if array.shape[-1] == 1 else array.numpy())
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)
    return path


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, padding: int = 2) -> Path:
    """Write images ``[N, 3, H, W]`` (nominally ``[-1, 1]``) as one grid image, atomically."""
    return _save_pil(make_grid(images, nrow=nrow, padding=padding), Path(path))


def save_images(images: torch.Tensor, directory: str | os.PathLike, prefix: str = "", start: int = 0) -> list[Path]:
    """Write each image as ``{prefix}{index:05d}.png`` in ``directory``."""
    directory = Path(directory)
    pix = to_uint8(images)
    return [_save_pil(p, directory / f"{prefix}{start + i:05d}.png") for i, p in enumerate(pix)]


def downsample_bicubic(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, H / factor, W / factor]`` with an antialiased bicubic filter
    (Keys' kernel, a = -0.5, stretched over ``4 * factor`` taps; mirrored at the borders): how the
    paper's inverter brings generated images to 256 px. Differentiable; ``factor`` 1 is identity."""
    if factor == 1:
        return images
    if factor < 1 or images.shape[-1] % factor or images.shape[-2] % factor:
        raise HyperdomainError(f"downsample_bicubic: {list(images.shape)} is not divisible by {factor}")
    taps = 4 * factor
    t = (torch.arange(taps, dtype=torch.float64) - taps // 2 + 0.5) / factor
    a, at = -0.5, t.abs()
    k = torch.where(at <= 1, (a + 2) * at**3 - (a + 3) * at**2 + 1,
                    torch.where(at < 2, a * at**3 - 5 * a * at**2 + 8 * a * at - 4 * a, torch.zeros_like(at)))
    k = (k / k.sum()).to(images)
    c = images.shape[1]
    pad0, pad1 = (taps - factor) // 2, (taps - factor) - (taps - factor) // 2
    x = F.pad(images, (0, 0, pad0, pad1), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, taps, 1).expand(c, 1, taps, 1), stride=(factor, 1), groups=c)
    x = F.pad(x, (pad0, pad1, 0, 0), mode="reflect")
    return F.conv2d(x, k.view(1, 1, 1, taps).expand(c, 1, 1, taps), stride=(1, factor), groups=c)
