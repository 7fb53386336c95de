from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from stylegan2_ops.cpu import winograd
from stylegan2_ops.cpu.winograd import ALPHA, M, R


def test_transforms_are_exact_in_rational_arithmetic():
    """A^T [(G g) * (B^T d)] is the 1-D correlation sum_k g_k d_{i+k}, exactly, for any g and d."""
    at, g, bt = winograd.matrices()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        gs = [Fraction(int(v), 7) for v in torch.randint(-20, 20, (R,), generator=gen)]
        ds = [Fraction(int(v), 3) for v in torch.randint(-20, 20, (ALPHA,), generator=gen)]
        u = [sum(g[j][k] * gs[k] for k in range(R)) for j in range(ALPHA)]
        v = [sum(bt[j][s] * ds[s] for s in range(ALPHA)) for j in range(ALPHA)]
        y = [sum(at[i][j] * u[j] * v[j] for j in range(ALPHA)) for i in range(M)]
        assert y == [sum(gs[k] * ds[i + k] for k in range(R)) for i in range(M)]


@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 13), (1, 3, 4, 4, 4), (3, 8, 6, 17, 8), (1, 2, 3, 1, 1),
                                   (2, 4, 4, 5, 3), (1, 16, 9, 32, 32)])
@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_matches_conv2d_in_float64(shape, chunk):
    n, c, o, h, w = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=gen)
    weight = torch.randn(o, c, 3, 3, dtype=torch.float64, generator=gen)
    y = winograd.conv3x3(x, weight, tiles_per_chunk=chunk)
    torch.testing.assert_close(y, F.conv2d(x, weight, padding=1), rtol=1e-12, atol=1e-12)


def test_float32_error_is_within_the_algorithms_bound():
    """Relative L2 error in float32 against float64, bounded absolutely: F.conv2d's own error is no
    yardstick, it depends on the machine's library (2.2e-7 on the 2-core dev machine, about 1e-6 where
    the module notes were measured)."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 256, 24, 20, generator=gen)
    weight = torch.randn(128, 256, 3, 3, generator=gen) / (9 * 256) ** 0.5
    exact = F.conv2d(x.double(), weight.double(), padding=1)
    ours = ((winograd.conv3x3(x, weight).double() - exact).norm() / exact.norm()).item()
    # Most of the error is float32 rounding (2^-24) in the 6x6 transforms (sums of 6 terms),
    # amplified by their entries (points 0, +-1, 1/2, -2): 1.55-1.57e-6 over seeds and thread
    # counts; (0, +-1, +-2) or (0, +-1, +-1/2) give 2.4e-6. The 36 products sum 256 channels each
    # in the library's order; the least accurate usual order, plain sequential sums, gives 2.15e-6.
    # Hence 3e-6; a broken transform or tiling is off by orders of magnitude.
    assert ours < 3e-6, ours


def test_inference_mode_first_does_not_break_later_calls():
    """The scratch buffers outlive the call: made under inference_mode they must still be
    writable outside it (and the other way round)."""
    winograd.clear_workspace()
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(4, 4, 3, 3, generator=gen) / 6
    with torch.inference_mode():
        first = winograd.conv3x3(x, w)
    for mode in (torch.no_grad(), torch.enable_grad(), torch.inference_mode()):
        with mode:
            torch.testing.assert_close(winograd.conv3x3(x, w), first)
    torch.testing.assert_close(first, F.conv2d(x, w, padding=1), rtol=1e-5, atol=2e-5)


def test_applies_only_where_it_pays_and_can(monkeypatch):
    big, w = torch.zeros(4, 8, 32, 32), torch.zeros(8, 8, 3, 3)
    assert winograd.applies(big, w) and winograd.applies(big.double(), w.double())
    assert not winograd.applies(torch.zeros(4, 8, 8, 8), w)  # below MIN_PIXELS
    assert not winograd.applies(big.half(), w.half())
    assert not winograd.applies(big, torch.zeros(8, 8, 1, 1))
    assert not winograd.applies(big, w.requires_grad_(True))  # autograd would not see through it
    with torch.no_grad():
        assert winograd.applies(big, w)
    monkeypatch.setenv(winograd.DISABLE_ENV, "0")
    assert not winograd.applies(big, w.detach())


def test_generator_on_winograd_matches_the_weight_side_reference(monkeypatch):
    """Every 3x3 conv of the generator, forward and input gradient, through Winograd: images
    and the domain gradient against the plain weight-side formulation, in float64."""
    from test_generator import reference_synthesis
    from conftest import TINY, make_tiny_generator

    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(winograd, "MIN_PIXELS", 0)
    torch.manual_seed(5)
    G = make_tiny_generator(seed=1).double()
    sd = G.state_dict()
    wplus = G.mapping(torch.randn(2, 32, dtype=torch.float64))[:, None].repeat(1, G.num_ws, 1)
    wplus = wplus + 0.3 * torch.randn_like(wplus)
    domain = (0.5 * torch.randn(2, G.num_domain_params, dtype=torch.float64)).requires_grad_(True)
    target = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ours = G.synthesis(wplus, domain=domain, noise_mode="const")
    (g_ours,) = torch.autograd.grad((ours * target).sum(), domain)
    n_convs = sum(1 for m in G.modules() if getattr(m, "kernel_size", 0) == 3 and not getattr(m, "upsample", True))
    assert len(calls) == 2 * n_convs  # each stride-1 3x3 conv once forward, once backward
    ref = reference_synthesis(sd, TINY, wplus, domain, "const")
    (g_ref,) = torch.autograd.grad((ref * target).sum(), domain)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-9)
