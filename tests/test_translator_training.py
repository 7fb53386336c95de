"""Training a paired translator: it learns the domain, resumes exactly, stops cleanly, reads datasets."""
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.run_checkpoints import load_checkpoint, read_checkpoint_meta
from hyperdomain.model.config import GeneratorConfig
from hyperdomain.training import translator as translator_module
from hyperdomain.training.run_dir import RunInterrupted
from hyperdomain.training.translator_pairs import DatasetPairs, RenderedPairs, pair_seed

from conftest import make_tiny_generator

# A narrow tiny generator: with 8 channels behind 3 colours its images show most of what a domain
# changes, so a translator can learn the change from the image alone (with 32 channels the
# change is mostly in features no image shows; even a 3x3 linear fit does worse than the identity).
NARROW = GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channels=(8, 8, 8, 8))
FAST = dict(size=32, encoder="mobilenet_v2", encoder_depth=3, decoder_channels=(16, 16, 8), losses={"l1": 1},
            sample_every=0, checkpoint_every=0, batch=8, lr=1e-2)


@pytest.fixture(scope="module")
def narrow_G():
    return make_tiny_generator(config=NARROW)


def flat_domain(G):
    """The first conv's inputs switched off: the coarse layout of every image goes, the details stay."""
    v = torch.zeros(G.num_domain_params)
    v[:G.domain_dims[0]] = -1.0
    return hd.Domain(v, G.domain_dims, {"prompt": "flat"})


def test_paired_translator_approaches_the_domain_render(narrow_G):
    domain = flat_domain(narrow_G)
    T = hd.train_translator(narrow_G, domain, iters=40, progress=False, **FAST)
    x, y = RenderedPairs(narrow_G, domain, 32).batch(seed=123, step=0, rank=0, b=32)  # pairs it never saw
    identity, translated = (x - y).abs().mean(), (T(x) - y).abs().mean()
    assert translated < 0.8 * identity, (float(translated), float(identity))
    assert T.method == "paired" and T.domain["name"] == "flat" and T.generator["fingerprint"] == narrow_G.fingerprint


def _run(G, domain, out, **kw):
    return hd.train_translator(G, domain, out_dir=out, progress=False, **{**FAST, "iters": 4, **kw})


def test_resume_is_exact_and_the_file_holds_the_result(tmp_path, narrow_G):
    domain = flat_domain(narrow_G)
    whole = _run(narrow_G, domain, tmp_path / "whole", checkpoint_every=2)
    _run(narrow_G, domain, tmp_path / "half", iters=2)
    resumed = hd.train_translator(narrow_G, domain, resume=tmp_path / "half", iters=4, progress=False)
    a, _ = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors", "translator")
    b, _ = load_checkpoint(tmp_path / "half" / "checkpoint.safetensors", "translator")
    assert a.keys() == b.keys() and any(k.startswith("map.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(whole(x), resumed(x))
    loaded = hd.load_translator(tmp_path / "half" / "translator.safetensors", generator=narrow_G)
    assert torch.equal(loaded(x), resumed(x)) and loaded.meta["iterations"] == 4
    assert loaded.domain["digest"] == resumed.domain["digest"]
    with pytest.raises(HyperdomainError, match="not into this one"):  # another domain for the run
        hd.train_translator(narrow_G, hd.Domain.zeros(narrow_G), resume=tmp_path / "half", iters=6, progress=False)


def test_sigterm_saves_the_last_step_and_the_run_resumes(tmp_path, narrow_G):
    domain = flat_domain(narrow_G)

    def stop_at_2(step, values):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next step boundary

    with pytest.raises(RunInterrupted) as e:
        _run(narrow_G, domain, tmp_path / "run", iters=10, callback=stop_at_2)
    assert e.value.signum == signal.SIGTERM
    assert read_checkpoint_meta(tmp_path / "run" / "checkpoint.safetensors", "translator")["step"] == 2
    T = hd.train_translator(narrow_G, domain, resume=tmp_path / "run", iters=3, progress=False)
    assert T.meta["iterations"] == 3


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_last_good_state(tmp_path, narrow_G, monkeypatch):
    def nan_total(run):
        parts = translator_module.paired_losses(run)
        return {**parts, "total": parts["total"] * float("nan")}

    calls = {"n": 0}

    def poisoned(run):  # the third step's loss is NaN
        calls["n"] += 1
        return nan_total(run) if calls["n"] == 3 else translator_module.paired_losses(run)

    monkeypatch.setitem(translator_module.METHOD_LOSSES, "paired", poisoned)
    with pytest.raises(HyperdomainError, match="step 3: loss is not finite") as e:
        _run(narrow_G, flat_domain(narrow_G), tmp_path / "run", iters=6)
    assert "\n" not in str(e.value)
    assert read_checkpoint_meta(tmp_path / "run" / "checkpoint.safetensors", "translator")["step"] == 1
    T = hd.load_translator(tmp_path / "run" / "translator.safetensors")
    assert T.meta["iterations"] == 1


@pytest.mark.parametrize("layout", ["webdataset", "folder"])
def test_pairs_from_a_dataset_folder(tmp_path, narrow_G, layout):
    pytest.importorskip("webdataset")
    domain = flat_domain(narrow_G)
    data = tmp_path / "data"
    hd.make_dataset(narrow_G, data, 6, [("flat", domain)], layout=layout, shard_size=4, progress=False)
    pairs = DatasetPairs(data, "flat", 32)
    assert len(pairs.samples) == 6 and pairs.domain["digest"] == RenderedPairs(narrow_G, domain, 32).domain["digest"]
    x, y = pairs.batch(0, 0, 0, 3)
    assert x.shape == y.shape == (3, 3, 32, 32) and (x - y).abs().mean() > 0.05
    if layout == "folder":  # the pairs are the files' pixels
        picks = torch.randint(6, (3,), generator=torch.Generator().manual_seed(pair_seed(0, 0, 0))).tolist()
        for row, i in enumerate(picks):
            for img, folder in ((x, "source"), (y, "flat")):
                file = np.asarray(Image.open(data / folder / f"{i:08d}.png").convert("RGB"))
                want = torch.from_numpy(file.copy()).float().permute(2, 0, 1) / 127.5 - 1
                assert torch.allclose(img[row], want, atol=1e-6)
    T = hd.train_translator(None, "flat", pairs=data, out_dir=tmp_path / "run", progress=False, **{**FAST, "iters": 2})
    assert T.generator["fingerprint"] == narrow_G.fingerprint and T.domain["name"] == "flat"
    resumed = hd.train_translator(None, resume=tmp_path / "run", iters=3, progress=False)  # no generator needed
    assert resumed.meta["iterations"] == 3


def test_dataset_problems_are_one_line(tmp_path, narrow_G, tiny_G):
    pytest.importorskip("webdataset")
    data = tmp_path / "data"
    hd.make_dataset(narrow_G, data, 2, [("flat", flat_domain(narrow_G))], shard_size=2, progress=False)
    cases = [(lambda: DatasetPairs(data, "pixar", 32), r"no domain 'pixar' in the dataset \(it has flat\)"),
             (lambda: DatasetPairs(data, "flat", 64), "the dataset's images are 32 px"),
             (lambda: DatasetPairs(tmp_path, "flat", 32), "settings.json: cannot read"),
             (lambda: hd.train_translator(tiny_G, "flat", pairs=data, progress=False, **FAST),
              "the dataset was made by generator 'tiny'")]
    for call, says in cases:
        with pytest.raises(HyperdomainError, match=says) as e:
            call()
        assert "\n" not in str(e.value)
