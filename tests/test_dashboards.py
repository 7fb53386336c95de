"""Training dashboards (--log tensorboard / wandb): the event files hold log.jsonl's losses, the
learning rate, the step time and the sample grids; a resumed run logs on in the same place; a
missing package is one line before training; a failing dashboard never stops a run."""
import json
import logging
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.errors import HyperdomainError
from hyperdomain.training import dashboards

from conftest import assert_user_error, cli

pytest.importorskip("tensorboard")  # the 'ui' and 'test' extras install it
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

PIXAR = "3D render in the style of Pixar"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread each (on a busy 2-core machine two threads mostly wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adapt(G, clip, out, **kw):
    kw = {"iters": 3, "sample_every": 2, "checkpoint_every": 2, "progress": False, **kw}
    return hd.adapt(G, PIXAR, clip=[clip], out_dir=out, **kw)


def events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def log_lines(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_scalars_are_the_log(acc, run, lr):
    lines = log_lines(run)
    losses = [k for k in lines[0] if k != "step"]
    assert set(acc.Tags()["scalars"]) == {f"loss/{k}" for k in losses} | {"train/lr", "train/step_time"}
    for k in losses:
        logged = [(e.step, e.value) for e in acc.Scalars(f"loss/{k}")]
        assert [s for s, _ in logged] == [line["step"] for line in lines]
        np.testing.assert_allclose([v for _, v in logged], [line[k] for line in lines], rtol=1e-6)  # float32
    assert [e.value for e in acc.Scalars("train/lr")] == pytest.approx([lr] * len(lines))
    times = [e.value for e in acc.Scalars("train/step_time")]
    assert len(times) == len(lines) and all(0 < t < 60 for t in times)


def test_tensorboard_holds_the_log_and_the_sample_grids(tmp_path, tiny_G, tiny_clip):
    run = tmp_path / "run"
    adapt(tiny_G, tiny_clip, run, dashboards=("tensorboard",), lr=0.05)
    acc = events(run)
    assert_scalars_are_the_log(acc, run, lr=0.05)
    grids = acc.Images("samples")
    assert [e.step for e in grids] == [2, 3]  # samples/step_000002.png, then samples.png at the end
    with Image.open(run / "samples.png") as im:
        assert (grids[-1].width, grids[-1].height) == im.size
        import io
        decoded = np.asarray(Image.open(io.BytesIO(grids[-1].encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, np.asarray(im.convert("RGB")))
    assert json.loads((run / "config.json").read_text())["dashboards"] == ["tensorboard"]


def test_a_resumed_run_logs_on_in_the_same_place(tmp_path, tiny_G, tiny_clip):
    """Cut after step 3 (checkpoint at 2): the resumed run trains 3 again; TensorBoard keeps each
    step once, with the values log.jsonl ends with."""
    run = tmp_path / "run"

    def crash_at_3(step, values, domain):
        if step == 3:
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        adapt(tiny_G, tiny_clip, run, iters=4, dashboards=("tensorboard",), callback=crash_at_3, lr=0.2)
    hd.adapt(tiny_G, resume=run, clip=[tiny_clip], progress=False)
    acc = events(run)
    assert [line["step"] for line in log_lines(run)] == [1, 2, 3, 4]
    assert_scalars_are_the_log(acc, run, lr=0.2)


def test_a_missing_package_is_one_line_before_training(tmp_path, tiny_G, tiny_clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    real = dashboards.importlib.util.find_spec
    monkeypatch.setattr(dashboards.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("wandb", "tensorboard") else real(name, *a))
    for name, how in (("tensorboard", "pip install 'hyperdomain[ui]'"), ("wandb", "pip install wandb")):
        with pytest.raises(HyperdomainError, match=f"--log {name} needs the {name} package: {how}".replace("[", r"\[")
                           .replace("]", r"\]")):
            adapt(tiny_G, tiny_clip, tmp_path / name, dashboards=(name,))
        assert not (tmp_path / name).exists()
    with pytest.raises(HyperdomainError, match="--log tensorbored: unknown dashboard; use tensorboard or wandb"):
        adapt(tiny_G, tiny_clip, tmp_path / "x", dashboards=("tensorbored",))


def test_cli_log_option(tmp_path, tiny_ckpt, tiny_clip_config, monkeypatch):
    gen = tiny_ckpt[0]
    base = ["--generator", gen, "--clip", tiny_clip_config, "--device", "cpu", "--no-progress", "--iters", 2,
            "--sample-every", 1]
    out = tmp_path / "run"
    r = cli("adapt", "--target", PIXAR, *base, "--out", out, "--log", "tensorboard")
    assert r.exit_code == 0, r.output
    assert [e.step for e in events(out).Scalars("loss/total")] == [1, 2]
    assert_user_error(cli("adapt", "--resume", out, "--log", "tensorboard"), "drop --log")
    assert_user_error(cli("adapt", "--target", PIXAR, *base, "--out", tmp_path / "b", "--log", "tb"),
                      "--log tb: unknown dashboard")
    monkeypatch.setitem(sys.modules, "wandb", None)
    real = dashboards.importlib.util.find_spec
    monkeypatch.setattr(dashboards.importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    for command in (["adapt", "--target", PIXAR, *base], ["train-hyper", "--generator", gen]):
        assert_user_error(cli(*command, "--out", tmp_path / "c", "--log", "tensorboard,wandb"),
                          "--log wandb needs the wandb package: pip install wandb")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


class FakeWandb(types.ModuleType):
    """Records what a run sends to Weights & Biases."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kw):
        self.calls.append(("init", kw))
        fake = self

        class Run:
            def log(self, values, step):
                fake.calls.append(("log", step, values))

            def finish(self):
                fake.calls.append(("finish",))
        return Run()

    class Image:
        def __init__(self, pixels):
            self.pixels = pixels


def test_wandb_gets_the_same_values_and_resumes_the_same_run(tmp_path, tiny_G, tiny_clip, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(dashboards.importlib.util, "find_spec", lambda name, *a: object())
    run = tmp_path / "run"
    adapt(tiny_G, tiny_clip, run, iters=2, dashboards=("wandb",))
    (kind, init), *rest = fake.calls
    assert kind == "init" and init["resume"] == "allow" and init["dir"] == str(run)
    assert init["config"]["target"] == PIXAR and init["id"] == (run / "wandb_run_id").read_text().strip()
    scalars = [(c[1], c[2]) for c in rest if c[0] == "log" and "loss/total" in c[2]]
    assert [(s, v["loss/total"]) for s, v in scalars] == [(line["step"], line["total"]) for line in log_lines(run)]
    images = [(c[1], c[2]["samples"]) for c in rest if c[0] == "log" and "samples" in c[2]]
    assert [s for s, _ in images] == [2] and images[0][1].pixels.shape[2] == 3
    assert rest[-1] == ("finish",)
    fake.calls.clear()
    hd.adapt(tiny_G, resume=run, clip=[tiny_clip], iters=3, progress=False)
    assert fake.calls[0][1]["id"] == init["id"]  # the same W&B run
    assert [c[1] for c in fake.calls if c[0] == "log" and "loss/total" in c[2]] == [3]


def test_a_failing_dashboard_warns_once_and_the_run_goes_on(tmp_path, tiny_G, tiny_clip, monkeypatch, caplog):
    def broken(run_dir, config, step):
        def fail(*a):
            raise OSError(28, "No space left on device")
        return dashboards._Sink("tensorboard", fail, fail, fail)

    monkeypatch.setitem(dashboards._OPEN, "tensorboard", broken)
    with caplog.at_level(logging.WARNING, logger="hyperdomain.training.dashboards"):
        domain = adapt(tiny_G, tiny_clip, tmp_path / "run", dashboards=("tensorboard",))
    assert domain.meta["iterations"] == 3 and (tmp_path / "run" / "domain.safetensors").is_file()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()

    def cannot_start(run_dir, config, step):
        raise RuntimeError("not logged in")

    monkeypatch.setitem(dashboards._OPEN, "wandb", cannot_start)
    monkeypatch.setattr(dashboards.importlib.util, "find_spec", lambda name, *a: object())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hyperdomain.training.dashboards"):
        adapt(tiny_G, tiny_clip, tmp_path / "run2", dashboards=("wandb",))
    assert "cannot start (RuntimeError: not logged in)" in caplog.text


def test_train_hyper_logs_to_tensorboard(tmp_path, tiny_G, tiny_clip):
    train = tmp_path / "train.txt"
    train.write_text("Anime painting\nPencil sketch\nZombie\n")
    run = tmp_path / "hdn"
    hd.train_hyper(tiny_G, clip=[tiny_clip], input_clip=tiny_clip, progress=False, domains=str(train), iters=2,
                   batch=2, width=16, templates="single", test_domains=None, sample_every=1, checkpoint_every=0,
                   sample_n=1, sample_prompts=1, lr=1e-3, out_dir=run, dashboards=("tensorboard",))
    acc = events(run)
    assert_scalars_are_the_log(acc, run, lr=1e-3)
    assert {"loss/direction", "loss/tt_direction"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("samples")] == [1, 2]


def test_dashboard_names():
    assert dashboards.parse_dashboards(["tensorboard,wandb", "TensorBoard", "none"]) == ("tensorboard", "wandb")
    assert hd.AdaptConfig(target="x", dashboards=["tensorboard"]).dashboards == ("tensorboard",)
    cfg = hd.HyperTrainConfig(dashboards="wandb")
    assert hd.HyperTrainConfig.from_dict(cfg.to_dict()) == cfg
    assert hd.AdaptConfig.from_dict({k: v for k, v in hd.AdaptConfig(target="x").to_dict().items()
                                     if k != "dashboards"}).dashboards == ()  # runs from before dashboards


def test_import_hyperdomain_stays_light():
    """None of the optional packages is imported by `import hyperdomain` (nor by a run without --log)."""
    import subprocess

    code = ("import sys, hyperdomain; heavy = [m for m in ('imageio', 'imageio_ffmpeg', 'tensorboard', "
            "'torch.utils.tensorboard', 'wandb') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
