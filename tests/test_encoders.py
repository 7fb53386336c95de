"""Photo encoders (e4e, ReStyle): parity with the official code, the released layout, import, our file.

The official code cannot run here (no network in CI, CUDA ops): ``fixtures/make_encoder_parity.py``
ran it once from the snapshots on weights drawn by ``fixtures/encoder_seeding.py`` and stored its
outputs in ``fixtures/encoder_parity.safetensors``; these tests draw the same weights into our
modules and compare. Release-shaped checkpoints are built here with stride-0 (expanded) tensors,
so a file of the full architecture takes kilobytes.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from conftest import make_tiny_generator
from hyperdomain.model.config import GeneratorConfig
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.safetensors_files import write_own_file
from hyperdomain.image.encoders import (
    KINDS, EncoderConfig, PhotoEncoder, default_config, encode, encoder_from_checkpoint, expected_tensors,
    fit_input, load_encoder, photo_input, read_release, save_encoder,
)

FIXTURES = Path(__file__).parent / "fixtures"
MARKER = "hyperdomain-encoder-pwned"


def _seeding():
    spec = importlib.util.spec_from_file_location("encoder_seeding", FIXTURES / "encoder_seeding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


seeding = _seeding()


@pytest.fixture(scope="module")
def parity():
    with safe_open(str(FIXTURES / "encoder_parity.safetensors"), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def _one_line(e: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg


def _seeded(config: EncoderConfig, seed: int, latent_avg) -> PhotoEncoder:
    return PhotoEncoder.from_state(config, seeding.seeded_state(expected_tensors(config), seed), latent_avg)


def _assert_close(ours: torch.Tensor, official: torch.Tensor) -> None:
    """Equal to float32 rounding: within 1e-5 of the largest magnitude (the sums differ in order
    between CPU kernels, and 24 residual units compound it)."""
    assert ours.shape == official.shape
    err = float((ours - official).abs().max())
    assert err <= 1e-5 * float(official.abs().max()), f"max difference {err} for values up to {float(official.abs().max())}"


# ---------------------------------------------------------------------------- parity with the official code
def test_the_released_layouts_are_the_official_modules(parity):
    meta, _ = parity
    official = json.loads(meta["released_keys"])
    for kind in KINDS:
        ours = [[k, list(s), str(d).replace("torch.", "")] for k, (s, d) in expected_tensors(default_config(kind)).items()]
        assert ours == official[kind], kind
    assert len(official["e4e"]) == 621 and len(official["restyle-psp"]) == 565


def test_e4e_matches_the_official_code(parity):
    meta, t = parity
    seed, size = int(meta["seed"]), int(meta["photo_size"])
    enc = _seeded(EncoderConfig("e4e", n_styles=8, input_size=size), seed, t["latent_avg_e4e"])
    with torch.no_grad():
        _assert_close(encode(enc, t["photo"]), t["e4e_ws"])
        enc.encoder.progressive_stage = 5  # a training stage: deltas for layers 1-5 only
        raw = enc.encoder(t["photo"])
    _assert_close(raw, t["e4e_stage5"])
    assert torch.equal(raw[:, 6], raw[:, 0]) and not torch.equal(raw[:, 5], raw[:, 0])


@pytest.mark.parametrize("kind", ["restyle-psp", "restyle-e4e"])
def test_restyle_matches_the_official_loop(parity, kind):
    meta, t = parity
    seed, size = int(meta["seed"]), int(meta["photo_size"])
    config = EncoderConfig(kind, n_styles=4, input_nc=6, input_size=size, n_iters=2)
    enc = _seeded(config, seed, t["latent_avg_restyle"])
    render = seeding.standin_render(4, seed)  # 128 px images, pooled to 64 as the official face_pool
    with torch.no_grad():
        steps = encode(enc, t["photo"], render=render, return_steps=True)
    official = t[kind.replace("-", "_") + "_ws"]  # [2 passes, 1, 4, 512]
    assert len(steps) == 2
    for ours, ref in zip(steps, official):
        _assert_close(ours, ref)
    # the second pass read the first pass's image: its residual is not the first one again
    assert float(((official[1] - official[0]) - (official[0] - t["latent_avg_restyle"])).abs().max()) > 1


# ---------------------------------------------------------------------------- encode
def test_encode_checks_its_input_and_resizes_photos():
    config = EncoderConfig("restyle-psp", n_styles=1, input_nc=6, input_size=32, n_iters=2)
    enc = _seeded(config, 0, torch.randn(1, 512))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with pytest.raises(HyperdomainError) as e:
        encode(enc, x)
    _one_line(e, "pass render(ws)")
    with pytest.raises(HyperdomainError) as e:
        encode(enc, torch.full((1, 3, 64, 64), 255.0), render=lambda ws: torch.zeros(len(ws), 3, 32, 32))
    _one_line(e, "[-1, 1]", "up to 255")
    with pytest.raises(HyperdomainError) as e:
        encode(enc, x, render=lambda ws: torch.zeros(len(ws), 32, 32))
    _one_line(e, "render(ws) must return images [1, 3, H, W]")
    with pytest.raises(HyperdomainError) as e:
        encode(enc, x[:, :1])
    _one_line(e, "[N, 3, H, W]", "[1, 1, 64, 64]")
    flat = lambda ws: torch.zeros(len(ws), 3, 64, 64)  # noqa: E731
    with torch.no_grad():
        ws = encode(enc, x, render=flat, n_iters=1)
        assert torch.equal(ws, encode(enc, fit_input(x, 32), render=flat, n_iters=1))
        assert ws.shape == (1, 1, 512)


def test_restyle_renders_with_the_project_generator():
    G = make_tiny_generator(config=DECODER)  # 8 px, W+ [4, 512]
    enc = _seeded(EncoderConfig("restyle-e4e", n_styles=4, input_nc=6, input_size=16, n_iters=3), 3, G.mean_latent())
    seen = []

    def render(ws):
        seen.append(ws)
        return G.synthesis(ws)  # constant noise, as the official loop renders

    with torch.no_grad():
        steps = encode(enc, torch.rand(2, 3, 40, 40) * 2 - 1, render=render, return_steps=True)
    assert [s.shape for s in steps] == [(2, 4, 512)] * 3
    assert len(seen) == 3 and seen[0].shape == (1, 4, 512)  # the average once, then passes 1 and 2
    assert torch.equal(seen[0][0], enc.latent_avg) and torch.equal(seen[1], steps[0]) and torch.equal(seen[2], steps[1])


def test_photo_input_is_the_official_transform():
    img = Image.fromarray((torch.arange(64 * 48 * 3) % 256).to(torch.uint8).reshape(48, 64, 3).numpy())
    x = photo_input(img, 32)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    ref = torch.from_numpy(np.array(img.resize((32, 32), Image.BILINEAR))).permute(2, 0, 1).float()
    assert torch.allclose(x[0], (ref / 255 - 0.5) / 0.5)


# ---------------------------------------------------------------------------- released checkpoints
ENCODER_TYPES = {"e4e": "Encoder4Editing", "restyle-psp": "BackboneEncoder", "restyle-e4e": "ProgressiveBackboneEncoder"}
DECODER = GeneratorConfig(resolution=8, style_dim=512, n_mlp=1, channels=(8, 8))  # 4 W+ layers, as output_size 8


class _Evil:
    """Pickles as a call to os.system: a loader that runs pickled code creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _release(kind: str, **changes) -> dict:
    """A checkpoint dict shaped like the official trainers' (4 style layers, an 8 px decoder)."""
    config = EncoderConfig(kind, 4, 3 if kind == "e4e" else 6, 256, 1 if kind == "e4e" else 5)
    sd = {}
    for k, (shape, dtype) in expected_tensors(config).items():
        # stride-0 views: torch.save keeps one number per tensor, the loader sees full shapes
        sd["encoder." + k] = torch.full((), 0.01).expand(shape) if dtype.is_floating_point else torch.tensor(7)
    sd.update({"decoder." + k: v for k, v in make_tiny_generator(config=DECODER).state_dict().items()})
    if kind == "e4e":
        opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 8, "start_from_latent_avg": True,
                "checkpoint_path": None, "lpips_lambda": 0.8}
    else:
        opts = {"encoder_type": ENCODER_TYPES[kind], "input_nc": 6, "output_size": 8, "n_iters_per_batch": 5,
                "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}
    ckpt = {"state_dict": sd, "latent_avg": torch.randn(4, 512), "opts": opts}
    if kind == "restyle-e4e":  # its trainer saved what continues training
        ckpt["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
        ckpt["step"] = 20000
    for k, v in changes.items():
        if v is None:
            ckpt.pop(k, None)
        else:
            ckpt[k] = v
    return ckpt


def _save(tmp_path: Path, obj, name: str = "release.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_a_release_shaped_checkpoint_imports(tmp_path, kind):
    ckpt = _release(kind)
    imp = read_release(_save(tmp_path, ckpt))
    assert imp.config == EncoderConfig(kind, 4, 3 if kind == "e4e" else 6, 256, 1 if kind == "e4e" else 5).as_dict()
    expected = expected_tensors(EncoderConfig(**imp.config))
    assert {k: (tuple(v.shape), v.dtype) for k, v in imp.state_dict.items()} == expected
    assert torch.equal(imp.latent_avg, ckpt["latent_avg"])
    assert set(imp.decoder) == {k[len("decoder."):] for k in ckpt["state_dict"] if k.startswith("decoder.")}
    assert imp.opts["encoder_type"] == ENCODER_TYPES[kind]
    enc = PhotoEncoder.from_state(EncoderConfig(**imp.config), imp.state_dict, imp.latent_avg)
    assert not enc.training and float(enc.encoder.styles[3].linear.bias[0]) == pytest.approx(0.01)


def test_release_variants_import(tmp_path):
    # opts as an argparse.Namespace (some versions); a [512] average latent (repeated per layer); no decoder
    ckpt = _release("restyle-psp", opts=argparse.Namespace(**_release("restyle-psp")["opts"]),
                    latent_avg=torch.ones(512))
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("encoder.")}
    imp = read_release(_save(tmp_path, ckpt))
    assert imp.decoder is None and imp.latent_avg.shape == (4, 512) and bool((imp.latent_avg == 1).all())
    enc = encoder_from_checkpoint(_save(tmp_path, _release("e4e"), "e4e.pt"), generator_fingerprint="abc")
    assert enc.config.kind == "e4e" and enc.meta["generator_fingerprint"] == "abc"


def _refused(tmp_path: Path, ckpt, *fragments: str) -> None:
    with pytest.raises(HyperdomainError) as e:
        read_release(_save(tmp_path, ckpt))
    _one_line(e, *fragments)


def test_a_broken_release_is_refused_in_one_line(tmp_path):
    ckpt = _release("e4e")
    del ckpt["state_dict"]["encoder.styles.3.linear.bias"]
    _refused(tmp_path, ckpt, "release.pt", "no tensor 'encoder.styles.3.linear.bias'", "e4e encoder with 4 style layers")

    ckpt = _release("restyle-psp")
    ckpt["state_dict"]["encoder.input_layer.0.weight"] = torch.zeros(64, 3, 3, 3)
    _refused(tmp_path, ckpt, "tensor 'encoder.input_layer.0.weight' has shape [64, 3, 3, 3], expected [64, 6, 3, 3]")

    ckpt = _release("restyle-e4e")
    ckpt["state_dict"]["encoder.latlayer1.weight"] = torch.zeros(512, 256, 1, 1)
    _refused(tmp_path, ckpt, "unexpected tensor 'encoder.latlayer1.weight'")

    ckpt = _release("e4e")
    w = torch.zeros(512, 512, 3, 3)
    w[1, 2, 0, 0] = float("nan")
    ckpt["state_dict"]["encoder.styles.0.convs.2.weight"] = w
    _refused(tmp_path, ckpt, "'encoder.styles.0.convs.2.weight' holds 1 non-finite numbers")

    ckpt = _release("restyle-psp")
    ckpt["latent_avg"] = torch.full((4, 512), float("inf"))
    _refused(tmp_path, ckpt, "'latent_avg' holds 2048 non-finite")
    _refused(tmp_path, _release("restyle-psp", latent_avg=None), "no 'latent_avg'")
    _refused(tmp_path, _release("e4e", latent_avg=torch.zeros(3, 512)), "'latent_avg' has shape [3, 512], expected [4, 512]")

    ckpt = _release("restyle-psp")
    ckpt["opts"]["encoder_type"] = "ResNetBackboneEncoder"
    _refused(tmp_path, ckpt, "encoder_type 'ResNetBackboneEncoder' is not supported")
    ckpt = _release("restyle-psp")
    ckpt["opts"]["output_size"] = 1024
    _refused(tmp_path, ckpt, "opts['output_size']=1024 means 18 style layers", "4 style heads")
    ckpt = _release("e4e")
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("decoder.to_rgbs.0")}
    _refused(tmp_path, ckpt, "the decoder takes 2 W+ layers", "the encoder makes 4")
    ckpt = _release("e4e")
    ckpt["state_dict"]["discriminator.w"] = torch.zeros(1)
    _refused(tmp_path, ckpt, "unexpected key 'discriminator.w'")
    _refused(tmp_path, {"g_ema": {}}, "not an e4e or ReStyle checkpoint")


def test_pickled_code_in_a_release_never_runs(tmp_path):
    marker = tmp_path / MARKER
    ckpt = _release("restyle-psp")
    ckpt["opts"]["hook"] = _Evil(marker)
    _refused(tmp_path, ckpt, "refused to load", "system")
    _refused(tmp_path, _Evil(marker), "refused to load")
    assert not marker.exists(), "a pickle ran code"


# ---------------------------------------------------------------------------- our encoder file
def test_encoder_file_round_trip_is_exact(tmp_path):
    config = EncoderConfig("e4e", n_styles=1, input_size=64)  # the full backbone: 160 MB on disk
    enc = _seeded(config, 1, torch.randn(1, 512))
    path = save_encoder(tmp_path / "enc.safetensors", enc, "fp123", source="e4e_ffhq_encode.pt")
    back = load_encoder(path)
    assert back.config == config and not back.training
    assert back.meta == {"generator_fingerprint": "fp123", "source": "e4e_ffhq_encode.pt", "file": str(path)}
    a, b = enc.state_dict(), back.state_dict()
    assert list(a) == list(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_other_files_are_refused_as_encoder_files(tmp_path):
    with pytest.raises(HyperdomainError) as e:
        load_encoder(write_own_file(tmp_path / "d.safetensors", "hyperdomain.domain", 1, {"domain": torch.zeros(3)}, {}))
    _one_line(e, "not a hyperdomain encoder file (it holds 'hyperdomain.domain'")
    with pytest.raises(HyperdomainError) as e:
        load_encoder(_save(tmp_path, {"state_dict": {}}))
    _one_line(e, "a torch checkpoint, not an encoder file", "import_encoder")

    config = json.dumps(EncoderConfig("restyle-psp", 1, 6).as_dict())
    meta = {"kind": "restyle-psp", "config": config, "generator_fingerprint": "fp", "source": ""}
    path = write_own_file(tmp_path / "e.safetensors", "hyperdomain.encoder", 1, {"latent_avg": torch.zeros(1, 512)}, meta)
    with pytest.raises(HyperdomainError) as e:
        load_encoder(path)
    _one_line(e, "e.safetensors: no tensor 'encoder.input_layer.0.weight'")
    path = write_own_file(tmp_path / "e.safetensors", "hyperdomain.encoder", 1, {}, {**meta, "kind": "e4e"})
    with pytest.raises(HyperdomainError) as e:
        load_encoder(path)
    _one_line(e, "metadata kind 'e4e' differs from its config's 'restyle-psp'")
    bad = json.dumps({**json.loads(config), "depth": 50})
    path = write_own_file(tmp_path / "e.safetensors", "hyperdomain.encoder", 1, {}, {**meta, "config": bad})
    with pytest.raises(HyperdomainError) as e:
        load_encoder(path)
    _one_line(e, "config: unknown field 'depth'")
    with pytest.raises(HyperdomainError) as e:
        save_encoder(tmp_path / "x.safetensors", PhotoEncoder(EncoderConfig("restyle-psp", 1, 6, 16)), "")
    _one_line(e, "non-empty fingerprint")
