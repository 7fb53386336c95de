"""`hyperdomain translator train` and `hyperdomain translate` end to end, and their one-line refusals."""
import numpy as np
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.model.config import GeneratorConfig

from conftest import assert_user_error, cli, make_tiny_generator

NARROW = GeneratorConfig(resolution=32, style_dim=32, n_mlp=2, channels=(8, 8, 8, 8))


def test_train_from_a_dataset_then_translate(tmp_path, tiny_ckpt):
    G = make_tiny_generator(config=NARROW)
    v = torch.zeros(G.num_domain_params)
    v[:8] = -1.0
    data = tmp_path / "data"
    hd.make_dataset(G, data, 4, [("flat", hd.Domain(v, G.domain_dims))], layout="folder", shard_size=4, progress=False)
    run = tmp_path / "run"
    r = cli("translator", "train", "--pairs", data, "--domain", "flat", "--size", 32, "--encoder", "mobilenet_v2",
            "--iters", 2, "--batch", 2, "--loss", "l1=1", "--loss", "lpips=1", "--lpips-vgg", "random",
            "--sample-every", 0, "--out", run, "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"wrote {run / 'translator.safetensors'} (2 steps, paired, 32 px)" in r.output
    assert (run / "samples.png").is_file()
    assert_user_error(cli("translator", "train", "--resume", run, "--size", 64), "--resume keeps the run's settings")
    r = cli("translator", "train", "--resume", run, "--iters", 3, "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "(3 steps" in r.output
    r = cli("info", run / "translator.safetensors")
    assert r.exit_code == 0 and "translator (paired)" in r.output and "mobilenet_v2" in r.output, r.output
    r = cli("info", run / "checkpoint.safetensors")
    assert r.exit_code == 0 and f"hyperdomain translator train --resume {run}" in r.output, r.output

    photos = []
    for i in range(3):
        photos.append(tmp_path / f"photo{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 64, 3), dtype=np.uint8)).save(photos[-1])
    out = tmp_path / "out"
    T = run / "translator.safetensors"
    r = cli("translate", *photos, "--translator", T, "--out", out, "--batch", 2, "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    for i in range(3):
        assert Image.open(out / f"photo{i}.png").size == (32, 32)
    first = np.asarray(Image.open(out / "photo0.png"))
    # the same as the library's, photo by photo: the centre crop at the translator's size, one pass
    want = hd.translate(hd.load_translator(T), [photos[0]], progress=False)[0]
    assert np.abs(first.astype(int) - ((want.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).numpy()).max() <= 1

    before = (out / "photo0.png").read_bytes()
    assert_user_error(cli("translate", photos[0], "--translator", T, "--out", out, "--no-progress"),
                      "already exists; pass --overwrite")
    assert_user_error(cli("translate", out / "photo0.png", "--translator", T, "--out", out, "--overwrite",
                          "--no-progress"), "is one of this command's inputs")
    assert (out / "photo0.png").read_bytes() == before
    ckpt, _ = tiny_ckpt  # another generator
    assert_user_error(cli("translate", photos[0], "--translator", T, "--out", tmp_path / "o2", "-g", ckpt,
                          "--no-progress", "--device", "cpu"), "the translator was trained on generator", "not on")
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())
    nan = tmp_path / "nan.safetensors"
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    tensors = load_file(T)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, str(nan), safe_open(str(T), "pt").metadata())
    assert_user_error(cli("translate", photos[0], "--translator", nan, "--out", tmp_path / "o3", "--no-progress"),
                      str(nan), "non-finite")


def test_train_refusals_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(cli("translator", "train", "--pairs", empty, "--domain", "x", "--out", tmp_path / "r",
                          "--no-progress", "--device", "cpu"), "not a hyperdomain dataset folder")
    assert_user_error(cli("translator", "train", "--out", tmp_path / "r2", "--no-progress"), "give -g GENERATOR")


def test_train_with_pairs_rendered_by_the_generator_and_resume(tmp_path, tiny_ckpt, tiny_G):
    ckpt, _ = tiny_ckpt
    domain = tmp_path / "flat.safetensors"
    v = torch.zeros(tiny_G.num_domain_params)
    v[:32] = -1.0
    hd.Domain(v, tiny_G.domain_dims, hd.model.domain.generator_meta(tiny_G)).save(domain)
    run = tmp_path / "run"
    r = cli("translator", "train", "-g", ckpt, "--domain", domain, "--size", 32, "--encoder", "mobilenet_v2",
            "--iters", 1, "--batch", 2, "--loss", "l1=1", "--sample-every", 0, "--out", run, "--no-progress",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    domain.rename(tmp_path / "moved.safetensors")  # the run reads its domain file again on resume
    r = cli("translator", "train", "--resume", run, "--iters", 2, "--no-progress", "--device", "cpu")
    assert_user_error(r, "flat.safetensors", "no such domain file")
    (tmp_path / "moved.safetensors").rename(domain)
    r = cli("translator", "train", "--resume", run, "--iters", 2, "--no-progress", "--device", "cpu")
    assert r.exit_code == 0 and "(2 steps" in r.output, r.output
    T = hd.load_translator(run / "translator.safetensors", generator=tiny_G)
    assert T.domain["digest"] == hd.datasets.settings.domain_digest(v)


def test_cli_sigterm_saves_the_run_and_exits_143(tmp_path):
    from conftest import sigterm_after_first_step
    from hyperdomain.files.run_checkpoints import read_checkpoint_meta

    G = make_tiny_generator(config=NARROW)
    data = tmp_path / "data"
    hd.make_dataset(G, data, 2, [("flat", hd.Domain.zeros(G))], layout="folder", shard_size=2, progress=False)
    out = tmp_path / "run"
    args = ["translator", "train", "--pairs", data, "--domain", "flat", "--size", 32, "--encoder", "mobilenet_v2",
            "--iters", 100000, "--batch", 2, "--loss", "l1=1", "--sample-every", 0, "--checkpoint-every", 0,
            "--out", out, "--no-progress", "--device", "cpu"]
    returncode, _, stderr = sigterm_after_first_step(args, out)
    assert returncode == 143, stderr
    assert f"terminated (SIGTERM); the run is saved in {out}" in stderr and "Traceback" not in stderr
    step = read_checkpoint_meta(out / "checkpoint.safetensors", "translator")["step"]
    assert step >= 1
    r = cli("translator", "train", "--resume", out, "--iters", step + 1, "--no-progress", "--device", "cpu")
    assert r.exit_code == 0 and f"({step + 1} steps" in r.output, r.output
