"""``DomainViews``: (anchor, positive) image pairs made on the fly, for contrastive training loops.

A positive is the anchor's latent neighbour (``z + sigma * noise``) in the same domain, the same
latent in another domain, or both. Each batch is one generator pass on the generator's device, one
domain per row. Batch ``b`` of epoch ``e`` on rank ``r`` is drawn from a generator seeded by
``(seed, e, r, b)``: the pairs depend on nothing else, not on the number of DataLoader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.distributed
import torch.nn.functional as F
from torch.utils.data import IterableDataset, get_worker_info

from ..model.domain import Domain
from ..errors import HyperdomainError
from .latents import stream_seed
from .render import domain_table

if TYPE_CHECKING:  # pragma: no cover
    from ..model.generator import Generator

__all__ = ["DomainViews", "PairPlan", "PAIRS"]

PAIRS = ("views", "domains", "both")


@dataclass(frozen=True)
class PairPlan:
    """What one batch renders: latents ``[B, z_dim]`` and domain columns ``[B]`` (0: the source when
    it is in the pool, else the first domain) of the anchors and the positives."""

    z_anchor: torch.Tensor
    z_positive: torch.Tensor
    d_anchor: torch.Tensor
    d_positive: torch.Tensor


class DomainViews(IterableDataset):
    """Batches ``(anchor, positive)``, each ``[batch_size, 3, size, size]`` on the generator's device,
    in ``[-1, 1]``.

    ``pairs``: ``"views"`` (a latent neighbour, same domain), ``"domains"`` (the same latent in
    another domain of the pool) or ``"both"``. The pool is the source generator (unless
    ``source=False``) and ``domains``; each anchor takes a random member. ``batches`` per epoch on
    each rank; call :meth:`set_epoch` each epoch, as with ``DistributedSampler``. ``rank`` and
    ``world`` default to torch.distributed's. With DataLoader workers (CPU generators only: the
    generator runs in each worker) worker ``w`` of ``W`` yields batches ``w, w + W, ...`` of the
    same draws. Use ``DataLoader(views, batch_size=None)``: the dataset batches itself.
    """

    def __init__(self, G: "Generator", domains: Sequence[Domain] = (), *, pairs: str = "views", batch_size: int = 32,
                 batches: int = 100, sigma: float = 0.2, truncation: float = 0.7, size: int | None = None,
                 source: bool = True, seed: int = 0, rank: int | None = None, world: int | None = None):
        super().__init__()
        if pairs not in PAIRS:
            raise HyperdomainError(f"pairs must be one of {', '.join(PAIRS)}, got {pairs!r}")
        for name, value, low in (("batch_size", batch_size, 1), ("batches", batches, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HyperdomainError(f"{name} must be an integer >= {low}, got {value!r}")
        for d in domains:
            d.check_compatible(G)
        pool = (1 if source else 0) + len(domains)
        if pool < 1:
            raise HyperdomainError("DomainViews needs the source or at least one domain")
        if pairs != "views" and pool < 2:
            raise HyperdomainError(f"pairs={pairs!r} takes the same latent in two domains: give at least two "
                                   f"(the source counts unless source=False)")
        size = G.resolution if size is None else size
        if not 1 <= size <= G.resolution:
            raise HyperdomainError(f"size must be in [1, {G.resolution}] (images are only downscaled), got {size}")
        dist_on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist_on else 0)
        self.world = world if world is not None else (torch.distributed.get_world_size() if dist_on else 1)
        self.G, self.pairs, self.batch_size, self.batches = G, pairs, batch_size, batches
        self.sigma, self.truncation, self.size, self.seed = float(sigma), float(truncation), size, int(seed)
        table = domain_table(G, domains)
        self.table = table if source else table[1:]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches

    def plan(self, batch: int, epoch: int | None = None) -> PairPlan:
        """The draws of batch ``batch`` of an epoch (this one by default) on this rank."""
        epoch = self.epoch if epoch is None else epoch
        gen = torch.Generator().manual_seed(stream_seed(self.seed, batch, f"pairs/{epoch}/{self.rank}"))
        b, pool = self.batch_size, self.table.shape[0]
        z = torch.randn(b, self.G.z_dim, generator=gen)
        d_a = torch.randint(pool, (b,), generator=gen)
        if self.pairs == "views":
            d_p = d_a
        else:  # another member of the pool: a uniform non-zero shift
            d_p = (d_a + torch.randint(1, pool, (b,), generator=gen)) % pool
        z_p = z + self.sigma * torch.randn(b, self.G.z_dim, generator=gen) if self.pairs != "domains" else z
        return PairPlan(z, z_p, d_a, d_p)

    @torch.no_grad()
    def render(self, plan: PairPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """One generator pass: anchors and positives."""
        G = self.G
        z = torch.cat([plan.z_anchor, plan.z_positive]).to(G.device)
        cols = torch.cat([plan.d_anchor, plan.d_positive]).to(G.device)
        x = G.synthesis(G.mapping(z, self.truncation), domain=self.table[cols], noise_mode="const")
        if self.size != x.shape[-1]:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(-1, 1)
        return x[:self.batch_size], x[self.batch_size:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        first, step = (info.id, info.num_workers) if info is not None else (0, 1)
        for b in range(first, self.batches, step):
            yield self.render(self.plan(b))
