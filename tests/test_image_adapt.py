"""One-shot (image-guided) adaptation on tiny models: it learns the reference, its files, resume,
the style latent in the domain file, and its settings' errors."""
import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.image.inversion import InversionConfig
from hyperdomain.image.perceptual import load_lpips
from hyperdomain.training.one_shot import ImageAdaptConfig, adapt_image

QUICK = InversionConfig(steps=10, pca_samples=500)


@pytest.fixture(scope="module")
def lpips_random():
    return load_lpips(backbone="random")


@pytest.fixture
def reference(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))  # the inversion cache lives there
    g = np.random.default_rng(1)
    img = np.uint8(np.clip(g.normal(128, 60, (64, 64, 3)), 0, 255))
    img[:, :32] = (240, 60, 40)  # something the reference looks like: half red
    Image.fromarray(img).save(tmp_path / "ref.png")
    return tmp_path / "ref.png"


def run(G, clip, ref, lpips, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("inversion", QUICK)
    return adapt_image(G, ref, clip=[clip], lpips=lpips, **kw)


def test_one_shot_lowers_the_reference_losses(tiny_G, tiny_clip, reference, lpips_random):
    seen = []
    d = run(tiny_G, tiny_clip, reference, lpips_random, iters=40, lr=0.02,
            callback=lambda step, values, dom: seen.append(values))
    first, last = seen[0], seen[-1]
    assert set(first) == {"direction", "clip_within", "clip_ref", "l2_rec", "lpips_rec", "total"}
    for name in ("clip_ref", "l2_rec", "total"):
        assert last[name] < first[name], (name, first[name], last[name])
    assert last["l2_rec"] < 0.9 * first["l2_rec"]
    assert d.style_latent is not None and d.style_latent.shape == (tiny_G.num_ws, 32)
    assert d.meta["reference_image"] == "ref.png" and d.meta["iterations"] == 40 and d.meta["mix_from"] == 7


def test_run_folder_resume_and_style_mixing(tmp_path, tiny_G, tiny_clip, reference, lpips_random):
    out = tmp_path / "run"
    run(tiny_G, tiny_clip, reference, lpips_random, iters=3, out_dir=out, sample_every=2, checkpoint_every=2)
    d = hd.Domain.load(out / "domain.safetensors", generator=tiny_G)
    assert d.style_latent is not None and d.meta["reference_digest"]
    lat = hd.Latent.load(out / "reference_latent.safetensors", generator=tiny_G)
    assert torch.equal(lat.ws, d.style_latent)
    grid = Image.open(out / "samples.png")
    assert grid.size[1] == 3 * 32 + 4 * 2  # source, adapted, adapted with the reference's style
    resumed = adapt_image(tiny_G, resume=out, clip=[tiny_clip], lpips=lpips_random, iters=6, progress=False)
    straight = run(tiny_G, tiny_clip, reference, lpips_random, iters=6)
    assert torch.equal(resumed.vector, straight.vector)
    # the fine layers come from the reference: mixing changes the images, and only through layers 7+
    plain = tiny_G.sample(2, domain=d, seed=3)
    mixed = tiny_G.sample(2, domain=d, seed=3, style=d.style_latent, mix_from=7)
    assert (plain - mixed).abs().max() > 1e-3
    assert torch.equal(tiny_G.sample(2, domain=d, seed=3, style=d.style_latent, mix_from=7),
                       tiny_G.sample(2, domain=d, seed=3, style=d.style_latent + 0 * d.style_latent, mix_from=7))


def test_text_and_image_together(tiny_G, tiny_clip, reference, lpips_random):
    seen = []
    d = run(tiny_G, tiny_clip, reference, lpips_random, target="Anime painting", iters=2,
            callback=lambda step, values, dom: seen.append(values))
    assert "text_direction" in seen[0] and d.meta["prompt"] == "Anime painting"


@pytest.mark.parametrize("kw, fragment", [
    (dict(losses={"tt_direction": 1}), "not a loss of one-shot adaptation"),
    (dict(losses={"direction": 1, "text_direction": 1}), "needs a target prompt"),
    (dict(iters=0), "iters"),
    (dict(mix_from=0), "mix_from"),
])
def test_bad_settings(tiny_G, tiny_clip, reference, lpips_random, kw, fragment):
    with pytest.raises(HyperdomainError, match=fragment):
        run(tiny_G, tiny_clip, reference, lpips_random, **kw)


def test_text_adaptation_refuses_image_losses(tiny_G, tiny_clip):
    with pytest.raises(HyperdomainError, match=r"--loss clip_ref: not a loss of text adaptation"):
        hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], losses={"direction": 1, "clip_ref": 1}, progress=False)


def test_config_round_trip():
    c = ImageAdaptConfig(image="/x/ref.png", target="Sketch", inversion=InversionConfig(steps=7))
    back = ImageAdaptConfig.from_dict(c.to_dict())
    assert back == c and back.inversion.steps == 7
