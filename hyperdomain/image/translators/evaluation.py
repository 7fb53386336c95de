"""How good is a translator: against the truth where it is known, and on real photos where it is not.

- **generated** (held-out sources): images ``G(w)`` from seeded latents the training never drew,
  whose true domain image ``G_d(w)`` (same ``w``, same constant noise) is known; the translation
  of ``G(w)`` is scored by LPIPS and PSNR (8-bit pixels, dB) to ``G_d(w)``, at the translator's side.
- **photos**: the CLIP direction alignment ``cos(E(T(p)) - E(p), direction)`` (the domain's text
  direction ``E(prompt) - E(source prompt)`` when its prompt is known, else its image direction
  ``mean E(G_d(w)) - mean E(G(w))`` over the held-out latents) and LPIPS to the input photo
  (how much of it is kept); with ``compare_inversion`` the same figures for the slow road, II2S
  inversion of each photo and a render with the domain.
- **images/s** of each road, the warm-up batch excluded (on a GPU, synchronised).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ...errors import HyperdomainError
from ..perceptual import lpips_distance
from .files import Translator, resize

__all__ = ["TranslatorRow", "translator_metrics", "psnr", "direction_alignment", "format_translator_table", "write_rows"]


@dataclass(frozen=True)
class TranslatorRow:
    road: str  # "translator" or "inversion" (II2S + render)
    inputs: str  # "generated" (held-out sources, the truth known) or "photos"
    n: int
    lpips_to_truth: float  # generated only (nan otherwise)
    psnr_to_truth: float
    clip_direction: float  # photos only: cos(E(out) - E(in), the domain's direction)
    lpips_to_input: float
    images_per_s: float
    size: int  # the side the images are compared at
    clip: str
    direction: str  # "text" or "image"


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR ``[B]`` in dB between images in ``[-1, 1]``, on their 8-bit pixels (as inversion reports)."""
    pix = lambda x: ((x.clamp(-1, 1) + 1) * 127.5).round()  # noqa: E731
    mse = (pix(a) - pix(b)).double().square().flatten(1).mean(1)
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def direction_alignment(out_emb: torch.Tensor, in_emb: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per-image ``cos(out - in, direction)`` ``[B]`` of CLIP embeddings ``[B, E]`` and ``[E]``."""
    return torch.nn.functional.cosine_similarity((out_emb - in_emb).double(), direction.double()[None], dim=1)


def _timed(fn, batches: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """``fn`` over the batches: the outputs concatenated and images/s (the first batch a warm-up when
    there are several)."""
    outs, counted, elapsed = [], 0, 0.0
    for i, b in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i > 0 or len(batches) == 1:
            elapsed += time.perf_counter() - start
            counted += b.shape[0]
        outs.append(out)
    return torch.cat(outs), counted / max(elapsed, 1e-9)


@torch.no_grad()
def translator_metrics(G: Any, translator: Translator, domain: Any, encoder: Any, lpips: nn.Module, *,
                       photos: torch.Tensor | None = None, prompt: str | None = None, source_prompt: str | None = None,
                       template_set: Sequence[str] = ("{}",), n: int = 16, seed: int = 1_000_003,
                       truncation: float = 0.7, batch_size: int = 8, compare_inversion: Any = None,
                       inversion_photos: Sequence[Any] | None = None) -> list[TranslatorRow]:
    """The rows of :mod:`this module <.evaluation>` for ``translator`` into ``domain`` (a DomainArg).

    ``photos``: ``[N, 3, H, W]`` in ``[-1, 1]`` (as the generator sees them: aligned or cropped), or
    None for the generated rows only. ``encoder``: a ClipEncoder; ``prompt`` (with ``source_prompt``,
    default ``G.source_prompt``) gives the text direction, else the image direction is used.
    ``compare_inversion``: an InversionConfig to also invert the photos (``inversion_photos``: what to
    invert, default the photo tensors as PIL images) and render them with the domain.
    """
    if n < 1 or batch_size < 1:
        raise HyperdomainError(f"evaluate --translator: n and batch size must be >= 1, got {n}, {batch_size}")
    dev = torch.device(G.device)
    size = translator.config.size
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, G.z_dim, generator=gen)
    sources, truths = [], []
    for start in range(0, n, batch_size):
        ws = G.mapping(z[start:start + batch_size].to(dev), truncation)
        sources.append(G.synthesis(ws, noise_mode="const").clamp(-1, 1))
        truths.append(G.synthesis(ws, domain=domain, noise_mode="const").clamp(-1, 1))
    source, truth = torch.cat(sources), torch.cat(truths)

    def translate(x: torch.Tensor) -> torch.Tensor:
        return translator(x, seed=0)

    batches = list(source.split(batch_size))
    out, speed = _timed(translate, batches, dev)
    truth_s = resize(truth, size)
    rows = [TranslatorRow("translator", "generated", n, _mean(lpips_distance(lpips, out, truth_s)),
                          _mean(psnr(out, truth_s)), math.nan, _mean(lpips_distance(lpips, out, resize(source, size))),
                          speed, size, encoder.label, "-")]
    if photos is None:
        return rows

    if prompt:
        tpl = tuple(template_set)
        direction = encoder.text(prompt, tpl) - encoder.text(source_prompt or G.source_prompt, tpl)
        kind = "text"
    else:
        direction = _embed(encoder, truth, batch_size).mean(0) - _embed(encoder, source, batch_size).mean(0)
        kind = "image"
    photos = photos.to(dev)
    photos_s = resize(photos, size)
    in_emb = _embed(encoder, photos_s, batch_size)
    out, speed = _timed(translate, list(photos.split(batch_size)), dev)
    rows.append(TranslatorRow("translator", "photos", photos.shape[0], math.nan, math.nan,
                              _mean(direction_alignment(_embed(encoder, out, batch_size), in_emb, direction)),
                              _mean(lpips_distance(lpips, out, photos_s)), speed, size, encoder.label, kind))
    if compare_inversion is not None:
        rendered, speed = _invert_and_render(G, domain, photos, compare_inversion, lpips, inversion_photos)
        rendered = resize(rendered, size)
        rows.append(TranslatorRow("inversion", "photos", photos.shape[0], math.nan, math.nan,
                                  _mean(direction_alignment(_embed(encoder, rendered, batch_size), in_emb, direction)),
                                  _mean(lpips_distance(lpips, rendered, photos_s)), speed, size, encoder.label, kind))
    return rows


def _embed(encoder: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([encoder.encode_images(b) for b in images.split(batch_size)])


def _mean(values: torch.Tensor) -> float:
    return float(values.double().mean())


def _invert_and_render(G: Any, domain: Any, photos: torch.Tensor, config: Any, lpips: nn.Module,
                       inversion_photos: Sequence[Any] | None) -> tuple[torch.Tensor, float]:
    """II2S of every photo (one batch, as ``invert`` does), then ``G_d`` of the latents; images/s of the whole."""
    from PIL import Image

    from ..inversion import invert

    if inversion_photos is None:
        pix = ((resize(photos, G.resolution).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu()
        inversion_photos = [Image.fromarray(p.numpy()) for p in pix]
    dev = torch.device(G.device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = time.perf_counter()
    with torch.enable_grad():
        latents = invert(G, list(inversion_photos), config, align=False, lpips=lpips, progress=False)
    ws = torch.stack([lt.ws for lt in latents]).to(dev)
    rendered = G.synthesis(ws, domain=domain, noise_mode=config.noise_mode).clamp(-1, 1)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return rendered, len(latents) / max(time.perf_counter() - start, 1e-9)


def format_translator_table(rows: Sequence[TranslatorRow]) -> str:
    """A fixed-width text table of the rows."""
    head = f"{'road':<11} {'inputs':<10} {'n':>4} {'LPIPS→truth':>11} {'PSNR→truth':>10} {'CLIP dir':>8} " \
           f"{'LPIPS→input':>11} {'images/s':>9}"
    lines = [head]
    for r in rows:
        lines.append(f"{r.road:<11} {r.inputs:<10} {r.n:>4} {r.lpips_to_truth:>11.4f} {r.psnr_to_truth:>10.2f} "
                     f"{r.clip_direction:>8.4f} {r.lpips_to_input:>11.4f} {r.images_per_s:>9.2f}")
    if rows:
        kinds = sorted({r.direction for r in rows if r.direction != "-"})
        lines.append(f"at {rows[0].size} px, CLIP {rows[0].clip}" + (f", {'/'.join(kinds)} direction" if kinds else ""))
    return "\n".join(lines)


def write_rows(rows: Sequence[TranslatorRow], path: str | os.PathLike) -> Path:
    """Write rows as ``.json`` (a list of objects; NaN as null) or ``.csv``, by the suffix, atomically."""
    from ...guidance.evaluation import write_table

    data = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in rows]
    return write_table(data, list(TranslatorRow.__dataclass_fields__), path)
