"""The bad-input corpus: every command against one shared set of broken, hostile and faulty inputs.

Each run must end with exit code 2 (the input's fault) or 1 (the storage's), exactly one line on
stderr, no traceback, no code run from a pickle, and every input file byte for byte as it was.
The matrix runs each hostile file through every place a command reads a file; the cases after it
cover outputs that would replace inputs, a full file system and a real SIGTERM.
"""
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.model.hypernet import HyperConfig, HyperDomainNet

from conftest import (TINY_CLIP_CONFIG, assert_storage_error, assert_user_error, cli, make_tiny_generator,
                      sigterm_after_first_step, sigterm_when)

MARKER = "hyperdomain-corpus-pwned"  # what the hostile pickles would create if they ran


class _Evil:
    """Pickles as a call to os.system: a loader that runs pickled code creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _deep_pickle(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid PNG header announcing 60000 x 60000 pixels: Pillow's decompression-bomb guard."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + _png_chunk(b"IEND", b"")


def _nan_tiff() -> bytes:
    """A float TIFF (mode F, the size of a photo) whose lower half is NaN: no picture to scale."""
    import numpy as np
    from PIL import Image

    a = np.full((80, 96), 0.5, np.float32)
    a[40:] = np.nan
    out = io.BytesIO()
    Image.fromarray(a, "F").save(out, format="TIFF")
    return out.getvalue()


def _rewritten(src: Path, tensors=None, **meta) -> bytes:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(src), framework="pt") as f:
        header = {**f.metadata(), **meta}
        old = {k: f.get_tensor(k) for k in f.keys()}
    return save(tensors if tensors is not None else old, metadata=header)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Good files the commands need (``good``) and the hostile ones (``bad``: name -> path)."""
    root = tmp_path_factory.mktemp("corpus")
    good_dir, bad_dir = root / "good", root / "bad"
    good_dir.mkdir(), bad_dir.mkdir()
    G = make_tiny_generator()
    gen = good_dir / "tiny.pt"
    torch.save({"g_ema": G.state_dict(), "latent_avg": torch.zeros(G.w_dim)}, gen)
    clip = good_dir / "tiny_clip.json"
    clip.write_text(json.dumps(TINY_CLIP_CONFIG))
    domain = hd.Domain(torch.randn(G.num_domain_params) * 0.1, G.domain_dims, {"prompt": "Sketch"}).save(
        good_dir / "sketch.safetensors")
    hyper = HyperDomainNet(HyperConfig(domain_dims=G.domain_dims, input_dim=32, width=16),
                           {"input_clip": "tiny_clip.json:random"}).save(good_dir / "hyper.safetensors")
    marker = root / MARKER

    bad = {
        "empty": b"",
        "junk": bytes(range(256)) * 8,
        "text": b"hello, this is not a model\n",
        "truncated-domain": domain.read_bytes()[: len(domain.read_bytes()) // 2],
        "truncated-generator": gen.read_bytes()[: len(gen.read_bytes()) // 2],
        "huge-header": struct.pack("<Q", 2**40) + b"{}",
        "nan-domain": _rewritten(domain, {"domain": torch.full((G.num_domain_params,), float("nan"))}),
        "int-domain": _rewritten(domain, {"domain": torch.zeros(G.num_domain_params, dtype=torch.int64)}),
        "list-meta-domain": _rewritten(domain, meta="[1, 2]"),
        "string-dims-domain": _rewritten(domain, dims='"32,32"'),
        "other-generator-domain": _rewritten(domain, {"domain": torch.zeros(10)}, dims="[4, 6]"),
        "evil-pickle": pickle.dumps(_Evil(marker), protocol=2),
        "deep-pickle": _deep_pickle(50_000),
        "bomb-image": _bomb_png(),
        "nan-float-tiff": _nan_tiff(),
        "newline\nname": bytes(range(256)) * 8,  # a name that would split a message in two
    }
    evil = io.BytesIO()
    torch.save(_Evil(marker), evil)
    bad["evil-torch-zip"] = evil.getvalue()
    deep = io.BytesIO()
    with zipfile.ZipFile(deep, "w") as z:
        z.writestr("deep/data.pkl", _deep_pickle(50_000))
        z.writestr("deep/byteorder", "little")
        z.writestr("deep/version", "3\n")
    bad["deep-torch-zip"] = deep.getvalue()
    suffix = {"text": ".png", "bomb-image": ".png", "nan-float-tiff": ".tiff", "newline\nname": ".png", "junk": ".pt",
              "truncated-generator": ".pt", "evil-pickle": ".pkl", "deep-pickle": ".pkl", "evil-torch-zip": ".pt",
              "deep-torch-zip": ".pt"}
    paths = {}
    for name, data in bad.items():
        paths[name] = bad_dir / f"{name}{suffix.get(name, '.safetensors')}"
        paths[name].write_bytes(data)
    paths["a-folder"] = bad_dir / "a-folder.safetensors"
    paths["a-folder"].mkdir()
    paths["missing"] = bad_dir / "missing.safetensors"
    paths["hypernet-not-a-domain"] = hyper
    return {"root": root, "gen": gen, "clip": clip, "domain": domain, "hyper": hyper, "bad": paths,
            "marker": marker}


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# Each place a command reads a file: {f} is the hostile file, the rest are good files or new outputs.
SLOTS = {
    "info": ["info", "{f}"],
    "sample --generator": ["sample", "--generator", "{f}", "-n", 1, "--out", "{out}/g.png"],
    "sample --domain": ["sample", "--generator", "{gen}", "--domain", "{f}", "-n", 1, "--out", "{out}/g.png"],
    "sample --style-latent": ["sample", "--generator", "{gen}", "--style-latent", "{f}", "-n", 1,
                              "--out", "{out}/g.png"],
    "sample --hyper": ["sample", "--generator", "{gen}", "--hyper", "{f}", "-p", "Zombie", "--hyper-clip", "{clip}",
                       "-n", 1, "--out", "{out}/g.png"],
    "import": ["import", "{f}", "--out", "{out}/d.safetensors", "--prompt", "x"],
    "export --hyper": ["export", "--hyper", "{f}", "-p", "Zombie", "--hyper-clip", "{clip}",
                       "--out", "{out}/d.safetensors"],
    "evaluate --domain": ["evaluate", "--generator", "{gen}", "--domain", "{f}", "--clip", "{clip}", "-n", 2],
    "stylize --latent": ["stylize", "--latent", "{f}", "--generator", "{gen}", "--domain", "{domain}",
                         "--out", "{out}/st", "--lpips-vgg", "random", "--no-align"],
    "invert": ["invert", "{f}", "--generator", "{gen}", "--out", "{out}/inv", "--lpips-vgg", "random", "--no-align",
               "--steps", 1, "--pca-samples", 16],
    "adapt --image": ["adapt", "--image", "{f}", "--generator", "{gen}", "--clip", "{clip}", "--out", "{out}/run",
                      "--iters", 1, "--lpips-vgg", "random", "--no-align", "--inversion-steps", 1, "--no-progress"],
    "adapt --clip": ["adapt", "-t", "Sketch", "--generator", "{gen}", "--clip", "{f}", "--out", "{out}/run",
                     "--iters", 1, "--no-progress"],
    "train-hyper --domains": ["train-hyper", "--generator", "{gen}", "--domains", "{f}", "--clip", "{clip}",
                              "--input-clip", "{clip}", "--iters", 1, "--out", "{out}/hrun", "--no-progress"],
    "adapt --resume": ["adapt", "--resume", "{run}", "--no-progress"],
    "train-hyper --resume": ["train-hyper", "--resume", "{run}", "--no-progress"],
}
# (slot, file) pairs where the file is a valid input after all
VALID = {("info", "other-generator-domain"), ("info", "hypernet-not-a-domain"), ("train-hyper --domains", "text"),
         ("export --hyper", "hypernet-not-a-domain"), ("sample --hyper", "hypernet-not-a-domain")}


def _slot(slot, corpus, f, out):
    """The arguments of ``SLOTS[slot]`` with ``f`` in the file's place and outputs under ``out``."""
    values = {"f": f, "out": out, "run": out / "run", **{k: corpus[k] for k in ("gen", "clip", "domain")}}
    return [str(a).format(**{k: str(v) for k, v in values.items()}) for a in SLOTS[slot]]


@pytest.mark.parametrize("slot", list(SLOTS))
def test_every_command_refuses_every_hostile_file_in_one_line(slot, corpus, tmp_path):
    before = _checksums(corpus["root"])
    problems = []
    for name, path in corpus["bad"].items():
        if (slot, name) in VALID:
            continue
        out = tmp_path / name
        run = out / "run"
        if "{run}" in SLOTS[slot]:  # the hostile file as a run folder's checkpoint
            run.mkdir(parents=True)
            if path.is_file():
                shutil.copy(path, run / "checkpoint.safetensors")
        result = cli(*_slot(slot, corpus, path, out))
        err = result.stderr.strip()
        if result.exit_code != 2 or len(err.splitlines()) != 1 or "Traceback" in result.output \
                or not isinstance(result.exception, SystemExit):
            problems.append(f"{name}: exit {result.exit_code}, {type(result.exception).__name__}: {err[-300:]!r}")
        outputs = [p for p in out.rglob("*") if p.is_file() and not (run / "checkpoint.safetensors" == p)] \
            if out.exists() else []
        if outputs:
            problems.append(f"{name}: left {[str(p.relative_to(out)) for p in outputs]}")
    assert not problems, "\n".join(problems)
    assert not corpus["marker"].exists(), "a pickle ran code"
    assert _checksums(corpus["root"]) == before


def test_a_photo_that_is_not_a_regular_file_is_named_so(corpus, tmp_path):
    """A named pipe given as a photo: not "no such file" (it is there), and never opened (that would wait
    for a writer)."""
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    for slot in ("invert", "adapt --image"):
        assert_user_error(cli(*_slot(slot, corpus, fifo, tmp_path / "out")),
                          f"{fifo}: not a regular file (a pipe, device or socket); give an image file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("slot", ["invert", "adapt --image", "adapt --clip", "train-hyper --domains"])
def test_a_learning_rate_out_of_range_is_refused_at_the_option(slot, corpus, tmp_path):
    """--lr 1e39 overflowed Adam's float32 step (a traceback; adapt left a run folder without a checkpoint):
    every --lr is bounded where it is parsed, before any file is read or written."""
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"")  # never read: the option is refused first
    f = {"invert": photo, "adapt --image": photo, "adapt --clip": corpus["clip"],
         "train-hyper --domains": "builtin:train"}[slot]
    for lr in ("1e39", "0", "inf"):
        assert_user_error(cli(*_slot(slot, corpus, f, tmp_path / "out"), "--lr", lr), "--lr", "0<x<=1000")
    assert not (tmp_path / "out").exists()


def test_the_library_bounds_the_learning_rate_as_the_cli_does():
    """hd.adapt(lr=1e39) from Python is refused by the run's config, at the bound the CLI's --lr has."""
    from cli.options import MAX_LR
    from hyperdomain.training.run_config import MAX_LR as LIBRARY_MAX_LR

    assert MAX_LR == LIBRARY_MAX_LR
    for config in (lambda lr: hd.AdaptConfig(target="x", lr=lr), lambda lr: hd.ImageAdaptConfig(image="x.png", lr=lr),
                   lambda lr: hd.HyperTrainConfig(lr=lr)):
        config(MAX_LR)
        for lr in (1e39, 0.0, float("nan"), float("inf")):
            with pytest.raises(HyperdomainError, match=r"lr must be a number in \(0, 1000\]"):
                config(lr)


def test_serve_names_a_host_that_is_no_address(corpus, tmp_path):
    """--host 999.1.1.1 loaded every model, then said "choose another --port"; an IPv6 address a traceback
    from Gradio. Both are refused where the option is parsed, saying what is wrong with the host."""
    base = ["serve", "--generator", corpus["gen"], "--work-dir", tmp_path / "w", "--host"]
    assert_user_error(cli(*base, "999.1.1.1"), "--host", "'999.1.1.1' is not a valid IP address; use an address of "
                      "this machine, e.g. 127.0.0.1")
    assert_user_error(cli(*base, "no-such-host.invalid"), "--host", "'no-such-host.invalid' is not a valid address "
                      "(no such host name")
    assert_user_error(cli(*base, "::1"), "--host", "'::1': the app listens on IPv4 addresses only")
    assert not (tmp_path / "w").exists()


# Outputs that would replace an input or a file of another kind: refused, the file intact.
def _outputs_onto_inputs(c, tmp):
    gen, clip, domain, hyper = (str(c[k]) for k in ("gen", "clip", "domain", "hyper"))
    return [
        ["export", "--hyper", hyper, "-p", "Zombie", "--hyper-clip", clip, "--out", hyper],
        ["export", "--hyper", hyper, "-p", "Zombie", "--hyper-clip", clip, "--out", gen],
        ["export", "--hyper", hyper, "-p", "Zombie", "--hyper-clip", clip, "--out", domain],
        ["import", gen, "--out", gen],
        ["sample", "--generator", gen, "--domain", domain, "-n", 1, "--out", gen],
        ["evaluate", "--generator", gen, "--domain", domain, "--clip", clip, "-n", 2, "-o", clip],
        ["stylize", "--latent", domain, "--generator", gen, "--domain", domain, "--out", c["root"] / "good"],
        ["adapt", "-t", "Sketch", "--generator", gen, "--clip", clip, "--out", c["root"] / "good", "--iters", 1],
        ["train-hyper", "--generator", gen, "--clip", clip, "--input-clip", clip, "--out", c["root"] / "good"],
    ]


def test_outputs_never_replace_inputs(corpus, tmp_path):
    before = _checksums(corpus["root"])
    for args in _outputs_onto_inputs(corpus, tmp_path):
        result = cli(*args)
        assert_user_error(result)
        assert _checksums(corpus["root"]) == before, args


def test_a_full_file_system_is_one_line(corpus, small_tmpfs):
    before = _checksums(corpus["root"])
    fs = small_tmpfs(64)
    fs.fill()
    gen, clip, domain, hyper = (str(corpus[k]) for k in ("gen", "clip", "domain", "hyper"))
    for args, name in [
        (["sample", "--generator", gen, "--domain", domain, "-n", 2, "--out", fs.path / "g.png"], "g.png"),
        (["export", "--hyper", hyper, "-p", "Zombie", "--hyper-clip", clip, "--out", fs.path / "d.safetensors"],
         "d.safetensors"),
        (["import", gen, "--out", fs.path / "x.safetensors"], None),  # a generator is not a paper checkpoint: 2
        # ffmpeg's own write fails: its reason in the one line, not a truncated video renamed into place
        (["animate", "--generator", gen, "--domain", domain, "--frames", 3, "-n", 1, "--out", fs.path / "a.mp4"],
         "a.mp4"),
    ]:
        result = cli(*args)
        if name is None:
            assert_user_error(result)
        else:
            assert_storage_error(result, str(fs.path / name), "No space left on device")
    assert fs.files() == []
    assert _checksums(corpus["root"]) == before


@pytest.mark.parametrize("option,value,fragment", [
    ("--sigma", "1e39", "--sigma: expected a finite number in [0, 10], got 1e+39"),
    ("--num", str(2**63), "--num: expected an integer in [1, 100000000], got 9223372036854775808"),
    ("--views", str(10**9), "--views: expected an integer in [0, 1000], got 1000000000"),
    ("--batch", str(10**6), "--batch: expected an integer in [1, 1024], got 1000000"),
    ("--shard-size", str(10**9), "--shard-size: expected an integer in [1, 100000], got 1000000000"),
    ("--quality", "1000", "--quality: expected an integer in [1, 100], got 1000"),
    ("--truncation", "1e39", "--truncation"),
    ("--seed", "-1", "--seed"),
])
def test_dataset_numbers_out_of_range_write_nothing(corpus, tmp_path, option, value, fragment):
    """Every number of `dataset` is bounded before a model is loaded or a file written."""
    out = tmp_path / "ds"
    args = {"--num": "2", "--views": "1", option: value}
    r = cli("dataset", "--generator", corpus["gen"], "-d", corpus["domain"], *[a for kv in args.items() for a in kv],
            "--out", out, "--device", "cpu", "--no-progress")
    assert_user_error(r, fragment)
    assert not out.exists()


def test_a_full_file_system_during_a_dataset_is_one_line(corpus, small_tmpfs):
    """A disk that fills while a shard is written: exit 1 (the storage's fault), one line; complete shards
    kept whole, no temporary one; with the space back, the same command finishes the dataset."""
    fs = small_tmpfs(256)
    fs.fill(leave=14 * 4096)  # settings.json and two shards of about 5 pages, their digests; not a third
    out = fs.path / "ds"
    args = ["dataset", "--generator", corpus["gen"], "-d", corpus["domain"], "-n", 10, "--shard-size", 2, "--out",
            out, "--device", "cpu", "--no-progress"]
    assert_storage_error(cli(*args), str(out), "shard-00000", "No space left on device")
    left = fs.files()
    shards = [name for name in left if name.endswith(".tar")]
    assert "ds/settings.json" in left and shards and not [n for n in left if n.endswith(".partial")], left
    for name in shards:
        with tarfile.open(fs.path / name) as tar:
            assert len(tar.getmembers()) == 2 * 3  # whole: 2 samples of source, domain, record
        assert f"ds/.{Path(name).name}.digest" in left or name == shards[-1], left  # the last may miss it: rewritten
    fs.free()
    r = cli(*args, "--verify")
    assert r.exit_code == 0 and "10 samples, 20 images in 5 shards" in r.stdout, r.output


@pytest.mark.slow
def test_a_real_sigterm_saves_train_hyper_in_one_line(corpus, tmp_path):
    before = _checksums(corpus["root"])
    out = tmp_path / "hrun"
    domains = tmp_path / "domains.txt"
    domains.write_text("Anime painting\nZombie\nPencil sketch\n")
    args = ["train-hyper", "--generator", corpus["gen"], "--domains", domains, "--clip", corpus["clip"],
            "--input-clip", corpus["clip"], "--templates", "single", "--width", 16, "--batch", 2, "--iters", 100000,
            "--checkpoint-every", 0, "--sample-every", 0, "--test-domains", "none", "--out", out, "--device", "cpu",
            "--no-progress"]
    returncode, _, stderr = sigterm_after_first_step(args, out)
    lines = [line for line in stderr.strip().splitlines() if "random weights" not in line]  # the tiny CLIP's warning
    assert returncode == 143 and len(lines) == 1, stderr
    assert f"terminated (SIGTERM); the run is saved in {out}" in lines[0]
    assert (out / "checkpoint.safetensors").is_file()
    assert _checksums(corpus["root"]) == before


def test_a_real_sigterm_stops_animate_as_ctrl_c_does(corpus, tmp_path):
    """SIGTERM while a video is written (ffmpeg at work on its temporary file): one line, exit 143, ffmpeg
    stopped and its temporary file removed, nothing left (the default action killed Python at once and
    left ``.a.mp4.XXXX.tmp``, which ffmpeg went on to finish)."""
    before = _checksums(corpus["root"])
    out = tmp_path / "out"
    out.mkdir()

    def writing():
        return any(p.stat().st_size > 0 for p in out.glob(".a.mp4.*.tmp"))

    args = ["animate", "--generator", corpus["gen"], "--domain", corpus["domain"], "--frames", 100000, "-n", 1,
            "--out", out / "a.mp4", "--device", "cpu"]
    returncode, _, stderr = sigterm_when(args, writing)
    assert returncode == 143 and stderr.strip() == "terminated (SIGTERM)", stderr
    assert list(out.iterdir()) == []
    assert _checksums(corpus["root"]) == before
