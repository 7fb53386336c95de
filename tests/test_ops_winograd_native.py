"""The C++ CPU Winograd convs (csrc/winograd_cpu.cpp) against independent formulations."""
import pytest
import torch
import torch.nn.functional as F

from stylegan2_ops import _build
from stylegan2_ops.cpu import library as cpu_library, winograd, winograd_native

pytestmark = pytest.mark.skipif(not winograd_native.available(), reason="no C++ compiler for the CPU library")


@pytest.mark.parametrize("r", [3, 2])
def test_compiled_matrices_are_the_exact_ones(r):
    bt, at = winograd_native.compiled_matrices(r)
    exact_at, _, exact_bt = winograd.matrices(r)
    assert torch.equal(bt, torch.tensor([[float(v) for v in row] for row in exact_bt]))
    assert torch.equal(at, torch.tensor([[float(v) for v in row] for row in exact_at]))


@pytest.mark.parametrize("r", [3, 2])
def test_exact_matrices_compute_the_correlation(r):
    """Winograd's identity in exact arithmetic: A^T[(G g) * (B^T d)] = the r-tap correlation of d."""
    from fractions import Fraction

    at, g, bt = winograd.matrices(r)
    a = winograd.M + r - 1
    d = [Fraction(3 * i - 5, i + 2) for i in range(a)]
    taps = [Fraction(7 - 2 * k, 3) for k in range(r)]
    u = [sum(g[j][k] * taps[k] for k in range(r)) for j in range(a)]
    v = [sum(bt[j][s] * d[s] for s in range(a)) for j in range(a)]
    y = [sum(at[i][j] * u[j] * v[j] for j in range(a)) for i in range(winograd.M)]
    assert y == [sum(taps[k] * d[i + k] for k in range(r)) for i in range(winograd.M)]


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 13), (1, 3, 4, 4, 4), (3, 8, 6, 17, 8), (1, 2, 3, 1, 1),
                                   (2, 4, 4, 5, 3), (1, 16, 9, 32, 32), (2, 3, 2, 36, 7)])
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_matches_conv2d_of_the_scaled_input(shape, chunk):
    """Every chunking (single tiles rows, bands, whole batches) and ragged edges, with the
    per-(image, channel) input scale, against float64 conv2d of the scaled input."""
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, generator=gen)
    weight = torch.randn(o, c, 3, 3, generator=gen)
    scale = torch.rand(n, c, generator=gen) + 0.5
    exact = F.conv2d(x.double() * scale.double()[:, :, None, None], weight.double(), padding=1)
    for s, ref in ((scale, exact), (None, F.conv2d(x.double(), weight.double(), padding=1))):
        y = winograd_native.conv3x3(x, weight, s, tiles_per_chunk=chunk)
        assert y.dtype == torch.float32 and y.shape == ref.shape
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err < 3e-6, err


def test_equals_the_tensor_op_winograd():
    """Same algorithm, same matrices: the two implementations agree to float rounding."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 64, 20, 24, generator=gen)
    weight = torch.randn(32, 64, 3, 3, generator=gen) / 24
    torch.testing.assert_close(winograd_native.conv3x3(x, weight), winograd.conv3x3(x, weight),
                               rtol=1e-5, atol=1e-5)


def test_scratch_over_the_cap_is_fresh_memory_and_gives_the_same_convs(monkeypatch):
    """Buffers up to MAX_POOLED_BYTES are reused between calls; larger ones are fresh each call
    (freed afterwards, off the memory peak), and the convs do not depend on which they got."""
    small = winograd_native.MAX_POOLED_BYTES // 4
    a, b = winograd_native._scratch("test_cap", small), winograd_native._scratch("test_cap", small)
    assert a.data_ptr() == b.data_ptr()
    big = winograd_native._scratch("test_cap_big", small + 1)
    assert big.data_ptr() != winograd_native._scratch("test_cap_big", small + 1).data_ptr()
    gen = torch.Generator().manual_seed(6)
    x, weight = torch.randn(2, 6, 9, 11, generator=gen), torch.randn(5, 6, 3, 3, generator=gen)
    scale = torch.rand(2, 6, generator=gen) + 0.5
    pooled = (winograd_native.conv3x3(x, weight, scale), winograd_native.conv_transpose3x3(x, weight, scale))
    monkeypatch.setattr(winograd_native, "MAX_POOLED_BYTES", 0)
    winograd.clear_workspace()
    fresh = (winograd_native.conv3x3(x, weight, scale), winograd_native.conv_transpose3x3(x, weight, scale))
    assert not getattr(winograd._workspace, "bufs", None)  # nothing was pooled
    for p, f in zip(pooled, fresh):
        assert torch.equal(p, f)


def test_threads_do_not_change_the_result():
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(2, 16, 21, 18, generator=gen), torch.randn(8, 16, 3, 3, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = winograd_native.conv3x3(x, weight)
        torch.set_num_threads(2)
        two = winograd_native.conv3x3(x, weight)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output element is computed by one thread, the same way


SHAPES_STRIDE2 = [(2, 5, 7, 9, 13), (1, 3, 4, 4, 4), (3, 8, 6, 17, 8), (1, 2, 3, 1, 1), (2, 4, 4, 2, 5),
                  (1, 16, 9, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES_STRIDE2)
@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_transposed_conv_matches_conv_transpose2d(shape, chunk):
    """The four-phase F(4x4, 2x2) transposed conv, with and without the input scale, every
    chunking and ragged sizes, against float64 conv_transpose2d (output 2H + 1 x 2W + 1)."""
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(6)
    x, weight = torch.randn(n, c, h, w, generator=gen), torch.randn(o, c, 3, 3, generator=gen)
    scale = torch.rand(n, c, generator=gen) + 0.5
    for s in (scale, None):
        xs = x.double() * (1 if s is None else s.double()[:, :, None, None])
        ref = F.conv_transpose2d(xs, weight.double().transpose(0, 1), stride=2)
        y = winograd_native.conv_transpose3x3(x, weight, s, tiles_per_chunk=chunk)
        assert y.dtype == torch.float32 and y.shape == ref.shape == (n, o, 2 * h + 1, 2 * w + 1)
        err = ((y.double() - ref).norm() / ref.norm()).item()
        assert err < 2e-6, err


@pytest.mark.parametrize("shape", SHAPES_STRIDE2)
@pytest.mark.parametrize("chunk", [1, 3, 1024])
@pytest.mark.parametrize("extra", [1, 0])  # input 2H + 1 (the adjoint's) or 2H: conv2d's floor
def test_stride2_conv_matches_conv2d(shape, chunk, extra):
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(n, o, 2 * h + extra, 2 * w + 1, generator=gen)
    weight = torch.randn(o, c, 3, 3, generator=gen)
    if min(g.shape[2:]) < 3:
        return
    ref = F.conv2d(g.double(), weight.double().transpose(0, 1), stride=2)
    y = winograd_native.conv3x3_stride2(g, weight, tiles_per_chunk=chunk)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    err = ((y.double() - ref).norm() / ref.norm()).item()
    assert err < 2e-6, err


def test_stride2_convs_are_adjoint():
    """<T x, g> = <x, T* g> for the two native convs themselves (float32, loose)."""
    gen = torch.Generator().manual_seed(8)
    x, weight = torch.randn(2, 6, 11, 7, generator=gen), torch.randn(5, 6, 3, 3, generator=gen)
    g = torch.randn(2, 5, 23, 15, generator=gen)
    lhs = (winograd_native.conv_transpose3x3(x, weight).double() * g.double()).sum()
    rhs = (x.double() * winograd_native.conv3x3_stride2(g, weight).double()).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=1e-4)


def test_bad_arguments_are_refused():
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="float32"):
        winograd_native.conv3x3(x.double(), torch.zeros(4, 4, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"not \[O, 4, 3, 3\]"):
        winograd_native.conv3x3(x, torch.zeros(4, 5, 3, 3))
    with pytest.raises(ValueError, match="scale"):
        winograd_native.conv3x3(x, torch.zeros(4, 4, 3, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"conv_transpose3x3: weight \[4, 3, 3, 3\] is not \[O, 4, 3, 3\]"):
        winograd_native.conv_transpose3x3(x, torch.zeros(4, 3, 3, 3))
    with pytest.raises(ValueError, match=r"conv3x3_stride2: g has shape \[1, 4, 2, 8\]"):
        winograd_native.conv3x3_stride2(x[:, :, :2], torch.zeros(4, 2, 3, 3))
    with pytest.raises(ValueError, match="compiled_matrices"):
        winograd_native.compiled_matrices(5)


def test_the_library_is_cached_and_rebuilt_for_another_cpu(tmp_path, monkeypatch):
    lib, info = _build.build_cpu_library(tmp_path)
    assert info["source"] == "built" and all(hasattr(lib, f) for f in cpu_library.prototypes())
    assert _build.build_cpu_library(tmp_path)[1]["source"] == "cache"
    monkeypatch.setattr(_build, "_cpu_signature", lambda: "another machine")
    assert _build.build_cpu_library(tmp_path)[1]["source"] == "built"  # -march=native: per CPU


def test_a_missing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(_build.CXX_ENV, str(tmp_path / "no-such-c++"))
    with pytest.raises(RuntimeError, match="no-such-c"):
        _build.build_cpu_library(tmp_path)


def test_the_generator_on_the_library_matches_direct_convs(monkeypatch):
    """Images and domain gradients of the float32 generator with its convs native (stride-1 and
    upsampling convs forward, their input gradients in the backward, the blurs on the C++
    filter, the fused conv tails) against the same generator on plain conv2d and torch ops
    (Winograd off, reference filter, unfused tails); and without the library the tensor-op
    Winograd path takes over."""
    import importlib

    from conftest import make_tiny_generator

    from stylegan2_ops.cpu import demod_act

    fir = importlib.import_module("stylegan2_ops.upfirdn2d")
    monkeypatch.setattr(winograd, "MIN_PIXELS", 0)
    monkeypatch.setattr(winograd_native, "MIN_PIXELS_STRIDE2", 0)
    G = make_tiny_generator(seed=1)
    torch.manual_seed(4)
    z = torch.randn(2, G.z_dim)
    domain = (0.3 * torch.randn(G.num_domain_params)).requires_grad_(True)
    target = torch.randn(2, 3, 32, 32)

    def run():
        img = G(z, domain=domain)
        (grad,) = torch.autograd.grad((img * target).sum(), domain)
        return img.detach(), grad

    calls = {}
    for module, name in ((winograd_native, "conv3x3"), (winograd_native, "conv_transpose3x3"),
                         (winograd_native, "conv3x3_stride2"), (demod_act, "demod_bias_lrelu")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _n=name, _f=real, **k: calls.__setitem__(_n, calls.get(_n, 0) + 1) or _f(*a, **k))
    native = run()
    convs = [m for m in G.modules() if getattr(m, "kernel_size", 0) == 3]
    n_up = sum(1 for m in convs if m.upsample)
    # each 3x3 conv once forward and once backward (the domain gradient needs every input gradient)
    assert calls == {"conv3x3": 2 * (len(convs) - n_up), "conv_transpose3x3": n_up, "conv3x3_stride2": n_up,
                     "demod_bias_lrelu": len(convs)}
    monkeypatch.setenv(winograd.DISABLE_ENV, "0")
    monkeypatch.setattr(fir, "_cpu_taps", lambda *a: None)
    monkeypatch.setattr(demod_act, "applies", lambda *a: False)
    direct = run()
    monkeypatch.delenv(winograd.DISABLE_ENV)
    monkeypatch.setattr(winograd_native, "available", lambda: False)
    calls.clear()
    ops_path = run()
    assert not calls
    for ours in (native, ops_path):
        torch.testing.assert_close(ours[0], direct[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours[1], direct[1], rtol=1e-3, atol=1e-3)


def test_without_the_library_convs_warn_once_and_stay_right(monkeypatch):
    """A failed build (no compiler) falls back with one one-line warning, never an error, even in
    strict mode (that is for the CUDA build), is tried once, shows in status(), and the
    generator's convs, filters and conv tails still run and stay right."""
    import warnings

    import stylegan2_ops
    from stylegan2_ops import modulated_conv
    from stylegan2_ops.cpu import demod_act

    calls = []

    def builder():
        calls.append(1)
        raise RuntimeError("no C++ compiler found (set $CXX)")

    monkeypatch.setattr(cpu_library, "LIBRARY", _build.ExtensionLoader(
        builder, functions=(), what="CPU kernel library", fallback="using the torch paths", honours_strict=False))
    monkeypatch.setenv(_build.STRICT_ENV, "1")
    x, w = torch.randn(4, 8, 16, 16), torch.randn(8, 8, 3, 3) / 8
    f = stylegan2_ops.setup_filter([1, 3, 3, 1])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert not winograd_native.applies(x, w)
        y = modulated_conv._conv(x, w, None, 1, "auto")
        blurred = stylegan2_ops.upfirdn2d(x, f, padding=1)
        assert not demod_act.applies(x, torch.ones(4, 8, 1, 1), None, torch.zeros(8))
    assert [str(r.message) for r in record] == [
        "stylegan2_ops: CPU kernel library unavailable (RuntimeError: no C++ compiler found (set $CXX)); "
        "using the torch paths"]
    assert record[0].category is RuntimeWarning
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(blurred, stylegan2_ops.upfirdn2d(x, f, padding=1, impl="ref"))
    assert calls == [1]
    assert "no C++ compiler" in stylegan2_ops.status()["cpu_library"]["error"]
    with pytest.raises(RuntimeError, match="CPU kernel library unavailable"):
        winograd_native.conv3x3(x, w)
