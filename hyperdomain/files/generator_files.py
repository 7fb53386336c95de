"""Generator checkpoints of every supported format, read into one normal form.

The normal form is ``{"g_ema": state_dict, "latent_avg": Tensor | None, "conv_clamp": float | None}``
where ``state_dict`` uses the common PyTorch port's keys (``style.1.weight``, ``input.input``,
``conv1.conv.weight``, ``convs.{i}...``, ``to_rgbs.{j}...``, ``noises.noise_{k}``).

Supported: the port's checkpoints (``{"g_ema": ..., "latent_avg"?}``; full training checkpoints
with ``g``/``d``/``g_ema``; bare port state dicts) and NVIDIA's StyleGAN2-ADA / StyleGAN3-code-base
network pickles of StyleGAN2 generators (``G_ema`` is used), and our own generator file
(safetensors, format ``hyperdomain.generator``: the port's keys, ``latent_avg`` when known; written
by :func:`write_generator_file`, e.g. the decoder of an imported encoder release). Nothing is
unpickled beyond tensors and plain data (see :mod:`hyperdomain.files.restricted_unpickler`).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from stylegan2_ops import blur_kernel

from ..errors import HyperdomainError
from .restricted_unpickler import PERSISTENT_CLASS_KEY, load_nvidia_pickle, load_torch_file, sniff
from .safetensors_files import GENERATOR, read_own_file, write_own_file

__all__ = ["read_generator_file", "write_generator_file", "from_port", "nvidia_to_port", "flatten_nvidia_state"]

GENERATOR_FORMAT_VERSION = 1

# Keys every port generator state dict has; used to recognise one.
_PORT_MARKERS = ("input.input", "conv1.conv.weight", "style.1.weight")


def read_generator_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a generator checkpoint of any supported format into the normal form (see module doc)."""
    path = Path(path)
    if _is_safetensors(path):
        return _from_own_file(path)
    kind = sniff(path)
    if kind == "pickle":
        return _from_nvidia(load_nvidia_pickle(path), path)
    return from_port(load_torch_file(path), path)


def write_generator_file(path: str | os.PathLike, state: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None,
                         meta: Mapping[str, str], conv_clamp: float | None = None) -> Path:
    """Our generator file: ``state`` (the port's keys), ``latent_avg`` ``[w_dim]`` when known, ``meta``."""
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
    if latent_avg is not None:
        tensors["latent_avg"] = latent_avg.detach().cpu().float().reshape(-1).contiguous()
    meta = {**meta, **({"conv_clamp": repr(float(conv_clamp))} if conv_clamp is not None else {})}
    return write_own_file(Path(path), GENERATOR, GENERATOR_FORMAT_VERSION, tensors, meta)


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(9)[8:9] == b"{"
    except OSError:
        return False  # sniff names the problem


def _from_own_file(path: Path) -> dict[str, Any]:
    header, tensors = read_own_file(path, GENERATOR, GENERATOR_FORMAT_VERSION, "generator file")
    try:
        clamp = float(header["conv_clamp"]) if "conv_clamp" in header else None
    except ValueError:
        raise HyperdomainError(f"{path}: generator file conv_clamp {header['conv_clamp']!r} is not a number") from None
    latent_avg = tensors.pop("latent_avg", None)
    missing = [k for k in _PORT_MARKERS if k not in tensors]
    if missing:
        raise HyperdomainError(f"{path}: generator file lacks tensor {missing[0]!r}")
    return {"g_ema": tensors, "latent_avg": latent_avg, "conv_clamp": clamp}


# --------------------------------------------------------------------------- port checkpoints
def from_port(obj: Any, path: Path) -> dict[str, Any]:
    """An unpickled port checkpoint (``{"g_ema": ..., "latent_avg"?}`` or a bare state dict) in the normal form."""
    if isinstance(obj, Mapping) and "g_ema" in obj:
        sd, latent_avg = obj["g_ema"], obj.get("latent_avg")
    elif isinstance(obj, Mapping) and all(k in obj for k in _PORT_MARKERS):
        sd, latent_avg = obj, None
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise HyperdomainError(
            f"{path}: not a StyleGAN2 generator checkpoint (expected a dict with 'g_ema' or the PyTorch "
            f"port's state-dict keys such as 'input.input'; found {keys})"
        )
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise HyperdomainError(f"{path}: 'g_ema' is not a state dict of tensors")
    missing = [k for k in _PORT_MARKERS if k not in sd]
    if missing:
        raise HyperdomainError(f"{path}: 'g_ema' is not a StyleGAN2 generator in the port's format (no {missing[0]!r})")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor):
            raise HyperdomainError(f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, expected a tensor")
        latent_avg = latent_avg.detach().float().reshape(-1)  # [1, D] in some files, [D] in others
    return {"g_ema": {str(k): v.detach() for k, v in sd.items()}, "latent_avg": latent_avg, "conv_clamp": None}


# --------------------------------------------------------------------------- NVIDIA pickles
def _is_net(obj: Any) -> bool:
    return isinstance(obj, dict) and PERSISTENT_CLASS_KEY in obj and "_modules" in obj


def _from_nvidia(obj: Any, path: Path) -> dict[str, Any]:
    if isinstance(obj, dict) and "G_ema" in obj:
        G = obj["G_ema"]
    elif _is_net(obj):  # a pickle of the generator alone
        G = obj
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise HyperdomainError(f"{path}: not an NVIDIA network snapshot (no 'G_ema'; found {keys})")
    if not _is_net(G):
        raise HyperdomainError(f"{path}: 'G_ema' is not a pickled network")
    try:
        return nvidia_to_port(G)
    except HyperdomainError as e:
        raise HyperdomainError(f"{path}: {e}") from None


def flatten_nvidia_state(net: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """``{"mapping.fc0.weight": tensor, ...}``: every parameter and buffer of a reconstructed network."""
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for k, v in net.get(group, {}).items():
            if v is not None:
                out[prefix + k] = v
    for name, child in net.get("_modules", {}).items():
        if child is None:
            continue
        if not _is_net(child):
            raise HyperdomainError(f"sub-network {prefix + name} is not a pickled network state")
        out.update(flatten_nvidia_state(child, prefix + name + "."))
    return out


class _Consumer:
    """Takes tensors out of a flat NVIDIA state, asserting each key and shape."""

    def __init__(self, flat: dict[str, torch.Tensor]) -> None:
        self.flat = dict(flat)

    def take(self, key: str, shape: tuple[int | None, ...]) -> torch.Tensor:
        if key not in self.flat:
            raise HyperdomainError(f"NVIDIA network has no {key!r}")
        t = self.flat.pop(key)
        ok = t.ndim == len(shape) and all(e is None or e == s for e, s in zip(shape, t.shape))
        if not ok:
            exp = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
            raise HyperdomainError(f"NVIDIA {key} has shape {list(t.shape)}, expected {exp}")
        return t.detach().float()


def _kwarg(G: Mapping[str, Any], name: str) -> Any:
    kw = G.get("init_kwargs", {})
    if name in kw:
        return kw[name]
    for sub in ("synthesis_kwargs", "mapping_kwargs"):
        if isinstance(kw.get(sub), Mapping) and name in kw[sub]:
            return kw[sub][name]
    return None


def nvidia_to_port(G: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a reconstructed NVIDIA StyleGAN2 ``Generator`` state into the normal form.

    Consumes every NVIDIA tensor (asserting keys and shapes) and refuses any left over:
    ``mapping.fc{i}`` -> ``style.{i+1}``; ``b4.const`` -> ``input.input``; ``b4.conv1`` -> ``conv1``;
    ``b4.torgb`` -> ``to_rgb1``; ``b{res}.conv0/conv1`` -> ``convs.{2j}/{2j+1}``; ``b{res}.torgb``
    -> ``to_rgbs.{j}``; ``noise_const`` -> ``noises.noise_{k}``; ``mapping.w_avg`` -> ``latent_avg``.
    Resample filters are checked to be the standard [1,3,3,1] one and rebuilt as the port's kernels.
    """
    if G.get(PERSISTENT_CLASS_KEY) != "Generator":
        raise HyperdomainError(f"network class is {G.get(PERSISTENT_CLASS_KEY)!r}, expected 'Generator'")
    c_dim = _kwarg(G, "c_dim")
    if c_dim:
        raise HyperdomainError(f"conditional generator (c_dim={c_dim}) is not supported; only unconditional StyleGAN2")
    mods = G.get("_modules", {})
    if "mapping" not in mods or "synthesis" not in mods:
        raise HyperdomainError(f"generator has sub-networks {sorted(mods)}, expected 'mapping' and 'synthesis'")
    blocks = list(mods["synthesis"].get("_modules", {}))
    if not blocks or not all(re.fullmatch(r"b\d+", b) for b in blocks):
        odd = [b for b in blocks if not re.fullmatch(r"b\d+", b)][:3]
        raise HyperdomainError(
            f"not a StyleGAN2 network: its synthesis has layers {odd} (e.g. StyleGAN3), not only b4, b8, ..."
        )
    if "embed" in mods["mapping"].get("_modules", {}):
        raise HyperdomainError("conditional generator (mapping has a label embedding) is not supported")

    src = _Consumer(flatten_nvidia_state(G))
    sd: dict[str, torch.Tensor] = {}

    # ---- mapping: fc{i} -> style.{i+1}; the port's MLP is square (z_dim == w_dim)
    n_fc = 0
    while f"mapping.fc{n_fc}.weight" in src.flat:
        n_fc += 1
    if n_fc == 0:
        raise HyperdomainError("NVIDIA network has no 'mapping.fc0.weight'")
    w_dim = src.flat[f"mapping.fc{n_fc - 1}.weight"].shape[0]
    for i in range(n_fc):
        sd[f"style.{i + 1}.weight"] = src.take(f"mapping.fc{i}.weight", (w_dim, w_dim))
        sd[f"style.{i + 1}.bias"] = src.take(f"mapping.fc{i}.bias", (w_dim,))
    latent_avg = src.take("mapping.w_avg", (w_dim,))

    # ---- synthesis
    resolutions = sorted(int(b[1:]) for b in blocks)
    expected = [4 * 2**i for i in range(len(resolutions))]
    if resolutions != expected:
        raise HyperdomainError(f"synthesis blocks are at {resolutions}, expected {expected}")
    filt = blur_kernel(1)
    noise_k = 0

    def layer(nv: str, port: str, c_in: int, res: int, up: bool) -> int:
        nonlocal noise_k
        w = src.take(f"{nv}.weight", (None, c_in, 3, 3))
        c_out = w.shape[0]
        sd[f"{port}.conv.weight"] = w[None]
        sd[f"{port}.conv.modulation.weight"] = src.take(f"{nv}.affine.weight", (c_in, w_dim))
        sd[f"{port}.conv.modulation.bias"] = src.take(f"{nv}.affine.bias", (c_in,))
        if up:
            sd[f"{port}.conv.blur.kernel"] = blur_kernel(2)
        sd[f"{port}.noise.weight"] = src.take(f"{nv}.noise_strength", ()).reshape(1)
        sd[f"{port}.activate.bias"] = src.take(f"{nv}.bias", (c_out,))
        sd[f"noises.noise_{noise_k}"] = src.take(f"{nv}.noise_const", (res, res))[None, None]
        noise_k += 1
        _check_filter(src.take(f"{nv}.resample_filter", (4, 4)), filt, nv)
        return c_out

    def torgb(nv: str, port: str, c_in: int, up: bool) -> None:
        sd[f"{port}.conv.weight"] = src.take(f"{nv}.weight", (3, c_in, 1, 1))[None]
        sd[f"{port}.conv.modulation.weight"] = src.take(f"{nv}.affine.weight", (c_in, w_dim))
        sd[f"{port}.conv.modulation.bias"] = src.take(f"{nv}.affine.bias", (c_in,))
        sd[f"{port}.bias"] = src.take(f"{nv}.bias", (3,)).reshape(1, 3, 1, 1)
        if up:
            sd[f"{port}.upsample.kernel"] = blur_kernel(2)

    const = src.take("synthesis.b4.const", (None, 4, 4))
    sd["input.input"] = const[None]
    c = layer("synthesis.b4.conv1", "conv1", const.shape[0], 4, up=False)
    torgb("synthesis.b4.torgb", "to_rgb1", c, up=False)
    _check_filter(src.take("synthesis.b4.resample_filter", (4, 4)), filt, "synthesis.b4")
    for j, res in enumerate(resolutions[1:]):
        b = f"synthesis.b{res}"
        c = layer(f"{b}.conv0", f"convs.{2 * j}", c, res, up=True)
        c = layer(f"{b}.conv1", f"convs.{2 * j + 1}", c, res, up=False)
        torgb(f"{b}.torgb", f"to_rgbs.{j}", c, up=True)
        _check_filter(src.take(f"{b}.resample_filter", (4, 4)), filt, b)

    if src.flat:
        left = sorted(src.flat)
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        raise HyperdomainError(f"NVIDIA network has tensors with no counterpart in the port: {left[:5]}{more}")

    clamp = _kwarg(G, "conv_clamp")
    return {"g_ema": sd, "latent_avg": latent_avg, "conv_clamp": None if clamp is None else float(clamp)}


def _check_filter(f: torch.Tensor, expected: torch.Tensor, where: str) -> None:
    # The port hard-codes the [1,3,3,1] filter; a network trained with another cannot be represented.
    if not torch.allclose(f, expected, atol=1e-6):
        raise HyperdomainError(f"NVIDIA {where}.resample_filter is not the standard [1,3,3,1] filter")
