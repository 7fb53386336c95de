"""``verify_dataset``: re-read a dataset and check it against its index and settings."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from ..errors import HyperdomainError
from .latents import index_latent, view_latent
from .settings import FORMAT, INDEX_FILE, DatasetSettings, read_settings
from .shards import shard_digest

__all__ = ["verify_dataset"]

_LISTED = 5


def verify_dataset(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Check every shard of a finished dataset: present, the size and sha256 in ``index.json``,
    every sample's files in order, every image decodable at the dataset's size, every record
    consistent with the settings. Return the index; raise one :class:`HyperdomainError` naming
    the first problems otherwise."""
    out_dir = Path(out_dir)
    settings = read_settings(out_dir)
    index = _read_index(out_dir)
    listed = {s.get("name"): s for s in index["shards"]}
    # a mismatch here says all: stop before walking the settings' shards (there may be very many)
    if index.get("settings") != settings.to_dict():
        raise HyperdomainError(f"{out_dir}: does not match its index: {INDEX_FILE} and settings.json describe "
                               f"different datasets")
    if len(listed) != len(index["shards"]) or len(listed) != settings.num_shards:
        raise HyperdomainError(f"{out_dir}: does not match its index: {INDEX_FILE} lists {len(index['shards'])} "
                               f"shards, the settings give {settings.num_shards}")
    problems: list[str] = []
    expected = [settings.shard_name(s) for s in range(settings.num_shards)]
    if set(listed) != set(expected):
        problems.append(f"{INDEX_FILE} lists shards {sorted(map(str, listed))[:2]}..., expected {expected[:2]}...")
    for shard, name in enumerate(expected):
        if name not in listed:
            continue
        problems += [f"{name}: {p}" for p in _check_shard(out_dir, settings, shard, listed[name])]
        if len(problems) > 50:
            break
    partial = sorted(p.name for p in out_dir.glob(".shard-*.partial"))
    if partial:
        problems.append(f"temporary shard {partial[0]} left by an interrupted run")
    if problems:
        more = f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise HyperdomainError(f"{out_dir}: does not match its index: " + "; ".join(problems[:_LISTED]) + more)
    return index


def _read_index(out_dir: Path) -> dict[str, Any]:
    path = out_dir / INDEX_FILE
    if not path.is_file():
        raise HyperdomainError(f"{out_dir}: has no {INDEX_FILE}: the dataset is not finished (run the same "
                               f"command again to complete it)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HyperdomainError(f"{path}: cannot read the index ({e})"[:300]) from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("shards"), list) \
            or not all(isinstance(s, dict) for s in index["shards"]):
        raise HyperdomainError(f"{path}: not a hyperdomain dataset index")
    return index


def _check_shard(out_dir: Path, settings: DatasetSettings, shard: int, entry: dict[str, Any]) -> list[str]:
    r = settings.shard_range(shard)
    if entry.get("first") != r.start or entry.get("samples") != len(r):
        return [f"the index gives samples {entry.get('first')}+{entry.get('samples')}, the settings {r.start}+{len(r)}"]
    try:
        digest, size = shard_digest(out_dir, settings, shard)
    except OSError as e:
        return [f"missing or unreadable ({e.strerror or e})"]
    problems = []
    if size != entry.get("bytes") or digest != entry.get("sha256"):
        problems.append(f"{size} bytes with sha256 {digest[:12]}..., the index says {entry.get('bytes')} bytes, "
                        f"{str(entry.get('sha256'))[:12]}...")
    members = _tar_members(out_dir / settings.shard_name(shard)) if settings.layout == "webdataset" else \
        _folder_members(out_dir, settings, shard)
    expected = [name for i in r for name in settings.member_names(i)]
    if settings.layout == "folder":
        expected += [f"{i:08d}.json" for i in r]
    got: dict[str, bytes] = {}
    try:
        for name, data in members:
            got[name] = data
    except (OSError, tarfile.TarError, ValueError) as e:
        return problems + [f"cannot be read ({e})"]
    if settings.layout == "webdataset" and list(got) != expected:
        problems.append(f"holds members {list(got)[:3]}..., expected {expected[:3]}... ({len(got)} vs {len(expected)})")
        return problems
    for i in r:
        for name in settings.member_names(i):
            if name.endswith(".json"):
                continue
            if name not in got:
                problems.append(f"{name} is missing")
                continue
            problem = _image_problem(got[name], settings)
            if problem:
                problems.append(f"{name}: {problem}")
        problem = _record_problem(got.get(f"{i:08d}.json"), settings, i)
        if problem:
            problems.append(f"record of sample {i}: {problem}")
    return problems


def _tar_members(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            f = tar.extractfile(member)
            yield member.name, f.read() if f is not None else b""


def _folder_members(out_dir: Path, settings: DatasetSettings, shard: int) -> Iterator[tuple[str, bytes]]:
    for i in settings.shard_range(shard):
        for name in settings.member_names(i):
            path = out_dir / name
            if path.is_file():
                yield name, path.read_bytes()
    lines = (out_dir / settings.shard_name(shard)).read_text(encoding="utf-8").splitlines()
    for i, line in zip(settings.shard_range(shard), lines):
        yield f"{i:08d}.json", line.encode()


def _image_problem(data: bytes, settings: DatasetSettings) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, size, mode = img.format, img.size, img.mode
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a damaged image
        return f"not a readable image ({type(e).__name__})"
    want = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[settings.format]
    if fmt != want or size != (settings.size, settings.size) or mode != "RGB":
        return f"{fmt} {size[0]}x{size[1]} {mode}, expected {want} {settings.size}x{settings.size} RGB"
    return None


def _record_problem(data: bytes | None, settings: DatasetSettings, index: int) -> str | None:
    if data is None:
        return "missing"
    try:
        record = json.loads(data)
    except ValueError:
        return "not JSON"
    expected = {"index": index, "seed": settings.seed, "generator": settings.generator,
                "domains": [{"name": d["name"], "digest": d["digest"]} for d in settings.domains]}
    for key, value in expected.items():
        if record.get(key) != value:
            return f"{key} is {str(record.get(key))[:60]}, expected {str(value)[:60]}"
    try:  # the latents are the index's and its views' (a record is how an image is made again)
        z = torch.tensor(record.get("z"), dtype=torch.float32)
        view_z = torch.tensor(record.get("view_z"), dtype=torch.float32).reshape(-1, z.shape[-1])
    except (TypeError, ValueError, RuntimeError, IndexError):
        return "z or view_z is not a list of numbers"
    z_dim = z.shape[-1] if z.ndim == 1 else -1
    if z_dim < 1 or not torch.equal(z, index_latent(settings.seed, index, z_dim)):
        return f"z is not index {index}'s latent for seed {settings.seed}"
    want = [view_latent(settings.seed, index, k, z_dim, settings.sigma) for k in range(settings.views)]
    if view_z.shape[0] != settings.views or not all(torch.equal(a, b) for a, b in zip(view_z, want)):
        return f"view_z is not the latents of index {index}'s {settings.views} views"
    return None

