"""3x3 stride-1 convolutions by Winograd's F(4x4, 3x3), for the CPU.

The activation-side modulated conv runs one ordinary conv with the shared (frozen) weight, so
a fast algorithm for plain 3x3 convs speeds up every pass of adaptation: the source forward,
the adapted forward, and the input gradient in the backward (itself a 3x3 conv, with the
transposed, flipped weight). F(4x4, 3x3) turns each 6x6 input tile into 36 products per
channel pair where the direct conv needs 144 multiply-adds for the same 4x4 outputs, and
the 36 products are 36 batched matrix multiplies at the full GEMM rate. On the 2-core CI
machine this is 1.3-2.5x faster than ``F.conv2d`` (oneDNN, direct) at 16-256 px and batch 4
(benchmarks/README.md). GPUs already pick Winograd inside cuDNN, so this is CPU only.

Numerics: the interpolation points (0, 1, -1, 1/2, -2, inf) give about 1.6e-6 relative L2
error in float32 (the transforms' rounding; 0.2e-6 to 1e-6 for ``F.conv2d``, depending on the
CPU's kernels), about two thirds of that of (0, +-1, +-2).
In float64 it equals the direct conv to about 1e-14.

``conv3x3(x, weight)`` equals ``F.conv2d(x, weight, padding=1)``; ``applies(x, weight)`` says
whether it is worth it (and supported) for these tensors. ``HYPERDOMAIN_WINOGRAD=0`` turns it off.
"""
from __future__ import annotations

import os
import threading
from fractions import Fraction
from functools import lru_cache

import torch

M = 4  # outputs per tile side
R = 3  # filter size
ALPHA = M + R - 1  # input tile side
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-2))  # and infinity
# F(4, 2), for the stride-2 convs in winograd_native: every choice of four small points gave
# about 4e-7 relative error in float32 (2-tap tiles are short); these keep A^T and B^T integer.
POINTS_2 = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2))

# Below this many output pixels per batch (N * H * W) the per-call weight transform (36 x 9
# multiply-adds per weight pair) costs more than the conv saves. benchmarks/winograd.py, batch 4,
# 512 channels: 0.5x at 8 x 8, 1.26x at 16 x 16, 1.9x at 32 x 32.
MIN_PIXELS = 1024
DISABLE_ENV = "HYPERDOMAIN_WINOGRAD"


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True for float32/float64 CPU tensors, a 3x3 weight, enough pixels, and nothing to
    differentiate through (the implementation writes into buffers, which autograd cannot follow)."""
    return (enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype and x.ndim == 4 and weight.shape[-2:] == (R, R)
            and x.shape[0] * x.shape[2] * x.shape[3] >= MIN_PIXELS
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


# ---- the transforms -------------------------------------------------------------------------

def _solve(rows: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Exact solution of a consistent (possibly over-determined) linear system."""
    aug = [list(r) + [v] for r, v in zip(rows, rhs)]
    n = len(rows[0])
    for col in range(n):
        piv = next(i for i in range(col, len(aug)) if aug[i][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        aug[col] = [v / aug[col][col] for v in aug[col]]
        for i in range(len(aug)):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [a - f * b for a, b in zip(aug[i], aug[col])]
    if any(v != 0 for row in aug[n:] for v in row):
        raise ArithmeticError("inconsistent Winograd system")
    return [aug[i][-1] for i in range(n)]


@lru_cache(maxsize=None)
def matrices(r: int = R) -> tuple[list, list, list]:
    """Exact A^T [M, a], G [a, r], B^T [a, a] (a = M + r - 1) with y = A^T[(G g) * (B^T d)]
    for the 1-D correlation y_i = sum_k g_k d_{i+k}, i < M, k < r: Toom-Cook at POINTS
    (r = 3) or POINTS_2 (r = 2), and infinity."""
    p = {R: POINTS, 2: POINTS_2}[r]
    n, a = len(p), M + r - 1
    at = [[p[j] ** i for j in range(n)] + [Fraction(int(i == M - 1))] for i in range(M)]
    g = []
    for j in range(n):
        denom = Fraction(1)
        for l in range(n):
            if l != j:
                denom *= p[j] - p[l]
        g.append([p[j] ** k / denom for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    # B^T column s: sum_j at[i][j] g[j][k] bt[j][s] = [s == i + k] for every output i, tap k
    coef = [[at[i][j] * g[j][k] for j in range(a)] for i in range(M) for k in range(r)]
    cols = [_solve(coef, [Fraction(int(s == i + k)) for i in range(M) for k in range(r)]) for s in range(a)]
    bt = [[cols[s][j] for s in range(a)] for j in range(a)]
    return at, g, bt


@lru_cache(maxsize=None)
def _data_matrices(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    at, _, bt = (torch.tensor([[float(v) for v in row] for row in m], dtype=dtype) for m in matrices())
    # the batched multiplies take the matrix as a stride-0 batch
    return bt, bt.expand(ALPHA, ALPHA, ALPHA), at, at.expand(ALPHA, M, ALPHA)


@lru_cache(maxsize=None)
def weight_matrix(dtype: torch.dtype, r: int = R) -> torch.Tensor:
    """[a*a, r*r]: G w G^T for a flattened r x r w, as one matrix (kron(G, G))."""
    g = torch.tensor([[float(v) for v in row] for row in matrices(r)[1]], dtype=torch.float64)
    return torch.kron(g, g).to(dtype)


def transform_weight(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[O, I, 3, 3] -> [36, O, I]: (G w G^T) for every channel pair, as one matrix multiply
    (into ``out``, a contiguous [36, O, I], if given)."""
    o, i = weight.shape[:2]
    if out is None:
        out = weight.new_empty(ALPHA * ALPHA, o, i)
    torch.mm(weight_matrix(weight.dtype), weight.reshape(o * i, R * R).t(), out=out.view(ALPHA * ALPHA, o * i))
    return out


# ---- the convolution ------------------------------------------------------------------------

_workspace = threading.local()


def scratch(name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A reused scratch buffer (per thread): the intermediates are large and short-lived."""
    bufs = _workspace.__dict__.setdefault("bufs", {})
    b = bufs.get(name)
    if b is None or b.numel() < numel or b.dtype != dtype:
        # a normal tensor even when first made under torch.inference_mode(): an inference
        # tensor could not be written to by later calls outside it
        with torch.inference_mode(False):
            b = bufs[name] = torch.empty(numel, dtype=dtype)
    return b[:numel]


def clear_workspace() -> None:
    """Frees this thread's scratch buffers."""
    _workspace.__dict__.pop("bufs", None)


def chunks(n: int, th: int, tw: int, tiles_per_chunk: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, t0, t1): images [n0, n1), tile rows [t0, t1), about ``tiles_per_chunk`` tiles each
    (whole images while they fit, else bands of tile rows of one image)."""
    rows = max(1, tiles_per_chunk // tw)  # tile rows per chunk
    if rows >= th:
        per = max(1, rows // th)
        return [(n0, min(n, n0 + per), 0, th) for n0 in range(0, n, per)]
    return [(b, b + 1, t0, min(th, t0 + rows)) for b in range(n) for t0 in range(0, th, rows)]


def conv3x3(x: torch.Tensor, weight: torch.Tensor, tiles_per_chunk: int = 256) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=1)`` for x [N, C, H, W] on the CPU (any H, W).

    Works through chunks of about ``tiles_per_chunk`` tiles (whole images, or bands of tile
    rows) so the intermediates stay small while the main multiply still has enough columns.
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    if weight.shape[1] != c:
        raise ValueError(f"conv3x3: weight has {weight.shape[1]} input channels, x has {c}")
    wt = transform_weight(weight)  # [36, O, C]
    x = x.contiguous()
    dt = x.dtype
    bt, bt_batch, at, at_batch = _data_matrices(dt)
    a2 = ALPHA * ALPHA
    th, tw = -(-h // M), -(-w // M)  # tiles per column and row
    wp = tw * M + 2  # padded width
    y = x.new_empty(n, o, h, w)
    exact = h == th * M and w == tw * M

    for n0, n1, t0, t1 in chunks(n, th, tw, tiles_per_chunk):
        nb, nt = n1 - n0, t1 - t0
        tiles, hc = nb * nt * tw, nt * M + 2
        # 1. the chunk's rows with a zero border: xc[b, c, r, q] = x[n0 + b, c, t0*M - 1 + r, q - 1]
        xc = scratch("xc", nb * c * hc * wp, dt).view(nb, c, hc, wp)
        r0 = t0 * M - 1
        s0, s1 = max(r0, 0), min(r0 + hc, h)
        xc[:, :, s0 - r0:s1 - r0, 1:w + 1].copy_(x[n0:n1, :, s0:s1])
        xc[:, :, :s0 - r0].zero_()
        xc[:, :, s1 - r0:].zero_()
        xc[:, :, :, 0].zero_()
        xc[:, :, :, w + 1:].zero_()
        # Two scratch buffers, each intermediate written over the one before last.
        size = a2 * max(c, o) * tiles
        buf_a, buf_b = scratch("a", size, dt), scratch("b", size, dt)
        # 2. the overlapping 6x6 tiles d[i, j, c, b, ty, tx] (one strided copy per tile row)
        src = xc.as_strided((ALPHA, ALPHA, c, nb, nt, tw), (wp, 1, hc * wp, c * hc * wp, M * wp, M))
        d = buf_a[:a2 * c * tiles].view(src.shape)
        for i in range(ALPHA):
            d[i].copy_(src[i])
        # 3. input transform B^T d B, separably: over tile rows, then tile columns
        e = buf_b[:a2 * c * tiles].view(ALPHA, ALPHA * c * tiles)
        torch.mm(bt, d.view(ALPHA, ALPHA * c * tiles), out=e)
        v = buf_a[:a2 * c * tiles].view(ALPHA, ALPHA, c * tiles)
        torch.bmm(bt_batch, e.view(ALPHA, ALPHA, c * tiles), out=v)
        # 4. one [O, C] @ [C, tiles] product per transform point
        m = buf_b[:a2 * o * tiles].view(a2, o, tiles)
        torch.bmm(wt, v.view(a2, c, tiles), out=m)
        # 5. output transform A^T m A, separably
        z = buf_a[:ALPHA * M * o * tiles].view(ALPHA, M, o * tiles)
        torch.bmm(at_batch, m.view(ALPHA, ALPHA, o * tiles), out=z)
        out = buf_b[:M * M * o * tiles].view(M, M * o * tiles)
        torch.mm(at, z.view(ALPHA, M * o * tiles), out=out)
        # 6. out[p, q, o, b, ty, tx] -> y[n0 + b, o, ty*M + p, tx*M + q]
        out = out.view(M, M, o, nb, nt, tw)
        if exact:
            dst = y[n0:n1, :, t0 * M:t1 * M].view(nb, o, nt, M, tw, M)
            for p in range(M):
                dst[:, :, :, p].copy_(out[p].permute(2, 1, 3, 4, 0))
        else:
            end = min(h, t1 * M)
            full = out.permute(3, 2, 4, 0, 5, 1).reshape(nb, o, nt * M, tw * M)
            y[n0:n1, :, t0 * M:end].copy_(full[:, :, :end - t0 * M, :w])
    return y
