import itertools

import pytest
import torch
import torch.nn.functional as F

import stylegan2_ops as ops
from stylegan2_ops._emulation import emulated_kernels
from stylegan2_ops.upfirdn2d import _upfirdn2d_ref



def naive(x, f, up, down, pad, flip_filter=False, gain=1.0):
    """The definition, loop by loop: zero-insert, pad (negative = crop), true convolution, keep every down-th."""
    (ux, uy), (dx, dy) = up, down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    fh, fw = f.shape
    if flip_filter:
        f = f.flip([0, 1])
    ph, pw = h * uy + py0 + py1, w * ux + px0 + px1

    def p(yy, xx):  # padded, upsampled signal
        uy_i, ux_i = yy - py0, xx - px0
        if 0 <= uy_i < h * uy and 0 <= ux_i < w * ux and uy_i % uy == 0 and ux_i % ux == 0:
            return x[:, :, uy_i // uy, ux_i // ux]
        return torch.zeros(n, c, dtype=x.dtype)

    rows = []
    for oy in range(0, ph - fh + 1, dy):
        cols = []
        for ox in range(0, pw - fw + 1, dx):
            acc = torch.zeros(n, c, dtype=x.dtype)
            for a in range(fh):
                for b in range(fw):  # true convolution: y[o] = sum_a P[o + fh-1 - a] f[a]
                    acc = acc + p(oy + fh - 1 - a, ox + fw - 1 - b) * f[a, b]
            cols.append(acc)
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2) * gain


def via_conv_transpose(x, f, up, down, pad, flip_filter=False, gain=1.0):
    """conv_transpose2d(stride=up) is zero insertion + full true convolution; crop/pad to our window."""
    (ux, uy), (dx, dy) = up, down
    px0, px1, py0, py1 = pad
    c = x.shape[1]
    fh, fw = f.shape
    k = (f.flip([0, 1]) if flip_filter else f)[None, None].repeat(c, 1, 1, 1)
    full = F.conv_transpose2d(x, k, stride=(uy, ux), groups=c)  # [N, C, (H-1)uy+fh, (W-1)ux+fw]
    out_h = x.shape[2] * uy + py0 + py1 - fh + 1
    out_w = x.shape[3] * ux + px0 + px1 - fw + 1
    sy, sx = fh - 1 - py0, fw - 1 - px0  # where our window starts in `full`
    full = F.pad(full, [-sx, out_w - (full.shape[3] - sx), -sy, out_h - (full.shape[2] - sy)])
    return full[:, :, ::dy, ::dx] * gain


CASES = [  # up, down, pad [px0, px1, py0, py1], filter shape
    (1, 1, [0, 0, 0, 0], (1, 1)),
    (2, 1, [2, 1, 2, 1], (4, 4)),
    (1, 2, [1, 1, 1, 1], (4, 4)),
    (4, 1, [3, 2, 1, 4], (3, 4)),
    (1, 4, [0, 3, 2, 1], (4, 3)),
    (2, 2, [1, 2, 0, 1], (3, 3)),
    ((2, 1), (1, 2), [1, 0, 0, 2], (2, 3)),
    (2, 1, [-1, 1, 2, -2], (3, 3)),
    (1, 1, [-2, -1, -1, -2], (2, 2)),
    (4, 4, [2, 2, 3, 3], (5, 4)),
]


def _pairs(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("up,down,pad,fshape", CASES)
@pytest.mark.parametrize("flip_filter", [False, True])
def test_ref_matches_independent_formulations(up, down, pad, fshape, flip_filter):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    f = torch.randn(fshape, generator=g, dtype=torch.float64)
    args = (_pairs(up), _pairs(down), pad, flip_filter, 1.7)
    y = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip_filter, gain=1.7)
    torch.testing.assert_close(y, via_conv_transpose(x, f, *args))
    torch.testing.assert_close(y[:1, :2], naive(x[:1, :2], f, *args))


@pytest.mark.parametrize("up,down,pad", [(1, 1, [1, 2, 0, 1]), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]),
                                         (4, 2, [-1, 3, 2, -2])])
def test_separable_matches_outer_product(up, down, pad):
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    for flip, gain in [(False, 1.0), (True, 4.0), (False, -2.0)]:
        y1 = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        y2 = ops.upfirdn2d(x, torch.outer(f, f), up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
        torch.testing.assert_close(y1, y2)
    asym = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    torch.testing.assert_close(ops.upfirdn2d(x, asym, up=up, down=down, padding=pad),
                               ops.upfirdn2d(x, torch.outer(asym, asym), up=up, down=down, padding=pad))


def test_identity_filter_and_shapes():
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ops.upfirdn2d(x, None), x)
    f = ops.setup_filter([1, 3, 3, 1])
    assert ops.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4).shape == (2, 3, 16, 16)
    assert ops.upfirdn2d(x, f, down=2, padding=1).shape == (2, 3, 4, 4)
    assert ops.upfirdn2d(x, f, padding=(2, 1, 2, 1)).shape == (2, 3, 8, 8)  # tuple padding, as layers use it


def test_upsample_preserves_constant_with_gain():
    x = torch.ones(1, 1, 6, 6)
    y = ops.upfirdn2d(x, ops.setup_filter([1, 3, 3, 1]), up=2, padding=[2, 1, 2, 1], gain=4)
    torch.testing.assert_close(y[..., 3:-3, 3:-3], torch.ones_like(y[..., 3:-3, 3:-3]))


def test_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="expected \\[N, C, H, W\\]"):
        ops.upfirdn2d(x[0], None)
    with pytest.raises(ValueError, match="padding"):
        ops.upfirdn2d(x, None, padding=[1, 2, 3])
    with pytest.raises(ValueError, match="up"):
        ops.upfirdn2d(x, None, up=0)
    with pytest.raises(ValueError, match="smaller than the filter"):
        ops.upfirdn2d(x, torch.ones(3, 3), padding=-1)
    with pytest.raises(ValueError, match="f must be"):
        ops.upfirdn2d(x, torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="impl"):
        ops.upfirdn2d(x, None, impl="fast")
    with pytest.raises(ValueError, match="CUDA tensors"):
        ops.upfirdn2d(x, None, impl="cuda")


def test_setup_filter():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    assert ops.setup_filter([1, 3, 3, 1], separable=True).shape == (4,)
    assert ops.setup_filter(list(range(1, 9))).shape == (8,)  # long 1-D filters stay separable
    torch.testing.assert_close(ops.setup_filter([1, 2], gain=4).sum(), torch.tensor(4.0))
    torch.testing.assert_close(ops.setup_filter([1, 2], separable=True, gain=4).sum(), torch.tensor(2.0))
    torch.testing.assert_close(ops.setup_filter([1.0, 2.0], normalize=False, flip_filter=True, separable=True),
                               torch.tensor([2.0, 1.0]))
    assert ops.setup_filter(None).shape == (1, 1)


GRAD_CASES = [(1, 1, [1, 1, 1, 1]), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 2, 0, 1]), (2, 2, [-1, 2, 1, 0]),
              ((4, 1), (1, 2), [2, 1, 0, 3])]


@pytest.mark.parametrize("up,down,pad", GRAD_CASES)
def test_ref_gradcheck(up, down, pad):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, f: _upfirdn2d_ref(x, f, up, down, pad, True, 1.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, f))
    assert torch.autograd.gradgradcheck(fn, (x, f))


@pytest.mark.parametrize("up,down,pad", GRAD_CASES + [(4, 4, [3, 3, 3, 3]), (1, 4, [-1, 1, 2, 2])])
@pytest.mark.parametrize("separable,flip", [(False, False), (True, True), (False, True)])
def test_cuda_path_autograd_with_emulated_kernels(up, down, pad, separable, flip):
    """The CUDA-path Function (adjoint padding, recursion for second order) with the kernel emulated."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    f = torch.randn(3 if separable else (3, 4), dtype=torch.float64, generator=g)
    with emulated_kernels():
        fn = lambda x: ops.upfirdn2d(x, f, up, down, pad, flip, 1.5, impl="cuda")  # noqa: E731
        torch.testing.assert_close(fn(x), _upfirdn2d_ref(x, f, up, down, pad, flip, 1.5))
        assert torch.autograd.gradcheck(fn, (x,))
        if not separable or up == 1:  # second order is the same recursion; keep the suite fast
            assert torch.autograd.gradgradcheck(fn, (x,))


def c_port_upfirdn2d(x, w, up, down, pad, gain):
    """Line-by-line port of upfirdn2d_kernel's loops (C's truncating % included) for tiny inputs."""
    (ux, uy), (dx, dy) = up, down
    px0, px1, py0, py1 = pad
    nc_, in_h, in_w = x.shape[0] * x.shape[1], x.shape[2], x.shape[3]
    fh, fw = w.shape
    out_h = (in_h * uy + py0 + py1 - fh) // dy + 1
    out_w = (in_w * ux + px0 + px1 - fw) // dx + 1
    xf, out = x.reshape(nc_, in_h, in_w), torch.zeros(nc_, out_h, out_w, dtype=x.dtype)

    def c_mod(a, b):
        return a - b * int(a / b)  # truncation toward zero, as in C++

    def first_tap(base, u):
        r = c_mod(-base, u)
        return r + u if r < 0 else r

    for idx in range(nc_ * out_h * out_w):
        ox, t = idx % out_w, idx // out_w
        oy, nc = t % out_h, t // out_h
        base_y, base_x = oy * dy - py0, ox * dx - px0
        acc = 0.0
        ky = first_tap(base_y, uy)
        while ky < fh:
            my = base_y + ky
            if my >= in_h * uy:
                break
            if my >= 0:
                kx = first_tap(base_x, ux)
                while kx < fw:
                    mx = base_x + kx
                    if mx >= in_w * ux:
                        break
                    if mx >= 0:
                        acc += float(xf[nc, my // uy, mx // ux]) * float(w[ky, kx])
                    kx += ux
            ky += uy
        out.view(-1)[idx] = acc * gain
    return out.reshape(x.shape[0], x.shape[1], out_h, out_w)


@pytest.mark.parametrize("up,down,pad,fshape", [c for c in CASES if c[0] != 4 or c[1] != 4])
def test_kernel_index_math_port(up, down, pad, fshape):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    f = torch.randn(fshape, dtype=torch.float64)
    want = ops.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=True, gain=0.5)
    torch.testing.assert_close(c_port_upfirdn2d(x, f, _pairs(up), _pairs(down), pad, 0.5), want)


# ---- compiled kernels vs reference (on a GPU, or host-emulated on the CPU) ----------------

PARITY = list(itertools.product(
    [(1, 1, [0, 0, 0, 0]), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (4, 1, [3, 2, 1, 4]),
     (1, 4, [-1, 3, 2, 0]), ((2, 1), (1, 2), [1, 0, -1, 2])],
    [(4,), (4, 4), (3, 5)],
))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10), (torch.float16, 2e-2),
                                       (torch.bfloat16, 1e-1)])
@pytest.mark.parametrize("case,fshape", PARITY)
def test_cuda_matches_ref(case, fshape, dtype, tol, kernel_device):
    """The kernel in ``dtype`` against the reference in float64 on the same (rounded) inputs."""
    up, down, pad = case
    x = torch.randn(3, 5, 17, 13, device=kernel_device, dtype=torch.float64).to(dtype)
    f = torch.randn(fshape, device=kernel_device)
    dy = None
    results = []
    for impl, t in (("ref", torch.float64), ("cuda", dtype)):
        xi = x.to(t).requires_grad_(True)
        y = ops.upfirdn2d(xi, f, up=up, down=down, padding=pad, gain=1.3, impl=impl)
        assert y.dtype == t
        if dy is None:
            dy = torch.randn(y.shape, device=kernel_device, dtype=torch.float64).to(dtype)
        (dx,) = torch.autograd.grad(y, xi, dy.to(t))
        results.append((y.double(), dx.double()))
    (y_ref, dx_ref), (y_cuda, dx_cuda) = results
    torch.testing.assert_close(y_cuda, y_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(dx_cuda, dx_ref, atol=tol, rtol=tol)


def test_cuda_second_order_matches_ref(kernel_device):
    x = torch.randn(2, 3, 8, 8, device=kernel_device, dtype=torch.float64, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1], device=kernel_device)
    outs = []
    for impl in ("ref", "cuda"):
        y = ops.upfirdn2d(x, f, up=2, padding=[2, 1, 2, 1], gain=4, impl=impl)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        outs.append(gg)
    torch.testing.assert_close(outs[1], outs[0])


# ---- the C++ CPU filter (csrc/fir_cpu.cpp): float32, up = down = 1, separable filters ----------

from stylegan2_ops.cpu import library as cpu_library  # noqa: E402

needs_cpu_library = pytest.mark.skipif(not cpu_library.available(), reason="no C++ compiler for the CPU library")
FIR_CASES = [  # filter, padding [px0, px1, py0, py1], flip, gain
    ([1.0, 3.0, 3.0, 1.0], [1, 1, 1, 1], False, 4.0),  # the blur after an upsampling conv
    ([1.0, 3.0, 3.0, 1.0], [2, 2, 2, 2], True, 4.0),  # its adjoint
    ([1.0, 2.0, 5.0], [2, -1, 0, 3], False, -2.0),  # asymmetric taps, negative padding (crop), negative gain
    ("outer", [0, 1, 2, 0], False, 1.5),  # a 2-D filter of rank one
    ([0.5], [-1, -2, 1, 0], True, 1.0),
]


def _fir_filter(spec):
    if spec == "outer":
        return torch.outer(torch.tensor([1.0, -2.0]), torch.tensor([3.0, 1.0, 4.0]))
    return torch.tensor(spec)


@needs_cpu_library
@pytest.mark.parametrize("spec,pad,flip,gain", FIR_CASES)
def test_cpu_filter_matches_float64_reference(spec, pad, flip, gain, monkeypatch):
    """Values, gradients and second-order gradients of the C++ path against the float64 reference,
    with the C++ path checked to be the one that ran."""
    import importlib

    mod = importlib.import_module("stylegan2_ops.upfirdn2d")
    runs = []
    real = mod._Upfirdn2dCpu.forward
    monkeypatch.setattr(mod._Upfirdn2dCpu, "forward", staticmethod(lambda *a: runs.append(1) or real(*a)))
    f = _fir_filter(spec)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 9, 11, generator=g).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    y = ops.upfirdn2d(x, f, padding=pad, flip_filter=flip, gain=gain)
    ref = ops.upfirdn2d(x64, f.double(), padding=pad, flip_filter=flip, gain=gain, impl="ref")
    assert runs and y.dtype == torch.float32 and y.shape == ref.shape
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn(y.shape, generator=g).requires_grad_(True)
    dy64 = dy.detach().double().requires_grad_(True)
    (gx,) = torch.autograd.grad(y, x, dy, create_graph=True)
    (gr,) = torch.autograd.grad(ref, x64, dy64, create_graph=True)
    torch.testing.assert_close(gx.double(), gr, rtol=1e-5, atol=1e-5)
    # second order: the gradient is itself the C++ filter (taps reversed), differentiable in dy
    ddx = torch.randn(x.shape, generator=g)
    (g2,) = torch.autograd.grad((gx * ddx).sum(), dy)
    (g2r,) = torch.autograd.grad((gr * ddx.double()).sum(), dy64)
    torch.testing.assert_close(g2.double(), g2r, rtol=1e-5, atol=1e-5)


@needs_cpu_library
def test_cpu_filter_threads_and_large_planes():
    """Many planes split over threads, rows long enough for the vector loops: same as float64."""
    f = ops.setup_filter([1, 3, 3, 1], gain=4)
    x = torch.randn(2, 16, 67, 131)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.upfirdn2d(x, f, padding=(2, 1, 1, 2))
        torch.set_num_threads(2)
        two = ops.upfirdn2d(x, f, padding=(2, 1, 1, 2))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    ref = ops.upfirdn2d(x.double(), f.double(), padding=(2, 1, 1, 2), impl="ref")
    torch.testing.assert_close(one.double(), ref, rtol=1e-5, atol=1e-5)


@needs_cpu_library
def test_cpu_filter_only_where_it_applies(monkeypatch):
    """Non-separable filters, a filter that needs its own gradient, up/down sampling, float64 and
    impl='ref' stay on the reference path (and stay right)."""
    import importlib

    mod = importlib.import_module("stylegan2_ops.upfirdn2d")
    x = torch.randn(2, 3, 8, 8)
    sep = ops.setup_filter([1, 3, 3, 1])
    assert mod._cpu_taps(x, sep, (1, 1), (1, 1), False, 1) is not None
    assert mod._cpu_taps(x, torch.tensor([[1.0, 2.0], [3.0, 1.0]]), (1, 1), (1, 1), False, 1) is None  # rank 2
    assert mod._cpu_taps(x, sep.clone().requires_grad_(True), (1, 1), (1, 1), False, 1) is None
    assert mod._cpu_taps(x, sep, (2, 2), (1, 1), False, 1) is None
    assert mod._cpu_taps(x.double(), sep.double(), (1, 1), (1, 1), False, 1) is None
    monkeypatch.setattr(mod, "_Upfirdn2dCpu", None)  # any use of the C++ path would now fail
    full = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, -1.0], [0.5, 0.0, 2.0]])
    torch.testing.assert_close(ops.upfirdn2d(x, full, padding=1),
                               ops.upfirdn2d(x.double(), full.double(), padding=1).float())
    fg = sep.clone().requires_grad_(True)
    y = ops.upfirdn2d(x, fg, padding=1)
    (gf,) = torch.autograd.grad(y.sum(), fg)
    assert gf.abs().sum() > 0
    ops.upfirdn2d(x, sep, padding=1, impl="ref")
