"""The tail of a styled conv fused for float32 CPU tensors (``csrc/act_cpu.cpp``).

``demod_bias_lrelu(x, dcoefs, add, bias)`` is
``bias_act(torch.addcmul(add, x, dcoefs), bias, act="lrelu")``, the demodulated conv output plus
the scaled noise, biased, through leaky ReLU and its gain: one pass over the layer's output
instead of three, and one instead of three in the backward. It overwrites ``x`` when it can
(the conv's fresh output, which nothing else keeps). Differentiable with respect to ``x`` only, to any order;
``applies`` says when it can be used.
"""
from __future__ import annotations

import torch

from . import library as cpu_library
from ..bias_act import LRELU_ALPHA, LRELU_GAIN


def applies(x: torch.Tensor, dcoefs: torch.Tensor, add: torch.Tensor | None, bias: torch.Tensor) -> bool:
    """float32 CPU tensors x [N, O, H, W], dcoefs [N, O, 1, 1], add None or [1 or N, 1, H, W],
    bias [O], nothing but x needing a gradient, and the library available."""
    n, o, h, w = x.shape
    grad = torch.is_grad_enabled()
    others = [dcoefs, bias] + ([] if add is None else [add])
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.ndim == 4
            and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in others)
            and not (grad and any(t.requires_grad for t in others))
            and dcoefs.shape == (n, o, 1, 1) and bias.shape == (o,)
            and (add is None or (add.ndim == 4 and add.shape[0] in (1, n) and add.shape[1:] == (1, h, w)))
            and cpu_library.available())


def demod_bias_lrelu(x: torch.Tensor, dcoefs: torch.Tensor, add: torch.Tensor | None,
                     bias: torch.Tensor) -> torch.Tensor:
    """``lrelu(x * dcoefs + add + bias[:, None, None]) * sqrt(2)``, written over ``x`` unless it is
    a view or not contiguous."""
    if not applies(x, dcoefs, add, bias):
        raise ValueError(f"demod_bias_lrelu: unsupported arguments: x {x.dtype} {list(x.shape)} on {x.device}, "
                         f"dcoefs {list(dcoefs.shape)}, add {None if add is None else list(add.shape)}, "
                         f"bias {list(bias.shape)} (see demod_act.applies)")
    return _DemodBiasLrelu.apply(x, dcoefs.detach(), None if add is None else add.detach(), bias.detach())


class _DemodBiasLrelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dcoefs, add, bias):
        if x.is_contiguous() and x._base is None:  # in place (autograd forbids it on views)
            ctx.mark_dirty(x)
            y = x
        else:
            x = x.contiguous()
            y = torch.empty_like(x)
        n, o, h, w = x.shape
        dc = dcoefs.reshape(n, o).contiguous()
        a = None if add is None else add.contiguous()
        cpu_library.hd_demod_bias_lrelu(x, dc, a, add_stride=0 if a is None or a.shape[0] == 1 else h * w,
                                        bias=bias.contiguous(), y=y, N=n, O=o, HW=h * w, alpha=LRELU_ALPHA,
                                        gain=LRELU_GAIN, nthreads=torch.get_num_threads())
        ctx.save_for_backward(y, dc)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, dc = ctx.saved_tensors
        gx = _DemodBiasLreluGrad.apply(gy, y, dc) if ctx.needs_input_grad[0] else None
        return gx, None, None, None


class _DemodBiasLreluGrad(torch.autograd.Function):
    """gx = gy * dcoefs * slope(y): linear in gy with a piecewise constant slope, so its own
    gradient is the same op (and none with respect to y)."""

    @staticmethod
    def forward(ctx, gy, y, dc):
        gy = gy.contiguous()
        gx = torch.empty_like(gy)
        n, o = dc.shape
        cpu_library.hd_demod_bias_lrelu_grad(gy, y, dc, gx, N=n, O=o, HW=gy[0, 0].numel(), alpha=LRELU_ALPHA,
                                             gain=LRELU_GAIN, nthreads=torch.get_num_threads())
        ctx.save_for_backward(y, dc)
        return gx

    @staticmethod
    def backward(ctx, ggx):
        y, dc = ctx.saved_tensors
        return _DemodBiasLreluGrad.apply(ggx, y, dc), None, None
