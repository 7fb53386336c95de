"""Transport costs over batches of any shape ``[B, ...]``: one number per sample.

A cost is any ``cost(x, y) -> [B]`` over two batches of the same shape, so images can plug in
LPIPS later. The solvers only ever call costs through this signature.
"""

from __future__ import annotations

from typing import Callable

import torch

Cost = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"cost needs batches of one shape, got x {tuple(x.shape)} and y {tuple(y.shape)}")


def quadratic_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``0.5 * |x - y|^2`` summed over every non-batch dimension: ``[B, ...] x [B, ...] -> [B]``.

    The textbook W2 cost, whose OT map between Gaussians is ``gaussian.gaussian_ot_map``.
    """
    _check_pair(x, y)
    return 0.5 * (x - y).flatten(1).square().sum(1)


def mean_squared_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x - y|^2 / D`` (D = elements per sample): NOT's image cost, ``2 / D`` times ``quadratic_cost``.

    A positive multiple of the quadratic cost has the same OT map; only the potential's scale
    changes, which keeps learning rates independent of image size.
    """
    _check_pair(x, y)
    return (x - y).flatten(1).square().mean(1)


def weak_cost(x: torch.Tensor, ys: torch.Tensor, gamma: float, cost: Cost = quadratic_cost) -> torch.Tensor:
    """NOT's gamma-weak cost of sending each ``x`` to the empirical law of its ``K`` samples ``ys``.

    ``x`` is ``[B, ...]``, ``ys`` is ``[B, K, ...]`` (``K`` draws of ``T(x, z)``); returns ``[B]``:

        mean_k cost(x, y_k) - gamma / 2 * mean_{k != l} cost(y_k, y_l)

    For ``quadratic_cost`` the pair term is the unbiased total variance of the ``y_k``, so this is
    the paper's ``C(x, mu) = E_mu 0.5|x - y|^2 - gamma / 2 Var(mu)``; for ``mean_squared_cost`` it is
    exactly the NOT code's ``mse(x, mean_k y_k) + (1 - 1/K - gamma) * var_k(y).mean()``. Written
    with the cost itself rather than a variance, it stays meaningful for non-Euclidean costs.
    """
    B, K = ys.shape[:2]
    if x.shape[0] != B or x.shape[1:] != ys.shape[2:]:
        raise ValueError(f"weak_cost needs x [B, ...] and ys [B, K, ...], got {tuple(x.shape)} and {tuple(ys.shape)}")
    x_rep = x.unsqueeze(1).expand_as(ys).flatten(0, 1)  # [B*K, ...]
    transport = cost(x_rep, ys.flatten(0, 1)).view(B, K).mean(1)
    if gamma == 0:
        return transport
    if K < 2:
        raise ValueError(f"gamma = {gamma} needs at least 2 samples of T(x, z) per x, got {K}")
    k, l = torch.triu_indices(K, K, offset=1, device=ys.device)  # each unordered pair once: costs are symmetric
    spread = cost(ys[:, k].flatten(0, 1), ys[:, l].flatten(0, 1)).view(B, -1).mean(1)
    return transport - 0.5 * gamma * spread
