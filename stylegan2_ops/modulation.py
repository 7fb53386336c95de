"""Style/domain modulation of conv inputs and demodulation coefficients.

A modulated conv with domain vector d is computed without a per-sample weight:
``conv(modulated_input(x, s, d), W) * demod_coefficients(W, s)[:, :, None, None]``, which equals
the paper's ``conv_b(x, demod(W * s) * (1 + d))`` (demodulation uses the styles alone).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import _build


def _check_modulation(x, styles, domain):
    if x.ndim != 4:
        raise ValueError(f"modulated_input: x has shape {list(x.shape)}, expected [B, I, H, W]")
    if styles.shape != x.shape[:2]:
        raise ValueError(f"modulated_input: styles has shape {list(styles.shape)}, "
                         f"expected [{x.shape[0]}, {x.shape[1]}] to match x {list(x.shape)}")
    if domain is not None and domain.shape != styles.shape:
        raise ValueError(f"modulated_input: domain has shape {list(domain.shape)}, "
                         f"expected {list(styles.shape)} to match styles")


def modulated_input(x: torch.Tensor, styles: torch.Tensor, domain: torch.Tensor | None = None,
                    impl: str = "auto") -> torch.Tensor:
    """``x * (styles * (1 + domain))[:, :, None, None]``.

    x: [B, I, H, W]; styles: [B, I]; domain: None or [B, I] (one domain per sample).
    """
    _check_modulation(x, styles, domain)
    ext = _build.kernels("modulated_input", impl, x)
    if ext is None:
        return _modulated_input_ref(x, styles, domain)
    styles = styles.to(x.dtype)
    domain = domain.to(x.dtype) if domain is not None else None
    return _ModulateCuda.apply(x, styles, domain)


def _modulated_input_ref(x: torch.Tensor, styles: torch.Tensor, domain: torch.Tensor | None = None) -> torch.Tensor:
    """Plain differentiable PyTorch; the arguments of ``modulated_input`` but ``impl``."""
    _check_modulation(x, styles, domain)
    scale = styles if domain is None else styles * (1 + domain)  # [B, I]
    return x * scale[:, :, None, None]


def _check_demod(weight, styles):
    if weight.ndim != 4:
        raise ValueError(f"demod_coefficients: weight has shape {list(weight.shape)}, expected [O, I, kh, kw]")
    if styles.ndim != 2 or styles.shape[1] != weight.shape[1]:
        raise ValueError(f"demod_coefficients: styles has shape {list(styles.shape)}, "
                         f"expected [B, {weight.shape[1]}] to match weight {list(weight.shape)}")


def demod_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8,
                       impl: str = "auto") -> torch.Tensor:
    """``rsqrt(sum_{i,kh,kw} (weight[o, i, kh, kw] * styles[b, i])**2 + eps)`` as [B, O].

    weight: [O, I, kh, kw], the effective conv weight (equalized-lr scale applied); styles: [B, I].
    """
    _check_demod(weight, styles)
    ext = _build.kernels("demod_coefficients", impl, weight)
    if ext is None:
        return _demod_coefficients_ref(weight, styles, eps)
    dtype = torch.result_type(weight, styles)
    return _DemodCuda.apply(weight.to(dtype), styles.to(dtype), float(eps))


def _demod_coefficients_ref(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Plain differentiable PyTorch; the arguments of ``demod_coefficients`` but ``impl``."""
    _check_demod(weight, styles)
    wsq = weight.square().sum(dim=[2, 3])  # [O, I]
    return (styles.square() @ wsq.t() + eps).rsqrt()  # [B, O]


class _ModulateCuda(torch.autograd.Function):
    """y = x * s * (1 + d). Its gradients are again modulations and row dots, each an autograd
    Function, so the CUDA path is differentiable to any order."""

    @staticmethod
    def forward(ctx, x, s, d):
        ext = _build.LOADER.get(required=True)
        ctx.save_for_backward(x, s, d)
        return ext.modulate(x, s, d)

    @staticmethod
    def backward(ctx, dy):
        x, s, d = ctx.saved_tensors
        dx = ds = dd = None
        if ctx.needs_input_grad[0]:
            dx = _ModulateCuda.apply(dy, s, d)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dm = _RowDotCuda.apply(dy, x)  # [B, I]: dL/d(s * (1 + d))
            ds = dm if d is None else dm * (1 + d)
            if d is not None and ctx.needs_input_grad[2]:
                dd = dm * s
        return dx, ds, dd


class _RowDotCuda(torch.autograd.Function):
    """out[b, i] = sum_{h, w} a[b, i, h, w] * c[b, i, h, w]."""

    @staticmethod
    def forward(ctx, a, c):
        ext = _build.LOADER.get(required=True)
        ctx.save_for_backward(a, c)
        return ext.rowdot(a, c)

    @staticmethod
    def backward(ctx, g):
        a, c = ctx.saved_tensors
        da = _ModulateCuda.apply(c, g, None) if ctx.needs_input_grad[0] else None
        dc = _ModulateCuda.apply(a, g, None) if ctx.needs_input_grad[1] else None
        return da, dc


class _DemodCuda(torch.autograd.Function):
    """out = rsqrt(q), q[b, o] = sum_i wsq[o, i] s[b, i]^2 + eps, wsq = sum_k w^2. First order only."""

    @staticmethod
    def forward(ctx, w, s, eps):
        ext = _build.LOADER.get(required=True)
        wsq = ext.demod_wsq(w)  # [O, I] in the accumulation dtype
        out = ext.demod_fwd(wsq, s, eps)  # [B, O]
        ctx.save_for_backward(w, s, wsq, out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        w, s, wsq, out = ctx.saved_tensors
        ext = _build.LOADER.get(required=True)
        o = out.to(wsq.dtype)
        dq = (-0.5 * o * o * o * dout.to(wsq.dtype)).contiguous()  # d rsqrt(q)/dq = -q^(-3/2) / 2
        ds = ext.demod_grad_styles(dq, wsq, s) if ctx.needs_input_grad[1] else None
        dw = ext.demod_grad_weight(dq, s, w) if ctx.needs_input_grad[0] else None
        return dw, ds, None
