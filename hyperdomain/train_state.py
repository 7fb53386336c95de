"""Resumable training checkpoints: tensors, optimizer and RNG state in one safetensors file.

No pickle: the optimizer's state is flattened into named tensors, its param groups (plain
numbers) and the caller's metadata go into the JSON header. Writes are atomic, so an interrupted
save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from .errors import HyperdomainError
from .fileio import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "optimizer_tensors", "load_optimizer_tensors", "deferred_interrupt"]

_FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, kind: str, tensors: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` to ``path`` atomically; ``kind`` names the trainer."""
    from safetensors.torch import save_file

    path = Path(path)
    header = {"format": f"hyperdomain.{kind}-checkpoint", "format_version": str(_FORMAT_VERSION),
              "meta": json.dumps(meta, sort_keys=True)}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=header)
    return path


def load_checkpoint(path: str | os.PathLike, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` for trainer ``kind``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise HyperdomainError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors' own error types for corrupt files
        raise HyperdomainError(f"{path}: not a readable checkpoint ({e})") from None
    expected = f"hyperdomain.{kind}-checkpoint"
    if header.get("format") != expected:
        raise HyperdomainError(f"{path}: not a {kind} checkpoint (format {header.get('format')!r}, expected {expected!r})")
    if int(header.get("format_version", "0")) > _FORMAT_VERSION:
        raise HyperdomainError(f"{path}: checkpoint format is newer than this hyperdomain reads")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, ValueError) as e:
        raise HyperdomainError(f"{path}: malformed checkpoint metadata ({e})") from None
    return tensors, meta


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict[str, torch.Tensor], list]:
    """The optimizer's per-parameter state as named tensors, and its param groups as plain data."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{prefix}.{idx}.{key}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list,
                           prefix: str = "optim") -> None:
    """Inverse of :func:`optimizer_tensors` (the optimizer must hold the same parameters)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        if not name.startswith(prefix + "."):
            continue
        idx, key = name[len(prefix) + 1:].split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise HyperdomainError(f"checkpoint optimizer state does not fit this model ({e})") from None


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
