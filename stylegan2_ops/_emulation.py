"""The compiled extension's kernel contracts written in PyTorch (see csrc/ops.h).

Lets the CPU test suite run the CUDA-path autograd Functions (backward formulas, adjoint
padding, second order) end to end; the kernels themselves are checked against the reference
ops on a GPU. Each function takes and returns what the bound C++ function does.
"""

from __future__ import annotations

import contextlib

import torch

from . import _build


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _pre_act(x, b, inner, act, alpha, gain):
    """(act(x + b) * gain, slope) in the accumulation dtype; the bias index is (i // inner) % C."""
    v = x.to(_acc(x))
    if b is not None:
        v = (v.reshape(-1, b.numel(), inner) + b.to(v.dtype)[None, :, None]).reshape(x.shape)
    slope = torch.ones_like(v)
    if act == 1:
        slope = torch.where(v > 0, slope, torch.full_like(v, alpha))
    slope = slope * gain
    return v * slope, slope


class EmulatedKernels:
    """Drop-in for the compiled module: same function names, arguments and results."""

    @staticmethod
    def bias_act_fwd(x, b, inner, act, alpha, gain, clamp):
        v, _ = _pre_act(x, b, inner, act, alpha, gain)
        if clamp >= 0:
            v = v.clamp(-clamp, clamp)
        return v.to(x.dtype)

    @staticmethod
    def bias_act_grad(dy, x, b, inner, act, alpha, gain, clamp):
        v, slope = _pre_act(x, b, inner, act, alpha, gain)
        if clamp >= 0:
            slope = torch.where((v > -clamp) & (v < clamp), slope, torch.zeros_like(slope))
        return (dy.to(slope.dtype) * slope).to(x.dtype)

    @staticmethod
    def upfirdn2d(x, w, up_x, up_y, down_x, down_y, pad_x0, pad_x1, pad_y0, pad_y1, gain):
        """Sum over taps of w[ky, kx] * x[iy, ix] where the upsampled, padded position
        (o * down + k - pad0) lands on an original sample (the kernel's index math)."""
        acc = _acc(x)
        w = w.to(x.device, acc)
        n, c, in_h, in_w = x.shape
        fh, fw = w.shape
        out_h = (in_h * up_y + pad_y0 + pad_y1 - fh) // down_y + 1
        out_w = (in_w * up_x + pad_x0 + pad_x1 - fw) // down_x + 1
        xs = x.to(acc)
        y = xs.new_zeros(n, c, out_h, out_w)
        oy = torch.arange(out_h, device=x.device) * down_y - pad_y0
        ox = torch.arange(out_w, device=x.device) * down_x - pad_x0
        for ky in range(fh):
            my = oy + ky
            vy = (my >= 0) & (my < in_h * up_y) & (my % up_y == 0)
            iy = torch.where(vy, my // up_y, 0)
            for kx in range(fw):
                mx = ox + kx
                vx = (mx >= 0) & (mx < in_w * up_x) & (mx % up_x == 0)
                ix = torch.where(vx, mx // up_x, 0)
                mask = (vy[:, None] & vx[None, :]).to(acc)
                y = y + w[ky, kx] * xs[:, :, iy][:, :, :, ix] * mask
        return (y * gain).to(x.dtype)

    @staticmethod
    def modulate(x, s, d):
        m = s.to(_acc(x)) if d is None else s.to(_acc(x)) * (1 + d.to(_acc(x)))
        return (x.to(m.dtype) * m.reshape(*m.shape, *([1] * (x.ndim - 2)))).to(x.dtype)

    @staticmethod
    def rowdot(a, c):
        return (a.to(_acc(a)) * c.to(_acc(a))).flatten(2).sum(-1).to(a.dtype)

    @staticmethod
    def demod_wsq(w):
        return w.to(_acc(w)).square().sum(dim=[2, 3])

    @staticmethod
    def demod_fwd(wsq, s, eps):
        return (s.to(wsq.dtype).square() @ wsq.t() + eps).rsqrt().to(s.dtype)

    @staticmethod
    def demod_grad_styles(dq, wsq, s):
        return (2 * s.to(wsq.dtype) * (dq @ wsq)).to(s.dtype)

    @staticmethod
    def demod_grad_weight(dq, s, w):
        acc = dq.dtype
        return (2 * w.to(acc) * (dq.t() @ s.to(acc).square())[:, :, None, None]).to(w.dtype)


@contextlib.contextmanager
def emulated_kernels():
    """Within the block, ops on CPU tensors take the CUDA path (impl="cuda"/"auto") with
    ``EmulatedKernels`` standing in for the compiled module. For tests only."""
    saved = _build.LOADER, _build.is_cuda
    _build.LOADER = _build.ExtensionLoader(lambda: (EmulatedKernels(), {"source": "emulated"}))
    _build.is_cuda = lambda t: True
    try:
        yield
    finally:
        _build.LOADER, _build.is_cuda = saved
