"""Neural Optimal Transport (Korotin, Selikhanovych, Burnaev, ICLR 2023): the max-min step.

A map ``T`` (deterministic ``T(x)``, or stochastic ``T(x, z)`` for the weak cost) plays against a
potential ``f``: ``T`` minimises ``E[cost(x, T(x, z)) - f(T(x, z))]``, ``f`` maximises
``E_y f(y) - E_x f(T(x, z))``, with ``t_steps`` map updates per potential update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._shared import Sampler, adam_pair, parameters, potential_values
from .costs import Cost, quadratic_cost, weak_cost


@dataclass(frozen=True)
class NOTConfig:
    """NOT's hyper-parameters; the defaults are the paper's code (its toy and image notebooks).

    ``noise_shape`` ``None`` trains a deterministic ``T(x)``; a shape (``(2,)`` for points,
    ``(1, H, W)`` for images) trains ``T(x, z)`` with ``z ~ N(0, z_std^2)`` of ``[B, *noise_shape]``
    and ``z_size`` draws per ``x`` in the map's weak cost. ``gamma`` rises linearly from 0 over
    ``gamma_warmup_steps`` potential steps (the paper's schedule; 0 means at once).
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    t_steps: int = 10
    batch: int = 64
    gamma: float = 0.0
    gamma_warmup_steps: int = 0
    noise_shape: tuple[int, ...] | None = None
    z_size: int = 8
    z_std: float = 0.1


def not_optimizers(T: nn.Module, f: nn.Module, config: NOTConfig) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """``(opt_T, opt_f)``: Adam with the config's lr and betas."""
    return adam_pair(T, f, config.lr, config.betas)


def gamma_at(config: NOTConfig, step: int) -> float:
    """The weak cost's gamma at potential step ``step`` (0-based)."""
    if config.gamma_warmup_steps <= 0:
        return config.gamma
    return config.gamma * min(1.0, step / config.gamma_warmup_steps)


def _noise(config: NOTConfig, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(n, *config.noise_shape, device=like.device, dtype=like.dtype) * config.z_std


def transport(T: nn.Module, x: torch.Tensor, config: NOTConfig) -> torch.Tensor:
    """One draw of ``T(x)`` or ``T(x, z)``, ``[B, ...]``, as the config says the map is called."""
    return T(x) if config.noise_shape is None else T(x, _noise(config, x.shape[0], x))


def not_step(T: nn.Module, f: nn.Module, opt_T: torch.optim.Optimizer, opt_f: torch.optim.Optimizer,
             sample_x: Sampler, sample_y: Sampler, config: NOTConfig, *, cost: Cost = quadratic_cost,
             step: int = 0) -> dict[str, torch.Tensor]:
    """``config.t_steps`` map updates, then one potential update, each on fresh batches.

    Returns detached scalars (no host sync per step on a GPU): ``loss_T`` (the last map update's),
    ``loss_f`` and ``gamma``. ``step`` only sets gamma's warm-up.
    """
    gamma = gamma_at(config, step)
    T_params, f_params = parameters(T), parameters(f)
    for _ in range(config.t_steps):
        x = sample_x(config.batch)
        if config.noise_shape is None:
            y_hat = T(x)  # [B, ...]
            map_cost = cost(x, y_hat)
        else:
            K = config.z_size
            x_rep = x.repeat_interleave(K, 0)  # [B*K, ...], the K copies of x_i adjacent
            y_hat = T(x_rep, _noise(config, x_rep.shape[0], x))
            map_cost = weak_cost(x, y_hat.unflatten(0, (x.shape[0], K)), gamma, cost)
        loss_T = map_cost.mean() - potential_values(f, y_hat).mean()
        opt_T.zero_grad(set_to_none=True)
        loss_T.backward(inputs=T_params)  # f's parameters get no gradient from the map's loss
        opt_T.step()

    x, y = sample_x(config.batch), sample_y(config.batch)
    with torch.no_grad():
        y_hat = transport(T, x, config)
    loss_f = potential_values(f, y_hat).mean() - potential_values(f, y).mean()
    opt_f.zero_grad(set_to_none=True)
    loss_f.backward(inputs=f_params)
    opt_f.step()
    return {"loss_T": loss_T.detach(), "loss_f": loss_f.detach(), "gamma": torch.tensor(gamma)}
