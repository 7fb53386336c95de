"""The IR-SE50 backbone shared by pSp, e4e and ReStyle: ArcFace's ResNet-50 with squeeze-excitation.

Module and parameter names are the official ones (``input_layer.{0,1,2}``,
``body.{i}.shortcut_layer.{0,1}``, ``body.{i}.res_layer.{0..5}``, ``res_layer.5.fc1/fc2``), so the
released state dicts load strictly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import RELEASE_UNITS, RELEASE_WIDTHS, SE_REDUCTION


class SqueezeExcite(nn.Module):
    """Channel gates from the pooled map: ``x * sigmoid(fc2(relu(fc1(mean(x)))))``."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W]
        g = F.adaptive_avg_pool2d(x, 1)  # [N, C, 1, 1]
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(g))))


class IRSEUnit(nn.Module):
    """``res_layer(x) + shortcut(x)``: BN, 3x3 conv, PReLU, 3x3 conv (strided), BN, SE; the
    shortcut subsamples (equal widths) or projects with a strided 1x1 conv and BN."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        # The official identity shortcut is MaxPool2d(1, stride): a plain subsample, no parameters.
        self.shortcut_layer = None if c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False),
            nn.PReLU(c_out),
            nn.Conv2d(c_out, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            SqueezeExcite(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, c_in, H, W] -> [N, c_out, H/s, W/s]
        if self.shortcut_layer is None:
            shortcut = x[:, :, ::self.stride, ::self.stride]
        else:
            shortcut = self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


class IRSEBackbone(nn.Module):
    """``input_layer`` (3x3 conv, BN, PReLU) and ``body`` (the 24 units of IR-SE50), as the
    encoders' own attributes. ``stage_maps`` returns the maps at the end of stages 2, 3 and 4:
    ``c1 [N,128,S/4,S/4]``, ``c2 [N,256,S/8,S/8]``, ``c3 [N,512,S/16,S/16]`` for input side ``S``
    (IR-SE50's widths; ``widths`` and ``units`` make a smaller backbone of the same form, whose
    stem is as wide as its first stage)."""

    def __init__(self, input_nc: int, widths: tuple[int, ...] = RELEASE_WIDTHS,
                 units: tuple[int, ...] = RELEASE_UNITS) -> None:
        super().__init__()
        stem = widths[0]
        self.input_layer = nn.Sequential(
            nn.Conv2d(input_nc, stem, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem),
            nn.PReLU(stem),
        )
        blocks, ends = [], []
        for c_in, c_out, n in zip((stem,) + tuple(widths[:-1]), widths, units):
            blocks += [IRSEUnit(c_in if i == 0 else c_out, c_out, 2 if i == 0 else 1) for i in range(n)]
            ends.append(len(blocks) - 1)
        self.body = nn.Sequential(*blocks)
        self._taps = tuple(ends[1:])  # IR-SE50: units 6, 20, 23

    def stage_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.input_layer(x)  # [N, widths[0], S, S]
        maps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self._taps:
                maps.append(x)
        c1, c2, c3 = maps
        return c1, c2, c3

    def final_map(self, x: torch.Tensor) -> torch.Tensor:  # [N, input_nc, S, S] -> [N, widths[3], S/16, S/16]
        return self.body(self.input_layer(x))
