"""The float32 CPU Winograd conv with its transforms in C++ (``csrc/winograd_cpu.cpp``).

``winograd.conv3x3`` does the F(4x4, 3x3) transforms with tensor ops: a gather, two small matrix
products in, two out and a scatter, each a pass over a buffer 2.25x the activation, about half
its time. Here each transform is one pass that keeps a tile row in cache; the GEMMs stay
torch's. The library is a plain shared object loaded with ctypes and compiled on first use
(about a second, cached like the CUDA build, see ``_build.build_cpu_winograd``). Without a C++
compiler ``available()`` is False and the tensor-op path runs instead, silently;
``stylegan2_ops.status()["cpu_winograd"]`` says why.

``conv3x3(x, weight, scale)`` also multiplies each input plane by a per-(image, channel) factor
on the way in: the activation-side modulation ``x * s * (1 + d)`` at no cost.
"""
from __future__ import annotations

import ctypes

import torch

from . import _build, winograd

TILES_PER_CHUNK = 256  # GEMM columns per chunk: [36, O, C] @ [36, C, 256]; the scratch is 2 x 19 MB at 512 channels


def _load():
    lib, info = _build.build_cpu_winograd()
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.hd_wino_input.restype = lib.hd_wino_output.restype = i32
    lib.hd_wino_input.argtypes = [ptr, ptr] + [i64] * 8 + [ptr, i32]
    lib.hd_wino_output.argtypes = [ptr, ptr] + [i64] * 8 + [i32]
    lib.hd_wino_matrices.restype = None
    lib.hd_wino_matrices.argtypes = [ptr, ptr]
    return lib, info


LIBRARY = _build.ExtensionLoader(_load, functions=("hd_wino_input", "hd_wino_output", "hd_wino_matrices"),
                                 what="CPU Winograd library", quiet=True)


def available() -> bool:
    return LIBRARY.get() is not None


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """``winograd.applies`` for float32 tensors, with the library available."""
    return x.dtype == torch.float32 and winograd.applies(x, weight) and available()


def compiled_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """B^T [6, 6] and A^T [4, 6] as compiled into the library (for tests)."""
    lib = LIBRARY.get(required=True)
    bt, at = torch.empty(6, 6), torch.empty(4, 6)
    lib.hd_wino_matrices(bt.data_ptr(), at.data_ptr())
    return bt, at


def conv3x3(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
            tiles_per_chunk: int = TILES_PER_CHUNK) -> torch.Tensor:
    """``F.conv2d(x * scale[:, :, None, None], weight, padding=1)`` for float32 CPU tensors.

    x: [N, C, H, W]; weight: [O, C, 3, 3]; scale: [N, C] or None. Works through chunks of about
    ``tiles_per_chunk`` tiles (whole images, or bands of tile rows) so the scratch buffers stay
    small while the GEMMs keep enough columns.
    """
    lib = LIBRARY.get(required=True)
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" or x.ndim != 4:
        raise ValueError(f"winograd_native.conv3x3: needs float32 CPU tensors x [N, C, H, W] and weight, got x "
                         f"{x.dtype} {list(x.shape)} on {x.device} and weight {weight.dtype}")
    n, c, h, w = x.shape
    if weight.shape[1:] != (c, 3, 3):
        raise ValueError(f"winograd_native.conv3x3: weight {list(weight.shape)} is not [O, {c}, 3, 3]")
    if scale is not None:
        if scale.shape != (n, c):
            raise ValueError(f"winograd_native.conv3x3: scale has shape {list(scale.shape)}, expected {[n, c]}")
        scale = scale.detach().to(torch.float32).contiguous()
    x = x.contiguous()
    o = weight.shape[0]
    a2 = winograd.ALPHA * winograd.ALPHA
    # the transformed weight [36, O, C] in scratch memory: fresh memory would page-fault each call
    wt = winograd.scratch("native_w", a2 * o * c, x.dtype).view(a2, o, c)
    winograd.transform_weight(weight, out=wt)
    th, tw = -(-h // winograd.M), -(-w // winograd.M)
    y = x.new_empty(n, o, h, w)
    threads = torch.get_num_threads()

    chunks = winograd.chunks(n, th, tw, tiles_per_chunk)
    most = a2 * max((n1 - n0) * (t1 - t0) * tw for n0, n1, t0, t1 in chunks)
    buf_v, buf_m = winograd.scratch("native_v", c * most, x.dtype), winograd.scratch("native_m", o * most, x.dtype)
    sp = scale.data_ptr() if scale is not None else None
    for n0, n1, t0, t1 in chunks:
        tiles = (n1 - n0) * (t1 - t0) * tw
        v, mm = buf_v[:a2 * c * tiles].view(a2, c, tiles), buf_m[:a2 * o * tiles].view(a2, o, tiles)
        if lib.hd_wino_input(x.data_ptr(), v.data_ptr(), c, h, w, n0, n1, t0, t1, tw, sp, threads):
            raise RuntimeError(f"hd_wino_input rejected chunk {(n0, n1, t0, t1)} of x {list(x.shape)}")
        torch.bmm(wt, v, out=mm)
        if lib.hd_wino_output(mm.data_ptr(), y.data_ptr(), o, h, w, n0, n1, t0, t1, tw, threads):
            raise RuntimeError(f"hd_wino_output rejected chunk {(n0, n1, t0, t1)} of y {list(y.shape)}")
    return y
