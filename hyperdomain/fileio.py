"""Atomic file writes: nothing a user trained is left half-written."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

from .errors import HyperdomainError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temp file lives in the same directory so the final ``os.replace`` is atomic. On any
    exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise HyperdomainError(f"{path}: cannot write here ({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_safetensors(path: str | os.PathLike, tensors: Mapping, metadata: Mapping[str, str]) -> Path:
    """Write a safetensors file atomically; any failure (disk full, no permission) is one line naming it.

    safetensors reports I/O errors with its own exception type, not OSError, hence the broad catch.
    """
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        except HyperdomainError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' error types
            raise HyperdomainError(f"{path}: cannot write ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    return path


def read_safetensors(path: str | os.PathLike, what: str, load: bool = True) -> tuple[dict, dict | list]:
    """A safetensors file's metadata and its tensors (``load``) or just their names, with one-line errors.

    ``what`` names the file in errors ("domain file", "checkpoint"): ``{path}: no such {what}`` and
    ``{path}: not a readable safetensors {what} (...)`` for a corrupt one.
    """
    from safetensors import safe_open

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
