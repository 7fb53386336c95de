"""Atomic file writes: nothing a user trained is left half-written.

A failed write (a full disk, an I/O error) leaves the file it would have replaced as it was and
no temporary file behind; it raises one line naming the file and the reason
(:func:`write_error`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import HyperdomainError, StorageError

# The storage's faults, not the path's: a full disk, a quota, a read-only or failing device.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
TEMP_SUFFIX = ".tmp"
TEMP_RANDOM = 8  # the random characters mkstemp puts between prefix and suffix


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def temp_name_length(name: str) -> int:
    """Bytes in the name of the temporary file :func:`atomic_path` writes for a file called ``name``
    (``.NAME.XXXXXXXX.tmp``): the longest name a write creates, so the one a file system must hold."""
    return len(os.fsencode(_temp_prefix(Path(name)))) + TEMP_RANDOM + len(TEMP_SUFFIX)


def write_error(path: str | os.PathLike, error: OSError, what: str = "cannot write") -> HyperdomainError:
    """One line for an OSError met writing ``path``: a :class:`StorageError` when the storage
    failed (ENOSPC, EDQUOT, EIO, EROFS, EFBIG), else a :class:`HyperdomainError` (the path is
    wrong: not a folder, no permission)."""
    cls = StorageError if error.errno in STORAGE_ERRNOS else HyperdomainError
    return cls(f"{path}: {what} ({error.strerror or error})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced to the disk and renamed onto ``path``.

    The temp file lives in the same directory so the final ``os.replace`` is atomic; the sync
    before it makes the new content durable before it replaces the old, and surfaces a write error
    the disk reports late. On any exception the temp file is removed and ``path`` is untouched; an
    OSError (with an errno: the system's, not a format's) becomes :func:`write_error`'s one line.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=parent)
    except OSError as e:
        raise write_error(path, e, "cannot write here") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError) and e.errno is not None:
            raise write_error(path, e) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` as UTF-8 into ``path``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
