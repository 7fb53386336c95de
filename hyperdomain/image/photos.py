"""Images a user gives us (photos, reference images): read safely, whatever their format.

Every readable image becomes 8-bit RGB the same way: the EXIF orientation applied (phones store
portraits sideways), grayscale, palette, CMYK, 16-bit and alpha images converted (alpha composited
on white), and one line for anything else: not an image, truncated, too small for a face, or so
large it would exhaust memory.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import HyperdomainError, one_line

MIN_SIDE = 64  # pixels: below this there is no face to invert (a smaller generator takes its own size)
MAX_PIXELS = 50_000_000  # 50 megapixels: a decoded RGB image that size already takes 150 MB


def min_photo_side(resolution: int | None = None) -> int:
    """The fewest pixels a photo needs on each side: ``MIN_SIDE``, or a generator's ``resolution``
    when that is smaller (a 32 px generator inverts its own 32 px images without upscaling)."""
    return MIN_SIDE if resolution is None else max(1, min(MIN_SIDE, int(resolution)))


def read_photo(path: str | os.PathLike, min_side: int = MIN_SIDE) -> Image.Image:
    """The image at ``path`` as an 8-bit RGB PIL image, upright, fully decoded, at least ``min_side``
    pixels a side (:func:`min_photo_side` for a generator)."""
    path = Path(path)
    name = one_line(path)  # a file name may hold a newline: messages stay one line
    if not path.is_file():
        if not path.exists():
            raise HyperdomainError(f"{name}: no such image file")
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe, device or socket)"
        raise HyperdomainError(f"{name}: {kind}; give an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise HyperdomainError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels; images up to "
                                           f"{MAX_PIXELS // 1_000_000} megapixels are read (downscale it first)")
                img.load()  # decode now: a truncated file fails here, not later
                fmt = img.format
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img, name)
                rgb.info["source_format"] = fmt  # what the bytes were (PNG, JPEG, ...), whatever the file's name
    except HyperdomainError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))  # PIL says how large, before decoding anything
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too large"
        raise HyperdomainError(f"{name}: {size}; images up to {MAX_PIXELS // 1_000_000} megapixels are read "
                               f"(downscale it first)") from None
    except UnidentifiedImageError:
        raise HyperdomainError(f"{name}: not an image PIL can read (PNG, JPEG, WebP, TIFF, BMP, ...)") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for damaged data
        detail = one_line(str(e).strip().splitlines()[0][:120]) if str(e).strip() else type(e).__name__
        raise HyperdomainError(f"{name}: truncated or damaged image ({detail})") from None
    check_side(rgb, name, min_side)
    return rgb


def check_side(img: Image.Image, name: str, min_side: int) -> None:
    """One line when ``img`` has fewer than ``min_side`` pixels on a side."""
    if min(img.size) < min_side:
        raise HyperdomainError(f"{name}: {img.size[0]}x{img.size[1]} is too small; "
                               f"images need at least {min_side} pixels on each side")


@dataclass(frozen=True)
class Photo:
    """A photo as read once: its name (for messages, outputs and latent files) and its RGB pixels."""

    name: str
    image: Image.Image

    @classmethod
    def of(cls, photo: "str | os.PathLike | Image.Image | Photo", index: int = 0) -> "Photo":
        """A path (read here), a PIL image (named ``image{index}``) or a Photo (as it is)."""
        if isinstance(photo, Photo):
            return photo
        if isinstance(photo, Image.Image):
            return cls(f"image{index}", photo)
        return cls(Path(photo).name, read_photo(photo, 1))


def read_photos(photos: Sequence[str | os.PathLike | Image.Image | Photo]) -> list[Photo]:
    """Every photo read once, all of them checked (one line naming the first bad one); the size a
    generator needs is checked later, with it (:func:`min_photo_side`)."""
    return [Photo.of(p, i) for i, p in enumerate(photos)]


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """8-bit RGB from any mode: 16-bit and float images scaled by their range, alpha on white; a
    float image with NaN or infinite pixels is refused (it has no picture to scale)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        bad = int(a.size - np.isfinite(a).sum())
        if bad:
            raise HyperdomainError(f"{name}: {bad} of its {a.size} pixels are not finite numbers (NaN or "
                                   f"infinity); not a photo")
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        if img.mode == "F":
            top = max(float(a.max()), 1.0) if a.max() > 1 else 1.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def image_digest(img: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: the same picture gives the same digest whatever
    file it came from (a re-saved PNG, a copy), and any pixel change gives another."""
    h = hashlib.sha256(f"{img.size[0]}x{img.size[1]}|".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


def to_tensor(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """``[1, 3, H, W]`` float32 in ``[-1, 1]`` (the generator's range); with ``size``, resized to a
    ``size`` x ``size`` square first (Lanczos, as the paper's code does)."""
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    return (a / 127.5 - 1)[None]
