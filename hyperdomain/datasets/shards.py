"""Shard files: written under a temporary name and renamed into place when complete.

A reader never sees a shard that is not complete: a tar becomes ``shard-NNNNNN.tar`` only by a
rename after its last byte is on disk; the folder layout's images are moved into place and the
shard's record file ``shard-NNNNNN.jsonl``, written last and atomically, marks it complete. A run
killed at any moment leaves at most one temporary name per shard (hidden, ``.partial``), which the
shard's next writer removes. Tar members carry fixed metadata (mtime, owner, mode), so the same
images give byte-identical shards.

A writer hashes the bytes as it writes them; once the shard is in place its size and sha256 go to
the shard's digest file (hidden, ``.shard-NNNNNN.tar.digest``, written atomically). A resume keeps a
shard only if it still has that digest: a shard damaged or changed since, or one whose digest file
is missing (a kill between the two renames), is written again, never re-hashed and trusted.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any, Sequence

from ..files.atomic import write_error, write_text
from .settings import DatasetSettings

__all__ = ["partial_path", "TarShardWriter", "FolderShardWriter", "open_writer", "shard_digest", "remove_partial",
           "digest_path", "shard_summary", "write_digest", "read_digest"]

MTIME = 0  # tar members' fixed metadata: the bytes depend on the images only
MODE = 0o644


def partial_path(out_dir: Path, settings: DatasetSettings, shard: int) -> Path:
    """The temporary name of a shard being written (a file for a tar, a folder for the folder layout)."""
    return out_dir / f".{settings.shard_name(shard)}.partial"


def remove_partial(path: Path) -> None:
    """Remove a temporary shard left by an interrupted writer, if any."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _HashingFile:
    """A file opened for writing that hashes and counts every byte written through it."""

    def __init__(self, f):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.f.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.f.tell()


class TarShardWriter:
    """A WebDataset shard: a plain (uncompressed) POSIX tar, members in sample order."""

    def __init__(self, out_dir: Path, settings: DatasetSettings, shard: int):
        self.final = out_dir / settings.shard_name(shard)
        self.tmp = partial_path(out_dir, settings, shard)
        remove_partial(self.tmp)
        self._file = open(self.tmp, "wb")
        self._hashed = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashed, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), MTIME, MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self, records: list[str]) -> tuple[str, int]:
        """Put the shard in place; return ``(sha256, bytes)`` of what was written."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return self._hashed.sha256.hexdigest(), self._hashed.size

    def abort(self) -> None:
        for closing in (self._tar.close, self._file.close):
            try:
                closing()
            except (OSError, ValueError):
                pass
        remove_partial(self.tmp)


class FolderShardWriter:
    """The ImageFolder-style layout: one folder a domain, ``source/`` and ``<domain>/``, their views in
    ``view{k}/`` inside them; the shard's JSON records go to ``shard-NNNNNN.jsonl`` (one line per
    sample), written last."""

    def __init__(self, out_dir: Path, settings: DatasetSettings, shard: int):
        self.out_dir = out_dir
        self.final = out_dir / settings.shard_name(shard)
        self.tmp = partial_path(out_dir, settings, shard)
        remove_partial(self.tmp)
        self.tmp.mkdir()
        self.names: list[str] = []
        self.hashes: list[tuple[str, str]] = []
        self.size = 0

    def add(self, name: str, data: bytes) -> None:
        if name.endswith(".json"):  # records go to the shard's .jsonl file
            return
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.names.append(name)
        self.hashes.append((name, hashlib.sha256(data).hexdigest()))
        self.size += len(data)

    def commit(self, records: list[str]) -> tuple[str, int]:
        """Put the images, then the record file, in place; return ``(sha256, bytes)`` of what was written."""
        lines = "".join(r + "\n" for r in records).encode("utf-8")
        for name in self.names:  # fsync before the renames, so a complete shard is on disk
            with open(self.tmp / name, "rb") as f:
                os.fsync(f.fileno())
        for name in self.names:
            (self.out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp / name, self.out_dir / name)
        marker = self.tmp / self.final.name
        with open(marker, "wb") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker, self.final)
        _fsync_dir(self.out_dir)
        remove_partial(self.tmp)
        files = self.hashes + [(self.final.name, hashlib.sha256(lines).hexdigest())]
        return _combined(files), self.size + len(lines)

    def abort(self) -> None:
        try:
            remove_partial(self.tmp)
        except OSError:
            pass


def open_writer(out_dir: Path, settings: DatasetSettings, shard: int):
    """A writer for one shard; an OSError becomes one line (a :class:`StorageError` for a full or failing disk)."""
    cls = TarShardWriter if settings.layout == "webdataset" else FolderShardWriter
    try:
        return cls(out_dir, settings, shard)
    except OSError as e:
        raise write_error(partial_path(out_dir, settings, shard), e, "cannot write the shard") from None


def shard_files(settings: DatasetSettings, shard: int) -> list[str]:
    """The files that make up a shard, relative to the dataset folder, in a fixed order."""
    if settings.layout == "webdataset":
        return [settings.shard_name(shard)]
    images = [name for i in settings.shard_range(shard) for name in settings.member_names(i)]
    return images + [settings.shard_name(shard)]


def _combined(files: Sequence[tuple[str, str]]) -> str:
    """The digest of a shard of several files: of a single file, its sha256; else the sha256 of each
    file's name and sha256 in order."""
    if len(files) == 1:
        return files[0][1]
    outer = hashlib.sha256()
    for name, digest in files:
        outer.update(f"{name}\0{digest}\n".encode())
    return outer.hexdigest()


def shard_digest(out_dir: Path, settings: DatasetSettings, shard: int) -> tuple[str, int]:
    """``(sha256, bytes)`` of a complete shard as stored: of the tar, or, for the folder layout, of
    each file's name and sha256 in order."""
    total, files = 0, []
    for name in shard_files(settings, shard):
        h = hashlib.sha256()
        with open(out_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                total += len(chunk)
        files.append((name, h.hexdigest()))
    return _combined(files), total


# ------------------------------------------------------------------------- digests recorded at write time
def digest_path(out_dir: Path, settings: DatasetSettings, shard: int) -> Path:
    """Where a shard's size and sha256 are recorded when it is written (hidden: no ImageFolder class, no shard)."""
    return out_dir / f".{settings.shard_name(shard)}.digest"


def shard_summary(settings: DatasetSettings, shard: int, digest: str, size: int) -> dict[str, Any]:
    """A shard's entry in ``index.json`` (and its digest file)."""
    r = settings.shard_range(shard)
    return {"name": settings.shard_name(shard), "first": r.start, "samples": len(r),
            "images": len(r) * settings.images_per_sample, "bytes": size, "sha256": digest}


def write_digest(out_dir: Path, settings: DatasetSettings, shard: int, summary: dict[str, Any]) -> None:
    """Record a shard's summary, atomically, once the shard is in place."""
    write_text(digest_path(out_dir, settings, shard), json.dumps(summary, sort_keys=True) + "\n")


def read_digest(out_dir: Path, settings: DatasetSettings, shard: int) -> dict[str, Any] | None:
    """The summary recorded when the shard was written, or None when there is none that fits this shard."""
    try:
        data = json.loads(digest_path(out_dir, settings, shard).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("sha256"), str) \
            or not re.fullmatch(r"[0-9a-f]{64}", data["sha256"]) or isinstance(data.get("bytes"), bool) \
            or not isinstance(data.get("bytes"), int):
        return None
    return data if data == shard_summary(settings, shard, data["sha256"], data["bytes"]) else None
