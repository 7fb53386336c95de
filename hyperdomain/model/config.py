"""Generator configuration: plain data, read from a checkpoint's tensor shapes."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import HyperdomainError

# The source domain of a generator that names none (the manifest gives each known generator its
# own: "Photo of a cat", ...): what the target prompts are contrasted with.
DEFAULT_SOURCE_PROMPT = "Photo"


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
        return config_to_dict(self, "channels")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        return config_from_dict(cls, d, "generator", "channels")


def config_to_dict(config: Any, tuple_field: str) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict (its one tuple field as a list)."""
    d = asdict(config)
    d[tuple_field] = list(d[tuple_field])
    return d


def check_config_keys(cls: type, d: Mapping[str, Any], what: str) -> None:
    """Refuses keys that are not fields of the config dataclass ``cls``, by name."""
    unknown = set(d) - set(cls.__dataclass_fields__)
    if unknown:
        raise HyperdomainError(f"unknown {what} config keys {sorted(unknown)}")


def config_from_dict(cls: type, d: Mapping[str, Any], what: str, tuple_field: str) -> Any:
    """The inverse of ``config_to_dict``; unknown keys or a missing ``tuple_field`` are errors
    that name the ``what`` config."""
    check_config_keys(cls, d, what)
    if tuple_field not in d:
        raise HyperdomainError(f"{what} config lacks {tuple_field!r}")
    return cls(**{**d, tuple_field: tuple(d[tuple_field])})


def port_channels(resolution: int, channel_multiplier: int = 2) -> tuple[int, ...]:
    """The port's default widths (config-f has ``channel_multiplier=2``); for random test models."""
    widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    out = []
    r = 4
    while r <= resolution:
        out.append(widths[r] * (channel_multiplier if r >= 64 else 1))
        r *= 2
    return tuple(out)
