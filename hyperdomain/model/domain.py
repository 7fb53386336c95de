"""A domain: one flat vector of per-conv input-channel multipliers, plus what made it.

The vector ``d`` concatenates one block per modulated conv (``conv1``, ``convs[0]``, ...), block
``k`` of length ``c_in(k)``. The generator multiplies conv ``k``'s demodulated weight by
``(1 + d_k)`` along the input axis, so ``d = 0`` is the source domain.

A domain learnt from a reference image (one-shot) may also carry that image's W+ latent
(``style_latent``): the paper's one-shot results take the fine layers (7 and up) from it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..errors import HyperdomainError
from .compatibility import check_fits
from ..files.safetensors_files import DOMAIN, check_format, float32_tensor, json_field, read_safetensors, write_own_file

if TYPE_CHECKING:  # pragma: no cover
    from .generator import Generator

FORMAT_VERSION = 2  # 2: may carry a style latent (a second tensor); files without one are still written as 1


@dataclass
class Domain:
    """A domain vector ``(D,)`` float32 with its per-conv split ``dims`` and metadata ``meta``.

    ``meta`` is a plain JSON-able dict (prompts, generator name and fingerprint, CLIP models,
    losses, iterations, seed, ...).
    """

    vector: torch.Tensor
    dims: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    style_latent: torch.Tensor | None = None  # W+ [num_ws, w_dim] of a one-shot domain's reference image

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector)
        if v.ndim != 1:
            raise HyperdomainError(f"domain vector must be 1-D, got shape {list(v.shape)}")
        self.vector = v.detach().to(dtype=torch.float32)
        if self.style_latent is not None:
            sl = torch.as_tensor(self.style_latent).detach().to("cpu", torch.float32)
            if sl.ndim != 2:
                raise HyperdomainError(f"a style latent is W+ [num_ws, w_dim], got shape {list(sl.shape)}")
            self.style_latent = sl
        self.dims = tuple(int(d) for d in self.dims)
        if sum(self.dims) != v.numel():
            raise HyperdomainError(
                f"domain vector has {v.numel()} numbers but its per-conv dims sum to {sum(self.dims)}"
            )

    # ----------------------------------------------------------------- construction
    @classmethod
    def zeros(cls, G: "Generator", **meta: Any) -> "Domain":
        """The source domain of ``G`` (all multipliers one)."""
        return cls(torch.zeros(G.num_domain_params), G.domain_dims, {**generator_meta(G), **meta})

    def __len__(self) -> int:
        return self.vector.numel()

    def blocks(self) -> list[torch.Tensor]:
        """The per-conv pieces ``d_k`` (views of ``vector``)."""
        return list(torch.split(self.vector, list(self.dims)))

    # ----------------------------------------------------------------- arithmetic
    def scaled(self, strength: float) -> "Domain":
        """``strength * d``: 0 is the source domain, 1 this domain, >1 exaggerates it."""
        return Domain(self.vector * float(strength), self.dims, {**self.meta, "strength": float(strength)},
                      self.style_latent)

    def lerp(self, other: "Domain", t: float) -> "Domain":
        """Linear interpolation ``(1 - t) * self + t * other``."""
        return mix([self, other], [1.0 - float(t), float(t)])

    # ----------------------------------------------------------------- checks
    def check_compatible(self, G: "Generator", fingerprint: bool = True) -> None:
        """Raise a one-line error when this domain does not fit ``G``.

        The layout (per-conv dims) must always match; with ``fingerprint`` the generator
        weights recorded in the domain (when recorded) must be ``G``'s too.
        """
        mismatch = None
        if self.dims != tuple(G.domain_dims):
            mismatch = (f"has {len(self)} numbers in {len(self.dims)} convs, but generator {G.name!r} (fingerprint "
                        f"{G.fingerprint}) needs {G.num_domain_params} in {len(G.domain_dims)} convs")
        elif self.style_latent is not None and tuple(self.style_latent.shape) != (G.num_ws, G.w_dim):
            mismatch = (f"carries a style latent of shape {list(self.style_latent.shape)}, but generator {G.name!r} "
                        f"takes W+ [{G.num_ws}, {G.w_dim}]")
        check_fits("domain", self.meta, G, mismatch, fingerprint=fingerprint)

    # ----------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (tensor ``domain`` + metadata), atomically."""
        meta = {"dims": json.dumps(list(self.dims)), "meta": json.dumps(self.meta, sort_keys=True)}
        tensors = {"domain": self.vector.contiguous()}
        if self.style_latent is not None:
            tensors["style_latent"] = self.style_latent.contiguous()
        return write_own_file(Path(path), DOMAIN, 1 if self.style_latent is None else FORMAT_VERSION, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, generator: "Generator | None" = None, check: bool = True) -> "Domain":
        """Read a domain file; with ``generator``, check it fits (dims, and fingerprint if ``check``)."""
        path = Path(path)
        header, keys = read_safetensors(path, "domain file", load=False)  # names first: no big reads by mistake
        if sorted(keys) not in (["domain"], ["domain", "style_latent"]):
            found = keys[:4] + ([f"... {len(keys) - 4} more"] if len(keys) > 4 else [])
            kind = (header.get("format") or "").replace("hyperdomain.", "")
            raise HyperdomainError(
                f"{path}: not a domain file (expected one tensor 'domain', found {found})"
                + (f"; it holds a {kind} (see hyperdomain info)" if kind and kind != "domain" else "")
            )
        check_format(path, header, DOMAIN, FORMAT_VERSION, "domain file")
        dims = json_field(path, header, "dims", list, "domain file")
        if not dims or not all(type(d) is int and d > 0 for d in dims):
            raise HyperdomainError(f"{path}: domain metadata 'dims' must be a list of positive integers, got {dims!r}"[:300])
        meta = {**json_field(path, header, "meta", dict, "domain file", default={}), "file": str(path)}
        tensors = {k: float32_tensor(path, k, t, "domain file") for k, t in read_safetensors(path, "domain file")[1].items()}
        try:
            domain = cls(tensors["domain"], dims, meta, tensors.get("style_latent"))
        except HyperdomainError as e:
            raise HyperdomainError(f"{path}: {e}") from None
        if generator is not None:
            domain.check_compatible(generator, fingerprint=check)
        return domain


def mix(domains: Sequence[Domain], weights: Sequence[float] | None = None) -> Domain:
    """Weighted sum ``sum_i w_i d_i`` of domains of the same layout (equal weights summing to 1 by default)."""
    if not domains:
        raise HyperdomainError("mix: no domains given")
    if weights is None:
        weights = [1.0 / len(domains)] * len(domains)
    if len(weights) != len(domains):
        raise HyperdomainError(f"mix: {len(domains)} domains but {len(weights)} weights")
    dims = domains[0].dims
    for d in domains[1:]:
        if d.dims != dims:
            raise HyperdomainError(
                f"mix: domains have different layouts ({len(domains[0])} vs {len(d)} numbers)"
            )
    vector = sum(float(w) * d.vector for w, d in zip(weights, domains))
    meta = {k: v for k, v in domains[0].meta.items() if k.startswith("generator")}
    meta["mixed_from"] = [
        {"prompt": d.meta.get("prompt"), "file": d.meta.get("file"), "weight": float(w)}
        for w, d in zip(weights, domains)
    ]
    return Domain(vector, dims, meta)


def generator_meta(G: "Generator") -> dict[str, Any]:
    """The generator facts every domain records."""
    return {"generator": G.name, "generator_fingerprint": G.fingerprint, "resolution": G.resolution}

