"""Training dashboards beside ``log.jsonl``: TensorBoard event files in ``<run>/tensorboard/``, and
Weights & Biases.

Each step logs every loss (``loss/<name>``, the values of ``log.jsonl``), the learning rate
(``train/lr``) and the step's wall time in seconds (``train/step_time``); each sample grid the run
writes is logged as the image ``samples`` at its step. Only rank 0 logs. A resumed run logs to the
same place: TensorBoard drops what an interrupted run logged past the checkpoint (the steps trained
again), W&B continues the same run (its id is kept in ``<run>/wandb_run_id``).

The packages are optional (``pip install 'hyperdomain[ui]'`` for TensorBoard, ``pip install wandb``)
and imported only when a run asks for them; :func:`require` says which is missing before a run
starts. A dashboard that fails to write never stops the run: it warns once and training goes on.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from PIL import Image

from ..errors import HyperdomainError
from ..files.atomic import write_text

__all__ = ["DASHBOARDS", "TENSORBOARD_DIR", "Dashboards", "open_dashboards", "parse_dashboards", "require"]

log = logging.getLogger(__name__)

DASHBOARDS = ("tensorboard", "wandb")
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"
_INSTALL = {"tensorboard": ("tensorboard", "pip install 'hyperdomain[ui]'"), "wandb": ("wandb", "pip install wandb")}


def parse_dashboards(values: Iterable[str] | str) -> tuple[str, ...]:
    """``--log`` values (repeated, or comma lists) as dashboard names, in order, each once."""
    values = [values] if isinstance(values, str) else list(values)
    names: list[str] = []
    for value in values:
        for name in str(value).split(","):
            name = name.strip().lower()
            if not name or name == "none":
                continue
            if name not in DASHBOARDS:
                raise HyperdomainError(f"--log {name}: unknown dashboard; use {' or '.join(DASHBOARDS)} "
                                       f"(repeatable, or a comma list)")
            if name not in names:
                names.append(name)
    return tuple(names)


def require(names: Iterable[str]) -> None:
    """One line naming the package (and how to install it) of the first dashboard that is not installed."""
    for name in names:
        module, how = _INSTALL[name]
        if importlib.util.find_spec(module) is None:
            raise HyperdomainError(f"--log {name} needs the {module} package: {how}")


@dataclass
class _Sink:
    """One dashboard, as three functions."""

    name: str
    scalars: Callable[[int, Mapping[str, float]], None]
    image: Callable[[str, int, np.ndarray], None]
    close: Callable[[], None]


class Dashboards:
    """A run's dashboards (none: every call does nothing). Every write is guarded: a failure is
    logged once per dashboard as a warning, and the run goes on."""

    def __init__(self, sinks: Iterable[_Sink] = ()):
        self.sinks = list(sinks)
        self._warned: set[str] = set()

    def step(self, step: int, losses: Mapping[str, float], lr: float, step_time: float) -> None:
        """One training step: its losses (as in ``log.jsonl``), the learning rate, its time in seconds."""
        if not self.sinks:
            return
        values = {f"loss/{k}": float(v) for k, v in losses.items()}
        values.update({"train/lr": float(lr), "train/step_time": float(step_time)})
        for sink in self.sinks:
            self._guard(sink, sink.scalars, step, values)

    def image_file(self, tag: str, step: int, path: Path) -> None:
        """An image the run wrote (a sample grid), read back from ``path``."""
        if not self.sinks:
            return
        try:
            with Image.open(path) as im:
                pixels = np.asarray(im.convert("RGB"))
        except OSError as e:
            self._warn("all", f"cannot read {path} ({e})")
            return
        for sink in self.sinks:
            self._guard(sink, sink.image, tag, step, pixels)

    def close(self) -> None:
        for sink in self.sinks:
            self._guard(sink, sink.close)
        self.sinks = []

    def _guard(self, sink: _Sink, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # a dashboard is never worth the run
            self._warn(sink.name, f"{type(e).__name__}: {e}")

    def _warn(self, name: str, why: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("%s dashboard: a write failed (%s); training goes on, further failures are not reported",
                        name, str(why).splitlines()[0] if why else "")


def open_dashboards(names: Iterable[str], run_dir: Path, config: Mapping[str, Any], step: int) -> Dashboards:
    """The dashboards ``names`` of the run in ``run_dir``, which is at ``step`` (0 for a new run).

    A dashboard that cannot start (an import that fails, a W&B login) is left out with a warning.
    """
    sinks = []
    for name in names:
        try:
            sinks.append(_OPEN[name](run_dir, config, step))
        except Exception as e:  # noqa: BLE001 (a missing package was refused before the run by require())
            log.warning("%s dashboard: cannot start (%s: %s); training goes on without it",
                        name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return Dashboards(sinks)


def _tensorboard(run_dir: Path, config: Mapping[str, Any], step: int) -> _Sink:
    # torch's writer needs the tensorboard package; imported here, only for runs that log to it
    from torch.utils.tensorboard import SummaryWriter

    # on resume, purge_step hides what an interrupted run logged past its checkpoint (trained again)
    writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=step + 1 if step else None, flush_secs=30)
    if not step:
        writer.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in config.items()) + "\n```", 0)

    def scalars(at: int, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            writer.add_scalar(tag, value, at)

    def image(tag: str, at: int, pixels: np.ndarray) -> None:
        writer.add_image(tag, pixels, at, dataformats="HWC")
        writer.flush()

    return _Sink("tensorboard", scalars, image, writer.close)


def _wandb(run_dir: Path, config: Mapping[str, Any], step: int) -> _Sink:
    wandb = importlib.import_module("wandb")
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(8)
        write_text(id_file, run_id + "\n")
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "hyperdomain"), name=run_dir.resolve().name,
                     id=run_id, resume="allow", dir=str(run_dir), config=dict(config))

    def scalars(at: int, values: Mapping[str, float]) -> None:
        run.log(dict(values), step=at)

    def image(tag: str, at: int, pixels: np.ndarray) -> None:
        run.log({tag: wandb.Image(pixels)}, step=at)

    return _Sink("wandb", scalars, image, run.finish)


_OPEN = {"tensorboard": _tensorboard, "wandb": _wandb}
