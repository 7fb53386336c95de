"""The modulated convolution with the paper's domain multiplier: one op, its reference beside it.

For sample ``b`` with styles ``s_b`` [I] and domain block ``d_b`` [I] (HyperDomainNet's
``cin_mult`` patch), the convolution uses the weight

    W'_b = demod(W * s_b) * (1 + d_b)      (along the input axis, after demodulation)
    demod(V)[o] = V[o] / sqrt(sum_{i, kh, kw} V[o, i, kh, kw]^2 + 1e-8)

so the demodulation sees the styles alone, never the domain, and ``d = 0`` is StyleGAN2's
modulated conv. With ``up`` it is the upsampling conv (a stride-2 transposed conv, then the blur
``resample_filter``). An epilogue follows: ``act(y + noise + bias) * gain``, clamped.
``impl="ref"`` computes exactly this, one weight per sample and one grouped convolution: the
paper's form, to check against the paper.

Every other path is the equivalent activation-side form, which never builds a per-sample weight:

    y = conv(x * s * (1 + d), W) * demod_coefficients(W, s)

scale the input channels per sample, run one ordinary convolution with the shared weight, scale
the output channels. This is what makes a batch of many domains as cheap as one. The op picks
its backend from the tensors: CUDA tensors use the modulation, blur and bias_act kernels with
cuDNN's convolution; float32 CPU tensors the C++ CPU library where it applies (Winograd convs
with the modulation folded into the input transform, the separable blur, the styled conv's tail
demodulation + noise + bias + leaky ReLU in one pass); everything else plain torch. The autograd
Function below keeps only ``x`` for the backward (not its scaled copy, nor the blur's input).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch
import torch.nn.functional as F

from . import _build
from .cpu import demod_act, winograd, winograd_native
from .bias_act import ACTS, _bias_act_ref, bias_act
from .modulation import demod_coefficients, modulated_input
from .upfirdn2d import _upfirdn2d_ref, upfirdn2d

DEMOD_EPS = 1e-8

Blur = tuple[torch.Tensor, int, int]  # (filter [fh, fw], pad before, pad after): the blur after an upsampling conv


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     domain: torch.Tensor | None = None, *, up: bool = False, demodulate: bool = True,
                     resample_filter: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, act: str = "linear", clamp: float | None = None,
                     impl: str = "auto") -> torch.Tensor:
    """The modulated conv of ``x`` with the domain multiplier, and its epilogue (module docstring).

    x: [B, I, H, W]. weight: [O, I, k, k], k odd (any constant factor, such as the equalized-lr
    scale, may sit in ``styles`` instead: only ``weight * styles`` matters). styles: [B, I].
    domain: None or [B, I]. up: 2x upsampling (needs ``resample_filter`` [fh, fw], gain included).
    noise: None or broadcastable to the output [B, O, H', W'] (already scaled). bias: None or [O].
    act, clamp: as ``bias_act`` (``"lrelu"`` has gain sqrt(2)). impl: "auto" | "cuda" | "ref".
    Returns [B, O, H, W], or [B, O, 2H, 2W] with ``up``.
    """
    _check(x, weight, styles, domain, up, resample_filter, bias, act)
    if impl not in _build.IMPLS:
        raise ValueError(f"modulated_conv2d: impl must be one of {_build.IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = getattr(_pinned, "impl", None) or impl
    if impl == "ref":
        return _modulated_conv2d_ref(x, weight, styles, domain, up=up, demodulate=demodulate,
                                     resample_filter=resample_filter, noise=noise, bias=bias, act=act, clamp=clamp)
    if impl == "cuda" and not _build.is_cuda(x):
        raise ValueError(f"modulated_conv2d: impl='cuda' needs CUDA tensors, got x on {x.device}")
    k = weight.shape[-1]
    blur = (resample_filter, *_blur_padding(resample_filter, k)) if up else None
    y = _ActivationSideConv.apply(x, styles, domain, weight, blur, k // 2, impl)
    dcoefs = demod_coefficients(weight, styles, DEMOD_EPS, impl=impl)[:, :, None, None] if demodulate else None
    if (act == "lrelu" and clamp is None and bias is not None and dcoefs is not None
            and demod_act.applies(y, dcoefs, noise, bias)):
        return demod_act.demod_bias_lrelu(y, dcoefs, noise, bias)  # float32 CPU: one pass over the output
    if dcoefs is not None:
        y = y * dcoefs if noise is None else torch.addcmul(noise, y, dcoefs)
    elif noise is not None:
        y = y + noise
    if bias is None and act == "linear" and clamp is None:
        return y
    return bias_act(y, bias, act=act, clamp=clamp, impl=impl)


def _modulated_conv2d_ref(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                          domain: torch.Tensor | None = None, *, up: bool = False, demodulate: bool = True,
                          resample_filter: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                          bias: torch.Tensor | None = None, act: str = "linear",
                          clamp: float | None = None) -> torch.Tensor:
    """The paper's weight-side form in plain PyTorch; the arguments of ``modulated_conv2d`` but ``impl``."""
    _check(x, weight, styles, domain, up, resample_filter, bias, act)
    b, i, h, w = x.shape
    o, _, k, _ = weight.shape
    wb = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]: W * s
    if demodulate:
        wb = wb * (wb.square().sum(dim=[2, 3, 4], keepdim=True) + DEMOD_EPS).rsqrt()  # demod(W * s)
    if domain is not None:
        wb = wb * (1 + domain)[:, None, :, None, None]  # times (1 + d) along the input axis
    xg = x.reshape(1, b * i, h, w)  # one group per sample
    if up:
        y = F.conv_transpose2d(xg, wb.transpose(1, 2).reshape(b * i, o, k, k), stride=2, groups=b)
        y = y.reshape(b, o, y.shape[2], y.shape[3])
        p0, p1 = _blur_padding(resample_filter, k)
        y = _upfirdn2d_ref(y, resample_filter, padding=(p0, p1, p0, p1))
    else:
        y = F.conv2d(xg, wb.reshape(b * o, i, k, k), padding=k // 2, groups=b).reshape(b, o, h, w)
    if noise is not None:
        y = y + noise
    return _bias_act_ref(y, bias, act=act, clamp=clamp)


# ------------------------------------------------------------------------------ pinning a path
_pinned = threading.local()


@contextlib.contextmanager
def pin_modulated_conv2d(impl: str) -> Iterator[None]:
    """Within the block, calls of ``modulated_conv2d`` with ``impl="auto"`` run ``impl`` (this
    thread only): for benchmarks and tests that run a whole model on one path, such as the
    paper's weight-side form (``"ref"``)."""
    if impl not in _build.IMPLS:
        raise ValueError(f"pin_modulated_conv2d: impl must be one of {_build.IMPLS}, got {impl!r}")
    previous = getattr(_pinned, "impl", None)
    _pinned.impl = impl
    try:
        yield
    finally:
        _pinned.impl = previous


# ------------------------------------------------------------------------------ checks
def _check(x, weight, styles, domain, up, resample_filter, bias, act) -> None:
    if x.ndim != 4:
        raise ValueError(f"modulated_conv2d: x has shape {list(x.shape)}, expected [B, I, H, W]")
    b, i = x.shape[:2]
    if weight.ndim != 4 or weight.shape[1] != i or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise ValueError(f"modulated_conv2d: weight has shape {list(weight.shape)}, expected [O, {i}, k, k] "
                         f"with k odd to match x {list(x.shape)}")
    if styles.shape != (b, i):
        raise ValueError(f"modulated_conv2d: styles has shape {list(styles.shape)}, expected {[b, i]} "
                         f"to match x {list(x.shape)}")
    if domain is not None and domain.shape != (b, i):
        raise ValueError(f"modulated_conv2d: domain has shape {list(domain.shape)}, expected {[b, i]} "
                         f"to match x {list(x.shape)}")
    if up and (resample_filter is None or resample_filter.ndim != 2):
        shape = None if resample_filter is None else list(resample_filter.shape)
        raise ValueError(f"modulated_conv2d: up needs a 2-D resample_filter [fh, fw], got {shape}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"modulated_conv2d: bias has shape {list(bias.shape)}, expected [{weight.shape[0]}]")
    if act not in ACTS:
        raise ValueError(f"modulated_conv2d: unknown act {act!r}, expected one of {ACTS}")


def _blur_padding(f: torch.Tensor, k: int) -> tuple[int, int]:
    """The blur's padding after a stride-2 transposed conv of size ``k``: the output is then exactly 2x."""
    p = f.shape[0] - 2 - (k - 1)
    return (p + 1) // 2 + 1, p // 2 + 1


def _blur(x: torch.Tensor, blur: Blur, impl: str) -> torch.Tensor:
    f, p0, p1 = blur
    return upfirdn2d(x, f, padding=(p0, p1, p0, p1), impl=impl)


def _blur_adjoint(g: torch.Tensor, blur: Blur, impl: str) -> torch.Tensor:
    """The transpose of the blur: the flipped filter with the complementary padding."""
    f, p0, p1 = blur
    q0, q1 = f.shape[-1] - 1 - p0, f.shape[-1] - 1 - p1
    return upfirdn2d(g, f, padding=(q0, q1, q0, q1), flip_filter=True, impl=impl)


# ------------------------------------------------------------------------------ the activation side
class _ActivationSideConv(torch.autograd.Function):
    """``conv(x * s * (1 + d), weight)``; with ``blur``, a stride-2 transposed conv then the blur.

    Autograd would keep the scaled copy of ``x`` (and the blur's input) for backward; the domain
    gradient needs only ``x`` itself, which the previous layer keeps anyway. Keeping only ``x``
    saves one or two activations per layer; the input gradient runs as forward convolutions, the
    fast kernels.
    """

    @staticmethod
    def forward(ctx, x, styles, domain, weight, blur: Blur | None, padding: int, impl: str):
        ctx.save_for_backward(x, styles, domain, weight)
        ctx.blur, ctx.padding, ctx.impl = blur, padding, impl
        return _conv(x, weight, blur, padding, impl, styles, domain)

    @staticmethod
    def backward(ctx, gy):
        x, styles, domain, weight = ctx.saved_tensors
        need_x, need_s, need_d, need_w = ctx.needs_input_grad[:4]
        blur, impl = ctx.blur, ctx.impl
        gx = gs = gd = gw = None
        if need_x or need_s or need_d:
            if blur is None and weight.shape[-1] == 1 and not (need_s or need_d):
                gxm = None  # the 1x1 adjoint with the input scale folded in: one pass
                gx = _pointwise(gy, weight.transpose(0, 1), out_scale=_input_scale(styles, domain))
            elif blur is not None:  # adjoints of the blur, then of the stride-2 transposed conv
                gxm = _conv_stride2(_blur_adjoint(gy, blur, impl), weight, x)
            else:  # adjoint of a stride-1 conv: the transposed, flipped kernel
                k = weight.shape[-1]
                gxm = _conv(gy, weight.transpose(0, 1).flip([2, 3]), None, k - 1 - ctx.padding, impl)
            if need_s or need_d:
                gm = torch.einsum("bihw,bihw->bi", gxm, x)  # d loss / d (s * (1 + d))
                gs = gm if domain is None else gm * (1 + domain)
                gd = gm * styles if need_d else None
            if need_x and gxm is not None:
                scale = _input_scale(styles, domain).to(gxm.dtype)[:, :, None, None]
                # gxm is ours alone: scale it in place (one activation less at the memory peak),
                # unless a double backward records this op and needs gxm as it was
                gx = gxm * scale if torch.is_grad_enabled() else gxm.mul_(scale)
        if need_w:
            with torch.enable_grad():
                w_ = weight.detach().requires_grad_(True)
                y = _conv(x.detach(), w_, blur, ctx.padding, impl, styles.detach(),
                          None if domain is None else domain.detach())
                (gw,) = torch.autograd.grad(y, w_, gy)
        return gx, (gs if need_s else None), gd, gw, None, None, None


def _conv(x: torch.Tensor, weight: torch.Tensor, blur: Blur | None, padding: int, impl: str,
          styles: torch.Tensor | None = None, domain: torch.Tensor | None = None) -> torch.Tensor:
    """The conv of ``x * s * (1 + d)`` (of ``x`` without ``styles``); with ``blur``, a stride-2
    transposed conv and then the blur. The one place that picks a convolution backend."""
    if blur is None and weight.shape[-1] == 1 and padding == 0:
        return _pointwise(x, weight, in_scale=None if styles is None else _input_scale(styles, domain))
    on_cpu = not _build.is_cuda(x)
    if on_cpu and padding == 1 and winograd_native.applies(x, weight, stride=1 if blur is None else 2):
        # the C++ CPU convs apply s * (1 + d) as they read x
        scale = None if styles is None else _input_scale(styles, domain).expand(x.shape[0], -1)
        if blur is None:
            return winograd_native.conv3x3(x, weight, scale)
        return _blur(winograd_native.conv_transpose3x3(x, weight, scale), blur, impl)
    if styles is not None:
        x = modulated_input(x, styles, domain, impl=impl)  # [B, I, H, W]
    if blur is not None:
        # a contiguous [I, O, k, k] copy (a few MB): oneDNN runs 15-25% faster on it than on the view
        return _blur(F.conv_transpose2d(x, weight.transpose(0, 1).contiguous(), stride=2), blur, impl)
    if on_cpu and padding == 1 and winograd.applies(x, weight):  # float64, or float32 without the C++ library
        return winograd.conv3x3(x, weight)
    return F.conv2d(x, weight, padding=padding)


def _input_scale(styles: torch.Tensor, domain: torch.Tensor | None) -> torch.Tensor:
    """``s * (1 + d)``, [B, I]: what the modulated conv multiplies its input channels by."""
    return styles if domain is None else styles * (1 + domain)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None,
               out_scale: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 conv of ``x * in_scale`` times ``out_scale`` (per sample and channel, [B, I] / [B, O]).

    The scales fold into a per-sample [O, I] matrix, O * I numbers against the I * H * W of the
    activation (O = 3 in ToRGB), so it is one batched matmul and one pass over ``x``; a scaling
    pass and a convolution took 5-10x longer on the CPU (oneDNN's 3-output 1x1 conv is slow).
    """
    b, i, h, w = x.shape
    m = weight.reshape(weight.shape[0], i)[None]
    if in_scale is not None:
        m = m * in_scale.to(x.dtype)[:, None, :]
    if out_scale is not None:
        m = m * out_scale.to(x.dtype)[:, :, None]
    return torch.bmm(m.expand(b, -1, -1), x.reshape(b, i, h * w)).view(b, -1, h, w)


def _conv_stride2(g: torch.Tensor, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The adjoint of the stride-2 transposed conv of ``x``: ``conv2d(g, weight^T, stride=2)``."""
    if not _build.is_cuda(x) and winograd_native.applies(x, weight, stride=2):
        return winograd_native.conv3x3_stride2(g, weight)
    return F.conv2d(g, weight.transpose(0, 1).contiguous(), stride=2)
