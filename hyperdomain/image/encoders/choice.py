"""Which encoder a photo goes through: ``auto``, ``ii2s`` (none), a kind (``e4e``, ``restyle-e4e``,
``restyle-psp``: the generator's known release, downloaded on first use) or a file (our encoder
file, or a release ``.pt`` imported on the spot); always fitted to the generator.

A known release is the manifest model ``{kind}-{generator name}`` (``e4e-ffhq``). It is imported
once, checked against the generator, and kept beside the weights as our encoder file
(``encoders/{model}-{fingerprint}.safetensors``), so later runs read safetensors, not the pickle.
``auto`` takes the first kind whose file is already in the weights folder (no surprise
downloads), else none: the inversion is II2S.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ...errors import HyperdomainError
from ...files.pretrained import load_models, resolve_model, weights_home
from ...model.generator import state_fingerprint
from .config import KINDS
from .files import load_encoder
from .model import PhotoEncoder
from .release import check_encoder_generator, import_encoder

log = logging.getLogger(__name__)

AUTO, NONE = "auto", "ii2s"
CHOICES = (AUTO, NONE, *KINDS)
AUTO_ORDER = ("e4e", "restyle-e4e", "restyle-psp")  # one pass first: the fastest, and made for editing


def known_release(G, kind: str) -> str | None:
    """The manifest model holding ``kind``'s release for generator ``G`` (by its manifest name), or None."""
    name = f"{kind}-{G.name}"
    return name if name in load_models() else None


def _cached(G, model: str) -> Path:
    return weights_home() / "encoders" / f"{model}-{G.fingerprint}.safetensors"


def _present(G, model: str) -> bool:
    return _cached(G, model).is_file() or (weights_home() / load_models()[model].filename).is_file()


def _from_release(G, model: str, download: bool, check: bool) -> PhotoEncoder:
    cached = _cached(G, model)
    if cached.is_file():
        try:
            enc = load_encoder(cached)
            check_encoder_generator(enc, G, str(cached), check)
            return enc
        except HyperdomainError as e:  # a damaged cache entry is made again from the release
            log.warning("%s; importing the release again", e)
    release = resolve_model(model, download=download)
    enc, _ = import_encoder(release, G if check else None)
    try:
        from .files import save_encoder

        save_encoder(cached, enc, enc.meta["generator_fingerprint"], source=release.name)
        enc.meta["file"] = str(cached)
    except HyperdomainError as e:  # a read-only weights folder: imported again next time
        log.warning("cannot keep the imported encoder: %s", e)
        enc.meta["file"] = str(release)
    return enc


def encoder_for(G, spec: "str | os.PathLike | PhotoEncoder | None", *, download: bool = True,
                check: bool = True, what: str = "--encoder") -> PhotoEncoder | None:
    """The encoder ``spec`` names for generator ``G``, checked against it (``check``: also its
    fingerprint), or None for II2S (``"ii2s"``, None, or ``"auto"`` without a local encoder)."""
    if spec is None or spec == NONE:
        return None
    if isinstance(spec, PhotoEncoder):
        check_encoder_generator(spec, G, what, check)
        return spec
    spec = str(spec)
    if spec == AUTO:
        for kind in AUTO_ORDER:
            model = known_release(G, kind)
            if model is not None and _present(G, model):
                return _from_release(G, model, download=False, check=check)
        return None
    if spec in KINDS:
        model = known_release(G, spec)
        if model is None:
            known = [k for k in KINDS if known_release(G, k)]
            raise HyperdomainError(f"{what} {spec}: no {spec} encoder is known for generator {G.name!r}"
                                   + (f" (known: {', '.join(known)})" if known else "")
                                   + "; pass an encoder file, or ii2s")
        return _from_release(G, model, download=download, check=check)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise HyperdomainError(f"{what} {spec}: no such file, and not one of {', '.join(CHOICES)}")
    with open(path, "rb") as f:
        safetensors = f.read(9)[8:9] == b"{"
    if safetensors:
        enc = load_encoder(path)
        check_encoder_generator(enc, G, f"{what} {path}", check)
        return enc
    enc, _ = import_encoder(path, G if check else None)  # a release: its decoder must be G
    check_encoder_generator(enc, G, f"{what} {path}", check=False)
    enc.meta["file"] = str(path)
    return enc


def encoder_digest(enc: PhotoEncoder) -> str:
    """A short hash of the encoder's tensors (as the generator fingerprint), computed once."""
    if "digest" not in enc.meta:
        enc.meta["digest"] = state_fingerprint(enc.state_dict())
    return enc.meta["digest"]
