"""The released e4e and ReStyle checkpoints, read without running pickled code.

Layout (from the code that writes them: e4e's and ReStyle's ``Coach.__get_save_dict``): a
``torch.save`` dict with ``state_dict`` (the whole pSp/e4e module: ``encoder.*`` and ``decoder.*``,
the StyleGAN2 in the PyTorch port's layout), ``latent_avg`` (``[18, 512]`` at 1024 px) and
``opts`` (the training options: a plain dict, an ``argparse.Namespace`` in some versions). The
trainers may also have saved their state to continue training (optimizer, step, discriminator):
that is ignored. Which network a file holds is ``opts["encoder_type"]``, as the official loaders
decide it: ``Encoder4Editing`` (e4e), ``BackboneEncoder`` (ReStyle-pSp) and
``ProgressiveBackboneEncoder`` (ReStyle-e4e); the ResNet-34 variants (other domains) are refused.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch

from ...errors import HyperdomainError
from ...files.restricted_unpickler import load_torch_file
from .config import PHOTO_CHANNELS, EncoderConfig, a_kind, n_styles_for
from .model import PhotoEncoder
from .state import check_encoder_state, check_latent_avg, count_nonfinite

log = logging.getLogger(__name__)

ENCODER_TYPES = {"Encoder4Editing": "e4e", "BackboneEncoder": "restyle-psp", "ProgressiveBackboneEncoder": "restyle-e4e"}
# What the trainers save to continue training; not needed to encode.
TRAINING_STATE = {"optimizer", "step", "global_step", "best_val_loss", "discriminator_state_dict",
                  "discriminator_optimizer_state_dict"}
RELEASE_INPUT_SIZE = 256  # every release reads 256 px (its transforms resize to 256, its face_pool pools to 256)
RESTYLE_DEFAULT_ITERS = 5  # ReStyle's n_iters_per_batch default, at training and inference
# Keys every decoder in the port's layout has.
_DECODER_MARKERS = ("input.input", "conv1.conv.weight", "style.1.weight")


class ImportedEncoder(NamedTuple):
    """``config``: plain dict of :class:`EncoderConfig`; ``state_dict``: the encoder's tensors, official
    names without ``encoder.``; ``latent_avg``: ``[n_styles, 512]`` or None; ``decoder``: the
    ``decoder.*`` tensors without the prefix (a StyleGAN2 in the port's layout), or None if the file
    has none; ``opts``: the training options as saved (plain data)."""

    config: dict
    state_dict: dict[str, torch.Tensor]
    latent_avg: torch.Tensor | None
    decoder: dict[str, torch.Tensor] | None
    opts: dict


def is_release(obj: Any) -> bool:
    """Whether an unpickled checkpoint looks like an e4e / ReStyle release: a dict with ``opts`` and a
    ``state_dict`` whose keys include ``encoder.*``."""
    sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
    return isinstance(sd, Mapping) and "opts" in obj and any(str(k).startswith("encoder.") for k in sd)


def read_release(path: str | os.PathLike) -> ImportedEncoder:
    """Read a released e4e / ReStyle checkpoint, checking every tensor; one line naming the problem."""
    path = Path(path)
    obj = load_torch_file(path)  # tensors and plain data only; a Namespace comes back as a dict
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        found = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise HyperdomainError(f"{path}: not an e4e or ReStyle checkpoint (expected a dict with 'state_dict', "
                               f"'latent_avg' and 'opts'; found {found})")
    unknown = sorted(set(map(str, obj)) - {"state_dict", "latent_avg", "opts"} - TRAINING_STATE)
    if unknown:
        log.warning("%s: ignoring entries %s beside the encoder", path, unknown)
    opts = obj.get("opts")
    if not isinstance(opts, Mapping):
        raise HyperdomainError(f"{path}: 'opts' is {'missing' if opts is None else 'a ' + type(opts).__name__}, "
                               f"expected the training options (a dict)")
    sd = obj["state_dict"]
    if not isinstance(sd, Mapping):
        raise HyperdomainError(f"{path}: 'state_dict' is a {type(sd).__name__}, expected a state dict")
    encoder, decoder = {}, {}
    for k, v in sd.items():
        k = str(k)
        if k.startswith("encoder."):
            encoder[k[len("encoder."):]] = v
        elif k.startswith("decoder."):
            decoder[k[len("decoder."):]] = v
        else:
            raise HyperdomainError(f"{path}: unexpected key {k!r} in 'state_dict' (expected encoder.* and decoder.*)")
    if not encoder:
        raise HyperdomainError(f"{path}: 'state_dict' has no encoder.* tensors")

    has_avg = obj.get("latent_avg") is not None
    config = _config(path, dict(opts), encoder, has_avg)
    latent_avg = None
    if has_avg:
        latent_avg = check_latent_avg(obj["latent_avg"], config, str(path))
    elif config.needs_latent_avg:
        raise HyperdomainError(f"{path}: no 'latent_avg', which {a_kind(config.kind)} encoder starts from")
    decoder = _decoder(path, decoder, config) if decoder else None
    state = check_encoder_state(encoder, config, str(path), prefix="encoder.")  # the long pass, last
    return ImportedEncoder(config.as_dict(), state, latent_avg if config.needs_latent_avg else None, decoder,
                           dict(opts))


def encoder_from_checkpoint(path: str | os.PathLike, generator_fingerprint: str | None = None) -> PhotoEncoder:
    """A released checkpoint as a ready :class:`PhotoEncoder` (``meta`` records the file)."""
    imp = read_release(path)
    meta = {"source": str(Path(path).resolve()), "generator_fingerprint": generator_fingerprint}
    return PhotoEncoder.from_state(EncoderConfig(**imp.config), imp.state_dict, imp.latent_avg, meta)


def _opt(path: Path, opts: dict, key: str, kind: type, default: Any = None) -> Any:
    v = opts.get(key, default)
    ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
    if not ok:
        raise HyperdomainError(f"{path}: opts[{key!r}] is {v!r}, expected a{'n' if kind is int else ''} "
                               f"{kind.__name__}")
    return v


def _config(path: Path, opts: dict, encoder: Mapping[str, Any], has_avg: bool) -> EncoderConfig:
    etype = opts.get("encoder_type")
    if etype is None and "latlayer1.weight" in encoder:
        etype = "Encoder4Editing"  # the FPN's lateral layers are e4e's alone; ReStyle's two kinds look alike
    if etype not in ENCODER_TYPES:
        raise HyperdomainError(f"{path}: encoder_type {etype!r} is not supported (supported: {sorted(ENCODER_TYPES)}, "
                               f"the IR-SE50 encoders of e4e and ReStyle)")
    kind = ENCODER_TYPES[etype]
    heads = {int(m[1]) for k in encoder if (m := re.match(r"styles\.(\d+)\.", k))}
    size_key = "stylegan_size" if kind == "e4e" else "output_size"
    if size_key in opts:
        try:
            n_styles = n_styles_for(_opt(path, opts, size_key, int))
        except HyperdomainError as e:
            raise HyperdomainError(f"{path}: opts[{size_key!r}]: {e}") from None
        if heads and max(heads) + 1 != n_styles:
            raise HyperdomainError(f"{path}: opts[{size_key!r}]={opts[size_key]} means {n_styles} style layers, "
                                   f"but the encoder has {max(heads) + 1} style heads")
    elif heads:
        n_styles = max(heads) + 1
    else:
        raise HyperdomainError(f"{path}: no encoder.styles.* heads and no opts[{size_key!r}]")
    if kind == "e4e":
        # e4e adds the average latent when trained with --start_from_latent_avg (the FFHQ release was).
        start = _opt(path, opts, "start_from_latent_avg", bool, has_avg)
        return EncoderConfig(kind, n_styles, PHOTO_CHANNELS, RELEASE_INPUT_SIZE, 1, start)
    input_nc = _opt(path, opts, "input_nc", int, 2 * PHOTO_CHANNELS)
    n_iters = _opt(path, opts, "n_iters_per_batch", int, RESTYLE_DEFAULT_ITERS)
    try:
        return EncoderConfig(kind, n_styles, input_nc, RELEASE_INPUT_SIZE, n_iters, True)
    except HyperdomainError as e:
        raise HyperdomainError(f"{path}: {e}") from None


def _decoder(path: Path, decoder: dict, config: EncoderConfig) -> dict[str, torch.Tensor]:
    """The ``decoder.*`` tensors, checked to be a port-layout StyleGAN2 with ``n_styles`` W+ layers."""
    missing = [k for k in _DECODER_MARKERS if k not in decoder]
    if missing:
        raise HyperdomainError(f"{path}: the decoder.* tensors are not a StyleGAN2 in the PyTorch port's layout "
                               f"(no 'decoder.{missing[0]}')")
    for k, v in decoder.items():
        if not isinstance(v, torch.Tensor):
            raise HyperdomainError(f"{path}: 'decoder.{k}' is a {type(v).__name__}, expected a tensor")
        if v.is_floating_point():
            bad = count_nonfinite(v)
            if bad:
                raise HyperdomainError(f"{path}: tensor 'decoder.{k}' holds {bad} non-finite numbers (NaN or inf)")
    n_up = len({m[1] for k in decoder if (m := re.match(r"to_rgbs\.(\d+)\.", k))})
    n_latent = 2 * (n_up + 2) - 2  # the port's n_latent = 2 * log2(size) - 2, with log2(size) = 2 + upsamplings
    if n_latent != config.n_styles:
        raise HyperdomainError(f"{path}: the decoder takes {n_latent} W+ layers ({2 ** (n_up + 2)} px), but the "
                               f"encoder makes {config.n_styles}")
    return {k: v.detach() for k, v in decoder.items()}
