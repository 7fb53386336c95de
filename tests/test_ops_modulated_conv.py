"""stylegan2_ops.modulated_conv2d: the paper's weight-side reference, checked one sample at a time,
and every fast path (plain torch, the C++ CPU library, the CUDA kernels) against it."""
import threading

import pytest
import torch
import torch.nn.functional as F

import stylegan2_ops as ops
from stylegan2_ops.cpu import library as cpu_library
from stylegan2_ops.modulated_conv import _ActivationSideConv, _modulated_conv2d_ref, _pointwise


def _filter(dtype=torch.float64, symmetric=True, gen=None):
    if not symmetric:  # a wrong flip anywhere shows with an asymmetric filter
        return torch.rand(4, 4, dtype=dtype, generator=gen) + 0.1
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=dtype)
    return torch.outer(k, k) / 16 * 4


def per_sample(x, weight, styles, domain, up, demodulate, f, noise, bias, act, clamp):
    """Written out independently: one sample at a time, the per-sample weight built by loops over
    the output channels, the upsampling as zero insertion, padding and a true convolution."""
    outs = []
    o, i, k, _ = weight.shape
    for b in range(x.shape[0]):
        rows = []
        for oc in range(o):
            row = weight[oc] * styles[b][:, None, None]  # [I, k, k]
            if demodulate:
                row = row / torch.sqrt(row.square().sum() + 1e-8)
            if domain is not None:
                row = row * (1 + domain[b])[:, None, None]
            rows.append(row)
        wb = torch.stack(rows)  # [O, I, k, k]
        xb = x[b:b + 1]
        if up:
            z = xb.new_zeros(1, i, 2 * xb.shape[2] - 1, 2 * xb.shape[3] - 1)
            z[:, :, ::2, ::2] = xb  # the transposed conv is a conv of the zero-stuffed input
            y = F.conv2d(F.pad(z, [k - 1] * 4), wb.flip([2, 3]))
            ff = f.flip([0, 1])[None, None].expand(o, 1, -1, -1)  # the blur: a true convolution
            y = F.conv2d(F.pad(y, [1, 1, 1, 1]), ff, groups=o)
        else:
            y = F.conv2d(xb, wb, padding=k // 2)
        if noise is not None:
            y = y + (noise[b:b + 1] if noise.shape[0] > 1 else noise)
        if bias is not None:
            y = y + bias[None, :, None, None]
        if act == "lrelu":
            y = F.leaky_relu(y, 0.2) * 2**0.5
        if clamp is not None:
            y = y.clamp(-clamp, clamp)
        outs.append(y)
    return torch.cat(outs)


def _inputs(b=2, i=5, o=4, h=6, k=3, dtype=torch.float64, seed=0, noise_images=None, with_domain=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, i, h, h, generator=g, dtype=dtype)
    weight = torch.randn(o, i, k, k, generator=g, dtype=dtype) / (i * k * k) ** 0.5
    styles = torch.randn(b, i, generator=g, dtype=dtype) + 1
    domain = 0.4 * torch.randn(b, i, generator=g, dtype=dtype) if with_domain else None
    return x, weight, styles, domain, g


CASES = [  # (up, k, demodulate, noise images, bias, act, clamp)
    (False, 3, True, None, False, "linear", None),
    (False, 3, True, 1, True, "lrelu", None),
    (False, 3, True, 2, True, "lrelu", 0.3),
    (True, 3, True, 2, True, "lrelu", None),
    (True, 3, True, None, False, "linear", None),
    (False, 1, False, None, True, "linear", None),
    (False, 1, False, None, True, "linear", 0.2),
    (False, 3, False, None, False, "lrelu", None),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("with_domain", [True, False])
def test_reference_is_the_per_sample_weight_side_form(case, with_domain):
    up, k, demod, noise_n, with_bias, act, clamp = case
    x, weight, styles, domain, g = _inputs(k=k, with_domain=with_domain)
    h = x.shape[2] * (2 if up else 1)
    noise = None if noise_n is None else torch.randn(noise_n, 1, h, h, generator=g, dtype=x.dtype)
    bias = torch.randn(weight.shape[0], generator=g, dtype=x.dtype) if with_bias else None
    f = _filter(symmetric=False, gen=g) if up else None
    ref = _modulated_conv2d_ref(x, weight, styles, domain, up=up, demodulate=demod, resample_filter=f, noise=noise,
                                bias=bias, act=act, clamp=clamp)
    assert ref.shape == (2, weight.shape[0], h, h)
    torch.testing.assert_close(ref, per_sample(x, weight, styles, domain, up, demod, f, noise, bias, act, clamp),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_activation_side_equals_the_reference_with_gradients(case):
    """float64: values and the gradients with respect to every input, fast path against the reference."""
    up, k, demod, noise_n, with_bias, act, clamp = case
    x, weight, styles, domain, g = _inputs(k=k, seed=1)
    h = x.shape[2] * (2 if up else 1)
    noise = None if noise_n is None else torch.randn(noise_n, 1, h, h, generator=g, dtype=x.dtype)
    bias = torch.randn(weight.shape[0], generator=g, dtype=x.dtype) if with_bias else None
    f = _filter(symmetric=False, gen=g) if up else None
    inputs = [t.clone().requires_grad_(True) for t in (x, weight, styles, domain)]
    extra = [t.clone().requires_grad_(True) if t is not None else None for t in (noise, bias)]
    gy = torch.randn(2, weight.shape[0], h, h, generator=g, dtype=x.dtype)

    def run(impl):
        xi, wi, si, di = inputs
        ni, bi = extra
        y = ops.modulated_conv2d(xi, wi, si, di, up=up, demodulate=demod, resample_filter=f, noise=ni, bias=bi,
                                 act=act, clamp=clamp, impl=impl)
        wanted = [t for t in inputs + extra if t is not None]
        return y, torch.autograd.grad(y, wanted, gy)

    y_fast, g_fast = run("auto")
    y_ref, g_ref = run("ref")
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not cpu_library.available(), reason="no C++ compiler for the CPU library")
@pytest.mark.parametrize("up", [False, True])
def test_float32_cpu_library_path_against_the_float64_reference(up, monkeypatch):
    """The generator's shapes at batch 4 where the C++ library takes the conv and the fused tail:
    images and the domain gradient against the float64 reference, with the native calls counted."""
    from stylegan2_ops.cpu import demod_act, winograd_native

    calls = []
    for module, name in ((winograd_native, "conv3x3"), (winograd_native, "conv_transpose3x3"),
                         (winograd_native, "conv3x3_stride2"), (demod_act, "demod_bias_lrelu")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _f=real, **k: calls.append(_n) or _f(*a, **k))
    x, weight, styles, domain, g = _inputs(b=4, i=16, o=16, h=32, seed=2)
    noise = torch.randn(1, 1, 64 if up else 32, 64 if up else 32, generator=g, dtype=torch.float64)
    bias = torch.randn(16, generator=g, dtype=torch.float64)
    f = _filter() if up else None
    d32 = domain.float().requires_grad_(True)
    y = ops.modulated_conv2d(x.float(), weight.float(), styles.float(), d32, up=up, resample_filter=None if f is None else f.float(), noise=noise.float(), bias=bias.float(), act="lrelu")
    gy = torch.randn(y.shape, generator=g)
    (gd,) = torch.autograd.grad(y, d32, gy)
    d64 = domain.clone().requires_grad_(True)
    ref = _modulated_conv2d_ref(x, weight, styles, d64, up=up, resample_filter=f, noise=noise, bias=bias, act="lrelu")
    (gd_ref,) = torch.autograd.grad(ref, d64, gy.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gd.double(), gd_ref, rtol=1e-3, atol=1e-3)
    expected = ["conv_transpose3x3", "demod_bias_lrelu", "conv3x3_stride2"] if up else \
        ["conv3x3", "demod_bias_lrelu", "conv3x3"]
    assert calls == expected


def test_compiled_kernels_match_the_reference(kernel_device):
    """impl="cuda" (the CUDA kernels, or their host emulation) against the reference, with gradients."""
    for up in (False, True):
        x, weight, styles, domain, g = _inputs(seed=3)
        f = _filter() if up else None
        bias = torch.randn(weight.shape[0], generator=g, dtype=x.dtype)
        ins = [t.to(kernel_device).requires_grad_(True) for t in (x, styles, domain)]
        kw = dict(up=up, resample_filter=None if f is None else f.to(kernel_device), bias=bias.to(kernel_device),
                  act="lrelu")
        y = ops.modulated_conv2d(ins[0], weight.to(kernel_device), ins[1], ins[2], impl="cuda", **kw)
        gy = torch.randn(y.shape, generator=g, dtype=x.dtype).to(kernel_device)
        grads = torch.autograd.grad(y, ins, gy)
        ref = _modulated_conv2d_ref(ins[0], weight.to(kernel_device), ins[1], ins[2], **kw)
        grads_ref = torch.autograd.grad(ref, ins, gy)
        assert ops.status()["state"] == "ok"  # the kernels ran
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("with_domain", [False, True])
def test_activation_side_function_gradcheck(up, with_domain):
    torch.manual_seed(5)
    dt = torch.float64
    x = torch.randn(2, 3, 5, 5, dtype=dt, requires_grad=True)
    s = torch.randn(2, 3, dtype=dt, requires_grad=True)
    d = (0.3 * torch.randn(2, 3, dtype=dt)).requires_grad_(True) if with_domain else None
    w = torch.randn(4, 3, 3, 3, dtype=dt, requires_grad=True)
    blur = (torch.rand(4, 4, dtype=dt), 1, 1) if up else None  # asymmetric: a wrong flip in the adjoint shows
    assert torch.autograd.gradcheck(lambda *a: _ActivationSideConv.apply(*a, blur, 1, "auto"), (x, s, d, w))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("grads", ["all", "x", "x_w"])
def test_activation_side_function_second_order(k, grads):
    """The 1x1 conv (ToRGB) has its own paths (one batched matmul forward; the input gradient
    with the scale folded in when neither styles nor domain need one), and the input gradient is
    scaled in place except when a double backward records it: gradcheck and gradgradcheck with
    each combination of inputs needing gradients."""
    torch.manual_seed(7)
    dt = torch.float64
    x = torch.randn(2, 3, 4, 5, dtype=dt, requires_grad=True)
    s = torch.randn(2, 3, dtype=dt, requires_grad=grads == "all")
    d = (0.3 * torch.randn(2, 3, dtype=dt)).requires_grad_(grads == "all")
    w = torch.randn(4, 3, k, k, dtype=dt, requires_grad=grads != "x")
    inputs = tuple(t for t in (x, s, d, w) if t.requires_grad)

    def f(*a):
        given = iter(a)
        return _ActivationSideConv.apply(*(next(given) if t.requires_grad else t for t in (x, s, d, w)), None,
                                         k // 2, "auto")

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_pointwise_matches_conv2d_of_the_scaled_input():
    torch.manual_seed(8)
    dt = torch.float64
    x, w = torch.randn(3, 5, 4, 6, dtype=dt), torch.randn(2, 5, 1, 1, dtype=dt)
    s_in, s_out = torch.randn(3, 5, dtype=dt), torch.randn(3, 2, dtype=dt)
    torch.testing.assert_close(_pointwise(x, w), F.conv2d(x, w))
    torch.testing.assert_close(_pointwise(x, w, in_scale=s_in, out_scale=s_out),
                               F.conv2d(x * s_in[:, :, None, None], w) * s_out[:, :, None, None])
    # one scale row for the whole batch broadcasts
    torch.testing.assert_close(_pointwise(x, w, in_scale=s_in[:1]), F.conv2d(x * s_in[:1, :, None, None], w))


def test_pinning_a_path_is_scoped_and_per_thread(monkeypatch):
    from stylegan2_ops import modulated_conv

    ref_calls = []
    real = modulated_conv._modulated_conv2d_ref
    monkeypatch.setattr(modulated_conv, "_modulated_conv2d_ref", lambda *a, **k: ref_calls.append(1) or real(*a, **k))
    x, weight, styles, domain, _ = _inputs()
    other_thread = []
    with ops.pin_modulated_conv2d("ref"):
        ops.modulated_conv2d(x, weight, styles, domain)
        assert len(ref_calls) == 1
        t = threading.Thread(target=lambda: other_thread.append(ops.modulated_conv2d(x, weight, styles, domain)))
        t.start()
        t.join()
        assert len(ref_calls) == 1  # the other thread ran its own (unpinned) path
    ops.modulated_conv2d(x, weight, styles, domain)
    assert len(ref_calls) == 1  # unpinned again after the block
    with pytest.raises(RuntimeError), ops.pin_modulated_conv2d("ref"):
        raise RuntimeError("boom")
    ops.modulated_conv2d(x, weight, styles, domain)
    assert len(ref_calls) == 1  # and after a block that raised
    with pytest.raises(ValueError, match="impl must be one of"):
        with ops.pin_modulated_conv2d("fast"):
            pass


def test_bad_arguments_name_both_shapes():
    x, weight, styles, domain, _ = _inputs()
    with pytest.raises(ValueError, match=r"styles has shape \[2, 4\], expected \[2, 5\] to match x \[2, 5, 6, 6\]"):
        ops.modulated_conv2d(x, weight, styles[:, :4])
    with pytest.raises(ValueError, match=r"domain has shape \[1, 5\], expected \[2, 5\]"):
        ops.modulated_conv2d(x, weight, styles, domain[:1])
    with pytest.raises(ValueError, match=r"weight has shape \[4, 6, 3, 3\], expected \[O, 5, k, k\]"):
        ops.modulated_conv2d(x, torch.zeros(4, 6, 3, 3, dtype=x.dtype), styles)
    with pytest.raises(ValueError, match=r"up needs a 2-D resample_filter"):
        ops.modulated_conv2d(x, weight, styles, up=True)
    with pytest.raises(ValueError, match=r"bias has shape \[3\], expected \[4\]"):
        ops.modulated_conv2d(x, weight, styles, bias=torch.zeros(3, dtype=x.dtype))
    with pytest.raises(ValueError, match=r"unknown act 'relu'"):
        ops.modulated_conv2d(x, weight, styles, act="relu")
    with pytest.raises(ValueError, match=r"impl='cuda' needs CUDA tensors"):
        ops.modulated_conv2d(x, weight, styles, impl="cuda")
