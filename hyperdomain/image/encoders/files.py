"""Our encoder file: safetensors with the encoder's tensors, its config and the generator it was made for.

Tensors: ``encoder.*`` (official names) and ``latent_avg`` ``[n_styles, 512]`` (when the kind uses
it). Metadata: ``format`` ``hyperdomain.encoder`` and ``format_version``, ``kind``, ``config``
(JSON of :class:`EncoderConfig`), ``generator_fingerprint`` (of the generator whose W+ it predicts),
``source`` (where the weights came from: a released file, a training run). No pickle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import HyperdomainError
from ...files.safetensors_files import ENCODER, json_field, read_own_file, write_own_file
from .config import EncoderConfig, a_kind
from .model import PhotoEncoder
from .state import check_encoder_state, check_latent_avg

ENCODER_FORMAT = ENCODER
FORMAT_VERSION = 1
WHAT = "encoder file"
_READ_AS = "hyperdomain encoder file"  # "not a hyperdomain encoder file (it holds ...)"
_PREFIX = "encoder."
# torch.save files (zip, legacy) start so; a released .pt given here is named as such.
_TORCH_MAGICS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def save_encoder(path: str | os.PathLike, encoder: PhotoEncoder, generator_fingerprint: str,
                 source: str = "") -> Path:
    """Write ``encoder`` atomically as an encoder file."""
    if not isinstance(generator_fingerprint, str) or not generator_fingerprint:
        raise HyperdomainError(f"{path}: an encoder file names the generator it was made for (a non-empty "
                               f"fingerprint string), got {generator_fingerprint!r}")
    tensors = {_PREFIX + k: v.detach().cpu().contiguous() for k, v in encoder.encoder.state_dict().items()}
    if encoder.latent_avg is not None:
        tensors["latent_avg"] = encoder.latent_avg.detach().cpu().float().contiguous()
    meta = {"kind": encoder.config.kind, "config": json.dumps(encoder.config.as_dict(), sort_keys=True),
            "generator_fingerprint": generator_fingerprint, "source": str(source)}
    return write_own_file(Path(path), ENCODER_FORMAT, FORMAT_VERSION, tensors, meta)


def load_encoder(path: str | os.PathLike) -> PhotoEncoder:
    """Read an encoder file (every tensor checked against its config), ready in eval mode."""
    path = Path(path)
    try:
        header, tensors = read_own_file(path, ENCODER_FORMAT, FORMAT_VERSION, _READ_AS)
    except HyperdomainError:
        if _is_torch_file(path):
            raise HyperdomainError(f"{path}: a torch checkpoint, not an encoder file ({ENCODER_FORMAT}); a released "
                                   f"e4e or ReStyle .pt is read with import_encoder (hyperdomain import)") from None
        raise
    config = EncoderConfig.from_dict(json_field(path, header, "config", dict, WHAT), f"{path}: config")
    kind = header.get("kind")
    if kind != config.kind:
        raise HyperdomainError(f"{path}: metadata kind {kind!r} differs from its config's {config.kind!r}")
    fingerprint = header.get("generator_fingerprint")
    if not fingerprint:
        raise HyperdomainError(f"{path}: {WHAT} metadata lacks 'generator_fingerprint'")

    state, latent_avg = {}, None
    for k, v in tensors.items():
        if k.startswith(_PREFIX):
            state[k[len(_PREFIX):]] = v
        elif k == "latent_avg" and config.needs_latent_avg:
            latent_avg = check_latent_avg(v, config, str(path))
        else:
            raise HyperdomainError(f"{path}: unexpected tensor {k!r} in {a_kind(config.kind)} {WHAT}")
    if config.needs_latent_avg and latent_avg is None:
        raise HyperdomainError(f"{path}: no tensor 'latent_avg', which {a_kind(config.kind)} encoder starts from")
    state = check_encoder_state(state, config, str(path), prefix=_PREFIX)
    meta = {"generator_fingerprint": fingerprint, "source": header.get("source", ""), "file": str(path)}
    return PhotoEncoder.from_state(config, state, latent_avg, meta)


def _is_torch_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return any(head.startswith(m) for m in _TORCH_MAGICS)
