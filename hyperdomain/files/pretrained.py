"""Known pretrained weights: the manifest, where files live, and verified, resumable downloads.

The manifest lists generators (``generators``: StyleGAN2 checkpoints with their resolution,
source prompt and paper recipe) and the other models some features need (``models``: the VGG16
behind LPIPS, face landmark detectors, the e4e / ReStyle encoders). Both download the same way.
An entry's ``filename`` names the local file where the URL does not (Google Drive's all end in
``uc``); Drive's "can't scan this file for viruses" page is answered as a browser would (its
form's ``confirm`` and ``uuid``), once.
"""
from __future__ import annotations

import bz2
import contextlib
import hashlib
import http.client
import importlib.resources
import json
import logging
import math
import os
import re
import urllib.error
from html.parser import HTMLParser
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch.hub
from tqdm.auto import tqdm

from ..errors import HyperdomainError
from .atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = ["ManifestEntry", "ModelEntry", "load_manifest", "load_models", "weights_home", "download", "resolve",
           "resolve_model", "CHECKSUMS_FILE"]

FORMATS = ("port", "nvidia-pickle")
CHECKSUMS_FILE = "checksums.json"
_FIELDS = {"urls", "sha256", "size", "format", "resolution", "source_prompt", "description", "adapt", "align",
           "filename"}
ALIGNMENTS = ("ffhq",)  # how a generator's training images were cropped, where photos must be aligned alike
_MODEL_FIELDS = {"urls", "sha256", "sha256_prefix", "size", "description", "compression", "also_at", "filename"}
COMPRESSIONS = ("bz2",)
_RECIPE_FIELDS = {"iters", "batch", "lr", "betas", "losses", "mixing"}
_CHUNK = 1 << 20
_TIMEOUT_S = 30
_PAGE_LIMIT = 1 << 20  # a confirmation page is a few kB


@dataclass(frozen=True)
class ManifestEntry:
    """One known generator file."""

    name: str
    urls: tuple[str, ...]
    sha256: str | None  # None: not published; trust-on-first-use via checksums.json
    size: int | None  # bytes
    format: str  # "port" | "nvidia-pickle"
    resolution: int
    source_prompt: str
    description: str = ""
    adapt: Mapping[str, Any] | None = None  # the paper's single-domain settings for this generator, if any
    align: str | None = None  # "ffhq": face generators, whose photos are aligned as FFHQ was
    file_name: str | None = None  # the manifest's ``filename``, where the URL does not name the file

    sha256_prefix = None  # generators publish whole digests or none

    @property
    def filename(self) -> str:
        """The local file name: the entry's ``filename``, else the last path component of the first URL."""
        return self.file_name or _url_name(self.urls[0])

    @property
    def kind(self) -> str:
        return "generator"


@dataclass(frozen=True)
class ModelEntry:
    """One known auxiliary model file (not a generator).

    ``sha256_prefix``: where only the start of the digest is published (torch hub's file names
    carry 8 hex digits of it). ``compression``: the file is stored compressed ("bz2") and
    unpacked beside itself after the download. ``also_at``: another folder where the same file
    may already be ("torch-hub": torch's own download cache, for torchvision's weights).
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    description: str = ""
    sha256_prefix: str | None = None
    compression: str | None = None
    also_at: str | None = None
    file_name: str | None = None

    @property
    def filename(self) -> str:
        return self.file_name or _url_name(self.urls[0])

    @property
    def kind(self) -> str:
        return "model"

    @property
    def unpacked_name(self) -> str:
        """The file the feature reads: the download itself, or it without its compression suffix."""
        return self.filename[: -len(self.compression) - 1] if self.compression else self.filename


def _url_name(url: str) -> str:
    return Path(urllib.parse.urlparse(url).path).name


# --------------------------------------------------------------------------- manifest
def _manifest_text(path: str | os.PathLike | None) -> tuple[str, str]:
    if path is not None:
        try:
            return Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise HyperdomainError(f"{path}: cannot read manifest ({e.strerror or e})") from None
    res = importlib.resources.files("pretrained").joinpath("manifest.json")
    return res.read_text(encoding="utf-8"), "pretrained/manifest.json"


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, ManifestEntry]:
    """Read and validate the manifest (default: ``manifest.json`` of the ``pretrained`` package)."""
    text, where = _manifest_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HyperdomainError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("generators"), dict):
        raise HyperdomainError(f"{where}: expected an object with a 'generators' object")
    return {name: _entry(where, name, raw) for name, raw in data["generators"].items()}


def load_models(path: str | os.PathLike | None = None) -> dict[str, ModelEntry]:
    """The manifest's ``models``: the auxiliary weights (VGG16 for LPIPS, face landmark detectors)."""
    text, where = _manifest_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HyperdomainError(f"{where}: not valid JSON ({e})") from None
    models = data.get("models", {}) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise HyperdomainError(f"{where}: 'models' must be an object")
    return {name: _model_entry(where, name, raw) for name, raw in models.items()}


def _model_entry(where: str, name: str, raw: Any) -> ModelEntry:
    bad = _bad_field(where, name, raw)
    urls, sha, size = _common_fields(where, name, raw, _MODEL_FIELDS, bad)
    prefix = raw.get("sha256_prefix")
    if prefix is not None and not (isinstance(prefix, str) and re.fullmatch(r"[0-9a-f]{8,64}", prefix)):
        raise bad("sha256_prefix", "8 to 64 lower-case hex digits or null")
    compression = raw.get("compression")
    if compression is not None and compression not in COMPRESSIONS:
        raise bad("compression", f"one of {list(COMPRESSIONS)} or null")
    also_at = raw.get("also_at")
    if also_at not in (None, "torch-hub"):
        raise bad("also_at", "'torch-hub' or null")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise bad("description", "a string")
    return ModelEntry(name, tuple(urls), sha, size, desc, prefix, compression, also_at, _filename(raw, bad))


def _bad_field(where: str, name: str, raw: Any):
    def bad(field: str, expected: str) -> HyperdomainError:
        value = raw.get(field, "<missing>") if isinstance(raw, dict) else raw
        return HyperdomainError(f"{where}: entry {name!r}, field {field!r}: expected {expected}, got {value!r}")
    return bad


def _common_fields(where: str, name: str, raw: Any, known: set, bad) -> tuple[list, str | None, int | None]:
    """The fields every manifest entry has: its name, urls, sha256 and size, checked."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
        raise HyperdomainError(f"{where}: entry {name!r}: names are lower-case letters, digits, '-', '_', '.'")
    if not isinstance(raw, dict):
        raise bad("(entry)", "an object")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise HyperdomainError(f"{where}: entry {name!r}, field {unknown[0]!r}: unknown field (known: {sorted(known)})")
    urls = raw.get("urls")
    if (not isinstance(urls, list) or not urls
            or not all(isinstance(u, str) and re.match(r"https?://[^/\s]+/\S*[^/\s]$", u) for u in urls)):
        raise bad("urls", "a non-empty list of http(s) URLs naming a file")
    sha = raw.get("sha256")
    if sha is not None and not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
        raise bad("sha256", "64 lower-case hex digits or null")
    size = raw.get("size")
    if size is not None and not (type(size) is int and size > 0):
        raise bad("size", "a positive number of bytes or null")
    return urls, sha, size


def _entry(where: str, name: str, raw: Any) -> ManifestEntry:
    bad = _bad_field(where, name, raw)
    urls, sha, size = _common_fields(where, name, raw, _FIELDS, bad)
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise bad("format", f"one of {list(FORMATS)}")
    res = raw.get("resolution")
    if not (type(res) is int and res >= 4 and res & (res - 1) == 0):
        raise bad("resolution", "a power of two >= 4")
    prompt = raw.get("source_prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("source_prompt", "a non-empty string")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise bad("description", "a string")
    recipe = raw.get("adapt")
    if recipe is not None:
        _check_recipe(recipe, bad)
    align = raw.get("align")
    if align is not None and align not in ALIGNMENTS:
        raise bad("align", f"one of {list(ALIGNMENTS)} or null")
    return ManifestEntry(name, tuple(urls), sha, size, fmt, res, prompt, desc, recipe, align, _filename(raw, bad))


def _filename(raw: dict, bad) -> str | None:
    name = raw.get("filename")
    if name is not None and not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name)):
        raise bad("filename", "a file name (letters, digits, '_', '.', '+', '-') or null")
    return name


def _check_recipe(recipe: Any, bad) -> None:
    """An ``adapt`` recipe: a subset of iters, batch, lr, betas, losses, mixing with sane values."""
    expected = f"an object with some of {sorted(_RECIPE_FIELDS)}"
    if not isinstance(recipe, dict) or set(recipe) - _RECIPE_FIELDS:
        raise bad("adapt", expected)
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    ok = all([
        type(recipe.get("iters", 1)) is int and recipe.get("iters", 1) >= 1,
        type(recipe.get("batch", 1)) is int and recipe.get("batch", 1) >= 1,
        number(recipe.get("lr", 1.0)) and recipe.get("lr", 1.0) > 0,
        number(recipe.get("mixing", 0.5)) and 0 <= recipe.get("mixing", 0.5) <= 1,
        isinstance(recipe.get("betas", [0, 0]), list) and len(recipe.get("betas", [0, 0])) == 2
        and all(number(b) and 0 <= b < 1 for b in recipe.get("betas", [0, 0])),
        isinstance(recipe.get("losses", {}), dict),
    ])
    if not ok:
        raise bad("adapt", expected + " (iters, batch >= 1; lr > 0; mixing in [0, 1]; two betas in [0, 1))")
    losses = recipe.get("losses") or {"direction": 1}  # {}: the default
    if not all(isinstance(k, str) and number(v) and math.isfinite(v) and v >= 0 for k, v in losses.items()):
        raise bad("adapt", "losses as an object of loss names and weights >= 0")
    # the names themselves are checked by the trainer's config, which knows the losses (guidance.losses)
    if not (losses.get("direction") or losses.get("global")) or losses.get("tt_direction"):
        raise bad("adapt", "losses with direction or global > 0 and no tt_direction (a single-domain recipe)")


# --------------------------------------------------------------------------- where files live
def weights_home() -> Path:
    """``$HYPERDOMAIN_HOME``; else ``pretrained/`` of a source checkout; else the user cache."""
    env = os.environ.get("HYPERDOMAIN_HOME")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "setup.cfg").is_file() and (repo / "pretrained").is_dir() and os.access(repo / "pretrained", os.W_OK):
        return repo / "pretrained"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "hyperdomain"


def _read_checksums(home: Path) -> dict[str, Any]:
    p = home / CHECKSUMS_FILE
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HyperdomainError(f"{p}: unreadable checksum record ({e}); delete it to start afresh") from None
    return data if isinstance(data, dict) else {}


def _write_checksum(home: Path, filename: str, record: dict[str, Any]) -> None:
    data = _read_checksums(home)
    data[filename] = record
    with atomic_path(home / CHECKSUMS_FILE) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _verify(entry: ManifestEntry | ModelEntry, path: Path, home: Path) -> None:
    """Check ``path`` against the manifest (size, sha256 or its published prefix) or the
    trust-on-first-use record.

    A file already verified (same size and mtime as recorded) is not hashed again.
    """
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise HyperdomainError(f"{path}: {size} bytes, expected {entry.size} for {entry.name!r}")
    record = _read_checksums(home).get(entry.filename)
    if isinstance(record, dict) and {k: record.get(k) for k in ("size", "mtime_ns")} == _stamp(path):
        if entry.sha256 is None or record.get("sha256") == entry.sha256:
            return
    digest = _sha256(path)
    if entry.sha256 is not None:
        if digest != entry.sha256:
            raise HyperdomainError(f"{path}: sha256 is {digest}, expected {entry.sha256} for {entry.name!r}")
    elif entry.sha256_prefix is not None:
        if not digest.startswith(entry.sha256_prefix):
            raise HyperdomainError(f"{path}: sha256 is {digest}, expected one starting {entry.sha256_prefix} "
                                   f"for {entry.name!r}")
    elif isinstance(record, dict) and record.get("sha256"):
        if digest != record["sha256"]:
            raise HyperdomainError(
                f"{path}: sha256 is {digest}, but {home / CHECKSUMS_FILE} recorded {record['sha256']} when "
                f"{entry.name!r} was first downloaded"
            )
    else:
        log.warning("%s has no published sha256; recorded %s (trust on first use) in %s",
                    entry.name, digest, home / CHECKSUMS_FILE)
    _write_checksum(home, entry.filename, {"sha256": digest, **_stamp(path)})


# --------------------------------------------------------------------------- download
def download(name: str, home: str | os.PathLike | None = None, progress: bool = True,
             manifest: Mapping[str, ManifestEntry] | None = None) -> Path:
    """Download manifest entry ``name`` into ``home`` (default :func:`weights_home`); return its path.

    Resumes a partial ``<file>.part`` with an HTTP Range request, tries mirrors in order, and
    verifies size and sha256 (or records the digest on first use where none is published). A file
    already present and verified is never downloaded again. ``manifest`` defaults to
    :func:`load_manifest`'s.
    """
    manifest = load_manifest() if manifest is None else manifest
    models = {} if name in manifest else load_models()
    if name not in manifest and name not in models:
        raise HyperdomainError(f"unknown generator or model {name!r}; known: {', '.join(sorted(manifest) + sorted(models))}")
    if name in models:  # unpacked, or found in torch's cache, as the features that need it read it
        return resolve_model(name, home=home)
    return _download_entry(manifest[name], Path(home) if home is not None else weights_home(), progress)


def _download_entry(entry: ManifestEntry | ModelEntry, home: Path, progress: bool) -> Path:
    name = entry.name
    dest = home / entry.filename
    if dest.is_file():
        try:
            _verify(entry, dest, home)
        except HyperdomainError as e:
            raise HyperdomainError(f"{e}; delete it to download again") from None
        return dest
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HyperdomainError(f"{home}: cannot create the weights folder ({e.strerror or e})") from None
    part = dest.with_name(dest.name + ".part")
    failures: list[str] = []
    for url in entry.urls:
        try:
            _fetch(url, part, entry.size, progress, desc=entry.filename)
        except _FetchError as e:
            failures.append(f"{url} ({e})")
            continue
        try:
            _verify(entry, part, home)
        except HyperdomainError as e:
            part.unlink(missing_ok=True)  # a wrong file must not be resumed from
            failures.append(f"{url} ({str(e).split(': ', 1)[-1]})")
            continue
        os.replace(part, dest)
        _write_checksum(home, entry.filename, {**_read_checksums(home).get(entry.filename, {}), **_stamp(dest)})
        return dest
    raise HyperdomainError(
        f"could not download {name} from {' or '.join(failures)}; download it by hand and put it at "
        f"{dest}, or pass its path"
    )


class _FetchError(Exception):
    pass


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    with tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc) as bar:
        yield bar


def _fetch(url: str, part: Path, size: int | None, progress: bool, desc: str, _retry: bool = True) -> None:
    """Fetch ``url`` into ``part``, continuing from its current length when the server allows."""
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    try:
        resp = _open(url, have=have)
        if _is_web_page(resp):  # Google Drive asks to confirm a file too large to scan for viruses
            with resp:
                confirmed = _confirmation(resp.read(_PAGE_LIMIT), resp.geturl())
            if confirmed is None:
                raise _FetchError("the server sent a web page, not the file")
            resp = _open(*confirmed, have=have)
            if _is_web_page(resp):
                resp.close()
                raise _FetchError("the server sent a web page again after its download confirmation, not the file")
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and _retry:  # our partial file does not fit the server's: restart
            part.unlink(missing_ok=True)
            return _fetch(url, part, size, progress, desc, _retry=False)
        raise _FetchError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise _FetchError(str(reason)) from None
    with resp:
        if have and resp.status == 206:
            mode = "ab"
        else:  # the server sent the whole file
            mode, have = "wb", 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else size
        try:
            with open(part, mode) as f, _progress_bar(progress, total, have, desc) as bar:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:  # dropped: keep the partial file to resume
            raise _FetchError(f"interrupted: {e!r}") from None
    got = part.stat().st_size
    if total is not None and got < total:
        raise _FetchError(f"interrupted after {got} of {total} bytes; run again to resume")


def _open(url: str, data: bytes | None = None, have: int = 0):
    req = urllib.request.Request(url, data=data, headers={"User-Agent": "hyperdomain"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    return urllib.request.urlopen(req, timeout=_TIMEOUT_S)


def _is_web_page(resp) -> bool:
    return resp.headers.get_content_type() in ("text/html", "application/xhtml+xml")


class _ConfirmForm(HTMLParser):
    """The form of Drive's warning page: its action and inputs (``id``, ``export``, ``confirm``, ``uuid``)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[dict, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((a, {}))
        elif tag == "input" and self.forms and a.get("name") and a.get("type", "text") != "submit":
            self.forms[-1][1][a["name"]] = a.get("value", "")


def _confirmation(page: bytes, base: str) -> tuple[str, bytes | None] | None:
    """The request a confirmation page's form makes, as a browser submits it: (URL, None) for a GET
    form (its inputs in the query), (URL, body) for a POST one; None when the page has no such form."""
    parser = _ConfirmForm()
    try:
        parser.feed(page.decode("utf-8", "replace"))
    except Exception:  # noqa: BLE001 - any page that does not parse is not a confirmation
        return None
    for attrs, inputs in parser.forms:
        method = attrs.get("method", "get").lower()
        if "confirm" in inputs and method in ("get", "post"):
            action = urllib.parse.urljoin(base, attrs.get("action") or base)
            if urllib.parse.urlparse(action).scheme not in ("http", "https"):
                return None
            query = urllib.parse.urlencode(inputs)
            if method == "post":
                return action, query.encode()
            return action + ("&" if urllib.parse.urlparse(action).query else "?") + query, None
    return None


# --------------------------------------------------------------------------- names or paths
def resolve(name_or_path: str | os.PathLike, download: bool = True,
            manifest: Mapping[str, ManifestEntry] | None = None) -> tuple[Path, ManifestEntry | None]:
    """An existing path as is (entry ``None``), or a manifest name's file, downloaded if missing."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p, None
    name = str(name_or_path)
    manifest = load_manifest() if manifest is None else manifest
    if name not in manifest:
        raise HyperdomainError(
            f"{name}: no such file, and not a known generator name (known: {', '.join(sorted(manifest))})"
        )
    entry = manifest[name]
    if download:
        return _download(name, manifest=manifest), entry
    dest = weights_home() / entry.filename
    if not dest.is_file():
        raise HyperdomainError(f"{name} is not downloaded yet (expected at {dest}); allow downloading or pass a path")
    _verify(entry, dest, weights_home())
    return dest, entry


_download = download  # resolve()'s ``download`` flag shadows the function inside it


def resolve_model(name: str, download: bool = True, home: str | os.PathLike | None = None,
                  models: Mapping[str, ModelEntry] | None = None, progress: bool = True) -> Path:
    """The local file of auxiliary model ``name`` (unpacked if the manifest stores it compressed),
    downloaded on first use, or found where torch keeps its downloads (``also_at``). ``models``
    defaults to :func:`load_models`'s."""
    models = load_models() if models is None else models
    if name not in models:
        raise HyperdomainError(f"unknown model {name!r}; known: {', '.join(sorted(models))}")
    entry = models[name]
    home = Path(home) if home is not None else weights_home()
    unpacked = home / entry.unpacked_name
    if entry.compression and unpacked.is_file():
        return unpacked  # its archive was verified when it was unpacked
    if entry.also_at == "torch-hub" and not (home / entry.filename).is_file():
        elsewhere = Path(torch.hub.get_dir()) / "checkpoints" / entry.filename
        if elsewhere.is_file():
            _verify(entry, elsewhere, elsewhere.parent)
            return elsewhere
    if not download and not (home / entry.filename).is_file():
        raise HyperdomainError(f"model {name} is not downloaded yet (expected at {home / entry.filename}); "
                               f"allow downloading or pass its path")
    path = _download_entry(entry, home, progress=progress)
    if entry.compression:
        return _unpack(path, unpacked, entry.compression)
    return path


def _unpack(archive: Path, dest: Path, compression: str) -> Path:
    try:
        with bz2.open(archive, "rb") as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                out.write(chunk)
    except (OSError, EOFError, ValueError) as e:
        raise HyperdomainError(f"{archive}: cannot unpack ({e}); delete it to download again") from None
    return dest

