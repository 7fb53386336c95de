"""StyleGAN2 building blocks, named as in the common PyTorch port so its state dicts load as is.

The modulated conv carries the domain multiplier: conv ``k`` uses the per-sample weight
``demod(scale * W * s) * (1 + d_k)`` along the input axis, the demodulation computed from the
style ``s`` alone (the paper's code). The op itself, with the paper's form as its reference and
the fast paths, is ``stylegan2_ops.modulated_conv2d``; these modules only hold the parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import stylegan2_ops as ops

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


class ModulatedConv2d(nn.Module):
    """A modulated conv's parameters under the port's keys; ``forward`` is ``stylegan2_ops.modulated_conv2d``.

    The paper's weight is ``demod(scale * W * s) * (1 + d)`` along the input axis, ``s`` the
    style (an affine map of ``w``) and ``d`` this conv's block of the domain vector.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            self.blur = _Filter(ops.blur_kernel(2))

    def forward(self, x: torch.Tensor, w: torch.Tensor, domain: torch.Tensor | None = None, *,
                noise: torch.Tensor | None = None, bias: torch.Tensor | None = None, act: str = "linear",
                clamp: float | None = None) -> torch.Tensor:
        """x [B, I, H, W], w [B, style_dim], domain [B, I] or None; the epilogue ``act(y + noise +
        bias)``, clamped, runs in the same op (fused on the CPU)."""
        # the equalized-lr scale goes into the styles ([B, I]): only W * s matters, and the op then
        # reads the parameter itself, so autograd keeps no scaled copy of each weight for backward
        styles = self.modulation(w) * self.scale
        return ops.modulated_conv2d(x, self.weight[0], styles, domain, up=self.upsample, demodulate=self.demodulate,
                                    resample_filter=self.blur.kernel if self.upsample else None,
                                    noise=noise, bias=bias, act=act, clamp=clamp)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def scaled(self, noise: torch.Tensor | None) -> torch.Tensor | None:
        """The noise as added to the conv's output."""
        return None if noise is None else self.weight * noise


class FusedLeakyReLU(nn.Module):
    """The styled conv's bias and output clamp (NVIDIA clamps after the lrelu gain); applied inside the conv."""

    def __init__(self, channels: int, clamp: float | None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool, clamp: float | None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch, clamp)

    def forward(self, x, w, noise=None, domain=None):
        return self.conv(x, w, domain, noise=self.noise.scaled(noise), bias=self.activate.bias, act="lrelu",
                         clamp=self.activate.clamp)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool, clamp: float | None):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.clamp = clamp
        if upsample:
            # the port stores this kernel as `upsample.kernel`; a submodule keeps that key
            self.upsample = _Filter(ops.blur_kernel(2))

    def forward(self, x, w, skip=None):
        out = self.conv(x, w, bias=self.bias.view(3), clamp=self.clamp)
        if skip is not None:
            out = out + ops.upfirdn2d(skip, self.upsample.kernel, up=2, padding=(2, 1, 2, 1))
        return out


class _Filter(nn.Module):
    """Holds a resampling filter as ``kernel`` (the port's key: ``conv.blur.kernel``, ``upsample.kernel``)."""

    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel)


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)
