"""The fused styled-conv tail (csrc/act_cpu.cpp) against the unfused ops in float64."""
import pytest
import torch

import stylegan2_ops as ops
from stylegan2_ops.cpu import library as cpu_library, demod_act

pytestmark = pytest.mark.skipif(not cpu_library.available(), reason="no C++ compiler for the CPU library")


def reference(x, dcoefs, add, bias):
    y = x * dcoefs if add is None else torch.addcmul(add, x, dcoefs)
    return ops.bias_act(y, bias, act="lrelu", impl="ref")


@pytest.mark.parametrize("add_images", [None, 1, 3])
def test_values_and_gradients_match_the_unfused_ops(add_images):
    g = torch.Generator().manual_seed(0)
    n, o, h, w = 3, 5, 7, 9
    x = torch.randn(n, o, h, w, generator=g)
    dcoefs = torch.rand(n, o, 1, 1, generator=g) + 0.5
    add = None if add_images is None else torch.randn(add_images, 1, h, w, generator=g)
    bias = torch.randn(o, generator=g)
    x64 = x.double().requires_grad_(True)
    ref = reference(x64, dcoefs.double(), None if add is None else add.double(), bias.double())
    xf = x.clone().requires_grad_(True)
    y = demod_act.demod_bias_lrelu(xf * 1, dcoefs, add, bias)  # `* 1`: a fresh tensor, written in place
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=1e-6)
    gy = torch.randn(y.shape, generator=g).requires_grad_(True)
    gy64 = gy.detach().double().requires_grad_(True)
    (gx,) = torch.autograd.grad(y, xf, gy, create_graph=True)
    (gr,) = torch.autograd.grad(ref, x64, gy64, create_graph=True)
    torch.testing.assert_close(gx.double(), gr, rtol=1e-6, atol=1e-6)
    v = torch.randn(x.shape, generator=g)  # second order: d<gx, v>/d gy
    (g2,) = torch.autograd.grad((gx * v).sum(), gy)
    (g2r,) = torch.autograd.grad((gr * v.double()).sum(), gy64)
    torch.testing.assert_close(g2.double(), g2r, rtol=1e-6, atol=1e-6)


def test_writes_over_a_fresh_input_but_never_over_a_view():
    x = torch.randn(2, 3, 4, 4)
    dcoefs, bias = torch.ones(2, 3, 1, 1), torch.zeros(3)
    fresh = x.clone()
    y = demod_act.demod_bias_lrelu(fresh, dcoefs, None, bias)
    assert y.data_ptr() == fresh.data_ptr()
    strided, batch = torch.randn(2, 3, 4, 8), torch.randn(3, 3, 4, 4)
    for base, view in ((strided, strided[..., :4]), (batch, batch[:2])):  # the second is contiguous
        before = base.clone()
        y = demod_act.demod_bias_lrelu(view, dcoefs, None, bias)
        assert torch.equal(base, before)
        torch.testing.assert_close(y, reference(view, dcoefs, None, bias))


def test_applies_only_where_it_is_right():
    x = torch.randn(2, 3, 4, 4)
    dc, bias, add = torch.ones(2, 3, 1, 1), torch.zeros(3), torch.zeros(1, 1, 4, 4)
    assert demod_act.applies(x, dc, add, bias)
    assert not demod_act.applies(x.double(), dc.double(), add.double(), bias.double())
    assert not demod_act.applies(x, dc.clone().requires_grad_(True), add, bias)  # only x is differentiated
    assert not demod_act.applies(x, dc, add, bias.clone().requires_grad_(True))
    assert not demod_act.applies(x, dc, torch.zeros(2, 3, 4, 4), bias)  # noise is one plane per image
    assert not demod_act.applies(x, dc, torch.zeros(3, 1, 4, 4), bias)  # one plane for all, or one per image
    assert not demod_act.applies(x, dc[:1], add, bias)
    with torch.no_grad():
        assert demod_act.applies(x, dc.clone().requires_grad_(True), add, bias)
    with pytest.raises(ValueError, match="demod_bias_lrelu: unsupported arguments: x torch.float64"):
        demod_act.demod_bias_lrelu(x.double(), dc, add, bias)
