import pytest
import torch
import torch.nn.functional as F

import stylegan2_ops as ops
from stylegan2_ops._emulation import emulated_kernels
from stylegan2_ops.modulation import _demod_coefficients_ref, _modulated_input_ref



def weight_side_conv(x, weight, styles, domain, eps=1e-8):
    """The per-sample-weight formulation (as in rosinality's port, plus the paper's domain factor):
    w[b, o, i, kh, kw] = weight * styles, demodulated from its own squares, then times (1 + d)
    along the input channels after demodulation; one grouped conv."""
    b, i, h, w_ = x.shape
    o, _, k, _ = weight.shape
    w = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
    demod = torch.rsqrt(w.pow(2).sum([2, 3, 4]) + eps)  # [B, O]
    w = w * demod[:, :, None, None, None]
    if domain is not None:
        w = w * (1 + domain)[:, None, :, None, None]
    out = F.conv2d(x.reshape(1, b * i, h, w_), w.reshape(b * o, i, k, k), padding=k // 2, groups=b)
    return out.reshape(b, o, h, w_)


@pytest.mark.parametrize("with_domain", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_input_side_equals_weight_side(with_domain, k):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 7, 7, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 6, k, k, generator=g, dtype=torch.float64) / (6 * k * k) ** 0.5
    styles = torch.randn(3, 6, generator=g, dtype=torch.float64) + 1
    domain = 0.3 * torch.randn(3, 6, generator=g, dtype=torch.float64) if with_domain else None
    ours = F.conv2d(ops.modulated_input(x, styles, domain), weight, padding=k // 2)
    ours = ours * ops.demod_coefficients(weight, styles)[:, :, None, None]
    torch.testing.assert_close(ours, weight_side_conv(x, weight, styles, domain))


def test_plain_definitions():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    s, d = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(ops.modulated_input(x, s, d), x * (s * (1 + d))[:, :, None, None])
    torch.testing.assert_close(ops.modulated_input(x, s), x * s[:, :, None, None])
    torch.testing.assert_close(ops.modulated_input(x, s, torch.zeros_like(d)), ops.modulated_input(x, s))
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    want = (w[None] * s[:, None, :, None, None]).square().sum([2, 3, 4]).add(1e-8).rsqrt()
    torch.testing.assert_close(ops.demod_coefficients(w, s), want)
    torch.testing.assert_close(ops.demod_coefficients(w, s, eps=0.5),
                               (w[None] * s[:, None, :, None, None]).square().sum([2, 3, 4]).add(0.5).rsqrt())


def test_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"demod_coefficients: styles has shape \[4, 31\], expected \[B, 32\] "
                                         r"to match weight \[16, 32, 3, 3\]"):
        ops.demod_coefficients(torch.randn(16, 32, 3, 3), torch.randn(4, 31))
    with pytest.raises(ValueError, match=r"weight has shape \[16, 32\]"):
        ops.demod_coefficients(torch.randn(16, 32), torch.randn(4, 32))
    with pytest.raises(ValueError, match=r"styles has shape \[2, 5\], expected \[2, 4\] to match x \[2, 4, 3, 3\]"):
        ops.modulated_input(torch.randn(2, 4, 3, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"domain has shape \[1, 4\], expected \[2, 4\]"):
        ops.modulated_input(torch.randn(2, 4, 3, 3), torch.randn(2, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="CUDA tensors"):
        ops.modulated_input(torch.randn(2, 4, 3, 3), torch.randn(2, 4), impl="cuda")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return mk(2, 3, 4, 4), mk(2, 3), mk(2, 3), mk(4, 3, 3, 3)


def test_ref_gradcheck():
    x, s, d, w = _inputs()
    assert torch.autograd.gradcheck(_modulated_input_ref, (x, s, d))
    assert torch.autograd.gradgradcheck(_modulated_input_ref, (x, s, d))
    assert torch.autograd.gradcheck(_demod_coefficients_ref, (w, s))
    assert torch.autograd.gradgradcheck(_demod_coefficients_ref, (w, s))


def test_cuda_path_autograd_with_emulated_kernels():
    x, s, d, w = _inputs(1)
    with emulated_kernels():
        mod = lambda x, s, d: ops.modulated_input(x, s, d, impl="cuda")  # noqa: E731
        mod_nod = lambda x, s: ops.modulated_input(x, s, impl="cuda")  # noqa: E731
        dem = lambda w, s: ops.demod_coefficients(w, s, impl="cuda")  # noqa: E731
        torch.testing.assert_close(mod(x, s, d), _modulated_input_ref(x, s, d))
        torch.testing.assert_close(dem(w, s), _demod_coefficients_ref(w, s))
        assert torch.autograd.gradcheck(mod, (x, s, d))
        assert torch.autograd.gradgradcheck(mod, (x, s, d))
        assert torch.autograd.gradcheck(mod_nod, (x, s))
        assert torch.autograd.gradcheck(dem, (w, s))  # first order only on the CUDA path
        # Gradient w.r.t. the domain alone (the trained parameter) with frozen x and styles.
        d2 = d.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda d: mod(x.detach(), s.detach(), d), (d2,))


# ---- compiled kernels vs reference (on a GPU, or host-emulated on the CPU) ----------------

SHAPES = [(2, 3, 4, 4, 5, 3), (4, 512, 16, 16, 512, 3), (3, 37, 5, 7, 19, 1), (1, 1, 1, 1, 1, 1),
          (8, 64, 64, 64, 32, 3)]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10), (torch.float16, 1e-2),
                                       (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("B,I,H,W,O,k", SHAPES)
@pytest.mark.parametrize("with_domain", [True, False])
def test_cuda_matches_ref(B, I, H, W, O, k, dtype, tol, with_domain, kernel_device):
    """The kernels in ``dtype`` against the reference in float64 on the same (rounded) inputs
    (a float16 reference would underflow eps = 1e-8 to zero and give inf where the kernel,
    accumulating in float, does not)."""
    dev = kernel_device
    x0, s0 = torch.randn(B, I, H, W, device=dev), torch.randn(B, I, device=dev) + 1
    d0 = 0.2 * torch.randn(B, I, device=dev) if with_domain else None
    w0 = torch.randn(O, I, k, k, device=dev) / (I * k * k) ** 0.5
    x0, s0, w0 = (t.to(dtype) for t in (x0, s0, w0))
    d0 = d0.to(dtype) if with_domain else None
    dy, dc = torch.randn(B, I, H, W, device=dev).to(dtype), torch.randn(B, O, device=dev).to(dtype)
    out = []
    for impl, t in (("ref", torch.float64), ("cuda", dtype)):
        x, s, w = (v.to(t).requires_grad_(True) for v in (x0, s0, w0))
        d = d0.to(t).requires_grad_(True) if with_domain else None
        y = ops.modulated_input(x, s, d, impl=impl)
        c = ops.demod_coefficients(w, s, impl=impl)
        inputs = (x, s, w) + ((d,) if with_domain else ())
        out.append((y, c, *torch.autograd.grad((y, c), inputs, (dy.to(t), dc.to(t)))))
    for r, cu in zip(*out):
        assert cu.dtype == dtype
        scale = r.abs().max().item() + 1
        torch.testing.assert_close(cu.double(), r, atol=tol * scale, rtol=tol)


def test_cuda_modulation_second_order_matches_ref(kernel_device):
    x = torch.randn(2, 8, 5, 5, device=kernel_device, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 8, device=kernel_device, dtype=torch.float64, requires_grad=True)
    d = torch.randn(2, 8, device=kernel_device, dtype=torch.float64, requires_grad=True)
    outs = []
    for impl in ("ref", "cuda"):
        y = ops.modulated_input(x, s, d, impl=impl)
        grads = torch.autograd.grad(y.square().sum(), (x, s, d), create_graph=True)
        outs.append(torch.autograd.grad(sum(g.square().sum() for g in grads), (x, s, d)))
    for r, c in zip(*outs):
        torch.testing.assert_close(c, r)
