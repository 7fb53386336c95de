"""Resumable training checkpoints: tensors, optimizer and RNG state in one safetensors file.

No pickle: the optimizer's state is flattened into named tensors, its param groups (plain
numbers) and the trainer's metadata go into the JSON header. Writes are atomic, so an
interrupted save never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import HyperdomainError
from .safetensors_files import (checkpoint_format, checkpoint_kind, json_field, read_own_file, read_safetensors,
                                write_own_file)

CHECKPOINT = "checkpoint.safetensors"  # the name of every trainer's checkpoint in its run folder
FORMAT_VERSION = 1
_OPTIM = "optim"  # the optimizer state's tensor-name prefix


def save_checkpoint(path: str | os.PathLike, kind: str, tensors: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write ``tensors``, ``optimizer``'s state and JSON-able ``meta`` to ``path`` atomically.

    ``kind`` names the trainer; :func:`restore_optimizer` reads the optimizer back.
    """
    if optimizer is not None:
        opt, groups = _optimizer_tensors(optimizer)
        tensors, meta = {**tensors, **opt}, {**meta, "optimizer_groups": groups}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return write_own_file(path, checkpoint_format(kind), FORMAT_VERSION, flat, {"meta": json.dumps(meta, sort_keys=True)})


def load_checkpoint(path: str | os.PathLike, kind: str,
                    load: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` for trainer ``kind``; with
    ``load=False`` only its header is read (the tensors come back empty)."""
    path = Path(path)
    header, tensors = read_own_file(path, checkpoint_format(kind), FORMAT_VERSION, "checkpoint", load=load)
    meta = json_field(path, header, "meta", dict, "checkpoint")
    step, config, groups = meta.get("step"), meta.get("config"), meta.get("optimizer_groups")
    if type(step) is not int or step < 0:
        raise HyperdomainError(f"{path}: checkpoint metadata 'step' must be an integer >= 0, got {step!r}"[:300])
    if not isinstance(config, dict):
        raise HyperdomainError(f"{path}: checkpoint metadata lacks the run's 'config'")
    if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
        raise HyperdomainError(f"{path}: the checkpoint holds no optimizer state; it cannot resume a run exactly")
    if not isinstance(meta.get("generator_fingerprint"), str):
        raise HyperdomainError(f"{path}: checkpoint metadata lacks the generator's fingerprint")
    if load:
        names = set(tensors)
        if step > 0 and not any(n.startswith(_OPTIM + ".") for n in names):
            raise HyperdomainError(f"{path}: the checkpoint holds no optimizer state; it cannot resume a run exactly")
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise HyperdomainError(f"{path}: checkpoint tensor {name!r} holds non-finite numbers")
    return (tensors if load else {}), meta


def read_checkpoint_meta(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The metadata of a checkpoint, without reading its tensors (``hyperdomain info``, resume options)."""
    return load_checkpoint(path, kind, load=False)[1]


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


def run_kind(run_dir: str | os.PathLike) -> str:
    """Which trainer wrote the run in ``run_dir`` ("adapt", "image", "hyper"), from its checkpoint's header."""
    path = Path(run_dir) / CHECKPOINT
    header, _ = read_safetensors(path, "checkpoint", load=False)
    kind = checkpoint_kind(header.get("format"))
    if kind is None:
        raise HyperdomainError(f"{path}: not a run checkpoint (format {header.get('format')!r})")
    return kind

