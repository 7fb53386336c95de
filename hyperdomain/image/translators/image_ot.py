"""NOT and ENOT on images, as one step's losses of the common training loop.

The loop has one Adam and makes one backward of ``losses()["total"]`` per step, zeroing gradients
with ``set_to_none``; the map and the potential are two param groups of that Adam (each its own lr
and betas). Adam skips a parameter whose gradient is None, so a loss that reaches only one network
updates only that network, and its Adam state stays as it was:

- NOT (:func:`not_losses`): loop step ``k`` is a map step when ``k % (t_steps + 1) < t_steps`` and
  a potential step otherwise; ``t_steps + 1`` loop steps make one of the paper's potential steps.
  The map's loss reads the potential through :func:`torch.func.functional_call` with its
  parameters detached; the potential's loss reads transported images made without grad.
- ENOT (:func:`enot_losses`): every loop step updates both, ``total = loss_T + loss_g``, each term
  reaching its own network only (the same detaching), as ``enot_step`` does with two backwards.

``tests/test_translator_ot.py`` checks both against ``not_step`` / ``enot_step`` (the solver core,
two Adams), parameter for parameter. The solver's configs (:class:`NOTConfig`, :class:`ENOTConfig`)
carry the hyper-parameters; their ``lr``, ``betas`` and ``batch`` are the trainer's business here.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ...errors import HyperdomainError
from ._shared import potential_values
from .costs import Cost, mean_squared_cost, weak_cost
from .enot_solver import ENOTConfig, expectile_loss
from .neural_ot import NOTConfig, gamma_at

COSTS = ("l2", "lpips")


# ------------------------------------------------------------------------------------------ the potential
class ImagePotential(nn.Module):
    """A small CNN critic ``[B, C, H, W] -> [B]``: ``depth`` stride-2 4x4 convolutions (widths doubling
    from ``width``, capped at 8x) with LeakyReLU, a mean over the pixels and a linear layer.

    No normalisation layers: nothing moves in a forward pass, so a snapshot of the parameters is
    the whole state (exact resume, the loop's roll-back) and a batch's values do not depend on each
    other (the potential is a function of one image). Any size works; the mean pools what is left.
    """

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 4):
        super().__init__()
        if width < 1 or depth < 1:
            raise HyperdomainError(f"potential: width and depth must be >= 1, got width {width}, depth {depth}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(depth):
            out = width * min(2 ** (i + 1), 8)
            layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(y).mean((2, 3))).squeeze(1)


# ------------------------------------------------------------------------------------------ costs
def image_cost(name: str, lpips: nn.Module | None = None) -> Cost:
    """The transport cost ``[B, 3, H, W] x [B, 3, H, W] -> [B]`` named by ``--cost``.

    ``l2``: the mean squared difference per image (NOT's image cost, ``mean_squared_cost``: the
    quadratic cost over the pixel count, so learning rates do not depend on the image size);
    ``lpips``: the LPIPS distance (``lpips``, a loaded module; images in ``[-1, 1]``).
    """
    if name == "l2":
        return mean_squared_cost
    if name == "lpips":
        if lpips is None:
            raise HyperdomainError("--cost lpips needs the LPIPS network")
        from ..perceptual import lpips_distance

        return lambda a, b: lpips_distance(lpips, a, b)
    raise HyperdomainError(f"--cost {name!r}: not a transport cost; use one of {', '.join(COSTS)}")


# ------------------------------------------------------------------------------------------ NOT
def is_map_step(step: int, t_steps: int) -> bool:
    """Whether loop step ``step`` (0-based) updates NOT's map (else its potential)."""
    return step % (t_steps + 1) < t_steps


def potential_step(step: int, t_steps: int) -> int:
    """The NOT potential step (0-based) that loop step ``step`` belongs to: gamma's warm-up clock."""
    return step // (t_steps + 1)


def not_noise(config: NOTConfig, step: int, batch: int, like: torch.Tensor,
              generator: torch.Generator | None = None) -> torch.Tensor | None:
    """The noise ``z`` loop step ``step`` of NOT needs: None for a deterministic map, else
    ``[batch * z_size, *noise_shape]`` on a map step (``z_size`` draws per photo, for the weak cost)
    and ``[batch, *noise_shape]`` on a potential step; ``N(0, z_std^2)`` from ``generator``."""
    if config.noise_shape is None:
        return None
    n = batch * config.z_size if is_map_step(step, config.t_steps) else batch
    z = torch.randn(n, *config.noise_shape, generator=generator, device=like.device if generator is None else "cpu")
    return (z * config.z_std).to(like.device, like.dtype)


def frozen_potential(f: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``f(y)`` as ``[B]`` through parameters detached from ``f``'s: gradient reaches ``y`` only."""
    params = {k: v.detach() for k, v in f.named_parameters()}
    return potential_values(lambda t: functional_call(f, {**params, **dict(f.named_buffers())}, (t,)), y)


def _potential_pair(f: nn.Module, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(a), f(b)`` from one forward pass of both batches (under DDP a module's gradients are
    reduced once per forward; the potential has no batch statistics, so the values are the same)."""
    values = potential_values(f, torch.cat([a, b]))
    return values[:a.shape[0]], values[a.shape[0]:]


def _map(T: Callable[..., torch.Tensor], x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    return T(x) if z is None else T(x, z)


def not_losses(T: Callable[..., torch.Tensor], f: nn.Module, x: torch.Tensor, y: torch.Tensor | None, z: torch.Tensor | None,
               step: int, config: NOTConfig, cost: Cost = mean_squared_cost) -> dict[str, torch.Tensor]:
    """Loop step ``step`` of NOT: ``{"total", "loss_T", "gamma"}`` on a map step (``y`` unused, may be
    None), ``{"total", "loss_f"}`` on a potential step. ``x``: photos ``[B, ...]``; ``y``: domain
    images ``[B, ...]``; ``z``: :func:`not_noise`."""
    if is_map_step(step, config.t_steps):
        gamma = gamma_at(config, potential_step(step, config.t_steps))
        if z is None:
            y_hat = T(x)
            map_cost = cost(x, y_hat)
        else:
            K = config.z_size
            x_rep = x.repeat_interleave(K, 0)  # [B*K, ...], the K copies of x_i adjacent
            y_hat = T(x_rep, z)
            map_cost = weak_cost(x, y_hat.unflatten(0, (x.shape[0], K)), gamma, cost)
        loss_T = map_cost.mean() - frozen_potential(f, y_hat).mean()
        return {"total": loss_T, "loss_T": loss_T.detach(), "gamma": torch.tensor(float(gamma))}
    if y is None:
        raise ValueError(f"NOT's potential step {step} needs the domain images")
    with torch.no_grad():
        y_hat = _map(T, x, z)
    f_hat, f_y = _potential_pair(f, y_hat, y)
    loss_f = f_hat.mean() - f_y.mean()
    return {"total": loss_f, "loss_f": loss_f.detach()}


# ------------------------------------------------------------------------------------------ ENOT
def enot_losses(T: Callable[..., torch.Tensor], g: nn.Module, x: torch.Tensor, y: torch.Tensor, config: ENOTConfig,
                cost: Cost = mean_squared_cost, z: torch.Tensor | None = None, frozen: nn.Module | None = None
                ) -> dict[str, torch.Tensor]:
    """One ENOT step: ``{"total", "loss_T", "loss_g", "expectile_reg"}``, ``total = loss_T + loss_g``.

    ``loss_T = E[c(x, T(x)) - g(T(x))]`` through ``g``'s detached parameters; ``loss_g = E[g(T(x)) -
    g(y)] + expectile_weight * E L_tau(u)`` with ``T(x)`` detached (see ``enot_step``). ``frozen``:
    the plain potential module when ``g`` is a wrapper (DDP) of it, for the map's detached reading.
    """
    y_hat = _map(T, x, z)
    loss_T = (cost(x, y_hat) - frozen_potential(frozen if frozen is not None else g, y_hat)).mean()
    y_hat = y_hat.detach()
    g_hat, g_y = _potential_pair(g, y_hat, y)
    with torch.no_grad():
        cost_gap = cost(x, y_hat) - cost(x, y)  # [B]
    u = cost_gap - g_hat + g_y
    reg = expectile_loss(u, config.expectile).mean()
    loss_g = (g_hat - g_y).mean() + config.expectile_weight * reg
    return {"total": loss_T + loss_g, "loss_T": loss_T.detach(), "loss_g": loss_g.detach(),
            "expectile_reg": reg.detach()}


def one_adam(T: nn.Module, f: nn.Module, map_lr: float, potential_lr: float,
             map_betas: tuple[float, float], potential_betas: tuple[float, float]) -> torch.optim.Adam:
    """The loop's one Adam: the map's parameters (group 0) and the potential's (group 1)."""
    return torch.optim.Adam([{"params": [p for p in T.parameters() if p.requires_grad], "lr": map_lr,
                              "betas": map_betas},
                             {"params": [p for p in f.parameters() if p.requires_grad], "lr": potential_lr,
                              "betas": potential_betas}])

