"""Generator configuration: plain data, read from a checkpoint's tensor shapes."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from .errors import HyperdomainError


@dataclass(frozen=True)
class GeneratorConfig:
    """A StyleGAN2 generator in the common PyTorch port's layout.

    ``channels[i]`` is the width at resolution ``4 * 2**i`` (4, 8, ..., ``resolution``).
    ``lr_mlp`` is the mapping network's learning-rate multiplier (0.01 in every public
    checkpoint; it cannot be read from the weights). ``conv_clamp`` clamps each layer's output
    as NVIDIA's networks do (``None``: no clamp, as in the port).
    """

    resolution: int
    style_dim: int
    n_mlp: int
    channels: tuple[int, ...]
    lr_mlp: float = 0.01
    conv_clamp: float | None = None

    def __post_init__(self) -> None:
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise HyperdomainError(f"generator resolution must be a power of two >= 4, got {r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if len(self.channels) != self.log_size - 1:
            raise HyperdomainError(
                f"generator of resolution {r} needs {self.log_size - 1} channel widths "
                f"(4 px to {r} px), got {len(self.channels)}"
            )
        if self.style_dim < 1 or self.n_mlp < 1 or min(self.channels) < 1:
            raise HyperdomainError(f"invalid generator config {self}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def num_ws(self) -> int:
        """Number of W vectors the synthesis network takes (18 at 1024 px)."""
        return self.log_size * 2 - 2

    @property
    def num_convs(self) -> int:
        """Modulated 3x3 convs: ``conv1`` then two per resolution above 4 px."""
        return 1 + 2 * (self.log_size - 2)

    @property
    def domain_dims(self) -> tuple[int, ...]:
        """Input width of each modulated conv, in order ``conv1``, ``convs[0]``, ``convs[1]``, ..."""
        dims = [self.channels[0]]
        for i in range(1, len(self.channels)):
            dims += [self.channels[i - 1], self.channels[i]]
        return tuple(dims)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        known = {"resolution", "style_dim", "n_mlp", "channels", "lr_mlp", "conv_clamp"}
        unknown = set(d) - known
        if unknown:
            raise HyperdomainError(f"unknown generator config keys {sorted(unknown)}")
        return cls(**{**d, "channels": tuple(d["channels"])})


def port_channels(resolution: int, channel_multiplier: int = 2) -> tuple[int, ...]:
    """The port's default widths (config-f has ``channel_multiplier=2``); for random test models."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    out = []
    r = 4
    while r <= resolution:
        out.append(widths[r] * (channel_multiplier if r >= 64 else 1))
        r *= 2
    return tuple(out)
