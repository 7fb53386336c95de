"""A run records what it was made from (CLIP config and weights by absolute path and sha256, the
reference image, LPIPS's weights) and a resume refuses inputs that changed, naming them."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import hyperdomain as hd
from hyperdomain.guidance.clip import load_clip
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.run_checkpoints import CHECKPOINT
from hyperdomain.image.inversion import InversionConfig
from hyperdomain.image.perceptual import load_lpips
from hyperdomain.training.adapt import read_adapt_config
from hyperdomain.training.one_shot import adapt_image

from conftest import assert_user_error, cli, make_tiny_clip

QUICK = InversionConfig(steps=4, pca_samples=300)


@pytest.fixture
def clip_files(tmp_path, tiny_clip_config):
    """A CLIP config and its trained-weights file (a seeded tiny model), in a folder of their own."""
    folder = tmp_path / "models"
    folder.mkdir()
    config = folder / "clip.json"
    config.write_text(tiny_clip_config.read_text())
    weights = folder / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in make_tiny_clip(tiny_clip_config, seed=5).model.state_dict().items()},
              str(weights))
    return config, weights


def adapt_run(G, clip, out, iters, **kw):
    return hd.adapt(G, "Sketch", clip=clip, iters=iters, batch=2, out_dir=out, checkpoint_every=2, sample_every=0,
                    progress=False, **kw)


def test_encoders_given_as_objects_are_recorded_by_absolute_spec_and_resume_anywhere(tmp_path, tiny_G, clip_files,
                                                                                   tiny_ckpt, monkeypatch):
    """The web app passes loaded encoders; the run must still resume from the command line, elsewhere,
    with the same weights (it used to record the short label, and then trained on random weights)."""
    config, weights = clip_files
    monkeypatch.chdir(config.parent)
    encoders = load_clip([f"{config.name}={weights.name}"])  # relative paths, as a user types them
    adapt_run(tiny_G, encoders, tmp_path / "run", 2)
    assert read_adapt_config(tmp_path / "run").clip == (f"{config}={weights}",)
    meta = json.loads(json.loads(_header(tmp_path / "run" / CHECKPOINT))["__metadata__"]["meta"])
    assert set(meta["inputs"]) == {f"CLIP config {config}", f"CLIP weights {weights}"}
    monkeypatch.chdir(tmp_path)
    resumed = hd.adapt(tiny_G, resume=tmp_path / "run", iters=4, progress=False)
    straight = adapt_run(tiny_G, encoders, tmp_path / "straight", 4)
    assert torch.equal(resumed.vector, straight.vector)
    # and from the command line, with no --clip
    r = cli("adapt", "--resume", tmp_path / "run", "--iters", 5, "-g", tiny_ckpt[0], "--device", "cpu",
            "--no-progress")
    assert r.exit_code == 0, r.output


def test_a_resume_refuses_changed_or_missing_clip_files(tmp_path, tiny_G, clip_files, tiny_clip_config, tiny_ckpt):
    config, weights = clip_files
    adapt_run(tiny_G, load_clip([f"{config}={weights}"]), tmp_path / "run", 2)
    save_file({k: v.contiguous() for k, v in make_tiny_clip(tiny_clip_config, seed=6).model.state_dict().items()},
              str(weights))  # other weights under the same name
    with pytest.raises(HyperdomainError, match=rf"CLIP weights {weights} changed \(sha256 "):
        hd.adapt(tiny_G, resume=tmp_path / "run", iters=4, progress=False)
    assert_user_error(cli("adapt", "--resume", tmp_path / "run", "--iters", 4, "-g", tiny_ckpt[0], "--device", "cpu"),
                      "inputs changed", f"CLIP weights {weights} changed")
    weights.unlink()
    assert_user_error(cli("adapt", "--resume", tmp_path / "run", "--iters", 4, "-g", tiny_ckpt[0], "--device", "cpu"),
                      f"CLIP weights {weights} is missing")
    config.write_text(config.read_text() + "\n")
    with pytest.raises(HyperdomainError, match=rf"CLIP config {config} changed.*CLIP weights {weights} is missing"):
        hd.adapt(tiny_G, resume=tmp_path / "run", iters=4, progress=False)


def test_crafted_inputs_record_is_one_line(tmp_path, tiny_G, clip_files, tiny_ckpt):
    from hyperdomain.files.safetensors_files import read_own_file  # noqa: F401  (the reader the loop uses)
    from safetensors.torch import load_file

    config, weights = clip_files
    adapt_run(tiny_G, load_clip([f"{config}={weights}"]), tmp_path / "run", 2)
    path = tmp_path / "run" / CHECKPOINT
    header = json.loads(_header(path))["__metadata__"]
    meta = json.loads(header["meta"])
    meta["inputs"] = ["not", "a", "map"]
    save_file(load_file(str(path)), str(path), metadata={**header, "meta": json.dumps(meta)})
    assert_user_error(cli("adapt", "--resume", tmp_path / "run", "--iters", 4, "-g", tiny_ckpt[0], "--device", "cpu"),
                      "'inputs' must map files to digests")


@pytest.fixture
def reference(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERDOMAIN_HOME", str(tmp_path / "home"))  # the inversion cache
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    return tmp_path / "ref.png"


def image_run(G, clip, ref, out, iters, **kw):
    return adapt_image(G, ref, clip=[clip], iters=iters, out_dir=out, checkpoint_every=2, sample_every=0,
                       progress=False, inversion=QUICK, lpips_backbone="random", **kw)


def test_a_one_shot_resume_refuses_another_reference(tmp_path, tiny_G, tiny_clip, reference, tiny_ckpt,
                                                     tiny_clip_config):
    image_run(tiny_G, tiny_clip, reference, tmp_path / "run", 2)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(reference)  # another picture under the same name
    with pytest.raises(HyperdomainError, match=rf"reference image {reference} changed"):
        adapt_image(tiny_G, resume=tmp_path / "run", clip=[tiny_clip], iters=4, progress=False)
    # the command line says so in one line, before any inversion or training
    r = cli("adapt", "--resume", tmp_path / "run", "--iters", 4, "-g", tiny_ckpt[0], "--clip", tiny_clip_config,
            "--device", "cpu")
    assert r.exit_code == 2 and "reference image" in r.output and "changed" in r.output, r.output


def test_random_lpips_is_one_network_in_every_process_so_a_resume_keeps_its_loss(tmp_path, tiny_G, tiny_clip,
                                                                                 reference):
    torch.manual_seed(123)
    a = load_lpips(backbone="random")
    torch.manual_seed(456)
    b = load_lpips(backbone="random")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # 2 steps, then a resume to 4, each loading LPIPS itself (as two processes would), equal 4 straight
    image_run(tiny_G, tiny_clip, reference, tmp_path / "run", 2)
    torch.manual_seed(789)  # another process's RNG state
    resumed = adapt_image(tiny_G, resume=tmp_path / "run", clip=[tiny_clip], iters=4, progress=False)
    straight = image_run(tiny_G, tiny_clip, reference, tmp_path / "straight", 4)
    assert torch.equal(resumed.vector, straight.vector)


def _header(path) -> str:
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return f.read(n).decode()
