"""StyleGAN2 building blocks, named as in the common PyTorch port so its state dicts load as is.

The modulated conv carries the domain multiplier. Semantics (the paper's code): the per-sample
weight is ``W' = demod(scale * W * s) * (1 + d)`` along the input axis, with the demodulation
coefficients computed from ``s`` alone. We never form ``W'``: the input is scaled per sample and
channel by ``s * (1 + d)``, one ordinary convolution runs with the shared weight, and the output
channels are scaled by the demodulation coefficients.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import stylegan2_ops as ops
from stylegan2_ops import demod_act, winograd, winograd_native

_BLUR = (1.0, 3.0, 3.0, 1.0)


def blur_kernel(factor: int) -> torch.Tensor:
    """The port's 2-D ``[1,3,3,1]`` kernel, normalised and times ``factor**2`` (keeps the gain)."""
    k = torch.tensor(_BLUR)
    k = k[None, :] * k[:, None]
    return k / k.sum() * factor**2


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weights scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, lrelu: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.scale)
        return ops.bias_act(x, self.bias * self.lr_mul, act="lrelu" if self.lrelu else "linear")


class Blur(nn.Module):
    def __init__(self, pad: tuple[int, int], factor: int):
        super().__init__()
        self.register_buffer("kernel", blur_kernel(factor))
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        return ops.upfirdn2d(x, self.kernel, padding=(p0, p1, p0, p1))

    def adjoint(self, g: torch.Tensor) -> torch.Tensor:
        """The transpose of this linear map: the flipped filter with the complementary padding."""
        k = self.kernel.shape[-1]
        q0, q1 = k - 1 - self.pad[0], k - 1 - self.pad[1]
        return ops.upfirdn2d(g, self.kernel, padding=(q0, q1, q0, q1), flip_filter=True)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated, 2x-upsampling) conv with a domain multiplier.

    ``weight_side = True`` switches to the paper's formulation (per-sample weights, one grouped
    convolution); it exists for the benchmark and gives the same result.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample
        self.weight_side = False
        if upsample:
            # after a stride-2 transposed conv of size k the blur trims the output to exactly 2x
            p = len(_BLUR) - 2 - (kernel_size - 1)
            self.blur = Blur(((p + 1) // 2 + 1, p // 2 + 1), factor=2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, domain: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, I, H, W], w [B, style_dim], domain [B, I] or None; ``add`` (the scaled noise,
        broadcastable to the output) is added to the output in the same pass as the demodulation."""
        if self.weight_side:
            x = self._forward_weight_side(x, self.weight[0] * self.scale, self.modulation(w), domain)
            return x if add is None else x + add
        return _demodulated(*self.undemodulated(x, w, domain), add)

    def undemodulated(self, x: torch.Tensor, w: torch.Tensor,
                      domain: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The activation-side conv before demodulation, and the demodulation coefficients
        [B, O, 1, 1] (None without demodulation): ``forward`` is their product (plus ``add``)."""
        # the equalized-lr scale goes into the styles ([B, I]): the conv then reads the parameter
        # itself, and autograd keeps no scaled copy of each weight (100 MB at 256 px) for backward
        styles = self.modulation(w) * self.scale  # [B, I]
        weight = self.weight[0]  # [O, I, k, k]
        blur = self.blur if self.upsample else None
        x = _ModulatedConv.apply(x, styles, domain, weight, blur, self.padding)
        if not self.demodulate:
            return x, None
        return x, ops.demod_coefficients(weight, styles)[:, :, None, None]

    def _forward_weight_side(self, x, weight, styles, domain):
        b, i, h, w_ = x.shape
        wb = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
        if self.demodulate:
            wb = wb * torch.rsqrt(wb.square().sum(dim=(2, 3, 4)) + 1e-8)[:, :, None, None, None]
        if domain is not None:
            wb = wb * (1 + domain)[:, None, :, None, None]
        x = x.reshape(1, b * i, h, w_)
        k = self.kernel_size
        if self.upsample:
            wt = wb.transpose(1, 2).reshape(b * i, self.out_ch, k, k)
            x = F.conv_transpose2d(x, wt, stride=2, groups=b)
            x = x.reshape(b, self.out_ch, x.shape[2], x.shape[3])
            return self.blur(x)
        x = F.conv2d(x, wb.reshape(b * self.out_ch, i, k, k), padding=self.padding, groups=b)
        return x.reshape(b, self.out_ch, h, w_)


class _ModulatedConv(torch.autograd.Function):
    """``conv(x * s * (1 + d), weight)``; with ``blur``, a stride-2 transposed conv then the blur.

    Autograd would keep the scaled copy of ``x`` (and the blur's input) for backward; the domain
    gradient needs only ``x`` itself, which the previous layer keeps anyway. Keeping only ``x``
    saves one or two activations per layer; the input gradient runs as forward convolutions, the
    fast kernels.
    """

    @staticmethod
    def forward(ctx, x, styles, domain, weight, blur: "Blur | None", padding: int):
        ctx.save_for_backward(x, styles, domain, weight)
        ctx.blur, ctx.padding = blur, padding
        return _conv(x, weight, blur, padding, styles, domain)

    @staticmethod
    def backward(ctx, gy):
        x, styles, domain, weight = ctx.saved_tensors
        need_x, need_s, need_d, need_w = ctx.needs_input_grad[:4]
        gx = gs = gd = gw = None
        if need_x or need_s or need_d:
            if ctx.blur is None and weight.shape[-1] == 1 and not (need_s or need_d):
                gxm = None  # the 1x1 adjoint with the input scale folded in: one pass
                gx = _pointwise(gy, weight.transpose(0, 1), out_scale=_input_scale(styles, domain))
            elif ctx.blur is not None:  # adjoints of the blur, then of the stride-2 transposed conv
                gxm = _conv_stride2(ctx.blur.adjoint(gy), weight, x)
            else:  # adjoint of a stride-1 conv: the transposed, flipped kernel
                k = weight.shape[-1]
                gxm = _conv(gy, weight.transpose(0, 1).flip([2, 3]), None, k - 1 - ctx.padding)
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
                y = _conv(x.detach(), w_, ctx.blur, ctx.padding, styles.detach(),
                          None if domain is None else domain.detach())
                (gw,) = torch.autograd.grad(y, w_, gy)
        return gx, (gs if need_s else None), gd, gw, None, None


def _demodulated(x: torch.Tensor, dcoefs: torch.Tensor | None, add: torch.Tensor | None) -> torch.Tensor:
    if dcoefs is None:
        return x if add is None else x + add
    return x * dcoefs if add is None else torch.addcmul(add, x, dcoefs)


def _conv(x: torch.Tensor, weight: torch.Tensor, blur: "Blur | None", padding: int,
          styles: torch.Tensor | None = None, domain: torch.Tensor | None = None) -> torch.Tensor:
    """The conv of ``x * s * (1 + d)`` (of ``x`` without ``styles``); with ``blur``, a stride-2
    transposed conv and then the blur."""
    if blur is None and weight.shape[-1] == 1 and padding == 0:
        return _pointwise(x, weight, in_scale=None if styles is None else _input_scale(styles, domain))
    if padding == 1 and winograd_native.applies(x, weight, stride=1 if blur is None else 2):
        # the C++ CPU convs apply s * (1 + d) as they read x
        scale = None if styles is None else _input_scale(styles, domain).expand(x.shape[0], -1)
        if blur is None:
            return winograd_native.conv3x3(x, weight, scale)
        return blur(winograd_native.conv_transpose3x3(x, weight, scale))
    if styles is not None:
        x = ops.modulated_input(x, styles, domain)  # [B, I, H, W]
    if blur is not None:
        # a contiguous [I, O, k, k] copy (a few MB): oneDNN runs 15-25% faster on it than on the view
        return blur(F.conv_transpose2d(x, weight.transpose(0, 1).contiguous(), stride=2))
    if padding == 1 and winograd.applies(x, weight):  # float64, or float32 without the C++ library
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
    if winograd_native.applies(x, weight, stride=2):
        return winograd_native.conv3x3_stride2(g, weight)
    return F.conv2d(g, weight.transpose(0, 1).contiguous(), stride=2)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def scaled(self, noise: torch.Tensor | None) -> torch.Tensor | None:
        """The noise as added to the layer output (the conv adds it, fused with demodulation)."""
        return None if noise is None else self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int, clamp: float | None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.bias_act(x, self.bias, act="lrelu", clamp=self.clamp)


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool, clamp: float | None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch, clamp)  # NVIDIA clamps the output, after the lrelu gain

    def forward(self, x, w, noise=None, domain=None):
        add = self.noise.scaled(noise)
        if self.conv.weight_side:
            return self.activate(self.conv(x, w, domain, add=add))
        y, dcoefs = self.conv.undemodulated(x, w, domain)
        if self.activate.clamp is None and demod_act.applies(y, dcoefs, add, self.activate.bias):
            return demod_act.demod_bias_lrelu(y, dcoefs, add, self.activate.bias)  # float32 CPU: one pass
        return self.activate(_demodulated(y, dcoefs, add))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool, clamp: float | None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = clamp
        if upsample:
            # the port stores this kernel as `upsample.kernel`; a submodule keeps that key
            self.upsample = _KernelHolder(blur_kernel(2))

    def forward(self, x, w, skip=None):
        out = ops.bias_act(self.conv(x, w), self.bias.view(3), clamp=self.clamp)
        if skip is not None:
            out = out + ops.upfirdn2d(skip, self.upsample.kernel, up=2, padding=(2, 1, 2, 1))
        return out


class _KernelHolder(nn.Module):
    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)
