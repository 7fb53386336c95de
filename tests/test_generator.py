import math

import pytest
import torch
import torch.nn.functional as F

from hyperdomain.model.config import GeneratorConfig, port_channels
from hyperdomain.model.domain import Domain
from hyperdomain.errors import HyperdomainError
from hyperdomain.model.generator import Generator, config_from_state_dict, generator_from_state

from conftest import TINY, make_tiny_generator


# ----------------------------------------------------------------------------------------------
# An independent formulation: the paper's weight-side modulated conv, one sample at a time, with
# upsampling and blur written out with plain torch ops, straight from the port's state dict.
# ----------------------------------------------------------------------------------------------
def _lin(sd, key, x, lr_mul=1.0):
    w, b = sd[key + ".weight"], sd[key + ".bias"]
    return x @ (w * lr_mul / math.sqrt(w.shape[1])).t() + b * lr_mul


def _blur_filter(dtype):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=dtype)
    k = torch.outer(k, k)
    return k / k.sum()


def _depthwise(x, k, pad):
    c = x.shape[1]
    x = F.pad(x, pad)
    return F.conv2d(x, k.flip([0, 1])[None, None].expand(c, 1, -1, -1), groups=c)


def _upsample_zeros(x):
    n, c, h, w = x.shape
    y = x.new_zeros(n, c, 2 * h, 2 * w)
    y[:, :, ::2, ::2] = x
    return y


def _modconv_one(sd, key, x, w, d, demod=True, up=False):
    """x [1,I,H,W], w [style], d [I] or None: W' = demod(scale*W*s) * (1+d), then conv."""
    weight = sd[key + ".conv.weight"][0]  # [O, I, k, k]
    s = _lin(sd, key + ".conv.modulation", w[None])[0]  # [I]
    k = weight.shape[-1]
    wp = weight / math.sqrt(weight.shape[1] * k * k) * s[None, :, None, None]
    if demod:
        wp = wp / torch.sqrt((wp**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
    if d is not None:
        wp = wp * (1 + d)[None, :, None, None]
    if up:
        y = F.conv_transpose2d(x, wp.transpose(0, 1), stride=2)
        return _depthwise(y, _blur_filter(x.dtype) * 4, [1, 1, 1, 1])
    return F.conv2d(x, wp, padding=k // 2)


def reference_synthesis(sd, cfg: GeneratorConfig, ws, domain, noise_mode="const"):
    """ws [B, num_ws, style], domain [B, D] or None -> images, one sample at a time."""
    outs = []
    dims = cfg.domain_dims
    for b in range(ws.shape[0]):
        blocks = [None] * len(dims) if domain is None else list(torch.split(domain[b], list(dims)))

        def styled(key, x, w, k, up=False):
            y = _modconv_one(sd, key, x, w, blocks[k], up=up)
            if noise_mode == "const":
                y = y + sd[key + ".noise.weight"] * sd[f"noises.noise_{k}"]
            y = y + sd[key + ".activate.bias"][None, :, None, None]
            return F.leaky_relu(y, 0.2) * math.sqrt(2)

        def rgb(key, x, w):
            return _modconv_one(sd, key, x, w, None, demod=False) + sd[key + ".bias"]

        x = sd["input.input"]
        x = styled("conv1", x, ws[b, 0], 0)
        skip = rgb("to_rgb1", x, ws[b, 1])
        for j in range(len(cfg.channels) - 1):
            k = 2 * j + 1
            x = styled(f"convs.{2 * j}", x, ws[b, k], k, up=True)
            x = styled(f"convs.{2 * j + 1}", x, ws[b, k + 1], k + 1)
            up_skip = _depthwise(_upsample_zeros(skip), _blur_filter(x.dtype) * 4, [2, 1, 2, 1])
            skip = rgb(f"to_rgbs.{j}", x, ws[b, k + 2]) + up_skip
        outs.append(skip)
    return torch.cat(outs)


def reference_mapping(sd, cfg, z):
    x = z * torch.rsqrt((z**2).mean(dim=1, keepdim=True) + 1e-8)
    for i in range(1, cfg.n_mlp + 1):
        x = F.leaky_relu(_lin(sd, f"style.{i}", x, lr_mul=cfg.lr_mlp), 0.2) * math.sqrt(2)
    return x


@pytest.fixture
def G64():
    return make_tiny_generator(seed=1).double()


def test_generator_config_round_trip_and_validation():
    cfg = GeneratorConfig(resolution=64, style_dim=16, n_mlp=2, channels=port_channels(64), conv_clamp=256.0)
    assert cfg.to_dict()["channels"] == list(cfg.channels)
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(HyperdomainError, match="unknown generator config keys"):
        GeneratorConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(HyperdomainError, match="generator config lacks 'channels'"):
        GeneratorConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "channels"})


def test_config_f_domain_vector_has_6048_numbers():
    cfg = GeneratorConfig(resolution=1024, style_dim=512, n_mlp=8, channels=port_channels(1024))
    assert cfg.num_ws == 18 and cfg.num_convs == 17
    assert sum(cfg.domain_dims) == 6048
    with torch.device("meta"):
        G = Generator(cfg)
    assert G.num_domain_params == 6048
    assert G.domain_dims[:3] == (512, 512, 512) and G.domain_dims[-2:] == (64, 32)


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_activation_side_equals_weight_side_reference(G64, noise_mode):
    torch.manual_seed(2)
    sd = G64.state_dict()
    z = torch.randn(3, 32, dtype=torch.float64)
    ws = G64.mapping(z)
    torch.testing.assert_close(ws, reference_mapping(sd, TINY, z), rtol=1e-12, atol=1e-12)
    wplus = ws[:, None].repeat(1, G64.num_ws, 1) + 0.3 * torch.randn(3, G64.num_ws, 32, dtype=torch.float64)
    domain = 0.5 * torch.randn(3, G64.num_domain_params, dtype=torch.float64)
    ours = G64.synthesis(wplus, domain=domain, noise_mode=noise_mode)
    ref = reference_synthesis(sd, TINY, wplus, domain, noise_mode)
    assert ours.shape == (3, 3, 32, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
    # and the domain really matters
    assert (ours - G64.synthesis(wplus, noise_mode=noise_mode)).abs().max() > 1e-2


def test_compiled_kernels_match_the_weight_side_reference(kernel_device):
    """The generator on the compiled kernels (on a GPU, or their host emulation): images and the
    domain gradient against the plain weight-side formulation, in float64."""
    import stylegan2_ops

    torch.manual_seed(4)
    G = make_tiny_generator(seed=1).double().to(kernel_device)
    sd = {k: v.cpu() for k, v in G.state_dict().items()}
    wplus = G.mapping(torch.randn(2, 32, dtype=torch.float64, device=kernel_device))[:, None].repeat(1, G.num_ws, 1)
    wplus = wplus + 0.3 * torch.randn_like(wplus)
    domain = (0.5 * torch.randn(2, G.num_domain_params, dtype=torch.float64)).requires_grad_(True)
    target = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ours = G.synthesis(wplus, domain=domain.to(kernel_device), noise_mode="const")
    (g_ours,) = torch.autograd.grad((ours.cpu() * target).sum(), domain)
    assert stylegan2_ops.status()["state"] == "ok"  # the kernels ran, not the reference ops
    ref = reference_synthesis(sd, TINY, wplus.cpu(), domain, "const")
    (g_ref,) = torch.autograd.grad((ref * target).sum(), domain)
    torch.testing.assert_close(ours.cpu(), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-9)


def test_generator_on_the_pinned_reference_op_matches(G64):
    """The whole generator with every modulated conv on the op's weight-side reference path."""
    import stylegan2_ops

    torch.manual_seed(3)
    z = torch.randn(2, 32, dtype=torch.float64)
    d = 0.3 * torch.randn(2, G64.num_domain_params, dtype=torch.float64)
    fast = G64(z, domain=d)
    with stylegan2_ops.pin_modulated_conv2d("ref"):
        torch.testing.assert_close(G64(z, domain=d), fast, rtol=1e-10, atol=1e-10)


def test_zero_domain_reproduces_source_exactly(tiny_G):
    z = torch.randn(4, 32)
    src = tiny_G(z)
    assert torch.equal(tiny_G(z, domain=torch.zeros(tiny_G.num_domain_params)), src)
    assert torch.equal(tiny_G(z, domain=Domain.zeros(tiny_G)), src)
    assert torch.equal(tiny_G(z, domain=torch.zeros(4, tiny_G.num_domain_params)), src)


def test_per_sample_domains_match_single_domain_batches(tiny_G):
    torch.manual_seed(4)
    z = torch.randn(3, 32)
    d = 0.4 * torch.randn(3, tiny_G.num_domain_params)
    batch = tiny_G(z, domain=d)
    for i in range(3):
        single = tiny_G(z[i:i + 1], domain=d[i])
        torch.testing.assert_close(batch[i:i + 1], single, rtol=1e-5, atol=1e-5)


def test_outputs_are_not_clamped(tiny_G):
    d = torch.full((tiny_G.num_domain_params,), 3.0)  # big multipliers push values far out
    x = tiny_G(torch.randn(4, 32), domain=d)
    assert x.abs().max() > 1.5


def test_noise_modes(tiny_G):
    z = torch.randn(2, 32)
    const = tiny_G(z, noise_mode="const")
    assert torch.equal(const, tiny_G(z, noise_mode="const"))
    assert (const - tiny_G(z, noise_mode="none")).abs().max() > 1e-3
    assert (tiny_G(z, noise_mode="random") - tiny_G(z, noise_mode="random")).abs().max() > 1e-3
    with pytest.raises(HyperdomainError, match="noise_mode"):
        tiny_G(z, noise_mode="fixed")


def test_truncation_uses_latent_avg(tiny_G):
    avg = torch.randn(32)
    tiny_G.set_latent_avg(avg)
    z = torch.randn(5, 32)
    w0 = tiny_G.mapping(z, truncation=0.0)
    torch.testing.assert_close(w0, avg.expand(5, -1))
    w = tiny_G.mapping(z)
    torch.testing.assert_close(tiny_G.mapping(z, truncation=0.5), avg + 0.5 * (w - avg))


def test_mean_latent_without_checkpoint_value_is_seeded_and_cached():
    G1, G2 = make_tiny_generator(), make_tiny_generator()
    m1 = G1.mean_latent().clone()
    torch.testing.assert_close(m1, G2.mean_latent())
    z = torch.randn(10000, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m1, G1.mapping(z).mean(0), rtol=1e-4, atol=1e-5)


def test_style_mix(tiny_G):
    w1, w2 = torch.randn(2, 32), torch.randn(2, 32)
    ws = tiny_G.style_mix(w1, w2, 3)
    assert ws.shape == (2, tiny_G.num_ws, 32)
    assert torch.equal(ws[:, :3], w1[:, None].expand(-1, 3, -1))
    assert torch.equal(ws[:, 3:], w2[:, None].expand(-1, tiny_G.num_ws - 3, -1))
    per = tiny_G.style_mix(w1, w2, torch.tensor([1, 5]))
    assert torch.equal(per[0, 1], w2[0]) and torch.equal(per[1, 4], w1[1]) and torch.equal(per[1, 5], w2[1])
    img = tiny_G.synthesis(ws)
    assert img.shape == (2, 3, 32, 32)


def test_sample_is_seeded_and_independent_of_batch_size(tiny_G):
    a = tiny_G.sample(5, seed=7, batch_size=2)
    b = tiny_G.sample(5, seed=7, batch_size=5)
    assert a.shape == (5, 3, 32, 32) and a.device.type == "cpu"
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - tiny_G.sample(5, seed=8)).abs().max() > 1e-2
    d = torch.randn(tiny_G.num_domain_params) * 0.5
    assert (tiny_G.sample(2, domain=d, seed=7) - a[:2]).abs().max() > 1e-2


def test_gradient_reaches_only_the_domain_vector(tiny_G):
    d = torch.zeros(tiny_G.num_domain_params, requires_grad=True)
    with torch.no_grad():
        src = tiny_G(torch.randn(2, 32))
    out = tiny_G(torch.randn(2, 32), domain=d)
    (out - src).square().mean().backward()
    assert d.grad is not None and d.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_G.parameters())


def test_domain_of_wrong_length_names_both_sizes(tiny_G):
    with pytest.raises(HyperdomainError, match=r"domain has shape \[10\], expected \[224\]"):
        tiny_G(torch.randn(1, 32), domain=torch.zeros(10))
    with pytest.raises(HyperdomainError, match=r"expected \[2, 224\]"):
        tiny_G(torch.randn(2, 32), domain=torch.zeros(3, 224))


def test_config_inferred_from_tensor_shapes():
    cfg = GeneratorConfig(resolution=64, style_dim=16, n_mlp=3, channels=(24, 20, 16, 12, 8))
    torch.manual_seed(0)
    G = Generator(cfg)
    assert config_from_state_dict(G.state_dict()) == cfg
    G2 = generator_from_state(G.state_dict(), name="x")
    assert G2.config == cfg and G2.fingerprint == G.fingerprint
    assert not any(p.requires_grad for p in G2.parameters()) and not G2.training
    z = torch.randn(2, 16)
    torch.testing.assert_close(G2(z), G.eval()(z))


def test_bad_state_dicts_name_the_problem(tiny_G):
    sd = dict(tiny_G.state_dict())
    sd.pop("convs.1.noise.weight")
    with pytest.raises(HyperdomainError, match=r"ck\.pt: .*missing keys \['convs\.1\.noise\.weight'\]"):
        generator_from_state(sd, where="ck.pt")
    sd = dict(tiny_G.state_dict())
    sd["conv1.activate.bias"] = torch.zeros(7)
    with pytest.raises(HyperdomainError, match=r"conv1\.activate\.bias has shape \[7\], expected \[32\]"):
        generator_from_state(sd, where="ck.pt")
    with pytest.raises(HyperdomainError, match=r"no 'style\.1\.weight'"):
        generator_from_state({"foo": torch.zeros(1)}, where="ck.pt")
    sd = dict(tiny_G.state_dict())
    sd["noises.noise_6"] = torch.zeros(1, 1, 48, 48)
    with pytest.raises(HyperdomainError, match="power of two"):
        generator_from_state(sd, where="ck.pt")


def test_config_refuses_non_power_of_two():
    with pytest.raises(HyperdomainError, match="power of two"):
        GeneratorConfig(resolution=48, style_dim=8, n_mlp=1, channels=(8, 8, 8))


def test_domain_gradient_matches_weight_side(G64):
    import stylegan2_ops

    torch.manual_seed(6)
    z = torch.randn(3, 32, dtype=torch.float64)
    target = torch.randn(3, 3, 32, 32, dtype=torch.float64)

    def grad():
        d = (0.2 * torch.randn(3, G64.num_domain_params, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(1))).requires_grad_(True)
        (G64(z, domain=d) - target).square().mean().backward()
        return d.grad

    fast = grad()
    with stylegan2_ops.pin_modulated_conv2d("ref"):
        torch.testing.assert_close(fast, grad(), rtol=1e-9, atol=1e-12)


def test_conv_clamp_limits_each_layer_output_like_nvidia():
    """NVIDIA's networks clamp each layer's output (after the lrelu gain) at conv_clamp."""
    from hyperdomain.model.layers import StyledConv

    torch.manual_seed(7)
    free, clamped = StyledConv(8, 8, 16, upsample=False, clamp=None), StyledConv(8, 8, 16, upsample=False, clamp=0.5)
    clamped.load_state_dict(free.state_dict())
    x, w = torch.randn(2, 8, 6, 6), torch.randn(2, 16)
    y = free(x, w)
    assert y.abs().max() > 0.5
    torch.testing.assert_close(clamped(x, w), y.clamp(-0.5, 0.5))
