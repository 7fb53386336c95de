"""Every tensor of an encoder checked against the architecture its config names: one line per problem."""
from __future__ import annotations

from typing import Mapping

import torch

from ...errors import HyperdomainError
from .config import EncoderConfig, a_kind
from .networks import build_network


def expected_tensors(config: EncoderConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of the network's state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = build_network(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def count_nonfinite(t: torch.Tensor) -> int:
    """NaN and inf entries of a floating tensor; the common all-finite case costs one pass and no copy
    (min and max propagate NaN and reach any inf)."""
    if t.numel() == 0:
        return 0
    lo, hi = torch.aminmax(t)
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return 0
    return int((~torch.isfinite(t)).sum())


def _shape(s) -> str:
    return "[" + ", ".join(map(str, s)) + "]"


def check_encoder_state(state: Mapping[str, object], config: EncoderConfig, where: str,
                        prefix: str = "") -> dict[str, torch.Tensor]:
    """``state`` (names without ``prefix``) as the network of ``config`` needs it, or one line naming the
    first missing, unexpected, misshapen or non-finite tensor (as ``prefix + name``, the file's key).

    Floating tensors come back as float32 (the file's own tensors when they are float32: no copy);
    BatchNorm's ``num_batches_tracked`` counters stay integers.
    """
    expected = expected_tensors(config)
    arch = f"{a_kind(config.kind)} encoder with {config.n_styles} style layers and {config.input_nc} input channels"
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise HyperdomainError(f"{where}: no tensor {prefix + missing[0]!r}{more}, which {arch} has")
    extra = [k for k in state if k not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise HyperdomainError(f"{where}: unexpected tensor {prefix + str(extra[0])!r}{more}, which {arch} does not have")
    out: dict[str, torch.Tensor] = {}
    for k, (shape, dtype) in expected.items():
        t, name = state[k], prefix + k
        if not isinstance(t, torch.Tensor):
            raise HyperdomainError(f"{where}: {name!r} is a {type(t).__name__}, expected a tensor")
        if tuple(t.shape) != shape:
            raise HyperdomainError(f"{where}: tensor {name!r} has shape {_shape(t.shape)}, expected {_shape(shape)} "
                                   f"for {arch}")
        if dtype.is_floating_point:
            if not t.is_floating_point():
                raise HyperdomainError(f"{where}: tensor {name!r} is {str(t.dtype).replace('torch.', '')}, "
                                       f"expected floating point")
            t = t.detach().to(torch.float32)
            bad = count_nonfinite(t)
            if bad:
                raise HyperdomainError(f"{where}: tensor {name!r} holds {bad} non-finite numbers (NaN or inf)")
        elif t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise HyperdomainError(f"{where}: tensor {name!r} is {str(t.dtype).replace('torch.', '')}, "
                                   f"expected an integer counter")
        else:
            t = t.detach().to(dtype)
        out[k] = t
    return out


def check_latent_avg(t: object, config: EncoderConfig, where: str, name: str = "latent_avg") -> torch.Tensor:
    """The average latent as float32 ``[n_styles, w_dim]``: given so, or as one ``[w_dim]`` / ``[1, w_dim]``
    code (repeated, as the official code does when it reads a generator's), or one line."""
    if not isinstance(t, torch.Tensor):
        raise HyperdomainError(f"{where}: {name!r} is a {type(t).__name__}, expected a tensor")
    if not t.is_floating_point():
        raise HyperdomainError(f"{where}: {name!r} is {str(t.dtype).replace('torch.', '')}, expected floating point")
    shape, d = tuple(t.shape), config.w_dim
    if shape in ((d,), (1, d)):
        t = t.reshape(1, d).repeat(config.n_styles, 1)
    elif shape not in ((config.n_styles, d), (1, config.n_styles, d)):
        raise HyperdomainError(f"{where}: {name!r} has shape {_shape(shape)}, expected "
                               f"[{config.n_styles}, {d}] (one code per style layer) or [{d}]")
    t = t.detach().to(torch.float32).reshape(config.n_styles, d)
    bad = count_nonfinite(t)
    if bad:
        raise HyperdomainError(f"{where}: {name!r} holds {bad} non-finite numbers (NaN or inf)")
    return t.contiguous()
