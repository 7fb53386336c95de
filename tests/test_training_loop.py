"""The loop every trainer shares (hyperdomain.training.loop), driven by a toy trainer that adds
nothing but its losses and state: what a new trainer inherits without writing a loop."""
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from hyperdomain.errors import HyperdomainError
from hyperdomain.files.run_checkpoints import CHECKPOINT, load_checkpoint
from hyperdomain.training.loop import TrainingRun, open_resume
from hyperdomain.training.run_config import RunConfig


@dataclass(frozen=True, kw_only=True)
class ToyConfig(RunConfig):
    """A config with nothing but the fields every run has (RunConfig's)."""

    command: ClassVar[str] = "toy"
    run: ClassVar[str] = "adapt"  # its losses are its own; the registry's defaults are never computed

    iters: int = 6
    sample_every: int = 0
    checkpoint_every: int = 0
    clip: tuple = ("toy",)


class Toy(TrainingRun):
    """Fits a vector to noisy targets drawn from the run's RNG: random draws, Adam, one tensor."""

    kind = "toy"

    def __init__(self, G, config, out_dir, poison_step=None):
        super().__init__(G, config, out_dir, rng=torch.Generator().manual_seed(config.seed))
        self.x = torch.zeros(5, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.x], lr=config.lr)
        self.poison_step = poison_step
        self.events = []

    def losses(self):
        target = torch.randn(5, generator=self.rng) + 3
        loss = (self.x - target).square().mean()
        if self.step + 1 == self.poison_step:
            loss = loss * float("nan")
        return {"fit": loss, "total": loss}

    def state_tensors(self):
        return {"x": self.x}

    def load_state_tensors(self, tensors):
        with torch.no_grad():
            self.x.copy_(tensors["x"])

    def result(self):
        return self.x.detach().clone()

    def write_outputs(self, result):
        torch.save(result, self.out_dir / "x.pt")

    def save_samples(self, path):
        self.events.append(("samples", path.name))
        path.write_text(str(self.step))

    def stop_outputs(self):
        self.events.append(("stop", self.step))


def test_a_trainer_gets_the_loop_cadence_files_and_result(tmp_path, tiny_G):
    seen = []
    run = Toy(tiny_G, ToyConfig(iters=5, sample_every=2, checkpoint_every=2), tmp_path / "run")
    x = run.train(callback=lambda step, values: seen.append((step, sorted(values))), progress=False)
    out = tmp_path / "run"
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5] and seen[0][1] == ["fit", "total"]
    assert (out / "samples" / "step_000002.png").read_text() == "2" and (out / "samples" / "step_000004.png").exists()
    assert not (out / "samples" / "step_000005.png").exists()  # the last step's grid is samples.png
    assert (out / "samples.png").read_text() == "5"
    assert torch.equal(torch.load(out / "x.pt"), x)
    tensors, meta = load_checkpoint(out / CHECKPOINT, "toy")
    assert meta["step"] == 5 and torch.equal(tensors["x"], x) and "rng" in tensors and "optim.0.exp_avg" in tensors
    assert meta["generator_fingerprint"] == tiny_G.fingerprint and meta["config"]["iters"] == 5
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["sample_every"] == 2
    assert x.min() > 0.4  # Adam moved it towards the targets (about lr per step)


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_G):
    straight = Toy(tiny_G, ToyConfig(iters=6), None).train(progress=False)
    Toy(tiny_G, ToyConfig(iters=3), tmp_path / "r").train(progress=False)
    tensors, meta, config = open_resume(tmp_path / "r", "toy", ToyConfig, tiny_G, iters=6)
    resumed = Toy(tiny_G, config, tmp_path / "r")
    resumed.restore(tensors, meta)
    assert resumed.step == 3
    assert torch.equal(resumed.train(progress=False), straight)  # optimizer and RNG state came back
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()] == list(range(1, 7))
    with pytest.raises(HyperdomainError, match="already at step 6"):
        open_resume(tmp_path / "r", "toy", ToyConfig, tiny_G, iters=2)


def test_non_finite_loss_keeps_the_state_of_the_steps_start(tmp_path, tiny_G):
    run = Toy(tiny_G, ToyConfig(iters=6), tmp_path / "nan", poison_step=4)
    # the loss of step 4 is not finite: the last state whose loss was finite is step 3's start (2 updates)
    with pytest.raises(HyperdomainError, match=r"step 4: loss is not finite \(fit=nan\); stopped; the last good state "
                                               r"\(step 2\) is in .*nan\. Try a new run with a lower --lr") as e:
        run.train(progress=False)
    assert "\n" not in str(e.value)
    assert run.events == [("stop", 2)]
    two = Toy(tiny_G, ToyConfig(iters=2), None).train(progress=False)
    tensors, meta = load_checkpoint(tmp_path / "nan" / CHECKPOINT, "toy")
    assert meta["step"] == 2 and torch.equal(tensors["x"], two)
    # the saved RNG state is the failed step's start: resuming without the fault equals a clean run
    clean = Toy(tiny_G, ToyConfig(iters=6), None).train(progress=False)
    _, _, config = open_resume(tmp_path / "nan", "toy", ToyConfig, tiny_G, None)
    resumed = Toy(tiny_G, config, tmp_path / "nan")
    resumed.restore(tensors, meta)
    assert torch.equal(resumed.train(progress=False), clean)


def test_ctrl_c_between_steps_saves_that_boundary(tmp_path, tiny_G):
    run = Toy(tiny_G, ToyConfig(iters=10), tmp_path / "c")

    def interrupt_after_two(step, values):
        if step == 2:
            raise KeyboardInterrupt  # what a second Ctrl-C does between steps

    with pytest.raises(KeyboardInterrupt):
        run.train(callback=interrupt_after_two, progress=False)
    tensors, meta = load_checkpoint(tmp_path / "c" / CHECKPOINT, "toy")
    assert meta["step"] == 2 and torch.equal(tensors["x"], Toy(tiny_G, ToyConfig(iters=2), None).train(progress=False))
    assert not (tmp_path / "c" / "x.pt").exists()  # final outputs only at the end


def test_without_a_folder_nothing_is_written(tmp_path, tiny_G, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Toy(tiny_G, ToyConfig(iters=3, sample_every=1, checkpoint_every=1), None)
    run.train(progress=False)
    assert run.events == [] and list(tmp_path.iterdir()) == []


def test_a_huge_learning_rate_keeps_the_state_before_it(tmp_path, tiny_G):
    """lr 1e30: the first update leaves finite but absurd numbers whose next loss overflows; the
    state kept is the one before that update, not |x| = 1e30. An update that makes a number
    non-finite rolls back to its own step's start."""

    run = Toy(tiny_G, ToyConfig(iters=5), tmp_path / "huge")
    # past the configs' bound (RunConfig refuses lr > 1000): set on the optimizer, as a trainer could
    run.optimizer = torch.optim.Adam([run.x], lr=1e30)  # (x - 3)^2 overflows float32 at |x| = 1e30
    with pytest.raises(HyperdomainError, match=r"step 2: loss is not finite.*last good state \(step 0\)"):
        run.train(progress=False)
    tensors, meta = load_checkpoint(tmp_path / "huge" / CHECKPOINT, "toy")
    assert meta["step"] == 0 and tensors["x"].abs().max() == 0  # not the 1e30 the first update made

    run = Toy(tiny_G, ToyConfig(iters=5), tmp_path / "inf")
    run.optimizer = torch.optim.SGD([run.x], lr=float("inf"))  # a finite loss and gradient, an infinite step
    with pytest.raises(HyperdomainError, match=r"step 1: the update made trained numbers non-finite.*step 0"):
        run.train(progress=False)
    assert torch.isfinite(load_checkpoint(tmp_path / "inf" / CHECKPOINT, "toy")[0]["x"]).all()


def test_the_global_batch_splits_over_the_processes_or_is_one_line():
    from hyperdomain.distributed import local_batch

    assert local_batch(8, 2) == 4 and local_batch(6, 3, 2, "BatchNorm") == 2
    with pytest.raises(HyperdomainError, match=r"^--batch 7 does not split over 2 processes; use a multiple$"):
        local_batch(7, 2)
    with pytest.raises(HyperdomainError, match=r"--batch 4 over 4 processes leaves 1 per process \(BatchNorm: at "
                                               r"least 2\)"):
        local_batch(4, 4, 2, "BatchNorm")
