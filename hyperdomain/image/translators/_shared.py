"""What NOT and ENOT share: reading a potential's values and building their optimisers."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Sampler = Callable[[int], torch.Tensor]


def potential_values(f: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``f(y)`` as ``[B]``: a potential may answer ``[B]`` or ``[B, 1]``, anything else is a bug."""
    v = f(y)
    if v.numel() != y.shape[0]:
        raise ValueError(f"a potential must give one value per sample: input {tuple(y.shape)}, output {tuple(v.shape)}")
    return v.reshape(y.shape[0])


def adam_pair(T: nn.Module, f: nn.Module, lr: float, betas: tuple[float, float]
              ) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """One Adam for the map and one for the potential, with the config's lr and betas."""
    return (torch.optim.Adam(T.parameters(), lr=lr, betas=betas),
            torch.optim.Adam(f.parameters(), lr=lr, betas=betas))


def parameters(module: nn.Module) -> list[torch.Tensor]:
    """Trainable parameters: the ``inputs=`` of a backward that must touch this network only."""
    return [p for p in module.parameters() if p.requires_grad]
