"""A released e4e / ReStyle checkpoint made ours: the encoder, tied to the generator it predicts W+ for.

A release carries its decoder (``decoder.*``: the whole StyleGAN2 it was trained with). Given the
generator the encoder will be used with, the decoder must be that generator: the same weights and
noise buffers, i.e. the same :attr:`Generator.fingerprint` (the average latent is a non-persistent
buffer and is not part of it). Without one, the decoder is offered as that generator.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

from ...errors import HyperdomainError
from ...files.generator_files import write_generator_file
from ...model.generator import Generator, generator_from_state
from .config import W_DIM, EncoderConfig, a_kind
from .files import save_encoder
from .model import PhotoEncoder
from .official import read_release

log = logging.getLogger(__name__)


class EncoderImport(NamedTuple):
    """``encoder`` (its ``meta`` names the generator fingerprint and the source) and ``generator``:
    the one given, or the release's decoder as a frozen generator."""

    encoder: PhotoEncoder
    generator: Generator


def import_encoder(path: str | os.PathLike, generator: Generator | None = None, *,
                   out: str | os.PathLike | None = None,
                   generator_out: str | os.PathLike | None = None) -> EncoderImport:
    """Read a released e4e / ReStyle checkpoint (no pickled code runs) and tie it to ``generator``.

    With ``generator``, the release's decoder must be it (same fingerprint); without, the decoder
    becomes the generator. ``out``: write our encoder file; ``generator_out``: write the decoder as a
    generator file (safetensors, read by :func:`hyperdomain.load_generator`). Every check runs before
    anything is written; each problem is one line.
    """
    path = Path(path)
    imp = read_release(path)
    config = EncoderConfig(**imp.config)
    decoder = _decoder_generator(path, imp) if imp.decoder is not None else None
    if generator is None:
        if decoder is None:
            raise HyperdomainError(f"{path}: the release carries no decoder; give the generator it was trained with")
        generator = decoder
    else:
        _check_generator(path, config, generator, decoder)
    if generator_out is not None and decoder is None:
        raise HyperdomainError(f"{path}: the release carries no decoder to write as a generator")
    fingerprint = generator.fingerprint
    meta = {"generator_fingerprint": fingerprint, "source": path.name}
    encoder = PhotoEncoder.from_state(config, imp.state_dict, imp.latent_avg, meta)
    if generator_out is not None:
        save_generator(generator_out, decoder, source=path.name)
    if out is not None:
        save_encoder(out, encoder, fingerprint, source=path.name)
        encoder.meta["file"] = str(out)
    return EncoderImport(encoder, generator)


def save_generator(path: str | os.PathLike, G: Generator, source: str = "") -> Path:
    """Write ``G`` as our generator file (its average latent included when it has one)."""
    latent_avg = G.latent_avg if G._has_latent_avg else None
    return write_generator_file(path, G.state_dict(), latent_avg,
                                {"name": G.name, "fingerprint": G.fingerprint, "source": source},
                                conv_clamp=G.config.conv_clamp)


def _decoder_generator(path: Path, imp) -> Generator:
    """The release's decoder as a generator; its average latent is the release's (one row: the
    trainers repeat the generator's over the layers)."""
    avg = imp.latent_avg
    row = avg[0] if avg is not None and bool((avg == avg[0]).all()) else None
    try:
        return generator_from_state(imp.decoder, row, name=path.stem, where=f"{path} (decoder)")
    except HyperdomainError as e:
        raise HyperdomainError(str(e).replace("\n", " ")) from None


def _check_generator(path: Path, config: EncoderConfig, G: Generator, decoder: Generator | None) -> None:
    if G.w_dim != W_DIM or G.num_ws != config.n_styles:
        raise HyperdomainError(f"{path}: {a_kind(config.kind)} encoder makes W+ [{config.n_styles}, {W_DIM}], but "
                               f"generator {G.name!r} takes [{G.num_ws}, {G.w_dim}]")
    if decoder is None:
        log.warning("%s: the release carries no decoder; it is taken to be for generator %s (%s) unchecked",
                    path, G.name, G.fingerprint)
        return
    if decoder.fingerprint != G.fingerprint:
        raise HyperdomainError(f"{path}: its decoder is generator fingerprint {decoder.fingerprint}, not generator "
                               f"{G.name!r} ({G.fingerprint}); give the generator it was trained with, or none "
                               f"to use its decoder")


def check_encoder_generator(encoder: PhotoEncoder, G: Generator, what: str = "encoder", check: bool = True) -> None:
    """The encoder fits ``G``: W+ of its shape, and (``check``) made for its fingerprint; one line otherwise."""
    n, w_dim = encoder.config.n_styles, encoder.config.w_dim
    if G.w_dim != w_dim or G.num_ws != n:
        raise HyperdomainError(f"{what}: {a_kind(encoder.config.kind)} encoder makes W+ [{n}, {w_dim}], but "
                               f"generator {G.name!r} takes [{G.num_ws}, {G.w_dim}]")
    fp = encoder.meta.get("generator_fingerprint")
    if check and fp and fp != G.fingerprint:
        raise HyperdomainError(f"{what}: made for generator fingerprint {fp}, not {G.name!r} ({G.fingerprint}); "
                               f"--no-check uses it anyway")


__all__ = ["EncoderImport", "import_encoder", "save_generator", "check_encoder_generator"]
