"""Photos to W+ with an encoder: e4e in one pass, ReStyle by iterative refinement.

Images are ``[N, 3, H, W]`` in ``[-1, 1]`` (the official transforms: ``ToTensor`` then
``Normalize(0.5, 0.5)``). The generator comes in as ``render(ws) -> images``: W+ ``[N, n_styles,
512]`` to ``[N, 3, R, R]``, rendered as the official loop does (``randomize_noise=False``: the
generator's constant noise), so this module needs no generator code.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import HyperdomainError
from .config import PHOTO_CHANNELS
from .model import PhotoEncoder

Render = Callable[[torch.Tensor], torch.Tensor]


def photo_input(img: Image.Image, size: int = 256) -> torch.Tensor:
    """A PIL RGB photo as the official transforms make it: ``Resize((size, size))`` (PIL bilinear),
    ``ToTensor``, ``Normalize(0.5, 0.5)``: ``[1, 3, size, size]`` float32 in ``[-1, 1]``."""
    if img.mode != "RGB":
        raise HyperdomainError(f"photo_input takes an RGB image, got mode {img.mode!r}")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return ((a - 0.5) / 0.5)[None]


def fit_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Photos at the encoder's input size: resized (bilinear, antialiased, as PIL's resize) when not."""
    if images.ndim != 4 or images.shape[1] != PHOTO_CHANNELS:
        raise HyperdomainError(f"encoder input must be images [N, 3, H, W], got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise HyperdomainError(f"encoder input must be floating point in [-1, 1], got {images.dtype}")
    peak = float(images.detach().abs().amax()) if images.numel() else 0.0
    if peak > 2:  # raw 0..255 pixels; renders slightly outside [-1, 1] are fine
        raise HyperdomainError(f"encoder input must be in [-1, 1] (x / 127.5 - 1 for 8-bit pixels), got values up "
                               f"to {peak:g}")
    if images.shape[2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return images


def pool_render(images: torch.Tensor, size: int) -> torch.Tensor:
    """A rendered image at the encoder's input size, as the official ``face_pool`` (adaptive average pooling)."""
    return F.adaptive_avg_pool2d(images, (size, size))


def encode(encoder: PhotoEncoder, images: torch.Tensor, render: Render | None = None, n_iters: int | None = None,
           return_steps: bool = False) -> torch.Tensor | list[torch.Tensor]:
    """W+ ``[N, n_styles, 512]`` for photos ``[N, 3, H, W]`` in ``[-1, 1]`` (resized to the encoder's input).

    e4e: one pass, plus the average latent when its config says so. ReStyle: start from the average
    latent and its rendered image; each of ``n_iters`` passes (default: the config's) reads the photo
    and the current image (``render``'s output pooled to the input size) and adds its output to the
    latent. ``return_steps``: the list of W+ after each pass instead (one entry for e4e).
    Gradients flow if enabled; wrap in ``torch.no_grad()`` to encode only.
    """
    cfg = encoder.config
    p = encoder.encoder.input_layer[0].weight
    x = fit_input(images.to(p.device, p.dtype), cfg.input_size)  # [N, 3, S, S]
    if not cfg.iterative:
        ws = encoder.encoder(x)  # [N, n_styles, 512]
        if cfg.start_from_latent_avg:
            ws = ws + encoder.latent_avg
        return [ws] if return_steps else ws

    if render is None:
        raise HyperdomainError(f"a {cfg.kind} encoder refines its guess by rendering it: pass render(ws) -> images")
    n_iters = cfg.n_iters if n_iters is None else n_iters
    if type(n_iters) is not int or n_iters < 1:
        raise HyperdomainError(f"n_iters must be a positive integer, got {n_iters!r}")
    n = x.shape[0]
    avg = encoder.latent_avg[None]  # [1, n_styles, 512]
    # As the official loop: the average image is rendered once and repeated over the batch.
    y = _rendered(render, avg, cfg.input_size, 1).expand(n, -1, -1, -1)  # [N, 3, S, S]
    ws = avg.expand(n, -1, -1)
    steps = []
    for i in range(n_iters):
        ws = encoder.encoder(torch.cat([x, y], dim=1)) + ws  # the residual on the current latent
        steps.append(ws)
        if i + 1 < n_iters:
            y = _rendered(render, ws, cfg.input_size, n)
    return steps if return_steps else ws


def _rendered(render: Render, ws: torch.Tensor, size: int, n: int) -> torch.Tensor:
    img = render(ws)
    if not isinstance(img, torch.Tensor) or img.ndim != 4 or img.shape[:2] != (n, PHOTO_CHANNELS):
        shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise HyperdomainError(f"render(ws) must return images [{n}, 3, H, W] for ws {list(ws.shape)}, got {shape}")
    return pool_render(img.to(ws.dtype), size)
