"""Small networks and Gaussian problems for the tests and the benchmark (not for images)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

Sampler = Callable[[int], torch.Tensor]


def mlp(in_dim: int, out_dim: int, hidden: int = 64, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` with SiLU (smooth, like the ELU of ott-jax's potentials)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class NoisyMap(nn.Module):
    """A stochastic map ``T(x, z) = net(cat[x, z])`` along dim 1 (points' features, images' channels)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, z], 1))


def random_spd(dim: int, generator: torch.Generator, low: float = 0.25, high: float = 4.0) -> torch.Tensor:
    """A random rotation of eigenvalues log-uniform in ``[low, high]``, float64."""
    Q, R = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))  # Haar-distributed rotation
    eig = torch.empty(dim, dtype=torch.float64).uniform_(math.log(low), math.log(high), generator=generator).exp()
    return (Q * eig) @ Q.T


def random_gaussian_problem(dim: int, seed: int, low: float = 0.25, high: float = 4.0
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(m1, S1, m2, S2)``, float64: standard normal means, covariances from ``random_spd(dim, low, high)``."""
    g = torch.Generator().manual_seed(seed)
    m1 = torch.randn(dim, generator=g, dtype=torch.float64)
    m2 = torch.randn(dim, generator=g, dtype=torch.float64)
    return m1, random_spd(dim, g, low, high), m2, random_spd(dim, g, low, high)


def gaussian_sampler(m: torch.Tensor, S: torch.Tensor) -> Sampler:
    """``n -> [n, D]`` float32 draws from ``N(m, S)``, from torch's global RNG (seeded by the caller)."""
    L = torch.linalg.cholesky(S.double()).float()
    m = m.float()
    return lambda n: m + torch.randn(n, m.shape[0]) @ L.T
