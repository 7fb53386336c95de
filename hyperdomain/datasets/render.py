"""Rendering a dataset's images: every image is one row of a generator pass of a fixed shape.

Every pass holds exactly ``pass_rows`` rows (:data:`~hyperdomain.datasets.settings.PASS_ROWS`, 8;
a shard's last pass padded with copies of its last row) whatever ``batch``, shard size, rank or
order, and a row's result depends only on its own latent and domain, not on its place in the pass
or on the other rows (checked in the tests on the CPU). Float32 results do depend on a pass's
shape (kernels are picked by batch size), so this one shape is what makes an index render to the
same bytes wherever it is made (on one kind of device). ``batch`` only groups passes: a group's
passes are queued back to back on the device and their pixels copied to the host together, which
sets how often progress and interrupts are checked and how many pixels are held at once, never a
pixel value. One pass mixes sources, domains and views: the generator takes one domain per row.
"""
from __future__ import annotations

import io
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from ..model.domain import Domain
from ..errors import HyperdomainError
from .latents import index_latent, view_latent
from .settings import PASS_ROWS, DatasetSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..model.generator import Generator

__all__ = ["Row", "sample_rows", "render_rows", "render_latents", "encode_image", "render_samples", "steps"]


@dataclass(frozen=True)
class Row:
    """One image to render: its index, key (``source``, a domain name, ``view{k}``), latent and
    domain column (-1: the source, ``d = 0``)."""

    index: int
    key: str
    z: torch.Tensor
    domain: int


def sample_rows(settings: DatasetSettings, z_dim: int, index: int) -> list[Row]:
    """The rows of one sample, in ``settings.keys`` order (a view has the same latent in every domain)."""
    z = index_latent(settings.seed, index, z_dim)
    view_z = [view_latent(settings.seed, index, k, z_dim, settings.sigma) for k in range(settings.views)]
    rows = [Row(index, "source", z, -1)]
    rows += [Row(index, name, z, j) for j, name in enumerate(settings.domain_names)]
    rows += [Row(index, f"view{k}", v, -1) for k, v in enumerate(view_z)]
    rows += [Row(index, f"{name}.view{k}", v, j) for j, name in enumerate(settings.view_domains)
             for k, v in enumerate(view_z)]
    return rows


def domain_table(G: "Generator", domains: Sequence[Domain]) -> torch.Tensor:
    """``[1 + len(domains), D]`` on the generator's device: the zero (source) row, then each domain."""
    rows = [torch.zeros(G.num_domain_params)] + [d.vector.reshape(-1) for d in domains]
    return torch.stack(rows).to(G.device, torch.float32)


def render_rows(G: "Generator", rows: Sequence[Row], table: torch.Tensor, settings: DatasetSettings
                ) -> torch.Tensor:
    """Any number of rows, in passes of ``settings.pass_rows``: uint8 ``[n, size, size, 3]`` on the CPU."""
    cols = torch.tensor([r.domain + 1 for r in rows], device=table.device)
    return _render(G, torch.stack([r.z for r in rows]), table[cols], settings.truncation, settings.size,
                   settings.noise_mode, settings.pass_rows)


def render_latents(G: "Generator", z: torch.Tensor, domain: "Domain | torch.Tensor | None" = None, *,
                   truncation: float, size: int | None = None, noise_mode: str = "const",
                   pass_rows: int = PASS_ROWS) -> torch.Tensor:
    """Latents ``z`` ``[n, z_dim]`` rendered exactly as a dataset renders them: uint8 ``[n, size, size, 3]``.

    For making any image of a dataset again from its record: ``z`` (or a row of ``view_z``; both
    before truncation) with the record's ``truncation``, ``size``, ``noise_mode`` and ``pass_rows``.
    ``domain``: ``None`` (the source), a :class:`Domain`, a ``(D,)`` vector, or ``[n, D]`` (one a
    row). Passes of the dataset's shape give its bytes exactly; ``G.sample`` or a pass of another
    shape may differ by one level in a few pixel values (float32 rounding).
    """
    if z.ndim != 2 or z.shape[1] != G.z_dim:
        raise HyperdomainError(f"z must be [n, {G.z_dim}], got {list(z.shape)}")
    n = z.shape[0]
    vector = torch.zeros(G.num_domain_params) if domain is None else \
        domain.vector if isinstance(domain, Domain) else domain
    if tuple(vector.shape) not in ((G.num_domain_params,), (n, G.num_domain_params)):
        raise HyperdomainError(f"domain must be ({G.num_domain_params},) or [{n}, {G.num_domain_params}], "
                               f"got {list(vector.shape)}")
    d = vector.reshape(1, -1).expand(n, -1) if vector.ndim == 1 else vector
    size = G.resolution if size is None else int(size)
    return _render(G, z.float(), d.to(G.device, torch.float32), float(truncation), size, noise_mode, int(pass_rows))


@torch.no_grad()
def _render(G: "Generator", z: torch.Tensor, domains: torch.Tensor, truncation: float, size: int, noise_mode: str,
            pass_rows: int) -> torch.Tensor:
    """``z`` ``[n, z_dim]`` with ``domains`` ``[n, D]``, in passes of exactly ``pass_rows`` rows."""
    n, out = z.shape[0], []
    for start in range(0, n, pass_rows):
        zp, dp = z[start:start + pass_rows].to(G.device), domains[start:start + pass_rows]
        k = zp.shape[0]
        if k < pass_rows:  # every pass has the same shape: pad with copies of the last row
            zp = torch.cat([zp, zp[-1:].expand(pass_rows - k, -1)])
            dp = torch.cat([dp, dp[-1:].expand(pass_rows - k, -1)])
        images = G.synthesis(G.mapping(zp, truncation), domain=dp, noise_mode=noise_mode)[:k]  # [k, 3, H, W]
        if size != images.shape[-1]:
            images = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True,
                                   align_corners=False)
        # as hyperdomain.media.grids.to_uint8, on the device: a quarter of the bytes to copy back
        out.append(((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out).cpu()  # one copy back (and one wait) for a group of passes queued back to back


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


def steps(rows: Sequence[Row], batch: int, pass_rows: int = PASS_ROWS) -> Iterator[Sequence[Row]]:
    """Groups of ``batch`` rows rounded up to whole passes (with 8-row passes, ``batch`` 1 to 8:
    one pass a group; 20: three)."""
    size = max(1, math.ceil(batch / pass_rows)) * pass_rows
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def render_samples(G: "Generator", settings: DatasetSettings, domains: Sequence[Domain],
                   indices: Sequence[int]) -> dict[int, dict[str, torch.Tensor]]:
    """The images of ``indices`` as ``{index: {key: uint8 [H, W, 3]}}``, exactly as a dataset of
    ``settings`` holds them (before encoding): for checks and for reproducing a sample."""
    table = domain_table(G, domains)
    rows = [r for i in indices for r in sample_rows(settings, G.z_dim, i)]
    out: dict[int, dict[str, torch.Tensor]] = {i: {} for i in indices}
    for chunk in steps(rows, settings.pass_rows, settings.pass_rows):
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
