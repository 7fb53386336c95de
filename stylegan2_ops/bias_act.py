"""Fused bias + activation + gain + clamp."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _build

ACTS = ("linear", "lrelu")
LRELU_ALPHA, LRELU_GAIN = 0.2, math.sqrt(2)  # the lrelu defaults


def _resolve(x: torch.Tensor, b: torch.Tensor | None, dim: int, act: str, alpha, gain, clamp):
    """Validate arguments and fill in the per-activation defaults; returns (dim, alpha, gain, clamp)."""
    if act not in ACTS:
        raise ValueError(f"bias_act: unknown act {act!r}, expected one of {ACTS}")
    if x.ndim == 0:
        raise ValueError("bias_act: x must have at least one dimension")
    if not -x.ndim <= dim < x.ndim:
        raise ValueError(f"bias_act: dim {dim} out of range for x of shape {list(x.shape)}")
    dim %= x.ndim
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f"bias_act: b has shape {list(b.shape)}, expected [{x.shape[dim]}] "
                         f"to match x {list(x.shape)} along dim {dim}")
    if act == "lrelu":
        alpha = LRELU_ALPHA if alpha is None else float(alpha)
        gain = LRELU_GAIN if gain is None else float(gain)
    else:
        alpha = 0.0  # unused by linear
        gain = 1.0 if gain is None else float(gain)
    if clamp is not None:
        clamp = float(clamp)
        if clamp < 0:
            raise ValueError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
    return dim, alpha, gain, clamp


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear", alpha=None,
             gain=None, clamp=None, impl: str = "auto") -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``, with ``b`` broadcast along ``dim``.

    x: any shape; b: None or 1-D of length ``x.shape[dim]``.
    act: "linear" (gain defaults to 1) or "lrelu" (alpha defaults to 0.2, gain to sqrt(2)).
    clamp: None (no clamp) or a bound >= 0. impl: "auto" | "cuda" | "ref".
    Returns a tensor of x's shape and dtype.
    """
    dim, alpha, gain, clamp = _resolve(x, b, dim, act, alpha, gain, clamp)
    ext = _build.kernels("bias_act", impl, x)
    if ext is None:
        return _bias_act_ref(x, b, dim, act, alpha, gain, clamp)
    if b is not None and (b.device != x.device or b.dtype != x.dtype):
        b = b.to(x.device, x.dtype)
    spec = (math.prod(x.shape[dim + 1:]), ACTS.index(act), alpha, gain, -1.0 if clamp is None else clamp)
    return _BiasActCuda.apply(x, b, dim, spec)


def _bias_act_ref(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
                  alpha=None, gain=None, clamp=None) -> torch.Tensor:
    """Plain differentiable PyTorch (any order); the same arguments as ``bias_act`` but ``impl``."""
    dim, alpha, gain, clamp = _resolve(x, b, dim, act, alpha, gain, clamp)
    bshape = [-1 if i == dim else 1 for i in range(x.ndim)]
    if act == "lrelu" and gain > 0:
        # a positive gain commutes with lrelu, so (x + b) * gain is one pass over x; the in-place
        # lrelu on that fresh tensor makes autograd keep only the output (which the next layer
        # keeps anyway), not a second copy
        x = x * gain if b is None else torch.add(b.reshape(bshape) * gain, x, alpha=gain)
        x = F.leaky_relu_(x, alpha)
    else:
        if b is not None:
            x = x + b.reshape(bshape)
        if act == "lrelu":
            x = F.leaky_relu(x, alpha)
        if gain != 1:
            x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# spec = (inner, act code, alpha, gain, clamp or -1): the kernels' view of the arguments.

class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, dim, spec):
        ext = _build.LOADER.get(required=True)
        y = ext.bias_act_fwd(x, b, *spec)
        ctx.save_for_backward(x, b)
        ctx.dim, ctx.spec = dim, spec
        return y

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        dx = _BiasActGradCuda.apply(dy, x, b, ctx.spec)
        db = None
        if b is not None and ctx.needs_input_grad[1]:
            dims = [d for d in range(dx.ndim) if d != ctx.dim]
            db = dx.sum(dim=dims) if dims else dx  # sum(dim=[]) would sum over everything
        return dx, db, None, None


class _BiasActGradCuda(torch.autograd.Function):
    """dx = dy * slope(x); the slope is piecewise constant in x, so its own gradient w.r.t. dy is
    the same kernel and w.r.t. x and b is zero (this gives the CUDA path second order too)."""

    @staticmethod
    def forward(ctx, dy, x, b, spec):
        ext = _build.LOADER.get(required=True)
        ctx.save_for_backward(x, b)
        ctx.spec = spec
        return ext.bias_act_grad(dy, x, b, *spec)

    @staticmethod
    def backward(ctx, ddx):
        x, b = ctx.saved_tensors
        return _BiasActGradCuda.apply(ddx, x, b, ctx.spec), None, None, None
