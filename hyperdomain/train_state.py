"""Resumable training checkpoints: tensors, optimizer and RNG state in one safetensors file.

No pickle: the optimizer's state is flattened into named tensors, its param groups (plain
numbers) and the caller's metadata go into the JSON header. Writes are atomic, so an interrupted
save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import math
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .config import check_config_keys
from .errors import HyperdomainError
from .fileio import atomic_path, read_safetensors, write_safetensors

__all__ = ["CHECKPOINT", "run_config_to_dict", "run_config_from_dict", "check_run_config", "save_checkpoint", "restore_optimizer",
           "load_checkpoint", "read_checkpoint_meta", "open_resume", "refuse_existing_run", "deferred_interrupt",
           "prepare_run_dir", "append_log"]

CHECKPOINT = "checkpoint.safetensors"  # the name of every trainer's checkpoint in its run folder

_FORMAT_VERSION = 1


def check_run_config(cfg: Any, what: str, checks: list[tuple[bool, str, str]]) -> None:
    """A frozen trainer config's ``__post_init__``: normalise the shared fields and check them all.

    ``clip`` and ``betas`` become tuples and ``losses`` a LossWeights; the fields both trainers have
    and the trainer's own ``checks`` (``(ok, field, expected)``) are checked in one place, so a bad
    value is one line: ``{what}: {field} must be {expected}, got {value}``.
    """
    from .clip import templates
    from .losses import LossWeights

    object.__setattr__(cfg, "clip", tuple(cfg.clip))
    object.__setattr__(cfg, "betas", tuple(float(b) for b in cfg.betas))
    if isinstance(cfg.losses, Mapping):
        object.__setattr__(cfg, "losses", LossWeights.from_mapping(cfg.losses))
    shared = [
        (cfg.iters >= 1, "iters", "an integer >= 1"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), "lr", "a finite number > 0"),
        (len(cfg.betas) == 2 and all(0 <= b < 1 for b in cfg.betas), "betas", "two numbers in [0, 1)"),
        (0 <= cfg.mixing <= 1, "mixing", "a probability in [0, 1]"),
        (cfg.sample_every >= 0 and cfg.checkpoint_every >= 0, "sample_every/checkpoint_every", ">= 0 (0: off)"),
        (cfg.sample_n >= 1, "sample_n", ">= 1"),
        (cfg.seed >= 0, "seed", ">= 0"),
        (bool(cfg.clip), "clip", "at least one CLIP model"),
    ]
    for ok, name, expected in shared + checks:
        if not ok:
            raise HyperdomainError(f"{what}: {name} must be {expected}, got {getattr(cfg, name.split('/')[0])!r}")
    templates(cfg.templates)  # refuses an unknown template set by name


def run_config_to_dict(cfg: Any) -> dict[str, Any]:
    """A trainer config as plain JSON data (losses by their public names)."""
    from dataclasses import asdict

    d = asdict(cfg)
    d["losses"] = cfg.losses.as_dict()
    d["clip"], d["betas"] = list(cfg.clip), list(cfg.betas)
    return d


def run_config_from_dict(cls: type, d: Mapping[str, Any], what: str) -> Any:
    """Inverse of :func:`run_config_to_dict`; unknown keys are refused by name."""
    from .losses import LossWeights

    check_config_keys(cls, d, what)
    return cls(**{**d, "losses": LossWeights.from_mapping(d.get("losses", {}))})


def save_checkpoint(path: str | os.PathLike, kind: str, tensors: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write ``tensors``, ``optimizer``'s state and JSON-able ``meta`` to ``path`` atomically.

    ``kind`` names the trainer; :func:`restore_optimizer` reads the optimizer back.
    """
    path = Path(path)
    if optimizer is not None:
        opt, groups = _optimizer_tensors(optimizer)
        tensors, meta = {**tensors, **opt}, {**meta, "optimizer_groups": groups}
    header = {"format": f"hyperdomain.{kind}-checkpoint", "format_version": str(_FORMAT_VERSION),
              "meta": json.dumps(meta, sort_keys=True)}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return write_safetensors(path, flat, header)


def load_checkpoint(path: str | os.PathLike, kind: str,
                    load: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` for trainer ``kind``; with
    ``load=False`` only its header is read (the tensors come back empty)."""
    path = Path(path)
    header, tensors = read_safetensors(path, "checkpoint", load=load)
    expected = f"hyperdomain.{kind}-checkpoint"
    if header.get("format") != expected:
        raise HyperdomainError(f"{path}: not the checkpoint this resumes (it is {header.get('format')!r}, "
                               f"expected {expected!r})")
    if int(header.get("format_version", "0")) > _FORMAT_VERSION:
        raise HyperdomainError(f"{path}: checkpoint format is newer than this hyperdomain reads")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, ValueError) as e:
        raise HyperdomainError(f"{path}: malformed checkpoint metadata ({e})") from None
    return (tensors if load else {}), meta


def read_checkpoint_meta(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The metadata of a checkpoint, without reading its tensors (``hyperdomain info``, resume options)."""
    return load_checkpoint(path, kind, load=False)[1]


_OPTIM = "optim"  # the optimizer state's tensor-name prefix in checkpoints


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
    return tensors, meta, config


def refuse_existing_run(out_dir: Path | None) -> None:
    """A new run never overwrites a folder that holds one."""
    if out_dir is not None and (out_dir / CHECKPOINT).exists():
        raise HyperdomainError(
            f"{out_dir}: already holds a run ({CHECKPOINT}); resume it (--resume {out_dir}) or pick another --out"
        )


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """The optimizer's per-parameter state as named tensors, and its param groups as plain data."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{_OPTIM}.{idx}.{key}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Load the optimizer state a :func:`save_checkpoint` wrote (the optimizer must hold the same parameters)."""
    groups = meta["optimizer_groups"]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if not name.startswith(_OPTIM + "."):
            continue
        idx, key = name[len(_OPTIM) + 1:].split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise HyperdomainError(f"checkpoint optimizer state does not fit this model ({e})") from None


def prepare_run_dir(out_dir: Path, config: Mapping[str, Any], step: int) -> None:
    """Create a run folder (with ``samples/``), write ``config.json``, and cut ``log.jsonl`` back to ``step``.

    On resume the log lines past the checkpoint's step are dropped: those steps are trained again.
    """
    try:
        (out_dir / "samples").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HyperdomainError(f"{out_dir}: cannot create the run folder ({e.strerror or e})") from None
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(dict(config), indent=2) + "\n", encoding="utf-8")
    log_path = out_dir / "log.jsonl"
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    with atomic_path(log_path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def append_log(out_dir: Path, step: int, values: Mapping[str, float]) -> None:
    """One line of ``log.jsonl``: the step and its losses."""
    with open(out_dir / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **values}) + "\n")


@contextmanager
def deferred_interrupt() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag checked between steps (a second one interrupts at once).

    A step is then never cut in half, so the state saved on Ctrl-C is exactly a step boundary and
    resuming from it equals an uninterrupted run. Outside the main thread this is a no-op flag.
    """
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
