"""Generator checkpoints: the port's files, NVIDIA network pickles, and refusing pickled code."""
import argparse
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hyperdomain.files.generator_files import nvidia_to_port, read_generator_file
from stylegan2_ops import blur_kernel
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.restricted_unpickler import load_nvidia_pickle, load_torch_file

from conftest import make_tiny_generator

RES, CH, W_DIM, N_MLP = 32, 32, 32, 2


# ----------------------------------------------------------------------------------------------
# NVIDIA-format pickles written by the test: throwaway `torch_utils.persistence` and `dnnlib.util`
# modules make the stream reference exactly the globals real snapshots reference. Each network's
# embedded `module_src` would write a marker file and abort if anything executed it.
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def nvidia(monkeypatch, tmp_path):
    marker = tmp_path / "module_src_was_executed"
    src = f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit('module_src executed')\n"

    def _reconstruct_persistent_obj(meta):  # the real one execs meta["module_src"]
        marker.write_text("reconstructed by the original function")
        raise AssertionError("the original reconstruct function must never be called")

    persistence = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    dnnlib_util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    dnnlib_util.EasyDict = EasyDict
    for name, mod in [("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                      ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", dnnlib_util)]:
        monkeypatch.setitem(sys.modules, name, mod)

    class Net:
        """Pickles like a `@persistent_class` network: reconstruct(meta) with source and state."""

        def __init__(self, class_name, params=(), buffers=(), modules=(), init_kwargs=None, **attrs):
            self.class_name, self.attrs = class_name, attrs
            self.params, self.buffers, self.modules = OrderedDict(params), OrderedDict(buffers), OrderedDict(modules)
            self.init_kwargs = EasyDict(init_kwargs or {})

        def __reduce__(self):
            state = {
                "training": False,
                "_parameters": OrderedDict((k, torch.nn.Parameter(v.clone(), requires_grad=False))
                                           for k, v in self.params.items()),
                "_buffers": OrderedDict((k, v.clone()) for k, v in self.buffers.items()),
                "_non_persistent_buffers_set": set(),
                "_modules": self.modules,
                "_forward_hooks": OrderedDict(),
                "_init_args": (),
                "_init_kwargs": self.init_kwargs,
                "_orig_module_src": src,
                "_orig_class_name": self.class_name,
                **self.attrs,
            }
            meta = dict(type="class", version=4, module_src=src, class_name=self.class_name, state=state)
            return (_reconstruct_persistent_obj, (meta,))

    ns = types.SimpleNamespace(Net=Net, EasyDict=EasyDict, marker=marker)
    yield ns
    assert not marker.exists(), "embedded module source or the original reconstruct function was run"


def _filter():
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum()


def port_to_nvidia(nv, sd, latent_avg, c_dim=0, conv_clamp=256):
    """Build NVIDIA's network tree from a port state dict (WEIGHTS.md's correspondence, inverted)."""
    Net = nv.Net
    w_dim = sd["style.1.weight"].shape[1]
    n_mlp = max(int(k.split(".")[1]) for k in sd if k.startswith("style."))
    fcs = [(f"fc{i}", Net("FullyConnectedLayer", [("weight", sd[f"style.{i + 1}.weight"]),
                                                   ("bias", sd[f"style.{i + 1}.bias"])], activation="lrelu"))
           for i in range(n_mlp)]
    mapping = Net("MappingNetwork", buffers=[("w_avg", latent_avg)], modules=fcs,
                  init_kwargs=dict(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, num_ws=10, num_layers=n_mlp))

    def affine(port):
        return Net("FullyConnectedLayer", [("weight", sd[f"{port}.modulation.weight"]),
                                           ("bias", sd[f"{port}.modulation.bias"])])

    def layer(port, k, res):
        return Net("SynthesisLayer",
                   params=[("weight", sd[f"{port}.conv.weight"][0]), ("noise_strength", sd[f"{port}.noise.weight"][0]),
                           ("bias", sd[f"{port}.activate.bias"])],
                   buffers=[("resample_filter", _filter()), ("noise_const", sd[f"noises.noise_{k}"][0, 0])],
                   modules=[("affine", affine(f"{port}.conv"))], conv_clamp=conv_clamp, resolution=res)

    def torgb(port):
        return Net("ToRGBLayer", params=[("weight", sd[f"{port}.conv.weight"][0]), ("bias", sd[f"{port}.bias"].reshape(3))],
                   modules=[("affine", affine(f"{port}.conv"))], conv_clamp=conv_clamp)

    blocks = [("b4", Net("SynthesisBlock", params=[("const", sd["input.input"][0])],
                         buffers=[("resample_filter", _filter())],
                         modules=[("conv1", layer("conv1", 0, 4)), ("torgb", torgb("to_rgb1"))]))]
    n_up = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    for j in range(n_up):
        res = 8 * 2**j
        blocks.append((f"b{res}", Net("SynthesisBlock", buffers=[("resample_filter", _filter())], modules=[
            ("conv0", layer(f"convs.{2 * j}", 2 * j + 1, res)),
            ("conv1", layer(f"convs.{2 * j + 1}", 2 * j + 2, res)),
            ("torgb", torgb(f"to_rgbs.{j}"))])))
    synthesis = Net("SynthesisNetwork", modules=blocks, init_kwargs=dict(w_dim=w_dim, img_resolution=4 * 2**n_up))
    EasyDict = nv.EasyDict
    return Net("Generator", modules=[("mapping", mapping), ("synthesis", synthesis)],
               init_kwargs=EasyDict(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=4 * 2**n_up, img_channels=3,
                                    mapping_kwargs=EasyDict(num_layers=n_mlp),
                                    synthesis_kwargs=EasyDict(channel_base=16384, channel_max=512,
                                                              num_fp16_res=0, conv_clamp=conv_clamp)))


def write_snapshot(nv, path, G_ema, protocol=4):
    snapshot = {"G": G_ema, "D": None, "G_ema": G_ema, "augment_pipe": None,
                "training_set_kwargs": nv.EasyDict(resolution=np.int64(RES), xflip=False, max_size=np.int32(70000),
                                                   scale=np.float32(0.5), dtype=np.dtype("<f4"))}
    with open(path, "wb") as f:
        pickle.dump(snapshot, f, protocol=protocol)
    return path


def _tiny_state():
    G = make_tiny_generator(seed=1)
    return G, {k: v.clone() for k, v in G.state_dict().items()}, torch.randn(W_DIM)


# ---------------------------------------------------------------------------- NVIDIA pickles
@pytest.mark.parametrize("protocol", [3, 4])
def test_nvidia_snapshot_converts_to_every_port_key(nvidia, tmp_path, protocol):
    _, sd, latent_avg = _tiny_state()
    path = write_snapshot(nvidia, tmp_path / "snap.pkl", port_to_nvidia(nvidia, sd, latent_avg), protocol)
    stream = path.read_bytes()  # the stream really references the persistence machinery
    for name in (b"torch_utils.persistence", b"_reconstruct_persistent_obj", b"dnnlib.util", b"EasyDict",
                 b"module_src", b"_load_from_bytes", b"_rebuild_parameter"):
        assert name in stream, name

    ckpt = read_generator_file(path)
    out = ckpt["g_ema"]
    # expected port keys, written out independently for a 32 px, 2-layer-mapping generator
    expected = {f"style.{i}.{p}" for i in (1, 2) for p in ("weight", "bias")} | {"input.input"}
    convs = ["conv1"] + [f"convs.{i}" for i in range(6)]
    for c in convs:
        expected |= {f"{c}.conv.weight", f"{c}.conv.modulation.weight", f"{c}.conv.modulation.bias",
                     f"{c}.noise.weight", f"{c}.activate.bias"}
    expected |= {f"convs.{i}.conv.blur.kernel" for i in (0, 2, 4)}
    for r in ["to_rgb1"] + [f"to_rgbs.{j}" for j in range(3)]:
        expected |= {f"{r}.conv.weight", f"{r}.conv.modulation.weight", f"{r}.conv.modulation.bias", f"{r}.bias"}
    expected |= {f"to_rgbs.{j}.upsample.kernel" for j in range(3)}
    expected |= {f"noises.noise_{k}" for k in range(7)}
    assert set(out) == expected == set(sd)
    for k in expected:
        assert out[k].shape == sd[k].shape, k
        assert out[k].dtype == torch.float32, k
        assert torch.equal(out[k], sd[k]), f"{k} did not arrive at the right key"
    assert out["conv1.conv.weight"].shape == (1, CH, CH, 3, 3)
    assert out["to_rgb1.bias"].shape == (1, 3, 1, 1)
    assert out["noises.noise_6"].shape == (1, 1, 32, 32)
    assert torch.allclose(out["convs.0.conv.blur.kernel"], blur_kernel(2))
    assert abs(blur_kernel(2).sum().item() - 4.0) < 1e-6
    assert torch.equal(ckpt["latent_avg"], latent_avg)
    assert ckpt["conv_clamp"] == 256.0


def test_nvidia_snapshot_plain_data(nvidia, tmp_path):
    _, sd, latent_avg = _tiny_state()
    path = write_snapshot(nvidia, tmp_path / "snap.pkl", port_to_nvidia(nvidia, sd, latent_avg))
    snap = load_nvidia_pickle(path)
    ts = snap["training_set_kwargs"]
    assert type(ts) is dict and ts["resolution"] == RES and type(ts["resolution"]) is int
    assert ts["scale"] == 0.5 and ts["max_size"] == 70000 and ts["dtype"] == np.dtype("<f4")
    G = snap["G_ema"]
    assert G["class_name"] == "Generator" and type(G["init_kwargs"]) is dict
    assert type(G["init_kwargs"]["synthesis_kwargs"]) is dict
    layer = G["_modules"]["synthesis"]["_modules"]["b8"]["_modules"]["conv0"]
    assert layer["attributes"]["conv_clamp"] == 256 and layer["attributes"]["resolution"] == 8
    assert type(layer["_parameters"]["weight"]) is torch.Tensor
    assert "module_src" not in str(G.keys())


def test_generator_from_nvidia_pickle_gives_same_images(nvidia, tmp_path):
    from hyperdomain.model.generator import generator_from_state

    G, sd, latent_avg = _tiny_state()
    path = write_snapshot(nvidia, tmp_path / "snap.pkl", port_to_nvidia(nvidia, sd, latent_avg))
    ckpt = read_generator_file(path)
    G2 = generator_from_state(ckpt["g_ema"], ckpt["latent_avg"], conv_clamp=ckpt["conv_clamp"])
    assert torch.equal(G2.mean_latent(), latent_avg)
    z = torch.randn(2, W_DIM, generator=torch.Generator().manual_seed(0))
    d = 0.3 * torch.randn(G.num_domain_params, generator=torch.Generator().manual_seed(1))
    domains = torch.stack([torch.zeros_like(d), d])  # one sample at the source domain, one adapted
    with torch.no_grad():
        a = G(z, domain=domains, truncation=1.0, noise_mode="const")
        b = G2(z, domain=domains, truncation=1.0, noise_mode="const")
    assert a.shape == (2, 3, RES, RES)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


# ---------------------------------------------------------------------------- NVIDIA's network, transcribed
# The tests above build their pickles from our own state dict with port_to_nvidia, the inverse of the
# key table under test. Here the pickle holds parameters drawn directly in NVIDIA's layout, and the
# images are checked against StyleGAN2-ADA's forward pass (training/networks.py with
# torch_utils/ops/conv2d_resample.py, upfirdn2d.py and bias_act.py), transcribed below in plain torch
# ops, in float64, using nothing from hyperdomain.

NV_CHANNELS = {4: 32, 8: 32, 16: 24, 32: 16}  # unequal widths: a swapped in/out axis cannot go unnoticed
NV_MAPPING_LR = 0.01  # MappingNetwork's lr_multiplier


def nvidia_parameters(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random parameters and buffers of a 32 px StyleGAN2-ADA Generator, by NVIDIA's names and
    shapes. Biases, noise strengths and affine offsets are non-zero so every term counts."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(shape, generator=gen)

    p = {}
    for i in range(N_MLP):  # stored as NVIDIA initialises them: divided by the lr multiplier
        p[f"mapping.fc{i}.weight"] = randn(W_DIM, W_DIM) / NV_MAPPING_LR
        p[f"mapping.fc{i}.bias"] = randn(W_DIM, std=0.3) / NV_MAPPING_LR
    p["mapping.w_avg"] = randn(W_DIM, std=0.5)

    def affine(prefix, c_in):
        p[f"{prefix}.affine.weight"] = randn(c_in, W_DIM)
        p[f"{prefix}.affine.bias"] = randn(c_in, mean=1.0, std=0.2)  # bias_init=1

    def layer(prefix, c_in, c_out, res):
        affine(prefix, c_in)
        p[f"{prefix}.weight"] = randn(c_out, c_in, 3, 3)
        p[f"{prefix}.noise_strength"] = randn(std=0.3)
        p[f"{prefix}.bias"] = randn(c_out, std=0.3)
        p[f"{prefix}.resample_filter"] = _filter()
        p[f"{prefix}.noise_const"] = randn(res, res)

    def torgb(prefix, c_in):
        affine(prefix, c_in)
        p[f"{prefix}.weight"] = randn(3, c_in, 1, 1)
        p[f"{prefix}.bias"] = randn(3, std=0.3)

    p["synthesis.b4.const"] = randn(NV_CHANNELS[4], 4, 4)
    p["synthesis.b4.resample_filter"] = _filter()
    layer("synthesis.b4.conv1", NV_CHANNELS[4], NV_CHANNELS[4], 4)
    torgb("synthesis.b4.torgb", NV_CHANNELS[4])
    for res in (8, 16, 32):
        b = f"synthesis.b{res}"
        p[f"{b}.resample_filter"] = _filter()
        layer(f"{b}.conv0", NV_CHANNELS[res // 2], NV_CHANNELS[res], res)
        layer(f"{b}.conv1", NV_CHANNELS[res], NV_CHANNELS[res], res)
        torgb(f"{b}.torgb", NV_CHANNELS[res])
    return p


def nvidia_network(nv, p, conv_clamp):
    """The pickled module tree of NVIDIA's Generator holding the flat parameters ``p``."""
    Net = nv.Net
    params = {"weight", "bias", "const", "noise_strength"}

    def net(class_name, prefix, children=(), **attrs):
        own = [(k[len(prefix) + 1:], v) for k, v in p.items()
               if k.startswith(prefix + ".") and "." not in k[len(prefix) + 1:]]
        return Net(class_name, params=[(k, v) for k, v in own if k in params],
                   buffers=[(k, v) for k, v in own if k not in params],
                   modules=[(c.split(".")[-1], m) for c, m in children], **attrs)

    def fc(prefix, **attrs):
        return net("FullyConnectedLayer", prefix, **attrs)

    def layer(prefix, res):
        return net("SynthesisLayer", prefix, [(prefix + ".affine", fc(prefix + ".affine"))],
                   conv_clamp=conv_clamp, resolution=res)

    def torgb(prefix):
        return net("ToRGBLayer", prefix, [(prefix + ".affine", fc(prefix + ".affine"))], conv_clamp=conv_clamp)

    mapping = net("MappingNetwork", "mapping",
                  [(f"fc{i}", fc(f"mapping.fc{i}", activation="lrelu")) for i in range(N_MLP)],
                  init_kwargs=dict(z_dim=W_DIM, c_dim=0, w_dim=W_DIM, num_ws=8, num_layers=N_MLP))
    blocks = [("b4", net("SynthesisBlock", "synthesis.b4", [("conv1", layer("synthesis.b4.conv1", 4)),
                                                            ("torgb", torgb("synthesis.b4.torgb"))]))]
    for res in (8, 16, 32):
        b = f"synthesis.b{res}"
        blocks.append((f"b{res}", net("SynthesisBlock", b, [("conv0", layer(f"{b}.conv0", res)),
                                                             ("conv1", layer(f"{b}.conv1", res)),
                                                             ("torgb", torgb(f"{b}.torgb"))])))
    synthesis = net("SynthesisNetwork", "synthesis", blocks, init_kwargs=dict(w_dim=W_DIM, img_resolution=RES))
    E = nv.EasyDict
    return Net("Generator", modules=[("mapping", mapping), ("synthesis", synthesis)],
               init_kwargs=E(z_dim=W_DIM, c_dim=0, w_dim=W_DIM, img_resolution=RES, img_channels=3,
                             mapping_kwargs=E(num_layers=N_MLP),
                             synthesis_kwargs=E(channel_base=512, channel_max=32, num_fp16_res=0,
                                                conv_clamp=conv_clamp)))


def _nv_act(x, bias, act, clamp):
    """bias_act: add the bias along channels, lrelu(0.2) with its default gain sqrt(2) (or linear,
    gain 1), then clamp to [-clamp, clamp]."""
    x = x + bias.reshape(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu":
        x = torch.where(x >= 0, x, 0.2 * x) * 2**0.5
    return x if clamp is None else x.clamp(-clamp, clamp)


def _nv_fc(p, prefix, x, lr=1.0, act="linear"):
    """FullyConnectedLayer: weight gain lr / sqrt(in_features), bias gain lr."""
    w = p[f"{prefix}.weight"] * (lr / p[f"{prefix}.weight"].shape[1] ** 0.5)
    return _nv_act(x @ w.t(), p[f"{prefix}.bias"] * lr, act, None)


def _nv_upfirdn(x, f, up, pad, gain):
    """upfirdn2d's reference: insert up - 1 zeros after each pixel, pad by (x0, x1, y0, y1), then a
    true convolution (the filter flipped, as flip_filter=False) with the filter times gain."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, pad)
    k = (f * gain).flip([0, 1])
    return F.conv2d(x, k[None, None].repeat(c, 1, 1, 1), groups=c)


def _nv_modulated_conv(x, weight, styles, f, up, demodulate):
    """modulated_conv2d as in eval (fused_modconv): per-sample weights weight * styles along the input
    channels, demodulated by rsqrt(sum of their squares + 1e-8) per output channel."""
    w = weight[None] * styles[:, None, :, None, None]  # [B, O, I, k, k]
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
    k = weight.shape[-1]
    out = []
    for xi, wi in zip(x, w):  # the grouped conv, one sample at a time
        xi = xi[None]
        if up == 1:  # flip_weight=True: conv2d as is (a correlation), padding k // 2
            out.append(F.conv2d(xi, wi, padding=k // 2))
            continue
        # conv2d_resample with up=2, padding=1 and the 4-tap filter: the padding grows by
        # (4 + 2 - 1) // 2 = 2 before and (4 - 2) // 2 = 1 after, then shrinks by k - 1 before and
        # k - up after for the transposed conv, leaving px0 = px1 = 1 and no padding inside it.
        fw = f.shape[-1]
        p0 = k // 2 + (fw + up - 1) // 2 - (k - 1)
        p1 = k // 2 + (fw - up) // 2 - (k - up)
        assert (p0, p1) == (1, 1)
        # SynthesisLayer passes flip_weight=(up == 1) = False and conv2d_resample inverts it for the
        # transposed conv, so the weight goes in unflipped, as [I, O, k, k]
        y = F.conv_transpose2d(xi, wi.transpose(0, 1), stride=up)  # [1, O, 2H + 1, 2W + 1]
        out.append(_nv_upfirdn(y, f, 1, [p0, p1, p0, p1], gain=up**2))
    return torch.cat(out)


def nvidia_forward(p, z, truncation, conv_clamp, noise_mode="const", ws=None):
    """StyleGAN2-ADA's Generator(z, c=None, truncation_psi, noise_mode): mapping, then the skip
    synthesis. Or, given ``ws`` [B, 8, w_dim], the synthesis alone. All in float64."""
    p = {k: v.double() for k, v in p.items()}
    if ws is None:
        x = z.double()
        x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
        for i in range(N_MLP):
            x = _nv_fc(p, f"mapping.fc{i}", x, lr=NV_MAPPING_LR, act="lrelu")
        ws = x[:, None].repeat(1, 8, 1)
        if truncation != 1:
            ws = p["mapping.w_avg"].lerp(ws, truncation)
    ws = ws.double()

    def layer(prefix, x, w, up):
        styles = _nv_fc(p, f"{prefix}.affine", w)
        x = _nv_modulated_conv(x, p[f"{prefix}.weight"], styles, p[f"{prefix}.resample_filter"], up, True)
        if noise_mode == "const":
            x = x + p[f"{prefix}.noise_const"] * p[f"{prefix}.noise_strength"]
        return _nv_act(x, p[f"{prefix}.bias"], "lrelu", conv_clamp)  # the clamp after the gain

    def torgb(prefix, x, w):
        c_in = p[f"{prefix}.weight"].shape[1]
        styles = _nv_fc(p, f"{prefix}.affine", w) / c_in**0.5  # weight_gain 1 / sqrt(in_channels * 1 * 1)
        x = _nv_modulated_conv(x, p[f"{prefix}.weight"], styles, None, 1, False)
        return _nv_act(x, p[f"{prefix}.bias"], "linear", conv_clamp)

    x = p["synthesis.b4.const"][None].repeat(ws.shape[0], 1, 1, 1)
    x = layer("synthesis.b4.conv1", x, ws[:, 0], 1)
    img = torgb("synthesis.b4.torgb", x, ws[:, 1])
    i = 1  # each block reads num_conv + num_torgb latents from i and moves on by num_conv
    for res in (8, 16, 32):
        b = f"synthesis.b{res}"
        x = layer(f"{b}.conv0", x, ws[:, i], 2)
        x = layer(f"{b}.conv1", x, ws[:, i + 1], 1)
        f = p[f"{b}.resample_filter"]
        fw = f.shape[-1]  # upsample2d: padding (fw + 1) // 2 before, (fw - 2) // 2 after, gain 4
        img = _nv_upfirdn(img, f, 2, [(fw + 1) // 2, (fw - 2) // 2] * 2, gain=4)
        img = img + torgb(f"{b}.torgb", x, ws[:, i + 2])
        i += 2
    return img


@pytest.mark.parametrize("conv_clamp", [None, 0.5])
def test_nvidia_pickle_gives_nvidias_images(nvidia, tmp_path, conv_clamp):
    """A pickle of parameters drawn in NVIDIA's layout, read and converted, gives the images of the
    transcribed StyleGAN2-ADA forward pass: mapping with truncation to w_avg, and synthesis from
    per-layer W+ latents (so each layer's latent index counts too)."""
    from hyperdomain.model.generator import generator_from_state

    p = nvidia_parameters()
    path = write_snapshot(nvidia, tmp_path / "nv.pkl", nvidia_network(nvidia, p, conv_clamp))
    ckpt = read_generator_file(path)
    G = generator_from_state(ckpt["g_ema"], ckpt["latent_avg"], conv_clamp=ckpt["conv_clamp"])
    G64 = generator_from_state(ckpt["g_ema"], ckpt["latent_avg"], conv_clamp=ckpt["conv_clamp"]).double()
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(3, W_DIM, generator=gen, dtype=torch.float64)
    ws = torch.randn(3, 8, W_DIM, generator=gen, dtype=torch.float64)
    if conv_clamp is not None:  # the clamp must bite, or this case would not test it
        unclamped = nvidia_forward(p, z, 1.0, None)
        assert (nvidia_forward(p, z, 1.0, conv_clamp) - unclamped).abs().max() > 0.1
    with torch.no_grad():
        for truncation in (1.0, 0.7):
            want = nvidia_forward(p, z, truncation, conv_clamp)
            assert want.shape == (3, 3, RES, RES) and want.abs().max() > 0.5
            got = G64(z, truncation=truncation, noise_mode="const")
            # float64 agrees but for the demodulation's 1e-8: NVIDIA adds it to the squares of the raw
            # weights, the port to those of the weights times 1 / sqrt(fan_in): 1e-7 apart here (1e-14
            # with the port's epsilon put into the transcription); a wrong layer is off by O(1)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            got32 = G(z.float(), truncation=truncation, noise_mode="const")
            # float32 rounding (unit roundoff 6e-8) through 11 layers of sums over <= 288 terms:
            # 6e-6 measured, on images up to 6
            torch.testing.assert_close(got32.double(), want, rtol=1e-4, atol=1e-4)
        want = nvidia_forward(p, None, 1.0, conv_clamp, ws=ws)
        torch.testing.assert_close(G64.synthesis(ws, noise_mode="const"), want, rtol=1e-6, atol=1e-6)
        # noise_mode "none" drops exactly the noise terms
        want = nvidia_forward(p, None, 1.0, conv_clamp, noise_mode="none", ws=ws)
        torch.testing.assert_close(G64.synthesis(ws, noise_mode="none"), want, rtol=1e-6, atol=1e-6)


def test_conditional_and_stylegan3_refused(nvidia, tmp_path):
    _, sd, latent_avg = _tiny_state()
    path = write_snapshot(nvidia, tmp_path / "cond.pkl", port_to_nvidia(nvidia, sd, latent_avg, c_dim=10))
    with pytest.raises(HyperdomainError, match=r"cond\.pkl: conditional generator \(c_dim=10\)"):
        read_generator_file(path)

    Net = nvidia.Net
    sg3 = Net("Generator", modules=[
        ("mapping", Net("MappingNetwork", modules=[("fc0", Net("FullyConnectedLayer", [("weight", torch.zeros(4, 4))]))])),
        ("synthesis", Net("SynthesisNetwork", modules=[("input", Net("SynthesisInput")),
                                                       ("L0_36_512", Net("SynthesisLayer"))]))],
        init_kwargs=dict(c_dim=0))
    path = write_snapshot(nvidia, tmp_path / "sg3.pkl", sg3)
    with pytest.raises(HyperdomainError, match=r"not a StyleGAN2 network.*'input'.*StyleGAN3"):
        read_generator_file(path)


def test_leftover_and_mismatched_tensors_reported(nvidia):
    import io

    from hyperdomain.files import restricted_unpickler as safe_pickle

    _, sd, latent_avg = _tiny_state()

    def reconstructed(net):  # through the safe loader, then tampered with below
        return safe_pickle._NvidiaUnpickler(io.BytesIO(pickle.dumps(net, protocol=4))).load()

    state = safe_pickle._finish_nvidia(reconstructed(port_to_nvidia(nvidia, sd, latent_avg)))
    state["_modules"]["synthesis"]["_modules"]["b16"]["_buffers"]["skip_filter"] = torch.zeros(4, 4)
    with pytest.raises(HyperdomainError, match=r"no counterpart in the port: \['synthesis\.b16\.skip_filter'\]"):
        nvidia_to_port(state)

    state = safe_pickle._finish_nvidia(reconstructed(port_to_nvidia(nvidia, sd, latent_avg)))
    b8 = state["_modules"]["synthesis"]["_modules"]["b8"]
    b8["_modules"]["conv1"]["_parameters"]["weight"] = torch.zeros(CH, CH + 1, 3, 3)
    with pytest.raises(HyperdomainError, match=r"synthesis\.b8\.conv1\.weight has shape \[32, 33, 3, 3\], expected \[\*, 32, 3, 3\]"):
        nvidia_to_port(state)

    state = safe_pickle._finish_nvidia(reconstructed(port_to_nvidia(nvidia, sd, latent_avg)))
    state["_modules"]["synthesis"]["_modules"]["b8"]["_buffers"]["resample_filter"] = torch.full((4, 4), 1 / 16)
    with pytest.raises(HyperdomainError, match="standard"):
        nvidia_to_port(state)


# ---------------------------------------------------------------------------- refusing code
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_raw_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Evil(marker)}, protocol=4))
    with pytest.raises(HyperdomainError) as e:
        read_generator_file(path)
    msg = str(e.value)
    assert f"{os.system.__module__}.system" in msg and str(path) in msg and "\n" not in msg
    assert not marker.exists()


def test_malicious_torch_file_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": {"x": torch.zeros(1)}, "hook": _Evil(marker)}, path)
    with pytest.raises(HyperdomainError, match=rf"evil\.pt: refused to load '{os.system.__module__}\.system'"):
        read_generator_file(path)
    assert not marker.exists()


def test_other_globals_refused_by_name(nvidia, tmp_path):
    path = tmp_path / "odd.pkl"
    path.write_bytes(pickle.dumps({"G_ema": argparse.Namespace(a=1)}, protocol=4))
    with pytest.raises(HyperdomainError, match=r"refused to load 'argparse\.Namespace'"):
        read_generator_file(path)


# ---------------------------------------------------------------------------- port checkpoints
def test_rosinality_checkpoint_with_namespace(tiny_ckpt, tiny_G):
    path, latent_avg = tiny_ckpt
    raw = load_torch_file(path)
    assert raw["args"] == {"size": 32, "channel_multiplier": 2} and type(raw["args"]) is dict
    ckpt = read_generator_file(path)
    assert set(ckpt["g_ema"]) == set(tiny_G.state_dict())
    assert all(torch.equal(ckpt["g_ema"][k], v) for k, v in tiny_G.state_dict().items())
    assert torch.equal(ckpt["latent_avg"], latent_avg) and ckpt["conv_clamp"] is None


def test_full_training_checkpoint_takes_g_ema(tmp_path):
    G_train, G_ema = make_tiny_generator(seed=2), make_tiny_generator(seed=3)
    path = tmp_path / "train.pt"
    torch.save({"g": G_train.state_dict(), "d": {"convs.0.0.weight": torch.zeros(2)}, "g_ema": G_ema.state_dict(),
                "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "betas": (0.0, 0.99)}]},
                "d_optim": {"state": {}}, "args": argparse.Namespace(iter=800000, size=32),
                "latent_avg": torch.ones(1, 32)}, path, _use_new_zipfile_serialization=False)  # legacy format too
    ckpt = read_generator_file(path)
    assert torch.equal(ckpt["g_ema"]["conv1.conv.weight"], G_ema.state_dict()["conv1.conv.weight"])
    assert not torch.equal(ckpt["g_ema"]["conv1.conv.weight"], G_train.state_dict()["conv1.conv.weight"])
    assert ckpt["latent_avg"].shape == (32,)


def test_bare_state_dict_accepted_and_junk_refused(tmp_path, tiny_G):
    path = tmp_path / "bare.pt"
    torch.save(tiny_G.state_dict(), path)
    assert read_generator_file(path)["latent_avg"] is None
    path = tmp_path / "junk.pt"
    torch.save({"model": {"fc.weight": torch.zeros(2)}}, path)
    with pytest.raises(HyperdomainError, match=r"junk\.pt: not a StyleGAN2 generator checkpoint"):
        read_generator_file(path)


# ---------------------------------------------------------------------------- corrupt files
def test_truncated_corrupt_empty(nvidia, tmp_path, tiny_ckpt):
    path, _ = tiny_ckpt
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(HyperdomainError, match=r"cut\.pt: truncated or corrupt checkpoint \("):
        read_generator_file(cut)

    _, sd, latent_avg = _tiny_state()
    pkl = write_snapshot(nvidia, tmp_path / "snap.pkl", port_to_nvidia(nvidia, sd, latent_avg))
    blob = pkl.read_bytes()
    for n in (len(blob) // 3, len(blob) - 1, 5):
        cut = tmp_path / f"cut{n}.pkl"
        cut.write_bytes(blob[:n])
        with pytest.raises(HyperdomainError, match=rf"cut{n}\.pkl: truncated or corrupt checkpoint"):
            read_generator_file(cut)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(HyperdomainError, match=r"empty\.pt: truncated or corrupt checkpoint \(empty file\)"):
        read_generator_file(empty)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint at all")
    with pytest.raises(HyperdomainError, match=r"notes\.pt: truncated or corrupt checkpoint"):
        read_generator_file(text)
    with pytest.raises(HyperdomainError, match=r"missing\.pt: no such checkpoint file"):
        read_generator_file(tmp_path / "missing.pt")
