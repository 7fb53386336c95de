"""Closed-form OT between Gaussians, and the L2-UVP metric: the ground truth the solvers are tested on."""

from __future__ import annotations

from typing import Callable

import torch

Map = Callable[[torch.Tensor], torch.Tensor]


def _eigh(S: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(S.shape)}")
    S = S.double()
    return torch.linalg.eigh(0.5 * (S + S.T))  # symmetrised: eigh reads one triangle only


def sqrtm_psd(S: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix, in float64 (via ``eigh``)."""
    w, V = _eigh(S, "S")
    return (V * w.clamp_min(0).sqrt()) @ V.T


def gaussian_ot_map(m1: torch.Tensor, S1: torch.Tensor, m2: torch.Tensor, S2: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The quadratic-cost OT map from ``N(m1, S1)`` to ``N(m2, S2)`` as ``(A, b)``, float64.

    ``T*(x) = A x + b = m2 + A (x - m1)`` with ``A = S1^-1/2 (S1^1/2 S2 S1^1/2)^1/2 S1^-1/2``
    (symmetric positive definite) and ``b = m2 - A m1``. ``S1`` must be positive definite.
    """
    w, V = _eigh(S1, "S1")
    _eigh(S2, "S2")
    if not (m1.shape == m2.shape == S1.shape[:1] == S2.shape[:1]):
        raise ValueError(f"means {tuple(m1.shape)}, {tuple(m2.shape)} and covariances {tuple(S1.shape)}, "
                         f"{tuple(S2.shape)} disagree on the dimension")
    if w.min() <= 0:
        raise ValueError(f"S1 must be positive definite, its smallest eigenvalue is {w.min().item():.3g}")
    r1, r1_inv = (V * w.sqrt()) @ V.T, (V / w.sqrt()) @ V.T
    A = r1_inv @ sqrtm_psd(r1 @ S2.double() @ r1) @ r1_inv
    A = 0.5 * (A + A.T)  # symmetric in exact arithmetic; remove the rounding
    return A, m2.double() - A @ m1.double()


def affine_map(A: torch.Tensor, b: torch.Tensor) -> Map:
    """``x -> A x + b`` on a batch ``[B, D]``, in the batch's dtype."""
    return lambda x: x @ A.to(x.dtype).T + b.to(x.dtype)


def l2_uvp(T: Map, T_star: Map, x_samples: torch.Tensor, target_var: float) -> float:
    """L2 unexplained variance percentage: ``100 * E|T(x) - T*(x)|^2 / Var(Q)``, in percent.

    ``Var(Q) = E|y - E y|^2`` is the target's total variance (the trace of its covariance), as in
    Korotin et al.'s W2 benchmark used by NOT and ENOT. ``x_samples`` is ``[N, ...]``; ``T`` is called
    without grad.
    """
    with torch.no_grad():
        err = (T(x_samples) - T_star(x_samples)).flatten(1).double().square().sum(1).mean()
    return 100.0 * err.item() / float(target_var)
