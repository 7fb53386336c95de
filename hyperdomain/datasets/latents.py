"""Latents of a dataset: each index's ``z`` is a pure function of ``(seed, index)``.

Any shard can then be made anywhere, in any order, by any number of processes: nothing depends on
which indices came before. Views are seeded the same way, from ``(seed, index, k)``.
"""
from __future__ import annotations

import hashlib

import torch

__all__ = ["stream_seed", "index_latent", "view_latent"]


def stream_seed(seed: int, index: int, stream: str) -> int:
    """A 63-bit seed for one random stream of one index (``"z"``, ``"view0"``, ...), from a hash, so
    neighbouring indices or seeds share nothing."""
    digest = hashlib.sha256(f"hyperdomain.dataset/{int(seed)}/{int(index)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def index_latent(seed: int, index: int, z_dim: int) -> torch.Tensor:
    """``z`` ``[z_dim]`` (float32, on the CPU) of dataset index ``index``."""
    gen = torch.Generator().manual_seed(stream_seed(seed, index, "z"))
    return torch.randn(z_dim, generator=gen)


def view_latent(seed: int, index: int, k: int, z_dim: int, sigma: float) -> torch.Tensor:
    """The ``k``-th latent neighbour of index ``index``: ``z + sigma * noise``, the noise seeded
    from ``(seed, index, k)``; truncation is applied after, in the mapping."""
    gen = torch.Generator().manual_seed(stream_seed(seed, index, f"view{k}"))
    return index_latent(seed, index, z_dim) + float(sigma) * torch.randn(z_dim, generator=gen)
