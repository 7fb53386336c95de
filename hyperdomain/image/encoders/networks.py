"""The encoder networks: e4e (``Encoder4Editing``) and ReStyle's backbone encoders.

Each maps an input ``[N, input_nc, S, S]`` (S a multiple of 16, 256 for the releases) to W+ codes
``[N, n_styles, w_dim]`` (512 in the releases), before any average latent is added. Parameter names are the official ones:
a released checkpoint's ``encoder.*`` tensors, prefix stripped, load strictly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import IRSEBackbone
from .config import RELEASE_UNITS, RELEASE_WIDTHS, W_DIM, EncoderConfig
from .heads import StyleHead

# e4e's heads 0-2 read the coarse map c3, heads 3-6 the FPN's middle map p2, the rest its fine map p1.
COARSE_END, MIDDLE_END = 3, 7


def upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """FPN merge: ``top`` resized to ``lateral``'s size (bilinear, corners aligned) plus ``lateral``."""
    return F.interpolate(top, size=lateral.shape[2:], mode="bilinear", align_corners=True) + lateral


def _active_layers(n_styles: int, stage: int | None) -> int:
    """How many layers get a code of their own: all of them at inference (stage None), else the
    first ``stage + 1`` (e4e's progressive training; later layers repeat ``w0``)."""
    return n_styles if stage is None else max(1, min(stage + 1, n_styles))


class E4E(IRSEBackbone):
    """``Encoder4Editing``: ``w0`` from head 0 on c3; layer ``i`` gets ``w0 + head_i(map)`` with
    the map c3, p2 = c3 up + latlayer1(c2), or p1 = p2 up + latlayer2(c1) by layer group."""

    def __init__(self, n_styles: int, input_nc: int = 3, w_dim: int = W_DIM,
                 widths: tuple[int, ...] = RELEASE_WIDTHS, units: tuple[int, ...] = RELEASE_UNITS) -> None:
        super().__init__(input_nc, widths, units)
        self.n_styles = n_styles
        spatial = [16 if i < COARSE_END else 32 if i < MIDDLE_END else 64 for i in range(n_styles)]
        top = widths[3]  # c3's width, which the lateral layers match (512 = W_DIM in the releases)
        self.styles = nn.ModuleList(StyleHead(s, top, w_dim) for s in spatial)
        self.latlayer1 = nn.Conv2d(widths[2], top, 1)
        self.latlayer2 = nn.Conv2d(widths[1], top, 1)
        # Training stage (an int) while e4e trains progressively; the released models infer with all.
        self.progressive_stage: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, S, S] -> [N, n_styles, 512]
        c1, c2, c3 = self.stage_maps(x)
        w0 = self.styles[0](c3)  # [N, 512]
        active = _active_layers(self.n_styles, self.progressive_stage)
        ws, feats = [w0], c3
        for i in range(1, self.n_styles):
            if i >= active:
                ws.append(w0)
                continue
            if i == COARSE_END:
                feats = p2 = upsample_add(c3, self.latlayer1(c2))  # [N, 512, S/8, S/8]
            elif i == MIDDLE_END:
                feats = upsample_add(p2, self.latlayer2(c1))  # [N, 512, S/4, S/4]
            ws.append(w0 + self.styles[i](feats))  # each delta is added to w0 alone
        return torch.stack(ws, dim=1)


class RestyleEncoder(IRSEBackbone):
    """ReStyle's ``BackboneEncoder`` (``progressive=False``: every head's code as is) and
    ``ProgressiveBackboneEncoder`` (``progressive=True``: ``w0`` plus deltas, as e4e); all heads
    read the final map ``[N, 512, S/16, S/16]``. The two have the same parameters."""

    def __init__(self, n_styles: int, input_nc: int = 6, progressive: bool = False, w_dim: int = W_DIM,
                 widths: tuple[int, ...] = RELEASE_WIDTHS, units: tuple[int, ...] = RELEASE_UNITS) -> None:
        super().__init__(input_nc, widths, units)
        self.n_styles = n_styles
        self.progressive = progressive
        self.styles = nn.ModuleList(StyleHead(16, widths[3], w_dim) for _ in range(n_styles))
        self.progressive_stage: int | None = None  # as E4E's; used only when progressive

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, S, S] -> [N, n_styles, 512]
        f = self.final_map(x)
        if not self.progressive:
            return torch.stack([head(f) for head in self.styles], dim=1)
        w0 = self.styles[0](f)
        active = _active_layers(self.n_styles, self.progressive_stage)
        ws = [w0] + [w0 + self.styles[i](f) if i < active else w0 for i in range(1, self.n_styles)]
        return torch.stack(ws, dim=1)


def build_network(config: EncoderConfig) -> E4E | RestyleEncoder:
    """The untrained network of ``config`` (random weights)."""
    sizes = {"w_dim": config.w_dim, "widths": config.widths, "units": config.units}
    if config.kind == "e4e":
        return E4E(config.n_styles, config.input_nc, **sizes)
    return RestyleEncoder(config.n_styles, config.input_nc, progressive=config.kind == "restyle-e4e", **sizes)
