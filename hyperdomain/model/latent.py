"""A W+ latent of one image: ``[num_ws, w_dim]`` with what made it, stored like a domain.

An inverted photo is a latent: one ``w`` per synthesis layer. Its file is safetensors (tensor
``latent``) with the generator's name and fingerprint, the digest of the image it came from, and
the inversion's settings and final losses; loading it for another generator fails with one line
naming both.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import HyperdomainError
from .compatibility import check_fits
from ..files.safetensors_files import LATENT, float32_tensor, json_field, read_own_file, write_own_file

if TYPE_CHECKING:  # pragma: no cover
    from .generator import Generator

FORMAT_VERSION = 1


@dataclass
class Latent:
    """W+ ``ws`` ``[num_ws, w_dim]`` (float32) and a plain JSON-able ``meta``."""

    ws: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ws = torch.as_tensor(self.ws)
        if ws.ndim != 2:
            raise HyperdomainError(f"a latent is W+ [num_ws, w_dim], got shape {list(ws.shape)}")
        self.ws = ws.detach().to("cpu", torch.float32)

    def check_compatible(self, G: "Generator", fingerprint: bool = True) -> None:
        """One line when this latent does not fit ``G`` (shape; with ``fingerprint``, the weights)."""
        mismatch = None
        if tuple(self.ws.shape) != (G.num_ws, G.w_dim):
            mismatch = f"is {list(self.ws.shape)}, but generator {G.name!r} takes W+ [{G.num_ws}, {G.w_dim}]"
        check_fits("latent", self.meta, G, mismatch, fingerprint=fingerprint, made="was inverted with", other="not",
                   hint="invert the photo again for this generator, or skip this check (check=False, --no-check)")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the latent file atomically."""
        try:
            meta = json.dumps(self.meta, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise HyperdomainError(f"{path}: latent metadata is not plain JSON data ({e})") from None
        return write_own_file(Path(path), LATENT, FORMAT_VERSION, {"latent": self.ws.contiguous()}, {"meta": meta})

    @classmethod
    def load(cls, path: str | os.PathLike, generator: "Generator | None" = None, check: bool = True) -> "Latent":
        """Read a latent file; with ``generator``, check it fits (shape, and fingerprint if ``check``)."""
        path = Path(path)
        header, tensors = read_own_file(path, LATENT, FORMAT_VERSION, "latent file")
        if set(tensors) != {"latent"}:
            raise HyperdomainError(f"{path}: a latent file holds one tensor 'latent', found {sorted(tensors)[:4]}")
        meta = json_field(path, header, "meta", dict, "latent file", default={})
        ws = float32_tensor(path, "latent", tensors["latent"], "latent file")  # its errors name the path
        try:
            latent = cls(ws, {**meta, "file": str(path)})
        except HyperdomainError as e:
            raise HyperdomainError(f"{path}: {e}") from None
        if generator is not None:
            latent.check_compatible(generator, fingerprint=check)
        return latent

