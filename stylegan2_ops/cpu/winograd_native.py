"""Float32 CPU convolutions by Winograd, with the transforms in C++ (``csrc/winograd_cpu.cpp``).

``winograd.conv3x3`` does the F(4x4, 3x3) transforms with tensor ops: a gather, two small matrix
products in, two out and a scatter, each a pass over a buffer 2.25x the activation, about half
its time. Here each transform is one pass that keeps a tile row in cache; the GEMMs stay
torch's. Three convolutions, each also multiplying the input planes by a per-(image, channel)
factor on the way in (the activation-side modulation ``x * s * (1 + d)`` at no cost):

- ``conv3x3``: the stride-1 "same" conv, F(4x4, 3x3): 36 products per 4x4 outputs where the
  direct conv needs 144.
- ``conv_transpose3x3``: the stride-2 transposed conv of the upsampling layers. Its output
  phases (even/odd row, even/odd column) are four 2x2 convs of the same input, so one F(4x4,
  2x2) input transform (5x5 tiles) serves all four: 4 x 25 products per 4x4 input pixels where
  the direct transposed conv needs 144 (1.44x fewer).
- ``conv3x3_stride2``: its adjoint (the input gradient in the backward), the stride-2 conv: the
  same four 2x2 convs, read from the four phases of its input and summed by the GEMM.

Without the C++ library (no compiler) ``available()`` is False; callers then use the tensor-op
or torch paths.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import library as cpu_library, winograd

TILES_PER_CHUNK = 256  # GEMM columns per chunk: [A*A, O, C] @ [A*A, C, 256]; the scratch is 2 x 19 MB at 512 channels
TILE = winograd.M
# Below this many input pixels (N * H * W) oneDNN's direct stride-2 convs are faster (at 16 x 16
# and batch 4, 512 channels: 40 ms against 57 forward; at 32 x 32, 185 ms against 249).
MIN_PIXELS_STRIDE2 = 4 * 32 * 32
# Scratch buffers (transformed weights, transformed tiles) up to this many bytes stay in reused
# memory: fresh memory page-faults on every call. Larger ones (the transformed weights of the
# 512-channel layers, 38-105 MB) are freed after the call, so they never add to the memory
# peak, which comes later, in the backward of the large-resolution layers.
MAX_POOLED_BYTES = 32 * 2**20


def available() -> bool:
    return cpu_library.available()


def applies(x: torch.Tensor, weight: torch.Tensor, stride: int = 1) -> bool:
    """``winograd.applies`` for float32 tensors, with the library available; for ``stride=2``
    (``conv_transpose3x3`` and ``conv3x3_stride2`` with input ``x``) from MIN_PIXELS_STRIDE2
    input pixels on."""
    return (x.dtype == torch.float32 and winograd.applies(x, weight) and available()
            and (stride == 1 or x.shape[0] * x.shape[2] * x.shape[3] >= MIN_PIXELS_STRIDE2))


def compiled_matrices(r: int = winograd.R) -> tuple[torch.Tensor, torch.Tensor]:
    """B^T [a, a] and A^T [4, a] (a = 4 + r - 1) as compiled into the library (for tests)."""
    a = TILE + r - 1
    bt, at = torch.empty(a, a), torch.empty(TILE, a)
    try:
        cpu_library.hd_wino_matrices(a, bt, at)
    except RuntimeError as e:
        raise ValueError(f"compiled_matrices: no matrices for r={r}") from e
    return bt, at


def conv3x3(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
            tiles_per_chunk: int = TILES_PER_CHUNK) -> torch.Tensor:
    """``F.conv2d(x * scale[:, :, None, None], weight, padding=1)`` for float32 CPU tensors.

    x: [N, C, H, W]; weight: [O, C, 3, 3]; scale: [N, C] or None.
    """
    n, c, h, w = _check("conv3x3", x, weight, scale)
    o = weight.shape[0]
    wt = _scratch_weight(winograd.ALPHA ** 2, o, c)
    winograd.transform_weight(weight, out=wt)
    y = x.new_empty(n, o, h, w)
    _run(x, wt, y, (h, w), r=3, stride_in=1, offset=-1, stride_out=1, scale=scale, tiles_per_chunk=tiles_per_chunk)
    return y


def conv_transpose3x3(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                      tiles_per_chunk: int = TILES_PER_CHUNK) -> torch.Tensor:
    """``F.conv_transpose2d(x * scale[:, :, None, None], weight.transpose(0, 1), stride=2)``.

    x: [N, C, H, W]; weight: [O, C, 3, 3] (the modulated conv's layout); scale: [N, C] or None.
    Returns [N, O, 2H + 1, 2W + 1].
    """
    n, c, h, w = _check("conv_transpose3x3", x, weight, scale)
    o = weight.shape[0]
    wt = _phase_weight(weight, adjoint=False)  # [25, O * 4 phases, C]
    y = x.new_empty(n, o, 2 * h + 1, 2 * w + 1)
    # the tiles fill rows and columns [0, 2H) x [0, 2W) (the phases of logical H x W grids); the
    # last row and column take the third kernel row (column) alone, from the last input row (column)
    _run(x, wt, y, (h, w), r=2, stride_in=1, offset=-1, stride_out=2, scale=scale, tiles_per_chunk=tiles_per_chunk)
    last_row, last_col = x[:, :, h - 1], x[:, :, :, w - 1]  # [N, C, W], [N, C, H]
    if scale is not None:
        s = scale[:, :, None].to(x.dtype)
        last_row, last_col = last_row * s, last_col * s
    y[:, :, 2 * h] = F.conv_transpose1d(last_row, weight[:, :, 2].transpose(0, 1), stride=2)
    y[:, :, :, 2 * w] = F.conv_transpose1d(last_col, weight[:, :, :, 2].transpose(0, 1), stride=2)
    return y


def conv3x3_stride2(g: torch.Tensor, weight: torch.Tensor, tiles_per_chunk: int = TILES_PER_CHUNK) -> torch.Tensor:
    """``F.conv2d(g, weight.transpose(0, 1), stride=2)``, the adjoint of ``conv_transpose3x3``.

    g: [N, O, S, S'] (S, S' >= 3); weight: [O, C, 3, 3]. Returns [N, C, (S - 3) // 2 + 1, ...].
    """
    if g.ndim != 4 or g.shape[2] < 3 or g.shape[3] < 3:
        raise ValueError(f"winograd_native.conv3x3_stride2: g has shape {list(g.shape)}, expected [N, O, >=3, >=3]")
    n, o, sh, sw = _check("conv3x3_stride2", g, weight.transpose(0, 1), None)
    c = weight.shape[1]
    h, w = (sh - 3) // 2 + 1, (sw - 3) // 2 + 1
    wt = _phase_weight(weight, adjoint=True)  # [25, C, O * 4 phases]
    y = g.new_empty(n, c, h, w)
    _run(g, wt, y, (h, w), r=2, stride_in=2, offset=0, stride_out=1, scale=None, tiles_per_chunk=tiles_per_chunk)
    return y


def _check(name: str, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None) -> tuple[int, int, int, int]:
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu" or x.ndim != 4:
        raise ValueError(f"winograd_native.{name}: needs float32 CPU tensors x [N, C, H, W] and weight, got x "
                         f"{x.dtype} {list(x.shape)} on {x.device} and weight {weight.dtype}")
    n, c = x.shape[:2]
    if weight.ndim != 4 or weight.shape[1:] != (c, 3, 3):
        raise ValueError(f"winograd_native.{name}: weight {list(weight.shape)} is not [O, {c}, 3, 3]")
    if scale is not None and scale.shape != (n, c):
        raise ValueError(f"winograd_native.{name}: scale has shape {list(scale.shape)}, expected {[n, c]}")
    return tuple(x.shape)


def _phase_weight(weight: torch.Tensor, adjoint: bool) -> torch.Tensor:
    """The F(4x4, 2x2) transforms of the four output phases' 2x2 kernels of the stride-2
    transposed conv with ``weight`` [O, C, 3, 3] (phase p = 2a + b correlates inputs
    (m - 1 + i, n - 1 + j) into output (2m + a, 2n + b)): [25, O * 4, C], or for the adjoint
    (taps reversed) [25, C, O * 4]."""
    o, c = weight.shape[:2]
    u = _scratch_weight(25, c, 4 * o) if adjoint else _scratch_weight(25, 4 * o, c)
    w = weight.detach().contiguous()
    k = winograd.weight_matrix(torch.float32, 2)  # [25, 4]
    cpu_library.hd_wino_phase_weight(w, k, u, O=o, C=c, adjoint=int(adjoint), nthreads=torch.get_num_threads())
    return u


def _scratch_weight(points: int, rows: int, cols: int) -> torch.Tensor:
    return _scratch("native_w", points * rows * cols).view(points, rows, cols)


def _scratch(name: str, numel: int) -> torch.Tensor:
    """A float32 buffer, reused from call to call up to MAX_POOLED_BYTES."""
    if numel * 4 > MAX_POOLED_BYTES:
        return torch.empty(numel)
    return winograd.scratch(name, numel, torch.float32)


def _run(x: torch.Tensor, wt: torch.Tensor, y: torch.Tensor, grid: tuple[int, int], r: int, stride_in: int,
         offset: int, stride_out: int, scale: torch.Tensor | None, tiles_per_chunk: int) -> None:
    """One Winograd conv: V = input transform of x, M = wt @ V, y = output transform of M, in
    chunks of about ``tiles_per_chunk`` tiles over a logical ``grid`` of 4x4-output tiles.

    x is read with ``stride_in`` (its stride_in^2 phases become channels of V, which is why
    ``wt`` is [a*a, y's channels * stride_out^2, x's channels * stride_in^2]); tile row ty reads
    logical rows from 4 ty + offset. y is written with ``stride_out`` (phase p of channel o from
    row o * stride_out^2 + p of M).
    """
    a = TILE + r - 1
    a2 = a * a
    n, cx, hx, wx = x.shape
    oy, hy, wy = y.shape[1:]
    vch, mch = wt.shape[2], wt.shape[1]
    oh, ow = grid
    th, tw = -(-oh // TILE), -(-ow // TILE)
    x = x.contiguous()
    if scale is not None:
        scale = scale.detach().to(torch.float32).contiguous()
    threads = torch.get_num_threads()
    chunks = winograd.chunks(n, th, tw, tiles_per_chunk)
    most = a2 * max((n1 - n0) * (t1 - t0) * tw for n0, n1, t0, t1 in chunks)
    buf_v, buf_m = _scratch("native_v", vch * most), _scratch("native_m", mch * most)
    for n0, n1, t0, t1 in chunks:
        tiles = (n1 - n0) * (t1 - t0) * tw
        v, mm = buf_v[:a2 * vch * tiles].view(a2, vch, tiles), buf_m[:a2 * mch * tiles].view(a2, mch, tiles)
        cpu_library.hd_wino_input(x, v, C=cx, H=hx, W=wx, OH=oh, OW=ow, n0=n0, n1=n1, t0=t0, t1=t1, tw=tw,
                                  stride=stride_in, offset=offset, A=a, scale=scale, nthreads=threads)
        torch.bmm(wt, v, out=mm)
        cpu_library.hd_wino_output(mm, y, O=oy, H=hy, W=wy, OH=oh, OW=ow, n0=n0, n1=n1, t0=t0, t1=t1, tw=tw,
                                   stride=stride_out, A=a, nthreads=threads)
