"""Map-to-style heads: a feature map to one 512-d style code (pSp's ``GradualStyleBlock``).

Names are the official ones: ``convs.{2k}`` (the convolutions; odd indices are the activations)
and ``linear`` (StyleGAN2's equalised linear layer).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HyperdomainError


class EqualLinear(nn.Module):
    """StyleGAN2's equalised linear layer (learning-rate multiplier 1): ``x @ (W / sqrt(d_in)).T + b``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.scale = 1 / math.sqrt(d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, d_in] -> [N, d_out]
        return F.linear(x, self.weight * self.scale, self.bias)


class StyleHead(nn.Module):
    """``log2(spatial)`` stride-2 3x3 convolutions, each followed by LeakyReLU (slope 0.01, torch's
    default, as the official heads use), then an equalised linear layer. ``spatial`` is the map side
    the head was made for (16, 32 or 64 at 256 px input); smaller maps also end at 1x1."""

    def __init__(self, spatial: int, c_in: int = 512, width: int = 512) -> None:
        super().__init__()
        self.width = width
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(c_in if i == 0 else width, width, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, c_in, H, W] -> [N, width]
        y = self.convs(x)
        if y.shape[2:] != (1, 1):
            # The official code would fold the leftover pixels into the batch; a wrong input size.
            raise HyperdomainError(f"style head got a {x.shape[2]}x{x.shape[3]} map, which its "
                                   f"{len(self.convs) // 2} stride-2 convolutions reduce to "
                                   f"{y.shape[2]}x{y.shape[3]}, not 1x1 (encoder input too large)")
        return self.linear(y.flatten(1))
