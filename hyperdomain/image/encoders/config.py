"""What an encoder is: its kind and the few numbers that fix its architecture and inference.

Three kinds, all on the IR-SE50 backbone of pSp (Richardson et al. 2021):

- ``e4e`` (Tov et al. 2021): one pass; heads read an FPN over three backbone maps; W+ is a code
  ``w0`` plus one delta per further layer, added to the average latent (``start_from_latent_avg``).
- ``restyle-psp`` and ``restyle-e4e`` (Alaluf et al. 2021): ``n_iters`` passes over the photo and
  the current reconstruction (6 input channels), each adding a residual to the latent, starting
  from the average latent; heads read the final map (pSp: one code per layer; e4e: ``w0`` + deltas).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ...errors import HyperdomainError

KINDS = ("e4e", "restyle-psp", "restyle-e4e")
W_DIM = 512  # the released heads' width and the generator's style size (config field w_dim)
# The released IR-SE50's stage widths (stage 1's is also the stem's) and units per stage (config
# fields widths, units); each stage's first unit halves the map.
RELEASE_WIDTHS = (64, 128, 256, 512)
RELEASE_UNITS = (3, 4, 14, 3)
SE_REDUCTION = 16  # squeeze-excitation squeezes each width by this factor: widths are multiples of it
PHOTO_CHANNELS = 3
MAX_INPUT_SIZE = 256  # the heads' stride-2 convolutions reduce their maps to 1x1 only up to this input


def a_kind(kind: str) -> str:
    """``"an e4e"``, ``"a restyle-psp"``: a kind in a sentence."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def n_styles_for(resolution: int) -> int:
    """Style layers of a StyleGAN2 generator of ``resolution`` px: ``2 * log2(resolution) - 2`` (18 at 1024)."""
    if resolution < 4 or resolution & (resolution - 1):
        raise HyperdomainError(f"generator resolution {resolution} is not a power of two >= 4")
    return 2 * int(math.log2(resolution)) - 2


@dataclass(frozen=True)
class EncoderConfig:
    """``kind``; ``n_styles`` heads (W+ layers); ``input_nc`` input channels (3 for e4e, photo +
    reconstruction = 6 for ReStyle); ``input_size`` the square side the encoder reads (256 for every
    release); ``n_iters`` ReStyle's default number of passes (1 for e4e); ``start_from_latent_avg``:
    the average latent is added to e4e's output (ReStyle always starts from it).

    The architecture's sizes default to the releases' (every released and saved file names none of
    them): ``w_dim`` the generator's style size (the heads' width), ``widths`` the four backbone
    stages' output widths (the first is also the stem's; the last is what the heads read) and
    ``units`` the residual units per stage. Smaller ones make an encoder for a small generator
    (``widths=(16, 16, 32, 32), units=(1, 1, 1, 1), w_dim=32``: a few hundred thousand parameters)."""

    kind: str
    n_styles: int = 18
    input_nc: int = 3
    input_size: int = 256
    n_iters: int = 1
    start_from_latent_avg: bool = True
    w_dim: int = W_DIM
    widths: tuple[int, ...] = RELEASE_WIDTHS
    units: tuple[int, ...] = RELEASE_UNITS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HyperdomainError(f"encoder kind {self.kind!r} is not one of {list(KINDS)}")
        for name in ("n_styles", "input_nc", "input_size", "n_iters", "w_dim"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise HyperdomainError(f"encoder config {name}={v!r}: expected a positive integer")
        for name in ("widths", "units"):  # a file's JSON gives lists
            v = getattr(self, name)
            if isinstance(v, (list, tuple)):
                object.__setattr__(self, name, tuple(v))
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 4 or any(type(x) is not int or x < 1 for x in v):
                raise HyperdomainError(f"encoder config {name}={v!r}: expected 4 positive integers, one per "
                                       f"backbone stage")
        if any(x % SE_REDUCTION for x in self.widths):
            raise HyperdomainError(f"encoder config widths={list(self.widths)}: expected multiples of "
                                   f"{SE_REDUCTION} (squeeze-excitation divides each by it)")
        if type(self.start_from_latent_avg) is not bool:
            raise HyperdomainError(f"encoder config start_from_latent_avg={self.start_from_latent_avg!r}: "
                                   f"expected true or false")
        if self.input_size % 16 or self.input_size > MAX_INPUT_SIZE:
            raise HyperdomainError(f"encoder config input_size={self.input_size}: expected a multiple of 16 up to "
                                   f"{MAX_INPUT_SIZE} (the backbone halves it 4 times, the heads reduce the rest to 1x1)")
        if self.iterative:
            if self.input_nc != 2 * PHOTO_CHANNELS:
                raise HyperdomainError(f"a {self.kind} encoder reads photo and reconstruction together: input_nc "
                                       f"must be {2 * PHOTO_CHANNELS}, not {self.input_nc}")
            if not self.start_from_latent_avg:
                raise HyperdomainError(f"a {self.kind} encoder starts from the average latent "
                                       f"(start_from_latent_avg must be true)")
        else:
            if self.input_nc != PHOTO_CHANNELS:
                raise HyperdomainError(f"an e4e encoder reads a photo alone: input_nc must be {PHOTO_CHANNELS}, "
                                       f"not {self.input_nc}")
            if self.n_iters != 1:
                raise HyperdomainError(f"an e4e encoder makes one pass: n_iters must be 1, not {self.n_iters}")

    @property
    def iterative(self) -> bool:
        """ReStyle: several passes, each reading the current reconstruction."""
        return self.kind.startswith("restyle-")

    @property
    def progressive(self) -> bool:
        """e4e's heads: a code ``w0`` from the first head plus one delta per further layer."""
        return self.kind in ("e4e", "restyle-e4e")

    @property
    def needs_latent_avg(self) -> bool:
        return self.iterative or self.start_from_latent_avg

    @property
    def is_release_architecture(self) -> bool:
        """Sizes as every released model's (IR-SE50, 512-wide heads)."""
        return (self.w_dim, self.widths, self.units) == (W_DIM, RELEASE_WIDTHS, RELEASE_UNITS)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "encoder config") -> "EncoderConfig":
        """From a plain dict (a file's metadata), every field named and checked; one line otherwise."""
        if not isinstance(d, Mapping):
            raise HyperdomainError(f"{where}: expected an object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HyperdomainError(f"{where}: unknown field {unknown[0]!r} (known: {sorted(known)})")
        if "kind" not in d:
            raise HyperdomainError(f"{where}: no 'kind'")
        try:
            return cls(**d)
        except HyperdomainError as e:
            raise HyperdomainError(f"{where}: {e}") from None


def default_config(kind: str, resolution: int = 1024, input_size: int = 256) -> EncoderConfig:
    """The released models' settings for a generator of ``resolution`` px (ReStyle: 5 passes)."""
    iterative = kind.startswith("restyle-")
    return EncoderConfig(kind=kind, n_styles=n_styles_for(resolution), input_size=input_size,
                         input_nc=2 * PHOTO_CHANNELS if iterative else PHOTO_CHANNELS,
                         n_iters=5 if iterative else 1, start_from_latent_avg=True)
