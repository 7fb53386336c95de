"""Photos through an encoder (e4e, ReStyle) into latents: the library's invert with ``encoder=``, II2S
refinement from its W+, and the command line (invert, stylize, adapt --image) with --encoder.

Encoders here are untrained and tiny (random weights, 32 px input, a narrow backbone, 8 style
layers of 32 numbers) for the tiny 32 px generator: they map a photo near the average latent, and
every path still runs."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from conftest import assert_user_error, cli, make_tiny_generator
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.pretrained import ModelEntry
from hyperdomain.image.encoders import EncoderConfig, PhotoEncoder, encode, photo_input, save_encoder
from hyperdomain.image.inversion import InversionConfig, prepare_photos
from hyperdomain.model.config import GeneratorConfig

WIDE = GeneratorConfig(resolution=32, style_dim=512, n_mlp=1, channels=(8, 8, 8, 8))  # W+ [8, 512]

QUICK = ["--lpips-vgg", "random", "--pca-samples", "300", "--no-align", "--device", "cpu", "--no-progress"]


def _encoder(kind: str, G, seed: int) -> PhotoEncoder:
    torch.manual_seed(seed)
    iterative = kind != "e4e"
    enc = PhotoEncoder(EncoderConfig(kind, 8, 6 if iterative else 3, 32, 2 if iterative else 1, w_dim=G.w_dim,
                                     widths=(16, 16, 32, 32), units=(1, 1, 1, 1)),
                       {"generator_fingerprint": G.fingerprint})
    enc.latent_avg = G.mean_latent()[None].repeat(8, 1).clone()
    return enc.eval()


@pytest.fixture(scope="module", autouse=True)
def one_lpips():
    """LPIPS with random weights, built once (its VGG16 takes seconds to initialise) and handed to
    every caller that would load it."""
    from hyperdomain.image.perceptual import load_lpips

    module = load_lpips("cpu", "random")
    with pytest.MonkeyPatch.context() as mp:
        for where in ("hyperdomain.image.perceptual", "hyperdomain.image.inversion", "hyperdomain.training.one_shot"):
            mp.setattr(f"{where}.load_lpips", lambda device, backbone="imagenet": module)
        yield module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    G = make_tiny_generator()
    torch.save({"g_ema": G.state_dict()}, root / "gen.pt")
    torch.save({"g_ema": make_tiny_generator(seed=1).state_dict()}, root / "other.pt")
    encs = {"e4e": _encoder("e4e", G, 0), "restyle-psp": _encoder("restyle-psp", G, 1)}
    for kind, enc in encs.items():
        save_encoder(root / f"{kind}.safetensors", enc, G.fingerprint, source="random")
    g = np.random.default_rng(0)
    (root / "photos").mkdir()
    for i in range(3):
        Image.fromarray(np.uint8(g.integers(0, 255, (40, 48, 3)))).save(root / "photos" / f"p{i}.png")
    return root, G, encs


def _photos(root):
    return sorted((root / "photos").iterdir())


# ---------------------------------------------------------------------------- the library
def test_invert_with_an_encoder_is_the_encoders_pass_in_batches(setup):
    root, G, encs = setup
    photos = _photos(root)
    lat = hd.invert(G, photos, encoder=encs["e4e"], batch=2, lpips_backbone="random", progress=False, align=False)
    prepared = prepare_photos(G, photos, align=False)
    for latent, p in zip(lat, prepared):  # one photo at a time, straight through the network
        with torch.no_grad():
            ws = encode(encs["e4e"], photo_input(p.image, 32))[0]
        assert torch.allclose(latent.ws, ws, atol=1e-5)
        m = latent.meta
        assert m["method"] == "e4e" and m["encoder"]["kind"] == "e4e" and m["encoder"]["passes"] == 1
        assert m["encoder"]["digest"] and "inversion" not in m and np.isfinite(m["psnr"])
        assert m["image"] == p.name and m["generator_fingerprint"] == G.fingerprint


def test_restyle_renders_its_guesses_with_the_generator_and_its_steps(setup):
    root, G, encs = setup
    enc = encs["restyle-psp"]
    photo = _photos(root)[0]
    lat = hd.invert(G, [photo], encoder=enc, restyle_steps=3, lpips_backbone="random", progress=False, align=False)[0]
    x = photo_input(prepare_photos(G, [photo], align=False)[0].image, 32)
    with torch.no_grad():
        steps = encode(enc, x, render=lambda w: G.synthesis(w, noise_mode="const"), n_iters=3, return_steps=True)
    assert torch.allclose(lat.ws, steps[-1][0], atol=1e-5) and not torch.allclose(steps[0], steps[-1])
    assert lat.meta["method"] == "restyle-psp" and lat.meta["encoder"]["passes"] == 3
    with pytest.raises(HyperdomainError, match="restyle_steps is for ReStyle encoders"):
        hd.invert(G, [photo], encoder=encs["e4e"], restyle_steps=2, lpips_backbone="random", progress=False)


def test_refining_starts_from_the_encoders_latent_and_lowers_the_loss(setup):
    root, G, encs = setup
    photo = _photos(root)[:1]
    kw = dict(lpips_backbone="random", progress=False, align=False, encoder=encs["e4e"])
    alone = hd.invert(G, photo, **kw)[0]
    cfg = InversionConfig(lr=0.05, pca_samples=300, p_norm=0.0)
    refined = hd.invert(G, photo, cfg, refine=15, **kw)[0]
    assert refined.meta["method"] == "e4e + ii2s refine 15" and refined.meta["inversion"]["steps"] == 15
    assert refined.meta["psnr"] > alone.meta["psnr"] + 0.1, (refined.meta["psnr"], alone.meta["psnr"])
    # a vanishing learning rate: the refinement stays where the encoder put it, not at the mean latent
    still = hd.invert(G, photo, InversionConfig(lr=1e-12, pca_samples=300), refine=2, **kw)[0]
    assert torch.allclose(still.ws, alone.ws, atol=1e-6)
    assert not torch.allclose(still.ws, G.mean_latent().expand(8, -1), atol=1e-4)


def test_encoder_choice(setup, tmp_path, monkeypatch):
    root, G, encs = setup
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    assert hd.encoder_for(G, "ii2s") is None and hd.encoder_for(G, None) is None
    assert hd.encoder_for(G, "auto") is None  # no known encoder for this generator
    with pytest.raises(HyperdomainError, match="no e4e encoder is known for generator 'tiny'"):
        hd.encoder_for(G, "e4e")
    with pytest.raises(HyperdomainError, match="nope: no such file, and not one of auto, ii2s, e4e"):
        hd.encoder_for(G, "nope")
    other = make_tiny_generator(seed=1)
    with pytest.raises(HyperdomainError, match=f"made for generator fingerprint {G.fingerprint}, not"):
        hd.encoder_for(other, root / "e4e.safetensors")
    assert hd.encoder_for(other, root / "e4e.safetensors", check=False).config.kind == "e4e"
    with pytest.raises(HyperdomainError, match=r"makes W\+ \[8, 32\], but generator 'tiny' takes \[8, 512\]"):
        hd.encoder_for(make_tiny_generator(config=WIDE), root / "e4e.safetensors", check=False)
    # a known release already in the weights folder (imported before): auto takes it, nothing downloaded
    G.name = "gen"
    model = ModelEntry("e4e-gen", ("http://127.0.0.1:9/uc?id=x",), None, None, file_name="e4e_gen.pt")
    monkeypatch.setattr("hyperdomain.image.encoders.choice.load_models", lambda: {"e4e-gen": model})
    try:
        assert hd.encoder_for(G, "auto") is None  # known but not present: II2S, no download tried
        cached = tmp_path / "home" / "encoders" / f"e4e-gen-{G.fingerprint}.safetensors"
        cached.parent.mkdir(parents=True)
        shutil.copy(root / "e4e.safetensors", cached)
        enc = hd.encoder_for(G, "auto")
        assert enc.config.kind == "e4e" and enc.meta["file"] == str(cached)
    finally:
        G.name = "tiny"


# ---------------------------------------------------------------------------- the command line
def test_invert_command_encodes_a_folder_in_batches(setup, tmp_path, monkeypatch):
    root, G, _ = setup
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    out = tmp_path / "lat"
    r = cli("invert", root / "photos", "-g", root / "gen.pt", "--encoder", root / "e4e.safetensors", "--batch", 2,
            "--out", out, *QUICK)
    assert r.exit_code == 0, r.output
    assert "e4e encoder, 1 pass" in r.stderr and r.stdout.count("PSNR") == 3
    for i in range(3):
        m = hd.Latent.load(out / f"p{i}.safetensors").meta
        assert m["method"] == "e4e" and m["encoder"]["file"].endswith("e4e.safetensors")
        assert Image.open(out / f"p{i}.png").size == (32, 32)
    r = cli("invert", _photos(root)[0], "-g", root / "gen.pt", "--encoder", root / "restyle-psp.safetensors",
            "--restyle-steps", 2, "--refine", 2, "--out", tmp_path / "lat2", *QUICK)
    assert r.exit_code == 0, r.output
    assert "restyle-psp encoder, 2 passes, then 2 II2S steps" in r.stderr
    assert hd.Latent.load(tmp_path / "lat2" / "p0.safetensors").meta["method"] == "restyle-psp + ii2s refine 2"
    r = cli("invert", _photos(root)[0], "-g", root / "gen.pt", "--steps", 1, "--out", tmp_path / "lat3", *QUICK)
    assert r.exit_code == 0, r.output
    assert "II2S, 1 steps (no encoder for generator 'gen'" in r.stderr  # auto, with no encoder downloaded
    assert hd.Latent.load(tmp_path / "lat3" / "p0.safetensors").meta["method"] == "ii2s"


def test_stylize_and_adapt_image_take_an_encoder(setup, tmp_path, monkeypatch, tiny_clip_config):
    root, G, _ = setup
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    d = hd.Domain(0.3 * torch.randn(G.num_domain_params, generator=torch.Generator().manual_seed(0)), G.domain_dims,
                  {"generator_fingerprint": G.fingerprint})
    d.save(tmp_path / "dom.safetensors")
    r = cli("stylize", _photos(root)[1], "-g", root / "gen.pt", "-d", tmp_path / "dom.safetensors",
            "--encoder", root / "restyle-psp.safetensors", "--out", tmp_path / "styled", *QUICK)
    assert r.exit_code == 0, r.output
    assert "stylize: restyle-psp encoder, 2 passes" in r.stderr
    assert hd.Latent.load(tmp_path / "styled" / "p1.safetensors").meta["method"] == "restyle-psp"
    out = tmp_path / "oneshot"
    r = cli("adapt", "--image", _photos(root)[0], "-g", root / "gen.pt", "--clip", tiny_clip_config, "--iters", 1,
            "--encoder", root / "e4e.safetensors", "--lpips-vgg", "random", "--out", out, "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output
    assert "adapt --image: the reference: e4e encoder" in r.stderr
    ref = hd.Latent.load(out / "reference_latent.safetensors")
    assert ref.meta["method"] == "e4e" and ref.meta["image"] == "p0.png"
    r = cli("adapt", "--resume", out, "--iters", 2, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert torch.equal(hd.Latent.load(out / "reference_latent.safetensors").ws, ref.ws)


def test_bad_encoder_options_are_one_line(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    photo, gen = _photos(root)[0], root / "gen.pt"

    def run(*args):
        return cli("invert", photo, "-g", gen, "--out", tmp_path / "o", *args, *QUICK)

    assert_user_error(run("--encoder", "nope"), "--encoder nope: no such file, and not one of auto, ii2s, e4e")
    assert_user_error(run("--encoder", "restyle-e4e"), "no restyle-e4e encoder is known for generator 'gen'")
    assert_user_error(run("--encoder", root / "e4e.safetensors", "--restyle-steps", 2),
                      "--restyle-steps is for ReStyle encoders")
    assert_user_error(run("--encoder", "ii2s", "--refine", 3), "--refine needs an encoder")
    assert_user_error(run("--encoder", root / "e4e.safetensors", "--steps", 50), "--steps sets II2S's steps",
                      "--refine N")
    assert_user_error(run("--encoder", gen), "gen.pt", "not an e4e or ReStyle checkpoint")
    assert_user_error(cli("invert", photo, "-g", root / "other.pt", "--out", tmp_path / "o",
                          "--encoder", root / "e4e.safetensors", *QUICK), "made for generator fingerprint")
    r = cli("invert", photo, "-g", root / "other.pt", "--out", tmp_path / "o", "--encoder", root / "e4e.safetensors",
            "--no-check", *QUICK)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "home" / "encoders").exists()
