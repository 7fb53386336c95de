"""Training an encoder for a generator (``hd.train_encoder``) and the sizes that make a small one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import assert_user_error, cli, make_tiny_generator, sigterm_after_first_step
import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.files.run_checkpoints import load_checkpoint
from hyperdomain.image.encoders import EncoderConfig, PhotoEncoder, default_config, encode, expected_tensors, \
    load_encoder, save_encoder
from hyperdomain.training.encoder import EncoderTrainConfig, draw_ws, train_encoder

TINY_SIZES = {"w_dim": 32, "widths": (16, 16, 32, 32), "units": (1, 1, 1, 1)}


def _one_line(e: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, msg


# ------------------------------------------------------------------------------- the config's sizes
def test_a_config_without_the_size_fields_is_the_release_architecture(tmp_path):
    """Files written before the size fields existed name none of them: they read as IR-SE50 with
    512-wide heads, and the released layout (checked against the official modules in
    test_encoders) is what the defaults build."""
    old = {"kind": "e4e", "n_styles": 18, "input_nc": 3, "input_size": 256, "n_iters": 1,
           "start_from_latent_avg": True}
    config = EncoderConfig.from_dict(old)
    assert config == default_config("e4e") and config.is_release_architecture
    assert (config.w_dim, config.widths, config.units) == (512, (64, 128, 256, 512), (3, 4, 14, 3))
    shapes = expected_tensors(config)
    assert shapes["styles.0.linear.weight"][0] == (512, 512)
    assert shapes["body.23.res_layer.4.weight"][0] == (512,)
    assert len([k for k in shapes if k.startswith("body.") and k.endswith("res_layer.0.weight")]) == 24
    # an old file (its config JSON without the fields) still loads
    enc = PhotoEncoder(EncoderConfig("restyle-psp", 2, 6, 16, 2))
    path = save_encoder(tmp_path / "old.safetensors", enc, "fp")
    from safetensors import safe_open
    from hyperdomain.files.safetensors_files import write_own_file
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    cfg = json.loads(meta["config"])
    for k in ("w_dim", "widths", "units"):
        del cfg[k]
    meta = {k: v for k, v in meta.items() if k not in ("format", "format_version")}
    write_own_file(tmp_path / "legacy.safetensors", "hyperdomain.encoder", 1, tensors, {**meta, "config": json.dumps(cfg)})
    assert load_encoder(tmp_path / "legacy.safetensors").config == enc.config


def test_a_tiny_config_builds_a_small_encoder_that_round_trips(tmp_path):
    for kind in ("e4e", "restyle-psp", "restyle-e4e"):
        config = EncoderConfig(kind, n_styles=8, input_nc=3 if kind == "e4e" else 6, input_size=32,
                               n_iters=1 if kind == "e4e" else 2, **TINY_SIZES)
        enc = PhotoEncoder(config)
        n = sum(p.numel() for p in enc.parameters())
        assert 50_000 < n < 600_000, (kind, n)
        assert tuple(enc.latent_avg.shape) == (8, 32)
        ws = encode(enc, torch.rand(2, 3, 32, 32) * 2 - 1, render=lambda w: torch.zeros(w.shape[0], 3, 32, 32))
        assert tuple(ws.shape) == (2, 8, 32)
        # JSON turns the tuples into lists; the file's config reads back equal
        back = EncoderConfig.from_dict(json.loads(json.dumps(config.as_dict())))
        assert back == config and not back.is_release_architecture
        save_encoder(tmp_path / f"{kind}.safetensors", enc, "fp")
        loaded = load_encoder(tmp_path / f"{kind}.safetensors")
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), enc.state_dict().values()))


@pytest.mark.parametrize("field,value,fragment", [
    ("widths", (16, 16, 32), "4 positive integers"),
    ("widths", (16, 16, 32, 40), "multiples of 16"),
    ("units", (1, 0, 1, 1), "4 positive integers"),
    ("w_dim", 0, "w_dim=0"),
])
def test_bad_sizes_are_one_line(field, value, fragment):
    with pytest.raises(HyperdomainError) as e:
        EncoderConfig.from_dict({"kind": "e4e", **TINY_SIZES, field: value}, "x.safetensors: config")
    _one_line(e, "x.safetensors: config", fragment)


# ------------------------------------------------------------------------------------------- training

ROOT = Path(__file__).resolve().parents[1]
# a few hundred thousand parameters; no LPIPS (its VGG costs more than the encoder), e4e's other losses
TINY_RUN = {"widths": (16, 16, 32, 32), "units": (1, 1, 1, 1), "losses": {"lpips": 0}, "batch": 8, "lr": 3e-3,
            "sample_every": 0, "checkpoint_every": 0, "sample_n": 2}


def tame_generator():
    """The tiny generator with its images mostly in [-1, 1] (the to-RGB layers scaled by 1/4; its
    raw images reach 16), so the clamp to what a photo holds changes few pixels."""
    G = make_tiny_generator()
    sd = G.state_dict()
    for k in sd:
        if k.startswith(("to_rgb1.", "to_rgbs.")) and (k.endswith("conv.weight") or k.endswith(".bias")) \
                and "modulation" not in k:
            sd[k] = sd[k] * 0.25
    G.load_state_dict(sd)
    return G


def _errors(G, enc, n=64, seed=12345):
    """(image MSE, latent MSE) of the encoder and of the average latent on ``n`` held-out renders
    (their own seed, plain W: no mixing), each pair as (encoder, average)."""
    ws = draw_ws(G, torch.Generator().manual_seed(seed), n, 0.0)
    with torch.no_grad():
        target = G.synthesis(ws, noise_mode="const").clamp(-1, 1)
        pred = encode(enc, target, render=lambda w: G.synthesis(w, noise_mode="const"))
        avg = G.mean_latent().reshape(1, 1, -1).expand_as(ws)
        img = [float((G.synthesis(w, noise_mode="const") - target).square().mean()) for w in (pred, avg)]
    lat = [float((w - ws).square().mean()) for w in (pred, avg)]
    return img, lat


def test_training_beats_the_average_latent_on_held_out_renders(tmp_path, one_thread):
    """100 steps of batch 4 on renders: on 64 renders of other seeds the encoder's reconstruction
    has less than half the average latent's squared error (0.45x here), its W+ less (0.86x: much of
    W moves this random generator's images little, so no encoder can read it back from them)."""
    G = tame_generator()
    enc = train_encoder(G, "e4e", iters=100, out_dir=tmp_path / "run", progress=False, mixing=0.0,
                        **{**TINY_RUN, "batch": 4})
    (img_enc, img_avg), (lat_enc, lat_avg) = _errors(G, enc)
    assert img_enc < 0.5 * img_avg, (img_enc, img_avg)
    assert lat_enc < 0.9 * lat_avg, (lat_enc, lat_avg)
    # the file: the generator's fingerprint, the config, and the same numbers
    loaded = load_encoder(tmp_path / "run" / "encoder.safetensors")
    assert loaded.meta["generator_fingerprint"] == G.fingerprint
    assert loaded.config == enc.config and loaded.config.w_dim == G.w_dim and loaded.config.n_styles == G.num_ws
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), enc.state_dict().values()))
    assert torch.equal(loaded.latent_avg, G.mean_latent().expand(G.num_ws, -1))
    assert (tmp_path / "run" / "samples.png").is_file()


def _photos(folder: Path, n: int = 3, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _state(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path / "checkpoint.safetensors", "encoder")
    return tensors


@pytest.mark.parametrize("kind,extra", [
    ("e4e", {"progressive_every": 1, "mixing": 0.5}),  # photo steps, style mixing, e4e's stages
    ("restyle-e4e", {"n_iters": 2}),
])
def test_resume_is_bit_exact(tmp_path, one_thread, kind, extra):
    """N steps in one go equal k steps, a resume, and N - k more: the encoder, BatchNorm's
    statistics, Adam's moments and the log (draws come from (seed, step), the checkpoint has the rest)."""
    G = make_tiny_generator()
    photos = _photos(tmp_path / "photos") if kind == "e4e" else None
    opts = {**TINY_RUN, "batch": 4, "photos": photos, "photo_fraction": 0.5, **extra}
    n, k = (4, 2) if kind == "e4e" else (3, 1)
    whole = train_encoder(G, kind, iters=n, out_dir=tmp_path / "whole", progress=False, **opts)
    train_encoder(G, kind, iters=k, out_dir=tmp_path / "split", progress=False, **opts)
    split = train_encoder(G, resume=tmp_path / "split", iters=n, progress=False)
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), \
        [key for key in a if not torch.equal(a[key], b[key])][:3]
    assert any(key.startswith("optim") for key in a) and any("running_mean" in key for key in a)
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict().values(), split.state_dict().values()))
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert log == [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, n + 1))
    if kind == "e4e":  # both kinds of step ran: renders (with the latent loss) and photos (without)
        assert {"latent" in entry for entry in log} == {True, False}, log
        assert any("delta_norm" in entry for entry in log)


def test_bad_input_is_one_line(tmp_path):
    G = make_tiny_generator()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(G, "e4e", iters=1, photos=tmp_path / "empty", **TINY_RUN)
    _one_line(e, f"--photos {tmp_path / 'empty'}", "no images")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(G, "e5e", iters=1, **TINY_RUN)
    _one_line(e, "train-encoder", "'e5e'", "e4e")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(G, "e4e", iters=1, **{**TINY_RUN, "losses": {"perceptual": 1}})
    _one_line(e, "--loss perceptual", "latent, l2, lpips, delta_norm")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(G, "e4e", iters=1, **{**TINY_RUN, "widths": (16, 16, 32, 33)})
    _one_line(e, "train-encoder", "multiples of 16")
    # a resume whose photos changed: a changed file by its digest, an added one by the count
    photos = _photos(tmp_path / "photos", n=2)
    run = tmp_path / "run"
    train_encoder(G, "e4e", iters=1, out_dir=run, progress=False, photos=photos, **{**TINY_RUN, "batch": 2})
    Image.new("RGB", (40, 40), "red").save(photos / "p1.png")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(G, resume=run, iters=2, progress=False)
    _one_line(e, f"--resume {run}", "p1.png changed")
    _photos(tmp_path / "photos", n=2)  # the original back, and one more
    Image.new("RGB", (40, 40), "blue").save(photos / "p2.png")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(G, resume=run, iters=2, progress=False)
    _one_line(e, f"--resume {run}", "photos folder", "2 photos then, 3 now")
    with pytest.raises(HyperdomainError) as e:
        train_encoder(make_tiny_generator(seed=1), resume=run, iters=2, progress=False)
    _one_line(e, "fingerprint")


def test_cli_trains_refuses_bad_input_and_sigterm_saves(tmp_path, tiny_ckpt):
    """`hyperdomain train-encoder`: bad input is one line (exit 2); SIGTERM finishes the step,
    saves the run and exits 143; the saved run resumes and writes the encoder file."""
    ckpt, _ = tiny_ckpt
    sizes = ["--widths", "16,16,32,32", "--units", "1,1,1,1", "--loss", "lpips=0", "--batch", 2]
    (tmp_path / "empty").mkdir()
    assert_user_error(cli("train-encoder", "-g", ckpt, "--photos", tmp_path / "empty", "--out", tmp_path / "x",
                          *sizes), "--photos", "no images")
    r = cli("train-encoder", "-g", ckpt, "--kind", "e5e", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "'e5e' is not one of" in r.output and "Traceback" not in r.output, r.output
    assert_user_error(cli("train-encoder", "-g", ckpt, "--widths", "16,16,x,32", "--out", tmp_path / "x"), "--widths")
    assert_user_error(cli("train-encoder", "-g", ckpt, "--loss", "lpips", "--out", tmp_path / "x"), "NAME=WEIGHT")
    assert not (tmp_path / "x").exists()

    out = tmp_path / "run"
    args = ["train-encoder", "-g", ckpt, *sizes, "--iters", 100000, "--checkpoint-every", 0, "--sample-every", 0,
            "--out", out, "--device", "cpu", "--no-progress"]
    returncode, stdout, stderr = sigterm_after_first_step(args, out)
    assert returncode == 143, stderr
    assert f"terminated (SIGTERM); the run is saved in {out}. Continue with: hyperdomain train-encoder --resume {out}" \
        in stderr and "Traceback" not in stderr, stderr
    step = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"]
    assert load_checkpoint(out / "checkpoint.safetensors", "encoder")[1]["step"] == step
    r = cli("train-encoder", "--resume", out, "--kind", "restyle-psp")
    assert_user_error(r, "--resume keeps the run's settings", "--kind")
    r = cli("train-encoder", "--resume", out, "--iters", step + 1, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert f"wrote {out / 'encoder.safetensors'} (e4e, {step + 1} steps)" in r.output
    enc = load_encoder(out / "encoder.safetensors")
    assert enc.config.widths == (16, 16, 32, 32) and enc.config.input_size == 32 and enc.config.n_styles == 8
    assert_user_error(cli("train-encoder", "-g", ckpt, "--out", out), "already holds a run", "--resume")
    # the trained encoder is what invert takes for this generator
    Image.new("RGB", (40, 40), (200, 120, 40)).save(tmp_path / "me.png")
    r = cli("invert", tmp_path / "me.png", "-g", ckpt, "--encoder", out / "encoder.safetensors", "--out",
            tmp_path / "lat", "--lpips-vgg", "random", "--no-align", "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "e4e encoder, 1 pass" in r.stderr
    assert hd.Latent.load(tmp_path / "lat" / "me.safetensors").meta["encoder"]["file"] == str(out / "encoder.safetensors")


def test_the_cli_kinds_are_the_librarys():
    from cli.commands.encoder import KINDS
    from hyperdomain.image.encoders import KINDS as LIBRARY_KINDS

    assert KINDS == LIBRARY_KINDS
    c = EncoderTrainConfig.from_dict(json.loads(json.dumps(EncoderTrainConfig(kind="restyle-psp",
                                                                              widths=(16, 16, 32, 32)).to_dict())))
    assert c == EncoderTrainConfig(kind="restyle-psp", widths=(16, 16, 32, 32))


@pytest.mark.slow  # torchrun with 2 processes
@pytest.mark.parametrize("kind", ["restyle-e4e"])  # its passes and e4e's progressive heads, in one pair of runs
def test_ddp_two_processes_keep_ranks_identical_and_resume(tmp_path, kind):
    worker = ROOT / "tests" / "encoder_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
               *map(str, args)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    out = tmp_path / "run"
    torchrun(out, kind, 2)
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # weights and BN buffers
    first = load_encoder(out / "encoder.safetensors")
    assert first.meta["source"].endswith("step 2")
    torchrun(out, kind, 3, "--resume")  # on as many processes, one step more
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert not all(torch.equal(r0[k], v) for k, v in first.state_dict().items())
    # and on one process: the checkpoint keeps the global batch
    enc = train_encoder(make_tiny_generator(), resume=out, iters=4, progress=False)
    assert enc.meta["iterations"] == 4


def test_delta_norm_is_e4es_regulariser_and_draws_mix_as_asked():
    from hyperdomain.training.encoder import delta_norm

    ws = torch.randn(3, 6, 5, dtype=torch.float64)
    for active in (1, 2, 4, 6):  # e4e's coach: a sum over the active layers of the batch-mean L2 norm
        want = sum(torch.norm(ws[:, i, :] - ws[:, 0, :], 2, dim=1).mean() for i in range(1, active))
        assert float(delta_norm(ws, active)) == pytest.approx(float(want), rel=1e-12, abs=0)
    G = make_tiny_generator()
    plain = draw_ws(G, torch.Generator().manual_seed(0), 16, 0.0)
    assert torch.equal(plain, plain[:, :1].expand_as(plain))  # one w for every layer
    mixed = draw_ws(G, torch.Generator().manual_seed(0), 16, 1.0)
    assert torch.equal(mixed[:, 0], plain[:, 0])  # the first code is the same draw
    for w in mixed:  # two codes, the second from a crossover in [1, num_ws)
        changes = [i for i in range(1, G.num_ws) if not torch.equal(w[i], w[i - 1])]
        assert len(changes) == 1 and 1 <= changes[0] < G.num_ws
