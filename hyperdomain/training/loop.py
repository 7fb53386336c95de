"""The training loop every trainer shares.

A trainer is a :class:`TrainingRun` that says what one step computes and what it trains:

- ``losses()``: one step's losses (scalar tensors, ``"total"`` among them) from the current
  state, drawing random numbers from ``self.rng`` (whose state each checkpoint keeps) or from
  generators seeded by the step;
- ``state_tensors()`` / ``load_state_tensors()``: the trained tensors, for checkpoints;
- ``result()``: what ``train`` returns; ``write_outputs(result)``: the final files;
- optionally ``save_samples(path)``, ``prepare_files()``, ``stop_outputs()`` (files kept at a
  non-finite stop) and ``checkpoint_meta()``.

The loop does the rest, alike for every trainer: the backward and the optimizer step, a progress
bar, a log line per step, sample grids and checkpoints at their cadence, Ctrl-C or SIGTERM at a
step boundary (a second one at once) with a checkpoint, a stop with one line that keeps the last
good state when a loss, a gradient or an update is not finite, the final files, and resuming a
saved run exactly.

The last good state: each step starts from a snapshot of the trained tensors (BatchNorm
statistics included), Adam's state and the RNG. A non-finite loss at step ``n`` rolls back to
the start of step ``n - 1``, the last state whose loss was finite: an update can make a state
whose own loss overflows (a learning rate of 1e30 leaves finite but useless multipliers of 1e30),
so the state the bad loss came from is not kept. A non-finite gradient, or an update that makes
a trained number non-finite, rolls back to the start of the step itself.
A failed write (a full disk, an I/O error) stops the run with one line at the next step
boundary, after the boundary's other writes were tried: the run first saves what it can (a
checkpoint of that boundary when the failure was not the checkpoint itself), and a checkpoint that
cannot be written leaves the previous one as it was (writes are atomic). The line names the file,
the reason and the step the run folder holds. Under ``torchrun`` the ranks agree on every stop,
rank 0 alone writes, and a failed write there stops every rank together.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from tqdm import tqdm

from ..distributed import DistInfo, any_rank, mean_over_ranks
from ..model.domain import generator_meta
from ..errors import HyperdomainError, StorageError
from ..files.atomic import write_error
from ..files.run_checkpoints import CHECKPOINT, load_checkpoint, restore_optimizer, save_checkpoint
from .dashboards import Dashboards, open_dashboards, require
from .run_inputs import check_inputs_unchanged, digest_inputs
from .run_dir import RunInterrupted, append_log, deferred_interrupt, prepare_run_dir, sample_name

log = logging.getLogger(__name__)

Callback = Callable[[int, Mapping[str, float]], Any]


class StopFlag(Protocol):
    """What ``train(stop=...)`` polls between steps (``threading.Event`` is one)."""

    def is_set(self) -> bool: ...


@dataclass
class _Snapshot:
    """A run's state at a step boundary, in memory: enough to return there exactly."""

    step: int
    tensors: dict[str, torch.Tensor]
    optimizer: dict
    rng: torch.Tensor | None


class TrainingRun:
    """One run: its state, its run folder (``out_dir``, None for none) and the loop (``train``)."""

    kind = ""  # names the checkpoint format, hyperdomain.{kind}-checkpoint
    desc = "train"  # the progress bar's label

    def __init__(self, G, config, out_dir: Path | None, dist: DistInfo | None = None,
                 rng: torch.Generator | None = None):
        self.G, self.config, self.out_dir = G, config, out_dir
        require(getattr(config, "dashboards", ()))  # on every rank, before any step
        self.dist = dist or DistInfo(device=G.device)
        self.rng = rng
        self.optimizer: torch.optim.Optimizer | None = None  # set by the trainer
        self.step = 0
        self.saved_step: int | None = None  # the step of the last checkpoint this run wrote
        self._kept_step: int | None = None  # the step of the checkpoint in the run folder (written or resumed)
        self._tried_step: int | None = None  # the step of the last checkpoint write begun (it may have failed)
        self._phase = "idle"  # "forward": state still the step's start; "update": it may be torn
        self._rng_at_step_start = None if rng is None else rng.get_state()
        self._write_error: HyperdomainError | None = None  # rank 0's first failed write, told to every rank at the next step
        self._snapshots: list[_Snapshot] = []  # the starts of the previous and the current step
        self.inputs: dict[str, str] | None = None  # the run's input files' digests (run_inputs), set on rank 0
        self.dashboards = Dashboards()  # TensorBoard / W&B (config.dashboards), opened by train on rank 0

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0 of a run with a folder)."""
        return self.out_dir is not None and self.dist.is_main

    # ------------------------------------------------------------------ what a trainer provides
    def losses(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError

    def write_outputs(self, result: Any) -> None:
        """The final files beside the checkpoint (rank 0 only)."""

    def save_samples(self, path: Path) -> None:
        """A sample grid (rank 0 only)."""

    def prepare_files(self) -> None:
        """Files a new or resumed run folder gets besides config.json (rank 0 only)."""

    def stop_outputs(self) -> None:
        """Files written besides the checkpoint when a non-finite value stops the run (rank 0 only)."""

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write the state at the current step boundary (rank 0 of a run with a folder)."""
        if not self.writes:
            return None
        tensors = dict(self.state_tensors())
        if self.rng is not None:
            tensors["rng"] = self._rng_at_step_start
        meta = {"config": self.config.to_dict(), "step": self.step, **generator_meta(self.G), "inputs": self.inputs,
                **self.checkpoint_meta()}
        self._tried_step = self.step
        path = save_checkpoint(self.out_dir / CHECKPOINT, self.kind, tensors, meta, self.optimizer)
        self.saved_step = self._kept_step = self.step
        return path

    def restore(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint`."""
        self.load_state_tensors(tensors)
        restore_optimizer(self.optimizer, tensors, meta)
        if self.rng is not None:
            self.rng.set_state(tensors["rng"])
            self._rng_at_step_start = self.rng.get_state()
        self.step = int(meta["step"])
        self._kept_step = self.step
        self.inputs = meta.get("inputs")  # checked against the files by open_resume

    # ------------------------------------------------------------------ the loop
    def train(self, callback: Callback | None = None, progress: bool = True, stop: StopFlag | None = None) -> Any:
        """Run to ``config.iters`` steps; with ``stop`` (e.g. a ``threading.Event``), end early at the
        first step boundary after ``stop.is_set()``: the run saves and writes its outputs as at the
        end (the result holds the steps taken; ``resume`` continues it). This is how a thread other
        than the main one stops a run: signals reach only the main thread."""
        try:
            return self._train(callback, progress, stop)
        finally:
            self.dashboards.close()

    def _train(self, callback: Callback | None, progress: bool, stop_flag: StopFlag | None = None) -> Any:
        c = self.config
        if self.writes and self.inputs is None:  # a new run: what it is made from, as it is now
            self.inputs = digest_inputs(c)
        self._guarded(self._prepare_dir)
        self._raise_if_a_write_failed(any_rank(self.dist, [self._write_error is not None])[0], save=False)
        if self.writes and getattr(c, "dashboards", ()):
            self.dashboards = open_dashboards(c.dashboards, self.out_dir, c.to_dict(), self.step)
        bar = tqdm(total=c.iters, initial=self.step, desc=self.desc, unit="step", dynamic_ncols=True,
                   disable=(not progress or not self.dist.is_main) or None)
        try:
            with deferred_interrupt() as interrupted:
                while self.step < c.iters:
                    stop, failed, asked = any_rank(self.dist, [interrupted.is_set(), self._write_error is not None,
                                                               stop_flag is not None and stop_flag.is_set()])
                    self._raise_if_a_write_failed(failed)
                    if stop:
                        raise RunInterrupted(interrupted.signum)
                    if asked:
                        log.info("stopped on request at step %d/%d", self.step, c.iters)
                        break
                    started = time.perf_counter()
                    values = mean_over_ranks(self.dist, self._one_step())
                    self._guarded(self._append_log, values)
                    self.dashboards.step(self.step, values, self.optimizer.param_groups[0]["lr"],
                                         time.perf_counter() - started)
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
                    if callback is not None:
                        callback(self.step, values)
                    if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                        self._guarded(self.save_checkpoint)
                    if c.sample_every and self.step % c.sample_every == 0 and self.step < c.iters:
                        self._guarded(self._samples, sample_name(self.step))
        except KeyboardInterrupt as stop:
            if self._phase == "forward":  # a hard interrupt inside a step, before its update
                self._return_to(self._snapshots[-1])  # (BatchNorm statistics move in the forward)
            if self._phase != "update":  # during the update the state may be torn: the last checkpoint stays
                try:
                    path = self.save_checkpoint()
                except (OSError, HyperdomainError) as e:  # the previous checkpoint stays as it was
                    raise RunInterrupted(getattr(stop, "signum", signal.SIGINT), str(self._as_write_error(e))) from None
                if path is not None:
                    log.info("interrupted at step %d/%d; saved %s", self.step, c.iters, path)
            raise
        finally:
            bar.close()
        result = self.result()
        if self.writes:
            if self.saved_step != self.step:  # not already written by the loop's last step
                self._guarded(self.save_checkpoint)
            self._guarded(self.write_outputs, result)
            self._guarded(self._samples, "samples.png")
        self._raise_if_a_write_failed(any_rank(self.dist, [self._write_error is not None])[0])
        return result

    def _one_step(self) -> dict[str, float]:
        self._snapshots = self._snapshots[-1:] + [self._snapshot()]  # the previous step's start, this one's
        self._phase = "forward"
        parts = self.losses()
        values = {k: float(v.detach()) for k, v in parts.items()}
        if any_rank(self.dist, [not math.isfinite(values["total"])])[0]:
            self._stop_non_finite(f"loss is not finite ({_fmt(values)})", self._snapshots[0])
        self.optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        if any_rank(self.dist, [not _all_finite(p.grad for p in self._trained() if p.grad is not None)])[0]:
            self._stop_non_finite("a gradient is not finite", self._snapshots[-1])
        self._phase = "update"
        self.optimizer.step()
        self._phase = "idle"
        if any_rank(self.dist, [not _all_finite(self._trained())])[0]:
            self._stop_non_finite("the update made trained numbers non-finite", self._snapshots[-1])
        self.step += 1
        if self.rng is not None:
            self._rng_at_step_start = self.rng.get_state()
        return values

    def _trained(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _snapshot(self) -> _Snapshot:
        with torch.no_grad():
            tensors = {k: v.detach().clone() for k, v in self.state_tensors().items()}
        sd = self.optimizer.state_dict()
        state = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                 for i, s in sd["state"].items()}
        groups = [dict(g) for g in sd["param_groups"]]
        return _Snapshot(self.step, tensors, {"state": state, "param_groups": groups}, self._rng_at_step_start)

    def _return_to(self, snap: _Snapshot) -> None:
        self.load_state_tensors(snap.tensors)
        self.optimizer.load_state_dict(snap.optimizer)
        if self.rng is not None:
            self.rng.set_state(snap.rng)
            self._rng_at_step_start = snap.rng
        self.step = snap.step

    def _stop_non_finite(self, why: str, good: _Snapshot) -> None:
        """Return to the last good state, keep it, and stop every rank with one line."""
        failed = self.step + 1
        self._return_to(good)
        self._phase = "idle"
        where = ""
        if self.writes:
            self._guarded(self.save_checkpoint)
            self._guarded(self.stop_outputs)
            where = f"; the last good state (step {self.step}) is in {self.out_dir}"
            if self._write_error is not None:
                where = f"; the last good state (step {self.step}) could not be saved ({self._write_error})"
        raise HyperdomainError(f"step {failed}: {why}; stopped{where}. Try a new run with a lower --lr")

    # ------------------------------------------------------------------ files
    def _prepare_dir(self) -> None:
        if self.writes:
            prepare_run_dir(self.out_dir, self.config.to_dict(), self.step)
            self.prepare_files()

    def _append_log(self, values: Mapping[str, float]) -> None:
        if self.writes:
            append_log(self.out_dir, self.step, values)

    def _samples(self, name: str) -> None:
        if self.writes:
            self.save_samples(self.out_dir / name)
            if (self.out_dir / name).is_file():  # (a trainer may write none)
                self.dashboards.image_file("samples", self.step, self.out_dir / name)

    def _guarded(self, fn: Callable, *args) -> None:
        """Run a rank-0 write; its failure is kept (the first one) and stops the run at the next
        agreement of the ranks, so the boundary's other writes are still tried (under torchrun,
        raising on rank 0 alone would leave the others waiting in a collective)."""
        try:
            fn(*args)
        except (OSError, HyperdomainError) as e:
            if self._write_error is None:
                self._write_error = self._as_write_error(e)

    def _as_write_error(self, e: Exception) -> HyperdomainError:
        """One line for a failed write; a bare OSError is named by its file (else the run folder)."""
        if isinstance(e, HyperdomainError):
            return e
        return write_error(getattr(e, "filename", None) or self.out_dir, e)

    def _raise_if_a_write_failed(self, failed: bool, save: bool = True) -> None:
        """Every rank raises together once the ranks agree (``failed``) that rank 0 could not write;
        rank 0 first saves the current step boundary if it can (``save``) and says what the run folder holds."""
        if not failed:
            return
        error = self._write_error
        if error is None:  # another rank's view: rank 0 says which file and why
            raise StorageError(f"rank 0 could not write to {self.out_dir or 'the run folder'}; see its error")
        if not save:
            raise error
        if self._tried_step != self.step:  # (a checkpoint that just failed is not written twice)
            try:
                self.save_checkpoint()
            except (OSError, HyperdomainError):
                pass  # the same disk, most likely: the previous checkpoint stays as it was
        if self._kept_step is None:
            kept = "nothing was saved"
        else:
            kept = f"the run is saved at step {self._kept_step} in {self.out_dir} (resume it with --resume {self.out_dir})"
        who = "rank 0 could not write: " if self.dist.active else ""
        raise (StorageError if isinstance(error, StorageError) else HyperdomainError)(
            f"{who}{error}; stopped at step {self.step}, {kept}")


def open_resume(run_dir: Path, kind: str, config_cls: type, G: Any,
                iters: int | None) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """The checkpoint of the ``kind`` run in ``run_dir`` as (tensors, meta, config), with ``iters``
    (if given) replacing the run's; refuses fewer iterations than done and another generator."""
    tensors, meta = load_checkpoint(run_dir / CHECKPOINT, kind)
    config = config_cls.from_dict(meta["config"])
    if iters is not None:
        if iters < meta["step"]:
            raise HyperdomainError(f"--iters {iters}: the run in {run_dir} is already at step {meta['step']}")
        config = replace(config, iters=iters)
    if meta["generator_fingerprint"] != G.fingerprint:
        raise HyperdomainError(
            f"{run_dir}: the run was trained on generator {meta['generator']!r} (fingerprint "
            f"{meta['generator_fingerprint']}), not on {G.name!r} (fingerprint {G.fingerprint})"
        )
    recorded = meta.get("inputs")
    if recorded is not None and not (isinstance(recorded, dict) and all(isinstance(v, str) for v in recorded.values())):
        raise HyperdomainError(f"{run_dir / CHECKPOINT}: checkpoint metadata 'inputs' must map files to digests")
    meta["inputs"] = check_inputs_unchanged(recorded, config, run_dir)
    return tensors, meta, config


def _all_finite(tensors) -> bool:
    """Whether every number in ``tensors`` is finite: one device synchronisation for all of them."""
    checks = [torch.isfinite(t).all() for t in tensors]
    return not checks or bool(torch.stack(checks).all())


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "total")
