"""The image side from the command line, end to end on tiny models: invert, stylize, adapt --image,
sample --style-latent; and their bad input (one line, exit 2, nothing overwritten)."""
import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from conftest import assert_user_error, cli

QUICK = ["--lpips-vgg", "random", "--pca-samples", "300", "--no-align", "--device", "cpu", "--no-progress"]






@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    g = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"in{i}" / "me.png"  # the same name twice: outputs must not collide
        p.parent.mkdir()
        Image.fromarray(np.uint8(g.integers(0, 255, (70, 90, 3)))).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def domain_file(tmp_path, tiny_G):
    d = hd.Domain(0.5 * torch.randn(tiny_G.num_domain_params, generator=torch.Generator().manual_seed(0)),
                  tiny_G.domain_dims, {"generator": "tiny", "generator_fingerprint": tiny_G.fingerprint, "prompt": "x"})
    return d.save(tmp_path / "pixar.safetensors")


def test_invert_writes_a_latent_and_reconstruction_per_photo(tmp_path, tiny_ckpt, photos):
    ckpt, _ = tiny_ckpt
    out = tmp_path / "latents"
    r = cli("invert", *photos, "--generator", ckpt, "--out", out, "--steps", 3, *QUICK)
    assert r.exit_code == 0, r.output
    assert "PSNR" in r.stdout and r.stdout.count("dB") == 2
    for name in ("me", "me_2"):
        lat = hd.Latent.load(out / f"{name}.safetensors")
        assert lat.ws.shape == (8, 32) and lat.meta["image"] == "me.png" and lat.meta["inversion"]["steps"] == 3
        assert Image.open(out / f"{name}.png").size == (32, 32)
    r = cli("info", out / "me.safetensors")
    assert r.exit_code == 0 and "W+ latent" in r.stdout, r.output


def test_a_generators_own_image_inverts_at_its_size(tmp_path, tiny_ckpt, tiny_G, monkeypatch):
    """A 32 px photo for the 32 px generator (under the 64 px faces need): inverted, not refused."""
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    hd.save_grid(tiny_G.sample(1, seed=0), tmp_path / "own.png", padding=0)
    r = cli("invert", tmp_path / "own.png", "--generator", tiny_ckpt[0], "--out", tmp_path / "o", "--steps", 1, *QUICK)
    assert r.exit_code == 0, r.output
    assert hd.Latent.load(tmp_path / "o" / "own.safetensors").meta["image"] == "own.png"
    Image.open(tmp_path / "own.png").resize((20, 32)).save(tmp_path / "thin.png")
    assert_user_error(cli("invert", tmp_path / "thin.png", "--generator", tiny_ckpt[0], "--out", tmp_path / "o2",
                          *QUICK), "thin.png: 20x32 is too small; images need at least 32 pixels on each side")
    assert not (tmp_path / "o2").exists()


def test_stylize_photos_and_latents(tmp_path, tiny_ckpt, photos, domain_file, monkeypatch):
    import hyperdomain.image.photos as photo_files

    ckpt, _ = tiny_ckpt
    out = tmp_path / "styled"
    reads = []
    read = photo_files.read_photo
    monkeypatch.setattr(photo_files, "read_photo", lambda path, *a: reads.append(path) or read(path, *a))
    r = cli("stylize", photos[0], "--generator", ckpt, "--domain", domain_file, "--out", out, "--steps", 2,
            "--separate", tmp_path / "single", *QUICK)
    assert r.exit_code == 0, r.output
    assert len(reads) == 1  # checked before the models load, and that reading is the one inverted
    grid = Image.open(out / "me.png")
    assert grid.size == (3 * 32 + 4 * 2, 32 + 2 * 2)  # photo, reconstruction, the domain
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == ["me_photo.png", "me_pixar.png",
                                                                      "me_reconstruction.png"]
    r = cli("stylize", "--latent", out / "me.safetensors", "--generator", ckpt, "--domain", domain_file,
            "--domain", domain_file, "--out", tmp_path / "again", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "again" / "me.png").size == (4 * 32 + 5 * 2, 32 + 2 * 2)
    # the same latent gives the same styled image whether inverted now or loaded
    a = np.asarray(Image.open(tmp_path / "single" / "me_pixar.png"))
    b = np.asarray(Image.open(tmp_path / "again" / "me.png"))[2:34, 2 + 2 * 34:2 + 2 * 34 + 32]
    assert np.array_equal(a, b)


def test_adapt_image_end_to_end_resume_and_style_latent(tmp_path, tiny_ckpt, tiny_clip_config, photos):
    ckpt, _ = tiny_ckpt
    out = tmp_path / "oneshot"
    r = cli("adapt", "--image", photos[0], "--generator", ckpt, "--clip", tiny_clip_config, "--iters", 2,
            "--inversion-steps", 2, "--lpips-vgg", "random", "--out", out, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "reference me.png" in r.stdout
    d = hd.Domain.load(out / "domain.safetensors")
    assert d.style_latent is not None and d.meta["iterations"] == 2
    r = cli("info", out / "checkpoint.safetensors")
    assert r.exit_code == 0 and "adapt --image run checkpoint" in r.stdout, r.output
    r = cli("adapt", "--resume", out, "--iters", 3, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert hd.Domain.load(out / "domain.safetensors").meta["iterations"] == 3
    for style in (out / "domain.safetensors", out / "reference_latent.safetensors"):
        r = cli("sample", "--generator", ckpt, "--domain", out / "domain.safetensors", "--style-latent", style,
                "--mix-from", 5, "-n", 2, "--out", tmp_path / "mixed.png", "--overwrite",
                "--device", "cpu")
        assert r.exit_code == 0, r.output


def test_image_side_bad_input(tmp_path, tiny_ckpt, tiny_clip_config, photos, domain_file):
    ckpt, _ = tiny_ckpt
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    assert_user_error(cli("invert", junk, "--generator", ckpt, "--out", tmp_path / "o", *QUICK),
                      "junk.jpg: not an image")
    before = photos[0].read_bytes()
    assert_user_error(cli("invert", photos[0], "--generator", ckpt, "--out", photos[0].parent, "--steps", 1, *QUICK),
                      "is one of this command's inputs")
    assert photos[0].read_bytes() == before
    assert_user_error(cli("stylize", photos[0], "--generator", ckpt, "--out", tmp_path / "s", *QUICK),
                      "at least one --domain")
    assert_user_error(cli("adapt", "--target", "Sketch", "--mix-from", 3, "--generator", ckpt, "--device", "cpu"),
                      "--mix-from is for one-shot runs")
    assert_user_error(cli("sample", "--generator", ckpt, "--style-latent", domain_file, "--out", tmp_path / "x.png",
                          "--device", "cpu"), "carries no latent")
    lat = hd.Latent(torch.zeros(6, 32), {"generator": "other"})
    lat.save(tmp_path / "small.safetensors")
    assert_user_error(cli("sample", "--generator", ckpt, "--style-latent", tmp_path / "small.safetensors",
                          "--out", tmp_path / "x.png", "--device", "cpu"), "takes W+ [8, 32]")
    assert_user_error(cli("invert", photos[0], "--generator", ckpt, "--out", tmp_path / "o", "--lpips-vgg",
                          tmp_path / "missing.pth", "--no-align", "--device", "cpu"), "no such VGG16 weights file")
