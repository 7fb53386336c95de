"""The translator network: an image-to-image U-Net, ``[N, 3 + noise_channels, S, S] -> [N, 3, S, S]``.

The backbone is segmentation-models-pytorch's ``Unet`` (a kept library: its encoders are
torchvision's and timm's ResNets, EfficientNets, ...; weights are never downloaded here,
``encoder_weights=None``). It is imported when a network is built, never by ``import hyperdomain``.

The output is a residual in ``atanh`` space: ``y = tanh(atanh(x) + u(x, z))`` with the U-Net's
last conv initialised to zero, so a new translator is the identity map (the right start for a
style that keeps the photo's layout) and its output stays in ``(-1, 1)`` with a gradient
everywhere (a clamp of ``x + delta`` would have none where it clamps, and a pixel pushed past
the bound could never come back). ``residual=False`` gives ``y = tanh(u)`` instead.
NOT's stochastic map takes ``noise_channels`` extra input channels of Gaussian noise (0 for
paired and ENOT maps); the residual is on the first three (the image) only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ...errors import HyperdomainError

__all__ = ["TranslatorConfig", "build_translator", "translator_input", "ARCHS", "MAX_SIZE"]

ARCHS = ("unet",)
MAX_SIZE = 4096
MAX_NOISE_CHANNELS = 64
MAX_WIDTH = 2048
_EDGE = 1e-3  # atanh's input is kept in [-1 + _EDGE, 1 - _EDGE]: atanh(0.999) = 3.8


@dataclass(frozen=True)
class TranslatorConfig:
    """What builds a translator network (its file stores it; a loaded file is rebuilt from it).

    ``encoder``: an encoder of segmentation-models-pytorch (``resnet18``, ``resnet34``,
    ``tu-resnet10t``, ``efficientnet-b0``, ...); ``encoder_depth`` downsamplings (3..5), one
    decoder stage each of ``decoder_channels`` widths; ``size``: the side the network works at
    (images are resized to it, a multiple of ``2 ** encoder_depth``).
    """

    arch: str = "unet"
    size: int = 256
    noise_channels: int = 0
    encoder: str = "resnet18"
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16)
    residual: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        ints = {"size": self.size, "noise_channels": self.noise_channels, "encoder_depth": self.encoder_depth}
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise HyperdomainError(f"translator config: {name} must be an integer, got {value!r}")
        if self.arch not in ARCHS:
            raise HyperdomainError(f"translator config: arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if not isinstance(self.encoder, str) or not self.encoder:
            raise HyperdomainError(f"translator config: encoder must be a name, got {self.encoder!r}")
        if not 3 <= self.encoder_depth <= 5:
            raise HyperdomainError(f"translator config: encoder_depth must be in 3..5, got {self.encoder_depth}")
        if len(self.decoder_channels) != self.encoder_depth or not all(
                isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in self.decoder_channels):
            raise HyperdomainError(f"translator config: decoder_channels must be {self.encoder_depth} integers in "
                                   f"1..{MAX_WIDTH} (one per encoder stage), got {list(self.decoder_channels)}")
        step = 2 ** self.encoder_depth
        if not step <= self.size <= MAX_SIZE or self.size % step:
            raise HyperdomainError(f"translator config: size must be a multiple of {step} (2^encoder_depth) in "
                                   f"{step}..{MAX_SIZE}, got {self.size}")
        if not 0 <= self.noise_channels <= MAX_NOISE_CHANNELS:
            raise HyperdomainError(f"translator config: noise_channels must be in 0..{MAX_NOISE_CHANNELS}, "
                                   f"got {self.noise_channels}")
        if not isinstance(self.residual, bool):
            raise HyperdomainError(f"translator config: residual must be true or false, got {self.residual!r}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TranslatorConfig":
        """Inverse of :meth:`as_dict`; unknown keys or wrong types are one line."""
        if not isinstance(d, Mapping):
            raise HyperdomainError(f"translator config must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise HyperdomainError(f"translator config: unknown keys {unknown}")
        channels = d.get("decoder_channels", cls.decoder_channels)
        if not isinstance(channels, (list, tuple)):
            raise HyperdomainError(f"translator config: decoder_channels must be a list, got {channels!r}")
        return cls(**{**d, "decoder_channels": tuple(channels)})


class _Translator(nn.Module):
    """The U-Net and the output rule (a residual in atanh space, or a plain tanh)."""

    def __init__(self, config: TranslatorConfig, unet: nn.Module):
        super().__init__()
        self.config = config
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != 3 + c.noise_channels:
            raise HyperdomainError(f"translator input must be [N, {3 + c.noise_channels}, S, S] (3 image channels"
                                   f" + {c.noise_channels} noise), got {list(x.shape)}")
        u = self.unet(x)
        if not c.residual:
            return torch.tanh(u)
        image = x[:, :3].clamp(-1 + _EDGE, 1 - _EDGE)
        return torch.tanh(torch.atanh(image) + u)


def build_translator(config: TranslatorConfig) -> nn.Module:
    """A new network (random encoder, zero last conv: the identity map when ``residual``)."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise HyperdomainError("translators need segmentation-models-pytorch (pip install "
                               "segmentation-models-pytorch)") from None
    try:
        unet = smp.Unet(encoder_name=config.encoder, encoder_weights=None, encoder_depth=config.encoder_depth,
                        decoder_channels=list(config.decoder_channels), in_channels=3 + config.noise_channels,
                        classes=3, activation=None)
    except (KeyError, ValueError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise HyperdomainError(f"translator config: encoder {config.encoder!r} with depth {config.encoder_depth} "
                               f"cannot be built ({detail})") from None
    head = [m for m in unet.segmentation_head.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return _Translator(config, unet)


def translator_input(images: torch.Tensor, noise_channels: int, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """``images`` with ``noise_channels`` channels of standard normal noise appended (drawn on the CPU
    from ``generator``: the same noise on every device)."""
    if not noise_channels:
        return images
    n, _, h, w = images.shape
    z = torch.randn(n, noise_channels, h, w, generator=generator).to(images.device, images.dtype)
    return torch.cat([images, z], dim=1)
