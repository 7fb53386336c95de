"""Shard files: written under a temporary name and renamed into place when complete.

A reader never sees a shard that is not complete: a tar becomes ``shard-NNNNNN.tar`` only by a
rename after its last byte is on disk; the folder layout's images are moved into place and the
shard's record file ``shard-NNNNNN.jsonl``, written last and atomically, marks it complete. A run
killed at any moment leaves at most one temporary name per shard (hidden, ``.partial``), which the
shard's next writer removes. Tar members carry fixed metadata (mtime, owner, mode), so the same
images give byte-identical shards.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

from ..errors import HyperdomainError
from .settings import DatasetSettings

__all__ = ["partial_path", "TarShardWriter", "FolderShardWriter", "open_writer", "shard_digest", "remove_partial"]

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


class TarShardWriter:
    """A WebDataset shard: a plain (uncompressed) POSIX tar, members in sample order."""

    def __init__(self, out_dir: Path, settings: DatasetSettings, shard: int):
        self.final = out_dir / settings.shard_name(shard)
        self.tmp = partial_path(out_dir, settings, shard)
        remove_partial(self.tmp)
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), MTIME, MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._tar.addfile(info, io.BytesIO(data))

    def commit(self, records: list[str]) -> Path:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.final)
        _fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        for closing in (self._tar.close, self._file.close):
            try:
                closing()
            except (OSError, ValueError):
                pass
        remove_partial(self.tmp)


class FolderShardWriter:
    """The ImageFolder-style layout: ``source/``, ``<domain>/``, ``views/`` (``views/<domain>/``); the shard's JSON
    records go to ``shard-NNNNNN.jsonl`` (one line per sample), written last."""

    def __init__(self, out_dir: Path, settings: DatasetSettings, shard: int):
        self.out_dir = out_dir
        self.final = out_dir / settings.shard_name(shard)
        self.tmp = partial_path(out_dir, settings, shard)
        remove_partial(self.tmp)
        self.tmp.mkdir()
        self.names: list[str] = []

    def add(self, name: str, data: bytes) -> None:
        if name.endswith(".json"):  # records go to the shard's .jsonl file
            return
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.names.append(name)

    def commit(self, records: list[str]) -> Path:
        for name in self.names:  # fsync before the renames, so a complete shard is on disk
            with open(self.tmp / name, "rb") as f:
                os.fsync(f.fileno())
        for name in self.names:
            (self.out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp / name, self.out_dir / name)
        marker = self.tmp / self.final.name
        with open(marker, "w", encoding="utf-8") as f:
            f.write("".join(r + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker, self.final)
        _fsync_dir(self.out_dir)
        remove_partial(self.tmp)
        return self.final

    def abort(self) -> None:
        try:
            remove_partial(self.tmp)
        except OSError:
            pass


def open_writer(out_dir: Path, settings: DatasetSettings, shard: int):
    """A writer for one shard; an OSError (unwritable folder, disk full) becomes one line."""
    cls = TarShardWriter if settings.layout == "webdataset" else FolderShardWriter
    try:
        return cls(out_dir, settings, shard)
    except OSError as e:
        raise HyperdomainError(f"{partial_path(out_dir, settings, shard)}: cannot write the shard "
                               f"({e.strerror or e})") from None


def shard_files(settings: DatasetSettings, shard: int) -> list[str]:
    """The files that make up a shard, relative to the dataset folder, in a fixed order."""
    if settings.layout == "webdataset":
        return [settings.shard_name(shard)]
    images = [name for i in settings.shard_range(shard) for name in settings.member_names(i)]
    return images + [settings.shard_name(shard)]


def shard_digest(out_dir: Path, settings: DatasetSettings, shard: int) -> tuple[str, int]:
    """``(sha256, bytes)`` of a complete shard as stored: of the tar, or, for the folder layout, of
    each file's name and sha256 in order."""
    total = 0
    outer = hashlib.sha256()
    files = shard_files(settings, shard)
    for name in files:
        h = hashlib.sha256()
        with open(out_dir / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                total += len(chunk)
        if len(files) == 1:
            return h.hexdigest(), total
        outer.update(f"{name}\0{h.hexdigest()}\n".encode())
    return outer.hexdigest(), total
