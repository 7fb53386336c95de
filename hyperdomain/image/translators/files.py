"""Translator files: the network's tensors and what it is (config, method, generator, domain); no pickles.

A ``.safetensors`` file of format ``hyperdomain.translator``: tensors ``net.<name>`` (the network's
floating-point state, BatchNorm statistics included) and metadata ``config`` (a
:class:`TranslatorConfig`), ``method`` (``paired``, ``not``, ``enot``), ``generator``
(name, fingerprint, resolution: what the training images came from), ``domain`` (its digest, name
and prompt) and ``meta`` (how it was trained). Loading rebuilds the network from the config and
checks every tensor's name, shape and finiteness against it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import HyperdomainError
from ...files.safetensors_files import TRANSLATOR, check_format, float32_tensor, json_field, read_safetensors, write_own_file
from .network import TranslatorConfig, build_translator, translator_input

__all__ = ["Translator", "save_translator", "load_translator", "TRANSLATOR", "FORMAT_VERSION", "METHODS"]

FORMAT_VERSION = 1
METHODS = ("paired", "not", "enot")
WHAT = "translator file"


class Translator:
    """``translator(images)``: images ``[N, 3, H, W]`` in ``[-1, 1]`` -> ``[N, 3, S, S]`` in the domain.

    Inputs are resized to the network's side ``S`` (``config.size``); batches run in eval mode
    without grad. A stochastic map (NOT: ``config.noise_channels > 0``) draws its noise from
    ``generator`` or ``seed`` (seed 0 when neither is given: the same photo gives the same result).
    """

    def __init__(self, net: nn.Module, config: TranslatorConfig, method: str,
                 meta: Mapping[str, Any] | None = None, generator: Mapping[str, Any] | None = None,
                 domain: Mapping[str, Any] | None = None):
        self.net, self.config, self.method = net.eval(), config, method
        self.meta = dict(meta or {})
        self.generator = dict(generator or {})  # name, fingerprint, resolution of the generator it was trained on
        self.domain = dict(domain or {})  # digest, name, prompt

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> "Translator":
        self.net.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, *, seed: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise HyperdomainError(f"translator: images must be [N, 3, H, W], got {list(images.shape)}")
        x = resize(images.to(self.device, torch.float32), self.config.size)
        if generator is None and self.config.noise_channels:
            generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.net.eval()
        return self.net(translator_input(x, self.config.noise_channels, generator)).clamp(-1, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square images to ``size`` (bicubic, antialiased when shrinking), kept in ``[-1, 1]``."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def save_translator(path: str | os.PathLike, net_or_translator: nn.Module | Translator, config: TranslatorConfig,
                    method: str, generator_fingerprint: str | Mapping[str, Any], domain_digest: str | Mapping[str, Any],
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write a translator file atomically. ``generator_fingerprint``: the fingerprint, or a mapping with
    ``fingerprint`` (and ``name``, ``resolution``); ``domain_digest``: the digest, or a mapping with
    ``digest`` (and ``name``, ``prompt``)."""
    if method not in METHODS:
        raise HyperdomainError(f"translator method must be one of {', '.join(METHODS)}, got {method!r}")
    net = net_or_translator.net if isinstance(net_or_translator, Translator) else net_or_translator
    generator = (dict(generator_fingerprint) if isinstance(generator_fingerprint, Mapping)
                 else {"fingerprint": generator_fingerprint})
    domain = dict(domain_digest) if isinstance(domain_digest, Mapping) else {"digest": domain_digest}
    for what, d, key in (("generator", generator, "fingerprint"), ("domain", domain, "digest")):
        if not isinstance(d.get(key), str) or not d[key]:
            raise HyperdomainError(f"save_translator: the {what}'s {key} must be a non-empty string, got {d.get(key)!r}")
    tensors = {f"net.{k}": v.detach().to("cpu", torch.float32).contiguous()
               for k, v in net.state_dict().items() if v.is_floating_point()}
    metadata = {"config": json.dumps(config.as_dict()), "method": method,
                "generator": json.dumps(generator, sort_keys=True), "domain": json.dumps(domain, sort_keys=True),
                "meta": json.dumps(dict(meta or {}), sort_keys=True)}
    return write_own_file(Path(path), TRANSLATOR, FORMAT_VERSION, tensors, metadata)


def load_translator(path: str | os.PathLike, generator: Any = None, device: str | torch.device = "cpu",
                    check: bool = True) -> Translator:
    """Read a translator file; with ``generator`` (a loaded Generator), refuse a translator trained on
    another generator's images (unless ``check=False``). Every problem is one line naming the file."""
    path = Path(path)
    header, keys = read_safetensors(path, WHAT, load=False)
    check_format(path, header, TRANSLATOR, FORMAT_VERSION, WHAT)
    config_dict = json_field(path, header, "config", dict, WHAT)
    try:
        config = TranslatorConfig.from_dict(config_dict)
    except HyperdomainError as e:
        raise HyperdomainError(f"{path}: {e}") from None
    except TypeError as e:
        raise HyperdomainError(f"{path}: translator config does not fit ({e})") from None
    method = header.get("method")
    if method not in METHODS:
        raise HyperdomainError(f"{path}: translator method must be one of {', '.join(METHODS)}, got {method!r}")
    trained_on = json_field(path, header, "generator", dict, WHAT)
    domain = json_field(path, header, "domain", dict, WHAT)
    meta = {**json_field(path, header, "meta", dict, WHAT, default={}), "file": str(path)}
    if generator is not None and check and trained_on.get("fingerprint") != generator.fingerprint:
        raise HyperdomainError(
            f"{path}: the translator was trained on generator {trained_on.get('name', '?')!r} (fingerprint "
            f"{trained_on.get('fingerprint')}), not on {generator.name!r} (fingerprint {generator.fingerprint}); "
            f"skip this check to use it anyway (check=False, --no-check)")
    net = build_translator(config)
    expected = {f"net.{k}": v for k, v in net.state_dict().items() if v.is_floating_point()}
    missing, extra = sorted(set(expected) - set(keys)), sorted(set(keys) - set(expected))
    if missing or extra:
        what = f"lacks {missing[:3]}" if missing else f"holds tensors its config does not make: {extra[:3]}"
        raise HyperdomainError(f"{path}: the network {what} (the file does not fit its own config)")
    tensors = read_safetensors(path, WHAT)[1]
    state = {}
    for name, want in expected.items():
        t = float32_tensor(path, name, tensors[name], WHAT)
        if t.shape != want.shape:
            raise HyperdomainError(f"{path}: {WHAT} tensor {name!r} has shape {list(t.shape)}, the config makes "
                                   f"{list(want.shape)}")
        state[name[4:]] = t
    net.load_state_dict(state, strict=False)  # only the integer BatchNorm step counters are not stored
    return Translator(net.to(device), config, method, meta, trained_on, domain)
