"""Our own files: safetensors whose metadata names a format and its version.

Every kind (domain, hypernetwork, latent, run checkpoint, cached latent PCA) is checked here the same way: the ``format``
field names the kind, ``format_version`` must be one this code reads, and anything else is one
line that names the file and what it holds instead. No pickle anywhere.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import HyperdomainError
from .atomic import atomic_path, write_error

DOMAIN = "hyperdomain.domain"
HYPERNET = "hyperdomain.hypernet"
LATENT = "hyperdomain.latent"
PCA = "hyperdomain.latent-pca"
GENERATOR = "hyperdomain.generator"
ENCODER = "hyperdomain.encoder"
TRANSLATOR = "hyperdomain.translator"


_CHECKPOINT_PREFIX, _CHECKPOINT_SUFFIX = "hyperdomain.", "-checkpoint"


def checkpoint_format(kind: str) -> str:
    """The format name of a trainer's run checkpoint (``kind``: "adapt", "hyper", ...)."""
    return f"{_CHECKPOINT_PREFIX}{kind}{_CHECKPOINT_SUFFIX}"


def checkpoint_kind(fmt: str | None) -> str | None:
    """The trainer whose run checkpoint format ``fmt`` is, else None (the inverse of ``checkpoint_format``)."""
    if fmt and fmt.startswith(_CHECKPOINT_PREFIX) and fmt.endswith(_CHECKPOINT_SUFFIX):
        return fmt[len(_CHECKPOINT_PREFIX):-len(_CHECKPOINT_SUFFIX)]
    return None


def write_safetensors(path: str | os.PathLike, tensors: Mapping, metadata: Mapping[str, str]) -> Path:
    """Write a safetensors file atomically; any failure (disk full, no permission) is one line naming it.

    safetensors reports I/O errors with its own exception type, not OSError, hence the broad catch;
    the system's error number in its message ("... (os error 28)") makes a full disk or an I/O
    error the :class:`StorageError` it is.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        except HyperdomainError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' error types
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code:
                raise write_error(path, OSError(int(code[1]), os.strerror(int(code[1])))) from None
            raise HyperdomainError(f"{path}: cannot write ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    return path


def write_own_file(path: str | os.PathLike, fmt: str, version: int, tensors: Mapping,
                   metadata: Mapping[str, str]) -> Path:
    """One of our files: ``tensors`` with ``metadata`` plus the format name and version."""
    return write_safetensors(path, tensors, {"format": fmt, "format_version": str(version), **metadata})


def read_safetensors(path: str | os.PathLike, what: str, load: bool = True) -> tuple[dict, dict | list]:
    """A safetensors file's metadata and its tensors (``load``) or just their names, with one-line errors.

    ``what`` names the file in errors ("domain file", "checkpoint"): ``{path}: no such {what}`` and
    ``{path}: not a readable safetensors {what} (...)`` for a corrupt one.
    """
    path = Path(path)
    if not path.is_file():
        raise HyperdomainError(f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            return header, ({k: f.get_tensor(k) for k in f.keys()} if load else list(f.keys()))
    except Exception as e:  # noqa: BLE001 - safetensors' own error types for corrupt files
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise HyperdomainError(f"{path}: not a readable safetensors {what} ({detail})") from None


def check_format(path: Path, header: Mapping[str, str], fmt: str, version: int, what: str) -> int:
    """The file's format version, after checking that it is ``fmt`` in a version 1..``version``."""
    found = header.get("format")
    if found != fmt:
        holds = f"it holds {found!r}" if found else "its metadata names no format"
        raise HyperdomainError(f"{path}: not a {what} ({holds}, expected {fmt!r}; see hyperdomain info)")
    try:
        v = int(header.get("format_version", ""))
    except ValueError:
        v = -1
    if not 1 <= v <= version:
        raise HyperdomainError(f"{path}: {what} format version {header.get('format_version')!r} is not one this "
                               f"hyperdomain reads (1..{version})")
    return v


def read_own_file(path: str | os.PathLike, fmt: str, version: int, what: str,
                  load: bool = True) -> tuple[dict, dict | list]:
    """One of our files: (metadata, tensors or tensor names), its format and version checked."""
    path = Path(path)
    header, tensors = read_safetensors(path, what, load=load)
    check_format(path, header, fmt, version, what)
    return header, tensors


def float32_tensor(path: Path, name: str, t: torch.Tensor, what: str) -> torch.Tensor:
    """Tensor ``name`` of one of our files as finite float32: other float types are converted,
    integer and boolean ones refused, and non-finite numbers refused with their count."""
    if not t.is_floating_point():
        raise HyperdomainError(f"{path}: {what} tensor {name!r} is {str(t.dtype).replace('torch.', '')}, "
                               f"expected floating point (float32)")
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise HyperdomainError(f"{path}: {what} tensor {name!r} holds {bad} non-finite numbers (NaN or inf)")
    t = t.to(torch.float32)
    bad = int((~torch.isfinite(t)).sum())
    if bad:  # finite as float64, not as float32
        raise HyperdomainError(f"{path}: {what} tensor {name!r} holds {bad} numbers beyond float32's range "
                               f"(magnitude over {torch.finfo(torch.float32).max:.1e})")
    return t


def json_field(path: Path, header: Mapping[str, str], key: str, kind: type, what: str, default=None):
    """A JSON field of the metadata, of type ``kind`` (dict, list, ...); one line when it is not."""
    if key not in header:
        if default is not None:
            return default
        raise HyperdomainError(f"{path}: {what} metadata lacks {key!r}")
    try:
        value = json.loads(header[key])
    except (ValueError, RecursionError) as e:  # RecursionError: arrays nested thousands deep
        raise HyperdomainError(f"{path}: {what} metadata {key!r} is not JSON ({e})") from None
    if not isinstance(value, kind):
        raise HyperdomainError(f"{path}: {what} metadata {key!r} is a {type(value).__name__}, expected a "
                               f"{kind.__name__}")
    return value

