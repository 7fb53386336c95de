"""Rendering a dataset's images: every image is one row of a generator pass of fixed shape.

A pass always holds exactly ``batch`` rows (the last one padded), and a row's result depends only
on its own latent and domain, not on its place in the pass or on the other rows (checked in the
tests on the CPU). So an index renders to the same pixels whichever shard, rank or order makes it;
only the pass shape itself (``batch``) changes float32 rounding, which is why it is a setting.
One pass mixes sources, domains and views: the generator takes one domain per row.
"""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..domain import Domain
from .latents import index_latent, view_latent
from .settings import DatasetSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..generator import Generator

__all__ = ["Row", "sample_rows", "render_rows", "encode_image", "render_samples"]


@dataclass(frozen=True)
class Row:
    """One image to render: its index, key (``source``, a domain name, ``view{k}``), latent and
    domain column (-1: the source, ``d = 0``)."""

    index: int
    key: str
    z: torch.Tensor
    domain: int


def sample_rows(settings: DatasetSettings, z_dim: int, index: int) -> list[Row]:
    """The rows of one sample, in ``settings.keys`` order."""
    z = index_latent(settings.seed, index, z_dim)
    rows = [Row(index, "source", z, -1)]
    rows += [Row(index, name, z, j) for j, name in enumerate(settings.domain_names)]
    rows += [Row(index, f"view{k}", view_latent(settings.seed, index, k, z_dim, settings.sigma), -1)
             for k in range(settings.views)]
    return rows


def domain_table(G: "Generator", domains: Sequence[Domain]) -> torch.Tensor:
    """``[1 + len(domains), D]`` on the generator's device: the zero (source) row, then each domain."""
    rows = [torch.zeros(G.num_domain_params)] + [d.vector.reshape(-1) for d in domains]
    return torch.stack(rows).to(G.device, torch.float32)


@torch.no_grad()
def render_rows(G: "Generator", rows: Sequence[Row], table: torch.Tensor, settings: DatasetSettings
                ) -> torch.Tensor:
    """One pass: ``len(rows) <= batch`` images as uint8 ``[n, size, size, 3]`` on the CPU."""
    n = len(rows)
    pad = [rows[-1]] * (settings.batch - n)  # every pass has the same shape
    z = torch.stack([r.z for r in list(rows) + pad]).to(G.device)
    cols = torch.tensor([r.domain + 1 for r in list(rows) + pad], device=G.device)
    ws = G.mapping(z, settings.truncation)
    images = G.synthesis(ws, domain=table[cols], noise_mode=settings.noise_mode)[:n]
    if settings.size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(settings.size, settings.size), mode="bicubic",
                               antialias=True, align_corners=False)
    # as hyperdomain.images.to_uint8, on the device: a quarter of the bytes to copy back
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu()


def encode_image(pixels: torch.Tensor, fmt: str, quality: int) -> bytes:
    """``[H, W, 3]`` uint8 as PNG, JPEG or WebP bytes; the same pixels and settings give the same bytes."""
    buf = io.BytesIO()
    img = Image.fromarray(pixels.numpy())
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="WEBP", quality=quality)
    return buf.getvalue()


def passes(rows: Sequence[Row], batch: int) -> Iterator[Sequence[Row]]:
    for start in range(0, len(rows), batch):
        yield rows[start:start + batch]


def render_samples(G: "Generator", settings: DatasetSettings, domains: Sequence[Domain],
                   indices: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
    """The images of ``indices`` as ``{index: {key: uint8 [H, W, 3]}}``, exactly as a dataset of
    ``settings`` holds them (before encoding): for checks and for reproducing a sample."""
    table = domain_table(G, domains)
    rows = [r for i in indices for r in sample_rows(settings, G.z_dim, i)]
    out: dict[int, dict[str, torch.Tensor]] = {i: {} for i in indices}
    for chunk in passes(rows, settings.batch):
        for r, pix in zip(chunk, render_rows(G, chunk, table, settings)):
            out[r.index][r.key] = pix
    return out


class Encoder:
    """Encodes images on a few threads (Pillow's encoders release the GIL), results in order."""

    def __init__(self, fmt: str, quality: int, threads: int):
        self.fmt, self.quality = fmt, quality
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads)) if threads > 1 else None

    def __call__(self, pixels: torch.Tensor) -> list[bytes]:
        if self.pool is None:
            return [encode_image(p, self.fmt, self.quality) for p in pixels]
        return list(self.pool.map(lambda p: encode_image(p, self.fmt, self.quality), pixels))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
