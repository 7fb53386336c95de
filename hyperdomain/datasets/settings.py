"""A dataset's settings, its shards and the names of its files.

The settings are written first (``settings.json``) and fix every byte of the dataset: a run
resumes into a folder only with identical settings, and refuses a folder that holds anything else.
How a run is carried out (``batch``, the encoder threads, the number of ranks) is not a setting:
it changes no byte.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import torch

from .._version import __version__
from ..model.domain import Domain
from ..errors import HyperdomainError
from ..files.atomic import write_text

if TYPE_CHECKING:  # pragma: no cover
    from ..model.generator import Generator

FORMAT = "hyperdomain.dataset"
FORMAT_VERSION = 2  # 2: passes of PASS_ROWS rows whatever --batch; records hold the views' z
SETTINGS_FILE = "settings.json"
INDEX_FILE = "index.json"
LAYOUTS = ("webdataset", "folder")
VIEWS_IN = ("source", "all")  # where the views are rendered: the source only, or the source and every domain
IMAGE_FORMATS = ("png", "jpg", "webp")
RESERVED_NAMES = ("source", "views", "json")  # keys and folders of every dataset
NAME_LIMIT = 40
# Rows in every generator pass of every dataset. Float32 results depend on a pass's shape (kernels
# and their blocking are picked by batch size; on the CPU a conv takes the Winograd path from 4 rows
# on), never on which rows share it, so one fixed shape makes an image a function of its latent and
# domain alone. 8 rows: a shard's last pass pads at most 7; ``batch`` groups passes into larger steps.
PASS_ROWS = 8


@dataclass(frozen=True)
class DatasetSettings:
    """Everything that decides a dataset's bytes. ``pass_rows`` is the shape of every generator pass
    (:data:`PASS_ROWS`, not a choice: it is recorded so that a dataset made with another is never
    resumed or re-rendered with this one)."""

    n: int
    seed: int
    truncation: float
    views: int
    sigma: float
    size: int
    format: str
    quality: int
    layout: str
    shard_size: int
    generator: dict[str, Any]  # name, fingerprint, resolution
    domains: tuple[dict[str, Any], ...] = ()  # name, digest, prompt
    noise_mode: str = "const"
    pass_rows: int = PASS_ROWS
    views_in: str = "source"
    version: str = field(default=__version__)

    # ----------------------------------------------------------------- derived facts
    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_range(self, shard: int) -> range:
        first = shard * self.shard_size
        return range(first, min(first + self.shard_size, self.n))

    @property
    def domain_names(self) -> list[str]:
        return [d["name"] for d in self.domains]

    @property
    def view_domains(self) -> list[str]:
        """The domains whose views are rendered too (``views_in="all"``), in order."""
        return self.domain_names if self.views_in == "all" else []

    @property
    def keys(self) -> list[str]:
        """The images of one sample, in order: ``source``, each domain, ``view0``, ... (the source's
        views), then with ``views_in="all"`` ``<domain>.view0``, ... for each domain (a dot: domain
        names never hold one, so these keys never meet a domain's)."""
        views = [f"view{k}" for k in range(self.views)]
        return ["source"] + self.domain_names + views + [f"{d}.{v}" for d in self.view_domains for v in views]

    @property
    def images_per_sample(self) -> int:
        return len(self.keys)

    @property
    def extension(self) -> str:
        return self.format

    def shard_name(self, shard: int) -> str:
        """The shard's file: a tar, or the folder layout's record file (present = complete)."""
        return f"shard-{shard:06d}" + (".tar" if self.layout == "webdataset" else ".jsonl")

    def member_names(self, index: int) -> list[str]:
        """A sample's files in a tar (``{index:08d}.{key}.{ext}``, then ``.json``), or its image
        paths in the folder layout (``source/``, ``<domain>/``, ``views/{index:08d}_{k}``, and with
        ``views_in="all"`` ``views/<domain>/{index:08d}_{k}``), in ``keys`` order."""
        key = f"{index:08d}"
        if self.layout == "webdataset":
            return [f"{key}.{k}.{self.extension}" for k in self.keys] + [f"{key}.json"]
        return ([f"{k}/{key}.{self.extension}" for k in ["source"] + self.domain_names]
                + [f"views/{key}_{k}.{self.extension}" for k in range(self.views)]
                + [f"views/{d}/{key}_{k}.{self.extension}" for d in self.view_domains for k in range(self.views)])

    # ----------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["domains"] = [dict(x) for x in self.domains]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSettings":
        d = dict(d)
        d["domains"] = tuple(dict(x) for x in d.get("domains", ()))
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """What must match for a run to resume into a folder (not the version that wrote it)."""
        d = self.to_dict()
        d.pop("version")
        return d


def domain_digest(vector: torch.Tensor) -> str:
    """sha256 of the float32 bytes of a domain vector, 16 hex digits."""
    data = vector.detach().to("cpu", torch.float32).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def slug_name(text: str) -> str:
    """A key-safe domain name: lower-case letters, digits, ``_`` and ``-`` (never a dot, which
    webdataset reads as the end of a sample's key)."""
    s = re.sub(r"[^a-z0-9_-]+", "_", str(text).lower()).strip("_-")
    return s[:NAME_LIMIT].rstrip("_-") or "domain"


def unique_names(names: Sequence[str]) -> list[str]:
    """Slugged names, made unique (``pixar``, ``pixar_2``) and kept off the reserved keys."""
    taken = set(RESERVED_NAMES) | {f"view{k}" for k in range(1000)}
    out = []
    for name in names:
        base = slug_name(name)
        candidate, i = base, 1
        while candidate in taken or re.fullmatch(r"view\d+", candidate):
            i += 1
            candidate = f"{base}_{i}"
        taken.add(candidate)
        out.append(candidate)
    return out


def default_name(domain: Domain, i: int) -> str:
    """A domain's name in a dataset: its prompt, else its file's stem, else ``domain{i}``."""
    if domain.meta.get("prompt"):
        return str(domain.meta["prompt"])
    if domain.meta.get("file"):
        return Path(str(domain.meta["file"])).stem
    return f"domain{i}"


DomainsArg = Union[Sequence[Union[Domain, tuple[str, Domain]]], Mapping[str, Domain]]


def named_domains(G: "Generator", domains: DomainsArg, check: bool = True) -> list[tuple[str, Domain]]:
    """``(name, domain)`` pairs, names unique and key-safe, each domain checked against ``G``.

    ``domains``: a ``{name: Domain}`` mapping, or a list of domains (named by prompt or file) and
    ``(name, Domain)`` pairs.
    """
    items = list(domains.items()) if isinstance(domains, Mapping) else \
        [d if isinstance(d, tuple) else (default_name(d, i), d) for i, d in enumerate(domains)]
    for _, d in items:
        if not isinstance(d, Domain):
            raise HyperdomainError(f"domains must be Domain objects, got {type(d).__name__}")
        d.check_compatible(G, fingerprint=check)
    return list(zip(unique_names([n for n, _ in items]), [d for _, d in items]))


def check_counts(**counts: tuple[Any, int]) -> None:
    """Refuse counts below their minimum: ``n=(n, 1)`` etc.; one line naming the argument."""
    for name, (value, low) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise HyperdomainError(f"{name} must be an integer >= {low}, got {value!r}")


# --------------------------------------------------------------------- the output folder
def prepare_out_dir(out_dir: Path, settings: DatasetSettings) -> DatasetSettings:
    """Create ``out_dir`` for ``settings`` (writing ``settings.json`` first), or accept it for a
    resume when it holds a dataset of the same settings; return the settings to use (the stored
    ones on a resume, identical but for the version that wrote them)."""
    stored = read_settings(out_dir) if (out_dir / SETTINGS_FILE).is_file() else None
    if stored is not None:
        if stored.identity() != settings.identity():
            key, old, new = _first_difference(stored.identity(), settings.identity())
            raise HyperdomainError(
                f"{out_dir}: holds a dataset with other settings ({key}: {old} there, {new} now); "
                f"resume with the same settings or pick another --out")
        return stored
    if out_dir.exists() and not out_dir.is_dir():
        raise HyperdomainError(f"{out_dir}: is a file, not a folder; pick another --out")
    # another node's rank may be writing settings.json this moment (an atomic write's temporary file)
    if out_dir.is_dir() and any(not p.name.startswith(f".{SETTINGS_FILE}.") for p in out_dir.iterdir()):
        raise HyperdomainError(f"{out_dir}: is not empty and holds no dataset ({SETTINGS_FILE}); pick an empty "
                               f"or new folder for --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HyperdomainError(f"{out_dir}: cannot create the dataset folder ({e.strerror or e})") from None
    write_text(out_dir / SETTINGS_FILE, json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n")
    return settings


def read_settings(out_dir: Path) -> DatasetSettings:
    path = out_dir / SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "batch" in data and "pass_rows" not in data:
            raise HyperdomainError(f"{path}: made by hyperdomain {data.get('version', '?')}, whose images depend "
                                   f"on --batch; finish it with that version or make it again in a new folder")
        return DatasetSettings.from_dict(data)
    except OSError as e:
        raise HyperdomainError(f"{path}: cannot read ({e.strerror or e})") from None
    except (ValueError, TypeError) as e:
        raise HyperdomainError(f"{path}: not a dataset settings file ({e})"[:300]) from None


def _first_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, Any, Any]:
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            if key == "domains":
                da, db = a.get(key, []), b.get(key, [])
                if [d["name"] for d in da] == [d["name"] for d in db]:
                    return key, [d["digest"] for d in da], [d["digest"] for d in db]
                return key, [d["name"] for d in da], [d["name"] for d in db]
            return key, a.get(key), b.get(key)
    return "?", None, None  # pragma: no cover
