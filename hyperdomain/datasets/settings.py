"""A dataset's settings, its shards and the names of its files.

The settings are written first (``settings.json``) and fix every byte of the dataset: a run
resumes into a folder only with identical settings, and refuses a folder that holds anything else.
How a run is carried out (``batch``, the encoder threads, the number of ranks) is not a setting:
it changes no byte.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import torch

from .._version import __version__
from ..model.domain import Domain
from ..errors import HyperdomainError
from ..files.atomic import write_error, write_text

if TYPE_CHECKING:  # pragma: no cover
    from ..model.generator import Generator

FORMAT = "hyperdomain.dataset"
# 2: passes of PASS_ROWS rows whatever --batch; records hold the views' z. 3: settings.json names its
# format; each shard's digest is recorded when it is written (a resume checks it); the folder layout
# keeps views inside their domain's class folder (``<domain>/view{k}/``), not in one ``views/`` class
FORMAT_VERSION = 3
READS = (2, 3)  # format 2 is still verified; only the current one is resumed
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

# Bounds of every number, checked before a file is written and again when settings.json is read.
MAX_N = 10**8  # keys have 8 digits, so file names sort in index order
MAX_VIEWS = 1000  # view0 .. view999: unique_names keeps domain names off these keys
MAX_SHARD_SIZE = 100_000
MAX_SHARD_IMAGES = 100_000  # a shard's rows are planned in memory and its tar is one file
MAX_BATCH = 1024
MAX_SEED = 2**63 - 1  # what torch's generators take
MAX_TRUNCATION = 2.0
# A view is z + sigma * noise with |z| about sqrt(z_dim): far beyond sigma 10 it is no neighbour of z, and
# by 1e19 the mapping's pixel norm overflows float32 (black images, non-finite latents in the records)
MAX_SIGMA = 10.0
MAX_PASS_ROWS = 1024
MAX_RESOLUTION = 1 << 16


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
    format_version: int = FORMAT_VERSION

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
        paths in the folder layout, in ``keys`` order: ``source/{index:08d}``, ``<domain>/{index:08d}``,
        the source's views ``source/view{k}/{index:08d}`` and with ``views_in="all"``
        ``<domain>/view{k}/{index:08d}``: one top folder (an ImageFolder class) a domain, holding
        only that domain's images."""
        key, ext = f"{index:08d}", self.extension
        if self.layout == "webdataset":
            return [f"{key}.{k}.{ext}" for k in self.keys] + [f"{key}.json"]
        if self.format_version < 3:  # format 2 put every view into one views/ folder
            return ([f"{k}/{key}.{ext}" for k in ["source"] + self.domain_names]
                    + [f"views/{key}_{k}.{ext}" for k in range(self.views)]
                    + [f"views/{d}/{key}_{k}.{ext}" for d in self.view_domains for k in range(self.views)])
        return ([f"{k}/{key}.{ext}" for k in ["source"] + self.domain_names]
                + [f"source/view{k}/{key}.{ext}" for k in range(self.views)]
                + [f"{d}/view{k}/{key}.{ext}" for d in self.view_domains for k in range(self.views)])

    # ----------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        """What ``settings.json`` holds (and ``index.json`` under ``settings``)."""
        d = asdict(self)
        d["domains"] = [dict(x) for x in self.domains]
        if self.format_version < 3:  # a format 2 file named neither its kind nor its version
            d.pop("format_version")
            return d
        return {"dataset_format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSettings":
        """Settings from a dict as :meth:`to_dict` makes it (unchecked: see :func:`read_settings`)."""
        d = {k: v for k, v in d.items() if k != "dataset_format"}
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


def range_problem(value: Any, low: float, high: float, integer: bool = True) -> str | None:
    """What is wrong with ``value`` for the range ``[low, high]`` (``"an integer in [1, 8], got 0"``), or None."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"an integer in [{low}, {high}], got {value!r}"
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:  # NaN fails too
        return f"a finite number in [{low:g}, {high:g}], got {value!r}"
    return None


def check_ranges(**values: tuple[Any, float, float]) -> None:
    """Refuse integers out of their range: ``n=(n, 1, MAX_N)`` etc.; one line naming the argument."""
    for name, (value, low, high) in values.items():
        problem = range_problem(value, low, high)
        if problem:
            raise HyperdomainError(f"{name} must be {problem}")


def check_numbers(**values: tuple[Any, float, float]) -> None:
    """Refuse numbers (finite, int or float) out of their range; one line naming the argument."""
    for name, (value, low, high) in values.items():
        problem = range_problem(value, low, high, integer=False)
        if problem:
            raise HyperdomainError(f"{name} must be {problem}")


def shard_images_problem(n: int, shard_size: int, images_per_sample: int) -> str | None:
    """Too many images in one shard (``shard_size`` samples, or all ``n`` when fewer), or None."""
    images = min(n, shard_size) * images_per_sample
    if images > MAX_SHARD_IMAGES:
        return (f"a shard would hold {images} images ({min(n, shard_size)} samples of {images_per_sample}); at most "
                f"{MAX_SHARD_IMAGES}: lower the shard size or the views")
    return None


# --------------------------------------------------------------------- the output folder
def prepare_out_dir(out_dir: Path, settings: DatasetSettings) -> DatasetSettings:
    """Create ``out_dir`` for ``settings`` (writing ``settings.json`` first), or accept it for a
    resume when it holds a dataset of the same settings; return the settings to use (the stored
    ones on a resume, identical but for the version that wrote them)."""
    stored = read_settings(out_dir) if (out_dir / SETTINGS_FILE).is_file() else None
    if stored is not None:
        if stored.format_version != settings.format_version:
            raise HyperdomainError(
                f"{out_dir / SETTINGS_FILE}: a dataset of format {stored.format_version}, made by hyperdomain "
                f"{stored.version}; this version resumes only format {settings.format_version}: finish it with "
                f"that version, or make it again in a new folder")
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
        raise write_error(out_dir, e, "cannot create the dataset folder") from None
    write_text(out_dir / SETTINGS_FILE, json.dumps(settings.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return settings


def read_settings(out_dir: Path) -> DatasetSettings:
    """The settings in ``out_dir/settings.json``, every field checked by type and range: a problem is
    one line naming the file and the field; a file of another program, one line saying the folder
    holds no dataset."""
    path = Path(out_dir) / SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HyperdomainError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise HyperdomainError(f"{path}: not a hyperdomain dataset's settings (not JSON: {e})"[:300]) from None
    version = _format_version(path, data)
    if "batch" in data and "pass_rows" not in data:
        raise HyperdomainError(f"{path}: made by hyperdomain {data.get('version', '?')}, whose images depend "
                               f"on --batch; finish it with that version or make it again in a new folder")
    problem = _settings_problem(data)
    if problem:
        raise HyperdomainError(f"{path}: {problem}"[:400])
    settings = DatasetSettings.from_dict({**data, "format_version": version})
    problem = shard_images_problem(settings.n, settings.shard_size, settings.images_per_sample)
    if problem:
        raise HyperdomainError(f"{path}: field 'shard_size' {settings.shard_size}: {problem}")
    return settings


# keys every dataset's settings.json has held: a file without "dataset_format" is format 2 only if it has them all
_HALLMARKS = ("n", "seed", "generator", "layout", "shard_size")


def _format_version(path: Path, data: Any) -> int:
    """The dataset format of a settings file (format 2 named none); another program's file is refused."""
    foreign = HyperdomainError(f"{path.parent}: not a hyperdomain dataset folder ({SETTINGS_FILE} there is not a "
                               f"dataset's settings); pick another folder")
    if not isinstance(data, dict):
        raise foreign
    if "dataset_format" not in data:
        if all(k in data for k in _HALLMARKS) and "format_version" not in data:
            return 2
        raise foreign
    if data["dataset_format"] != FORMAT:
        raise foreign
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READS:
        raise HyperdomainError(f"{path}: dataset format {version!r} is not one this version reads "
                               f"({', '.join(map(str, READS))}); a newer hyperdomain may")
    return version


_INTEGERS = {"n": (1, MAX_N), "seed": (0, MAX_SEED), "views": (0, MAX_VIEWS), "quality": (0, 100),
             "shard_size": (1, MAX_SHARD_SIZE), "pass_rows": (1, MAX_PASS_ROWS)}
_NUMBERS = {"truncation": (0.0, MAX_TRUNCATION), "sigma": (0.0, MAX_SIGMA)}
_CHOICES = {"format": IMAGE_FORMATS, "layout": LAYOUTS, "views_in": VIEWS_IN, "noise_mode": ("const",)}
_NAME = re.compile(r"[a-z0-9_-]{1,64}")


def _settings_problem(data: dict[str, Any]) -> str | None:
    """The first field of a dataset's settings that is missing, unknown, of the wrong type or out of range."""
    fields = {f.name: f for f in dataclasses.fields(DatasetSettings)} | {"dataset_format": None}
    for key in data:
        if key not in fields:
            return f"unexpected field {key!r}"
    for name, f in fields.items():
        if f is not None and name not in data and f.default is MISSING and f.default_factory is MISSING:
            return f"field {name!r} is missing"
    for name, (low, high) in _INTEGERS.items():
        problem = range_problem(data[name], low, high) if name in data else None  # absent: its default
        if problem:
            return f"field {name!r} must be {problem}"
    for name, (low, high) in _NUMBERS.items():
        problem = range_problem(data[name], low, high, integer=False)
        if problem:
            return f"field {name!r} must be {problem}"
    for name, choices in _CHOICES.items():
        if name in data and data[name] not in choices:
            return f"field {name!r} must be one of {', '.join(choices)}, got {str(data[name])[:40]!r}"
    if not isinstance(data.get("version", ""), str):
        return "field 'version' must be a string"
    return _generator_problem(data["generator"], data["size"]) or _domains_problem(data.get("domains", []))


def _generator_problem(generator: Any, size: Any) -> str | None:
    if not isinstance(generator, dict) or set(generator) != {"name", "fingerprint", "resolution"} \
            or not all(isinstance(generator[k], str) for k in ("name", "fingerprint")):
        return "field 'generator' must hold the generator's name, fingerprint and resolution"
    problem = range_problem(generator["resolution"], 1, MAX_RESOLUTION)
    if problem:
        return f"field 'generator' resolution must be {problem}"
    problem = range_problem(size, 1, generator["resolution"])
    return f"field 'size' must be {problem}" if problem else None


def _domains_problem(domains: Any) -> str | None:
    if not isinstance(domains, list):
        return "field 'domains' must be a list"
    names = []
    for d in domains:
        if not isinstance(d, dict) or not {"name", "digest"} <= set(d) <= {"name", "digest", "prompt"} \
                or not isinstance(d["digest"], str) or not isinstance(d.get("prompt"), (str, type(None))):
            return "field 'domains' must hold each domain's name, digest and prompt"
        # names are folders and keys: never a path, a reserved key or a repeat
        if not isinstance(d["name"], str) or not _NAME.fullmatch(d["name"]) or d["name"] in RESERVED_NAMES \
                or re.fullmatch(r"view\d+", d["name"]) or d["name"] in names:
            return f"field 'domains' holds the name {str(d['name'])[:40]!r}: not a dataset's domain name"
        names.append(d["name"])
    return None


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
