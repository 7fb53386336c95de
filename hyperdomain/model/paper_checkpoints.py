"""The HyperDomainNet authors' released checkpoints: single domains (:func:`import_checkpoint`, a
:class:`Domain`) and hypernetworks (:func:`import_hypernet`, a :class:`HyperDomainNet`).

Their format (github.com/MACderRu/HyperDomainNet, ``core/utils/common.py::get_trainable_model_state``
and ``trainers.py::save_models``): ``torch.save`` of a plain dict

- ``model_type``: ``"parameterization"`` for a single domain (the repo's inference code also spells
  it ``"parametrization"``), ``"mapper"`` for a HyperDomainNet, ``"original"`` for a fine-tuned
  generator;
- ``patch_key``: ``"cin_mult"`` for the paper's domain modulation;
- ``state_dict``: ``BaseParametrization.state_dict()``, keys ``heads.conv_{k}.params_in`` of shape
  ``(1, 1, c_in, 1, 1)``, ``k = 0`` for ``conv1`` and ``k = i + 1`` for ``convs[i]`` (to-RGB layers
  have none);
- ``sg2_params`` (``sg_2_params`` in some versions): ``dict`` of the generator arguments
  (``img_size``, ``latent_size``, ``map_layers``, ``channel_multiplier``, ``device``,
  ``checkpoint_path`` or ``ckpt_path``);
- ``da_type``: ``"td"`` (text-driven) or ``"im2im"`` (one-shot; those also hold ``style_latents``).

The paper's conv multiplies the demodulated weight ``[B, O, I, k, k]`` by ``1 + params_in``,
i.e. along the input-channel axis, after demodulation: exactly our domain vector's semantics, so
the vector is the concatenation of the ``params_in`` in ``k`` order.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping

import torch

from .config import DEFAULT_SOURCE_PROMPT
from .domain import Domain
from ..errors import HyperdomainError
from .hypernet import ACTIVATIONS, HyperConfig, HyperDomainNet, check_state
from ..files.pretrained import load_manifest
from ..files.restricted_unpickler import load_torch_file_omegaconf

log = logging.getLogger(__name__)

__all__ = ["import_checkpoint", "import_hypernet", "paper_conv_dims", "paper_model_type"]

_SINGLE_DOMAIN_TYPES = ("parameterization", "parametrization")
_HEAD_KEY = re.compile(r"heads\.conv_(\d+)\.params_in")


def paper_conv_dims(img_size: int, channel_multiplier: int = 2) -> tuple[int, ...]:
    """Input widths of the modulated convs of the port's config at ``img_size`` (the paper's order)."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
              256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    dims, c = [widths[4]], widths[4]
    r = 8
    while r <= img_size:
        dims += [c, widths[r]]
        c = widths[r]
        r *= 2
    return tuple(dims)


def paper_model_type(path: str | os.PathLike) -> str | None:
    """The ``model_type`` of one of the paper's checkpoints ("parameterization", "mapper", ...), read safely."""
    ckpt = load_torch_file_omegaconf(Path(path))
    return str(ckpt.get("model_type")) if isinstance(ckpt, Mapping) and "model_type" in ckpt else None


def import_checkpoint(path: str | os.PathLike, prompt: str | None = None,
                      source_prompt: str | None = None) -> Domain:
    """Read a released single-domain checkpoint (``td_*.pt``, ``im2im_*.pt``) as a :class:`Domain`.

    The files do not record the target prompt; pass ``prompt`` (and ``source_prompt`` where the
    generator's default is not wanted) to store them in the domain's metadata. Loading runs no
    pickled code.
    """
    path = Path(path)
    ckpt = load_torch_file_omegaconf(path)  # so a hypernetwork file gets the message below, not a refusal
    if not isinstance(ckpt, Mapping) or "model_type" not in ckpt:
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise HyperdomainError(f"{path}: not a HyperDomainNet checkpoint (no 'model_type'; found {found})")
    model_type = ckpt["model_type"]
    if model_type == "mapper":
        raise HyperdomainError(
            f"{path}: a HyperDomainNet hypernetwork (model_type 'mapper'), not a single domain; "
            f"hypernetwork import is a separate function, hyperdomain.import_hypernet (`hyperdomain import` "
            f"picks it by itself)"
        )
    if model_type not in _SINGLE_DOMAIN_TYPES:
        raise HyperdomainError(
            f"{path}: model_type {model_type!r} is not supported; expected 'parameterization' (a domain vector)"
        )
    patch_key = ckpt.get("patch_key")
    if patch_key != "cin_mult":
        raise HyperdomainError(
            f"{path}: patch_key {patch_key!r} is not supported; only 'cin_mult' (the paper's domain modulation)"
        )
    vector, dims = _domain_from_state(ckpt.get("state_dict"), path)

    sg2 = ckpt.get("sg2_params", ckpt.get("sg_2_params"))
    sg2 = dict(sg2) if isinstance(sg2, Mapping) else {}
    img_size = _int_or_none(sg2.get("img_size"))
    if img_size is not None:
        expected = paper_conv_dims(img_size, _int_or_none(sg2.get("channel_multiplier")) or 2) \
            if img_size in (2**i for i in range(3, 11)) else None
        if expected is not None and dims != expected:
            raise HyperdomainError(
                f"{path}: params_in widths {list(dims)} do not match the {img_size} px generator "
                f"named in sg2_params ({list(expected)})"
            )
    gen_file = sg2.get("checkpoint_path") or sg2.get("ckpt_path")
    gen_name, gen_source_prompt = _generator_name(gen_file)
    da_type = ckpt.get("da_type")
    meta: dict[str, Any] = {
        "source": "paper-checkpoint",
        "imported_from": path.name,
        "prompt": prompt,
        "source_prompt": source_prompt or gen_source_prompt or DEFAULT_SOURCE_PROMPT,
        "generator": gen_name,
        "paper_model_type": str(model_type),
        "paper_patch_key": "cin_mult",
        "paper_da_type": None if da_type is None else str(da_type),
    }
    if img_size is not None:
        meta["resolution"] = img_size
    if sg2:
        meta["paper_sg2_params"] = {str(k): _jsonable(v) for k, v in sg2.items()}
    style = None
    if da_type == "im2im":  # the paper's one-shot results mix the reference's W+ into layers 7 and up
        style, style_from = _style_latents(ckpt.get("style_latents"), len(dims) + 1, path)
        meta.update(mix_from=max(7, style_from), style_latent_from=style_from)
    return Domain(vector, dims, meta, style_latent=style)


def _style_latents(raw: Any, num_ws: int, path: Path) -> tuple[torch.Tensor | None, int]:
    """An im2im checkpoint's ``style_latents`` as W+ ``[num_ws, w_dim]``, and the first layer it
    really holds: the paper stores either every layer or only those from 7 on (the ones its grids
    mix in); missing leading layers repeat the first stored one and are never mixed in."""
    if raw is None:
        log.warning("%s: an im2im checkpoint without style_latents; only its domain vector is imported", path)
        return None, 0
    if not isinstance(raw, torch.Tensor) or raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[0] != 1):
        shape = list(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
        raise HyperdomainError(f"{path}: style_latents has shape {shape}, expected [1, layers, w_dim]")
    lat = raw.detach().float().reshape(-1, raw.shape[-1])
    if lat.shape[0] > num_ws:
        raise HyperdomainError(f"{path}: style_latents has {lat.shape[0]} layers, the generator has {num_ws}")
    start = num_ws - lat.shape[0]
    return torch.cat([lat[:1].expand(start, -1), lat]), start


def _domain_from_state(sd: Any, path: Path) -> tuple[torch.Tensor, tuple[int, ...]]:
    if not isinstance(sd, Mapping) or not sd:
        raise HyperdomainError(f"{path}: 'state_dict' is missing or empty")
    heads: dict[int, torch.Tensor] = {}
    for key, t in sd.items():
        m = _HEAD_KEY.fullmatch(str(key))
        if not m:
            raise HyperdomainError(f"{path}: unexpected state_dict key {key!r} (expected heads.conv_{{k}}.params_in)")
        if not isinstance(t, torch.Tensor) or t.ndim != 5 or tuple(t.shape[:2]) != (1, 1) or tuple(t.shape[3:]) != (1, 1):
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise HyperdomainError(f"{path}: {key} has shape {shape}, expected [1, 1, c_in, 1, 1]")
        heads[int(m.group(1))] = t
    ks = sorted(heads)
    if ks != list(range(len(ks))):
        missing = sorted(set(range(max(ks) + 1)) - set(ks))
        raise HyperdomainError(f"{path}: state_dict lacks heads.conv_{missing[0]}.params_in (convs must be 0..{max(ks)})")
    blocks = [heads[k].detach().float().reshape(-1) for k in ks]  # numeric order: conv_10 after conv_9
    return torch.cat(blocks), tuple(b.numel() for b in blocks)


def _generator_name(gen_file: Any) -> tuple[str | None, str | None]:
    """Map the generator file the paper trained with to a manifest name and its source prompt."""
    if not isinstance(gen_file, str) or not gen_file:
        return None, None
    base = PureWindowsPath(gen_file).name if "\\" in gen_file else PurePosixPath(gen_file).name
    try:
        for name, entry in load_manifest().items():
            if entry.filename == base:
                return name, entry.source_prompt
    except HyperdomainError:  # a broken manifest must not block an import
        pass
    return base, None


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


# --------------------------------------------------------------------------- hypernetworks
_MAPPER_BACKBONE_KEY = re.compile(r"backbone\.backbone\.(\d+)\.")
_MAPPER_HEAD_KEY = re.compile(r"heads\.conv_(\d+)\.(in|out)\.(\d+)\.")
_SUPPORTED_MAPPER = "residual_channelin"


def import_hypernet(path: str | os.PathLike) -> HyperDomainNet:
    """Read the authors' released hypernetwork (``model_type: "mapper"``, e.g. ``mapper_20_td.pt``).

    The file's ``mapper_config`` (a pickled OmegaConf config, read as plain data without OmegaConf)
    names the mapper type; only ``residual_channelin`` with the ``cin_mult`` patch (the paper's
    HyperDomainNet) is supported. Depths and widths are read from the state-dict shapes and must
    agree with the config where it gives them. Returns the network in eval mode on the CPU.
    """
    path = Path(path)
    ckpt = load_torch_file_omegaconf(path)
    if not isinstance(ckpt, Mapping) or "model_type" not in ckpt:
        found = sorted(map(str, ckpt))[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise HyperdomainError(f"{path}: not a HyperDomainNet checkpoint (no 'model_type'; found {found})")
    model_type = ckpt["model_type"]
    if model_type != "mapper":
        single = model_type in ("parameterization", "parametrization")
        hint = " (a single domain: use import_checkpoint)" if single else ""
        raise HyperdomainError(f"{path}: model_type {model_type!r} is not a hypernetwork ('mapper'){hint}")
    patch_key = ckpt.get("patch_key", "cin_mult")
    if patch_key != "cin_mult":
        raise HyperdomainError(
            f"{path}: patch_key {patch_key!r} is not supported; only 'cin_mult' (the paper's domain modulation)")
    mc = ckpt.get("mapper_config")
    mc = dict(mc) if isinstance(mc, Mapping) else {}
    mapper_type = mc.get("mapper_type", _SUPPORTED_MAPPER)
    if mapper_type != _SUPPORTED_MAPPER:
        raise HyperdomainError(
            f"{path}: mapper type {mapper_type!r} is not supported; only {_SUPPORTED_MAPPER!r} (HyperDomainNet)")
    backbone_type = mc.get("backbone_type", "shared")
    if backbone_type != "shared":
        raise HyperdomainError(f"{path}: mapper backbone_type {backbone_type!r} is not supported; only 'shared'")
    activation = mc.get("activation", "relu")
    if activation not in ACTIVATIONS:
        raise HyperdomainError(f"{path}: mapper activation {activation!r} is not supported; only {ACTIVATIONS}")

    sd = ckpt.get("state_dict")
    if not isinstance(sd, Mapping) or not sd:
        raise HyperdomainError(f"{path}: 'state_dict' is missing or empty")
    config = _infer_config(sd, activation, path)
    for key, ours in (("backbone_depth", config.backbone_blocks + 1), ("head_depth", config.head_blocks + 1),
                      ("width", config.width), ("input_dimension", config.input_dim)):
        theirs = _int_or_none(mc.get(key))
        if theirs is not None and theirs != ours:
            raise HyperdomainError(f"{path}: mapper_config {key}={theirs} but the weights have {ours}")

    sg2 = ckpt.get("sg2_params", ckpt.get("sg_2_params"))
    sg2 = dict(sg2) if isinstance(sg2, Mapping) else {}
    img_size = _int_or_none(sg2.get("img_size"))
    if img_size in [2**i for i in range(3, 11)]:
        expected = paper_conv_dims(img_size, _int_or_none(sg2.get("channel_multiplier")) or 2)
        if config.domain_dims != expected:
            raise HyperdomainError(
                f"{path}: head widths {list(config.domain_dims)} do not match the {img_size} px generator "
                f"named in sg2_params ({list(expected)})")
    gen_name, gen_source_prompt = _generator_name(sg2.get("checkpoint_path") or sg2.get("ckpt_path"))
    da_type = ckpt.get("da_type")
    meta: dict[str, Any] = {
        "source": "paper-checkpoint",
        "imported_from": path.name,
        "generator": gen_name,
        "source_prompt": gen_source_prompt or DEFAULT_SOURCE_PROMPT,
        "clip_model": "ViT-B/32",
        "input_clip": None if da_type == "im2im" else "ViT-B-32:openai",
        # the paper feeds unit-normalised ViT-B/32 embeddings: of the bare prompt, or of the style image (im2im)
        "input": "image" if da_type == "im2im" else "text",
        "paper_model_type": "mapper",
        "paper_mapper_type": _SUPPORTED_MAPPER,
        "paper_patch_key": "cin_mult",
        "paper_da_type": None if da_type is None else str(da_type),
    }
    if img_size is not None:
        meta["resolution"] = img_size
    if mc:
        meta["paper_mapper_config"] = {str(k): _jsonable(v) for k, v in mc.items()}
    if da_type == "im2im":
        log.warning("%s: an im2im hypernetwork; its input is a CLIP image embedding, not a text one", path)

    net = HyperDomainNet(config, meta)
    sd = {str(k): v for k, v in sd.items()}
    check_state(net, sd, path)
    net.load_state_dict(sd, strict=True)
    return net.eval()


def _infer_config(sd: Mapping[str, Any], activation: str, path: Path) -> HyperConfig:
    """Depths and widths of a paper mapper from its state-dict keys and shapes."""
    backbone_idx: set[int] = set()
    head_idx: dict[int, set[int]] = {}
    for key in sd:
        key = str(key)
        if m := _MAPPER_BACKBONE_KEY.match(key):
            backbone_idx.add(int(m.group(1)))
        elif m := _MAPPER_HEAD_KEY.match(key):
            if m.group(2) == "out":  # in+out heads: the channelwise_sep mappers
                raise HyperdomainError(
                    f"{path}: has output-channel heads ({key}); only the {_SUPPORTED_MAPPER!r} mapper is supported")
            head_idx.setdefault(int(m.group(1)), set()).add(int(m.group(3)))
        else:
            raise HyperdomainError(f"{path}: unexpected state_dict key {key!r} for a {_SUPPORTED_MAPPER} mapper")
    if 0 not in backbone_idx or not head_idx:
        raise HyperdomainError(f"{path}: state_dict lacks the mapper's backbone or heads")
    ks = sorted(head_idx)
    if ks != list(range(len(ks))):
        missing = sorted(set(range(max(ks) + 1)) - set(ks))[0]
        raise HyperdomainError(f"{path}: state_dict lacks heads.conv_{missing} (convs must be 0..{max(ks)})")
    depths = {max(v) for v in head_idx.values()}
    if len(depths) != 1:
        raise HyperdomainError(f"{path}: the heads have different depths {sorted(depths)}")
    head_blocks = depths.pop()

    def weight(key: str) -> torch.Tensor:
        t = sd.get(key)
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise HyperdomainError(f"{path}: state_dict lacks the 2-D weight {key!r}")
        return t

    width, input_dim = weight("backbone.backbone.0.lin.weight").shape
    if len(backbone_idx) > 1:
        block_width = weight("backbone.backbone.1.input_block.0.weight").shape[0]
    elif head_blocks:
        block_width = weight("heads.conv_0.in.0.input_block.0.weight").shape[0]
    else:
        block_width = HyperConfig.block_width  # no residual block anywhere: the paper's fixed inner width, unused
    dims = tuple(weight(f"heads.conv_{k}.in.{head_blocks}.weight").shape[0] for k in ks)
    return HyperConfig(domain_dims=dims, input_dim=int(input_dim), width=int(width), block_width=int(block_width),
                       backbone_blocks=max(backbone_idx), head_blocks=head_blocks, activation=activation)
