"""Full disks and I/O errors: one line, nothing half-written, the last good state kept.

On a real small tmpfs where the machine allows (``small_tmpfs``), and by injected faults where a
full disk at one exact write is awkward to arrange.
"""
import errno
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

import hyperdomain as hd
from hyperdomain.errors import StorageError
from hyperdomain.files.run_checkpoints import read_checkpoint_meta
from hyperdomain.training.run_dir import RunInterrupted, append_log

from conftest import assert_storage_error, cli

ENOSPC = os.strerror(errno.ENOSPC)  # "No space left on device"


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def fail_image_writes(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Image writes to a file called ``name`` fail part way: some bytes reach the disk, then ``code``."""
    real = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if f".{name}." in str(fp) or str(fp).endswith(name):  # the atomic temp file, or the file itself
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n partial")
            raise OSError(code, os.strerror(code))
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def adapt_args(ckpt, clip_config, out, *extra):
    return ["adapt", "--target", "Sketch", "--generator", ckpt, "--clip", clip_config, "--out", out,
            "--templates", "single", "--device", "cpu", "--no-progress", *extra]


# ------------------------------------------------------------------------ sample and evaluate

def test_sample_grid_on_a_full_disk(tmp_path, tiny_ckpt, small_tmpfs):
    """One line naming the grid and the reason, exit 1; the grid it would replace is intact, no temp file."""
    ckpt, _ = tiny_ckpt
    fs = small_tmpfs(64)
    grid = fs.path / "grid.png"
    Image.new("RGB", (4, 4), (200, 10, 10)).save(grid)  # the user's earlier grid
    earlier = grid.read_bytes()
    fs.fill()
    r = cli("sample", "--generator", ckpt, "-n", 4, "--out", grid, "--device", "cpu", "--overwrite")
    assert_storage_error(r, str(grid), ENOSPC)
    assert grid.read_bytes() == earlier
    assert fs.files() == ["grid.png"]


def test_sample_separate_on_a_full_disk(tmp_path, tiny_ckpt, small_tmpfs):
    """--separate fills the disk part way: one line naming the frame that failed; every frame left is whole."""
    ckpt, _ = tiny_ckpt
    fs = small_tmpfs(64)
    fs.fill(leave=3 * 4096)
    frames = fs.path / "frames"
    r = cli("sample", "--generator", ckpt, "-n", 16, "--out", tmp_path / "grid.png", "--separate", frames,
            "--device", "cpu")
    assert_storage_error(r, str(frames / "source_"), ENOSPC)
    assert Image.open(tmp_path / "grid.png").size == (4 * 34 + 2, 4 * 34 + 2)  # the grid came first, whole
    left = fs.files()
    assert 0 < len(left) < 16 and no_temp_files(fs.path), left
    for name in left:
        Image.open(fs.path / name).load()  # a complete PNG, or this raises
    failed = Path(r.stderr.strip().removeprefix("Error: ").split(": ")[0])  # the frame the line names
    assert failed.parent == frames and failed.name.startswith("source_") and not failed.exists()


def test_evaluate_out_on_a_full_disk(tmp_path, tiny_ckpt, tiny_clip_config, small_tmpfs):
    """The table is printed and the results that fit are written; the one that does not is one line."""
    ckpt, _ = tiny_ckpt
    fs = small_tmpfs(64)
    scores = fs.path / "scores.json"
    earlier = '[{"name": "source", "prompt": "Photo", "quality": 0.2, "diversity": 0.5}]\n'
    scores.write_text(earlier)
    fs.fill()
    r = cli("evaluate", "--generator", ckpt, "--source", "--clip", tiny_clip_config, "-n", 2, "--templates", "single", "--device", "cpu",
            "-o", tmp_path / "scores.csv", "-o", scores, "--overwrite")
    assert_storage_error(r, str(scores), ENOSPC)
    assert "quality" in r.stdout and (tmp_path / "scores.csv").read_text().startswith("name,prompt")
    assert scores.read_text() == earlier and fs.files() == ["scores.json"]


def test_an_io_error_is_named_too(tmp_path, tiny_ckpt, monkeypatch):
    """EIO, not only ENOSPC: the storage's fault, exit 1, the file and the reason."""
    ckpt, _ = tiny_ckpt
    fail_image_writes(monkeypatch, "grid.png", errno.EIO)
    r = cli("sample", "--generator", ckpt, "-n", 1, "--out", tmp_path / "grid.png", "--device", "cpu")
    assert_storage_error(r, str(tmp_path / "grid.png"), os.strerror(errno.EIO))
    assert os.listdir(tmp_path) == ["tiny.pt"]


# ------------------------------------------------------------------------ training runs

def fast(**kw):
    """Library adapt settings for tests: one prompt template (the 80 of imagenet cost seconds)."""
    return dict(templates="single", progress=False, **kw)


def test_adapt_sample_grid_fails_mid_run_then_resumes(tmp_path, tiny_ckpt, tiny_clip_config, tiny_clip, monkeypatch):
    """The step-2 sample grid cannot be written: one line saying where the run is; the checkpoint holds
    step 2 and --resume finishes it, equal to a run that never failed."""
    ckpt, _ = tiny_ckpt
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fail_image_writes(m, "step_000002.png")
        r = cli(*adapt_args(ckpt, tiny_clip_config, out, "--iters", 4, "--sample-every", 2))
    assert_storage_error(r, str(out / "samples" / "step_000002.png"), ENOSPC, "stopped at step 2",
                         "saved at step 2", f"--resume {out}")
    assert read_checkpoint_meta(out / "checkpoint.safetensors", "adapt")["step"] == 2
    assert not (out / "samples" / "step_000002.png").exists() and no_temp_files(out)
    assert not (out / "domain.safetensors").exists()
    r = cli("adapt", "--resume", out, "--device", "cpu", "--no-progress")
    assert r.exit_code == 0, r.output
    straight = hd.adapt(hd.load_generator(ckpt, device="cpu"), "Sketch", clip=[tiny_clip], **fast(iters=4))
    assert torch.equal(hd.Domain.load(out / "domain.safetensors").vector, straight.vector)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_a_failed_checkpoint_keeps_the_previous_one(tmp_path, tiny_G, tiny_clip, small_tmpfs):
    """The disk fills at step 2: its checkpoint fails, step 1's stays loadable, and resuming it (with
    space again) gives the run that never failed."""
    fs = small_tmpfs(512)
    out = fs.path / "run"

    def fill_at_2(step, losses, d):
        if step == 2:
            fs.fill()

    kw = fast(iters=4, seed=1, checkpoint_every=1, sample_every=0)
    with pytest.raises(StorageError) as e:
        hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], out_dir=out, callback=fill_at_2, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(out / "checkpoint.safetensors") in msg and ENOSPC in msg, msg
    assert "stopped at step 2, the run is saved at step 1" in msg, msg
    assert read_checkpoint_meta(out / "checkpoint.safetensors", "adapt")["step"] == 1
    assert no_temp_files(fs.path)
    fs.free()
    resumed = hd.adapt(tiny_G, resume=out, clip=[tiny_clip], progress=False)
    assert torch.equal(resumed.vector, hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], **kw).vector)


def test_the_final_sample_grid_fails_after_the_domain_is_written(tmp_path, tiny_G, tiny_clip, monkeypatch):
    """The end of a run writes what it can: checkpoint and domain file, then says which file failed."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        fail_image_writes(m, "samples.png")
        with pytest.raises(StorageError, match=r"samples\.png: cannot write .*stopped at step 2, the run is saved "
                                               r"at step 2"):
            hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], out_dir=out, **fast(iters=2, sample_every=0))
    assert hd.Domain.load(out / "domain.safetensors").meta["iterations"] == 2
    assert not (out / "samples.png").exists() and no_temp_files(out)
    hd.adapt(tiny_G, resume=out, clip=[tiny_clip], progress=False)  # nothing to train: the files again
    Image.open(out / "samples.png").load()


def test_ctrl_c_whose_save_fails_says_so(tmp_path, tiny_G, tiny_clip, small_tmpfs):
    """A stop whose checkpoint cannot be written keeps the previous checkpoint and says why."""
    fs = small_tmpfs(512)
    out = fs.path / "run"

    def fill_and_stop_at_3(step, losses, d):
        if step == 3:
            fs.fill()
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next step boundary

    with pytest.raises(RunInterrupted) as e:
        hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], out_dir=out, callback=fill_and_stop_at_3,
                 **fast(iters=6, checkpoint_every=2, sample_every=0))
    assert e.value.signum == signal.SIGTERM
    assert str(out / "checkpoint.safetensors") in e.value.save_error and ENOSPC in e.value.save_error
    assert read_checkpoint_meta(out / "checkpoint.safetensors", "adapt")["step"] == 2
    assert no_temp_files(fs.path)


def test_cli_ctrl_c_whose_save_fails_is_one_line(tmp_path, tiny_ckpt, tiny_clip_config, monkeypatch):
    ckpt, _ = tiny_ckpt
    out = tmp_path / "run"
    why = f"{out}/checkpoint.safetensors: cannot write ({ENOSPC})"

    saved = []

    def stopped(*args, **kwargs):
        if saved:  # an earlier checkpoint of the run is in the folder
            out.mkdir()
            (out / "checkpoint.safetensors").write_bytes(b"")
        raise RunInterrupted(signal.SIGTERM, why)

    monkeypatch.setattr(hd, "adapt", stopped)
    args = adapt_args(ckpt, tiny_clip_config, out)
    r = cli(*args)
    assert r.exit_code == 143 and r.stderr.strip() == f"terminated (SIGTERM), but saving failed ({why}); nothing was saved"
    saved.append(True)
    r = cli(*args)
    assert r.exit_code == 143 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert f"saving failed ({why}); its last checkpoint is in {out}. Continue with: hyperdomain adapt --resume {out}" \
        in r.stderr


# ------------------------------------------------------------------------ log.jsonl

def test_a_log_append_on_a_full_disk_leaves_no_partial_line(small_tmpfs):
    """The kernel takes part of the line and refuses the rest: the part is cut back."""
    fs = small_tmpfs(64)
    lines = "".join(json.dumps({"step": s, "direction": 0.5}) + "\n" for s in range(1, 200))
    text = lines[: lines.rindex("\n", 0, 4090) + 1]  # complete lines, ending a few bytes short of a page
    (fs.path / "log.jsonl").write_text(text)
    fs.fill()
    with pytest.raises(StorageError, match=f"log.jsonl: cannot write \\({ENOSPC}\\)"):
        append_log(fs.path, 500, {"direction": 0.123456789, "total": 0.123456789})
    assert (fs.path / "log.jsonl").read_text() == text


def test_a_torn_log_line_is_dropped_on_resume(tmp_path, tiny_G, tiny_clip):
    """A crash left a torn last line (garbage bytes): resuming cuts it and appends on lines of their own."""
    out = tmp_path / "run"
    hd.adapt(tiny_G, "Sketch", clip=[tiny_clip], out_dir=out, **fast(iters=2, sample_every=0))
    with open(out / "log.jsonl", "ab") as f:
        f.write(b'{"step": 3, "direction": 0.4\x00\x00\xff\xfe')
    hd.adapt(tiny_G, resume=out, clip=[tiny_clip], iters=3, progress=False)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
