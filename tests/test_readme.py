"""README.md's Python blocks run as written, in order, in one namespace: the tiny generator and
tiny CLIP stand in for the downloads, the files the blocks open are made here first, and
training runs take a hundredth of the steps they ask for, and inversions a few steps with LPIPS on
a random backbone (the calls are real, only shorter)."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.model import hypernet
from hyperdomain.image.perceptual import load_lpips

from conftest import make_tiny_clip

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture
def stand_ins(tmp_path, monkeypatch, tiny_G, tiny_clip_config):
    """The tiny models behind every loader, and the files the blocks read, in a fresh folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hd, "load_generator", lambda name, device="cpu", **kw: tiny_G.to(device))
    encoders = [make_tiny_clip(tiny_clip_config, seed=s) for s in range(2)]

    def load_clip(specs, device="cpu", **kw):
        specs = [specs] if isinstance(specs, str) else list(specs)
        return [e.to(device) for e in encoders[:len(specs)]]

    monkeypatch.setattr(hd, "load_clip", load_clip)
    monkeypatch.setattr(hypernet, "load_clip", load_clip)
    real_adapt = hd.adapt
    monkeypatch.setattr(hd, "adapt", lambda *a, iters=None, **kw: real_adapt(
        *a, iters=None if iters is None else max(1, iters // 100), progress=False, **kw))
    # datasets: a 250th of the latents asked for
    real_make = hd.make_dataset
    monkeypatch.setattr(hd, "make_dataset", lambda G, out, n, *a, **kw: real_make(
        G, out, max(1, n // 250), *a, progress=False,
        **{**kw, "shard_size": 2, "size": min(kw.get("size") or G.resolution, G.resolution)}))
    real_views = hd.data.DomainViews
    monkeypatch.setattr(hd.data, "DomainViews", lambda G, domains, **kw: real_views(
        G, domains, **{**kw, "batch_size": 2, "batches": 1, "size": min(kw.get("size") or G.resolution, G.resolution)}))
    # the image side: LPIPS on a random backbone, a short inversion and a hundredth of the steps
    lpips = load_lpips(backbone="random")
    quick = hd.InversionConfig(steps=2, pca_samples=300)
    real_invert, real_adapt_image = hd.invert, hd.adapt_image
    monkeypatch.setattr(hd, "invert", lambda G, photos, config=None, **kw: real_invert(
        G, photos, quick, lpips=lpips, progress=False, **kw))
    monkeypatch.setattr(hd, "adapt_image", lambda G, image=None, *a, **kw: real_adapt_image(
        G, image, *a, lpips=lpips, inversion=quick, iters=1, progress=False, clip=encoders[:1], **kw))
    pixels = np.random.default_rng(0).integers(0, 255, (96, 96, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "me.jpg")
    Image.fromarray(255 - pixels).save(tmp_path / "mermaid.png")
    dims = tiny_G.domain_dims
    g = torch.Generator().manual_seed(0)
    torch.save({"model_type": "parameterization", "patch_key": "cin_mult", "da_type": "td",
                "state_dict": {f"heads.conv_{k}.params_in": 0.1 * torch.randn(1, 1, c, 1, 1, generator=g)
                               for k, c in enumerate(dims)}}, tmp_path / "td_pixar.pt")
    hd.Domain(0.3 * torch.randn(sum(dims), generator=g), dims,
              {"generator": "tiny", "generator_fingerprint": tiny_G.fingerprint, "prompt": "Anime painting"}
              ).save(tmp_path / "anime.safetensors")
    net = hd.HyperDomainNet(hd.HyperConfig(domain_dims=dims, input_dim=32, width=16, block_width=16),
                            {"input_clip": encoders[0].label, "generator": "tiny",
                             "generator_fingerprint": tiny_G.fingerprint})
    net.save(tmp_path / "runs" / "hdn" / "hypernet.safetensors")
    return tmp_path


def test_readme_has_the_blocks_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) >= 3 and "hd.load_generator" in blocks[0]


def test_readme_python_blocks_run_as_written(stand_ins):
    namespace: dict = {}
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # noqa: BLE001 - name the block that broke
            raise AssertionError(f"README.md python block {i + 1} failed: {type(e).__name__}: {e}") from e
    assert (stand_ins / "pixar.png").is_file() and (stand_ins / "runs" / "pixar" / "domain.safetensors").is_file()
    assert namespace["pixar"].meta["iterations"] == 4  # the resumed run: 400 steps asked, a hundredth taken
    assert len(namespace["history"]) == 3 and namespace["images"].shape[0] == 8
    assert namespace["mermaid"].style_latent is not None and (stand_ins / "me_pixar.png").is_file()
    assert namespace["index"]["samples"] == 4 and namespace["record"]["index"] == 3
    assert namespace["styled"].shape == (32, 32, 3) and namespace["anchor"].shape == (2, 3, 32, 32)
