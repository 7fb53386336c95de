"""Upsample, FIR-filter, downsample (StyleGAN2's resampling op)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from . import _build
from .cpu import library as cpu_library


def _pair(v, name: str) -> tuple[int, int]:
    """(x, y) factors from an int or an (x, y) pair, each >= 1."""
    vx, vy = (v, v) if isinstance(v, int) else tuple(v)
    if not (isinstance(vx, int) and isinstance(vy, int) and vx >= 1 and vy >= 1):
        raise ValueError(f"upfirdn2d: {name} must be an int >= 1 or an (x, y) pair of them, got {v!r}")
    return vx, vy


def _padding(p) -> tuple[int, int, int, int]:
    """[px0, px1, py0, py1] from an int, an (x, y) pair or four ints; negative values crop."""
    if isinstance(p, int):
        return p, p, p, p
    p = tuple(p)
    if len(p) == 2:
        p = (p[0], p[0], p[1], p[1])
    if len(p) != 4 or not all(isinstance(v, int) for v in p):
        raise ValueError(f"upfirdn2d: padding must be an int, [px, py] or [px0, px1, py0, py1], got {p!r}")
    return p


def _parse(x, f, up, down, padding):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"upfirdn2d: x has shape {list(getattr(x, 'shape', []))}, expected [N, C, H, W]")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or not f.is_floating_point() or f.numel() == 0:
        raise ValueError(f"upfirdn2d: f must be a non-empty 1-D [fw] or 2-D [fh, fw] float tensor, "
                         f"got {f.dtype if isinstance(f, torch.Tensor) else type(f).__name__} "
                         f"of shape {list(getattr(f, 'shape', []))}")
    up, down, pad = _pair(up, "up"), _pair(down, "down"), _padding(padding)
    fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else tuple(f.shape)
    h, w = x.shape[2] * up[1] + pad[2] + pad[3], x.shape[3] * up[0] + pad[0] + pad[1]
    if h < fh or w < fw:
        raise ValueError(f"upfirdn2d: x {list(x.shape)} upsampled by {up} and padded by {list(pad)} is "
                         f"{h}x{w}, smaller than the filter {fh}x{fw}")
    return f, up, down, pad


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample by zero insertion, pad, convolve with ``f``, multiply by ``gain``, downsample.

    ``impl="auto"`` runs CUDA tensors on the CUDA kernel and float32 CPU tensors with
    up = down = 1 and a separable filter on the C++ CPU filter; everything else (and "ref") on
    the reference path.

    x: [N, C, H, W]. f: [fh, fw] (2-D), [fw] (separable: applied along x then y, gain**0.5 each),
    or None (identity). up, down: int or (x, y). padding: int, [px, py] or [px0, px1, py0, py1];
    negative values crop. The filter is flipped (true convolution) unless ``flip_filter``.
    Returns [N, C, (H*up_y + py0 + py1 - fh) // down_y + 1, (W*up_x + px0 + px1 - fw) // down_x + 1].
    """
    f, up, down, pad = _parse(x, f, up, down, padding)
    ext = _build.kernels("upfirdn2d", impl, x)
    if ext is None:
        taps = _cpu_taps(x, f, up, down, flip_filter, gain) if impl == "auto" else None
        if taps is not None:
            return _Upfirdn2dCpu.apply(x, *taps, pad)
        return _upfirdn2d_ref(x, f, up, down, pad, flip_filter, gain)
    f = f.detach()  # the CUDA path does not differentiate w.r.t. the filter
    if f.ndim == 1:
        gx, gy = _split_gain(gain)
        x = _Upfirdn2dCuda.apply(x, f[None, :], (up[0], 1), (down[0], 1), (pad[0], pad[1], 0, 0), flip_filter, gx)
        return _Upfirdn2dCuda.apply(x, f[:, None], (1, up[1]), (1, down[1]), (0, 0, pad[2], pad[3]), flip_filter, gy)
    return _Upfirdn2dCuda.apply(x, f, up, down, pad, flip_filter, float(gain))


def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
                   gain: float = 1) -> torch.Tensor:
    """Plain differentiable PyTorch (any order, also w.r.t. f); the arguments of ``upfirdn2d`` but ``impl``."""
    f, up, down, pad = _parse(x, f, up, down, padding)
    if f.ndim == 1:
        gx, gy = _split_gain(gain)
        x = _ref_2d(x, f[None, :], (up[0], 1), (down[0], 1), (pad[0], pad[1], 0, 0), flip_filter, gx)
        return _ref_2d(x, f[:, None], (1, up[1]), (1, down[1]), (0, 0, pad[2], pad[3]), flip_filter, gy)
    return _ref_2d(x, f, up, down, pad, flip_filter, float(gain))


def _split_gain(gain) -> tuple[float, float]:
    """Per-axis gains of a separable pass: sqrt(|gain|) each, the sign on the first."""
    g = abs(float(gain)) ** 0.5
    return math.copysign(g, float(gain)), g


def _ref_2d(x, f, up: Sequence[int], down: Sequence[int], pad: Sequence[int], flip_filter: bool, gain: float):
    n, c, h, w = x.shape
    (ux, uy), (dx, dy) = up, down
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, ux - 1, 0, 0, 0, uy - 1])  # up-1 zeros after every sample
    x = x.reshape(n, c, h * uy, w * ux)
    x = F.pad(x, list(pad))  # [px0, px1, py0, py1]; negative values crop
    weight = f.to(x.device, x.dtype) * gain
    if not flip_filter:
        weight = weight.flip([0, 1])  # conv2d correlates; flipping makes it a convolution
    weight = weight[None, None].expand(c, 1, *f.shape)
    x = F.conv2d(x, weight, groups=c)  # [N, C, H', W']
    return x[:, :, ::dy, ::dx]


class _Upfirdn2dCuda(torch.autograd.Function):
    """One 2-D kernel pass. Its gradient is the same op with the filter flipped, up and down
    swapped and the padding adjusted, so it is differentiable to any order."""

    @staticmethod
    def forward(ctx, x, f, up, down, pad, flip_filter, gain):
        ext = _build.LOADER.get(required=True)
        wgt = f if flip_filter else f.flip([0, 1])  # the kernel correlates
        y = ext.upfirdn2d(x, wgt, *up, *down, *pad, gain)
        ctx.save_for_backward(f)
        ctx.args = (x.shape, y.shape, up, down, pad, flip_filter, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        x_shape, y_shape, up, down, pad, flip_filter, gain = ctx.args
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _Upfirdn2dCuda.apply(dy, f, down, up, _grad_padding(x_shape, y_shape, f.shape, up, down, pad),
                                      not flip_filter, gain)
        return dx, None, None, None, None, None, None


def _cpu_taps(x, f, up, down, flip_filter: bool, gain) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(fy, fx): the correlation taps along y and x for the C++ CPU filter (``csrc/fir_cpu.cpp``),
    or None where it does not apply: it takes float32 CPU tensors, up = down = 1, and separable
    filters (1-D, or 2-D of rank one, like every StyleGAN2 filter), and does not differentiate
    with respect to the filter."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or up != (1, 1) or down != (1, 1)
            or f.device.type != "cpu" or (f.requires_grad and torch.is_grad_enabled()) or not cpu_library.available()):
        return None
    f = f.detach().to(torch.float64)
    if f.ndim == 1:
        g = abs(float(gain)) ** 0.5
        fy, fx = f * g, f * math.copysign(g, float(gain))
    else:
        i, j = divmod(int(f.abs().argmax()), f.shape[1])
        if f[i, j] == 0:
            return None
        fy, fx = f[:, j] * float(gain), f[i] / f[i, j]  # f = outer(fy, fx) if it is of rank one
        if not torch.allclose(torch.outer(fy, fx), f * float(gain), rtol=1e-6, atol=1e-7 * float(f.abs().max())):
            return None
    if not flip_filter:  # a true convolution: the kernel correlates with the taps reversed
        fy, fx = fy.flip(0), fx.flip(0)
    return fy.float().contiguous(), fx.float().contiguous()


class _Upfirdn2dCpu(torch.autograd.Function):
    """The separable filter on the CPU; its gradient is the same filter with the taps reversed
    and the complementary padding, so it is differentiable to any order."""

    @staticmethod
    def forward(ctx, x, fy, fx, pad):
        x = x.contiguous()
        n, c, h, w = x.shape
        y = x.new_empty(n, c, h + pad[2] + pad[3] - len(fy) + 1, w + pad[0] + pad[1] - len(fx) + 1)
        px0, px1, py0, py1 = pad
        cpu_library.hd_fir_separable(x, y, planes=n * c, H=h, W=w, fy=fy, fh=len(fy), fx=fx, fw=len(fx), px0=px0,
                                     px1=px1, py0=py0, py1=py1, nthreads=torch.get_num_threads())
        ctx.save_for_backward(fy, fx)
        ctx.shapes = (x.shape, y.shape, pad)
        return y

    @staticmethod
    def backward(ctx, dy):
        fy, fx = ctx.saved_tensors
        x_shape, y_shape, pad = ctx.shapes
        dx = None
        if ctx.needs_input_grad[0]:
            q = _grad_padding(x_shape, y_shape, (len(fy), len(fx)), (1, 1), (1, 1), pad)
            dx = _Upfirdn2dCpu.apply(dy, fy.flip(0), fx.flip(0), q)
        return dx, None, None, None


def _grad_padding(x_shape, y_shape, f_shape, up, down, pad) -> tuple[int, int, int, int]:
    """Padding that makes upfirdn2d(dy, flipped f, up=down, down=up) the adjoint of the forward pass.

    Per axis (input length n, output length m, filter length k, pads p0, p1): output o reads the
    upsampled input at o*down + t - p0 for taps t, so input i receives dy[o] w[t] wherever
    o*down = i*up + p0 - t. The flipped filter puts tap t at k-1-t, which needs a leading pad
    q0 = k-1-p0, and the trailing pad q1 = n*up - m*down + p0 - up + 1 makes the output length n.
    """
    (ux, uy), (dx, dy) = up, down
    fh, fw = f_shape
    h, w = x_shape[2], x_shape[3]
    oh, ow = y_shape[2], y_shape[3]
    return (fw - 1 - pad[0], w * ux - ow * dx + pad[0] - ux + 1,
            fh - 1 - pad[2], h * uy - oh * dy + pad[2] - uy + 1)


def blur_kernel(factor: int) -> torch.Tensor:
    """StyleGAN2's 2-D ``[1,3,3,1]`` resampling kernel as the PyTorch port stores it (its ``blur.kernel``
    buffers): normalised, times ``factor**2`` so that upsampling by ``factor`` keeps the gain."""
    return setup_filter([1.0, 3.0, 3.0, 1.0], gain=factor**2, separable=False)


def setup_filter(f, normalize: bool = True, flip_filter: bool = False, gain: float = 1, separable: bool | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """A float32 FIR filter for ``upfirdn2d`` from a list/array/tensor (None = [1]).

    A 1-D filter stays 1-D (separable) when ``separable`` is True, or when it is None and the filter
    has at least 8 taps; otherwise it becomes the 2-D outer product. ``normalize`` divides by the sum,
    ``gain`` scales the total (gain**0.5 per axis when separable), ``flip_filter`` flips every axis.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"setup_filter: f has shape {list(f.shape)}, expected [fw] or [fh, fw]")
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if separable and f.ndim != 1:
        raise ValueError(f"setup_filter: separable=True needs a 1-D filter, got shape {list(f.shape)}")
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device) if device is not None else f
