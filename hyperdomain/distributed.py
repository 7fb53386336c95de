"""The few pieces of torch.distributed the trainers need: set up under torchrun, agree, clean up.

A plain process (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) is rank 0 of 1 and
never touches torch.distributed, so every helper here is also correct without it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import HyperdomainError

__all__ = ["DistInfo", "setup", "teardown", "any_rank", "mean_over_ranks", "broadcast_buffers"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), or stay single.

    ``device`` ``None``/``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or str(device) == "auto":
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if world <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda" and dev.index != local:
        raise HyperdomainError(f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; "
                               f"use --device cuda or auto (and CUDA_VISIBLE_DEVICES to choose GPUs)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                    device_id=dev if dev.type == "cuda" else None)
        except (RuntimeError, ValueError) as e:
            raise HyperdomainError(f"cannot join the torchrun process group (rank {rank} of {world}): {e}") from None
    return DistInfo(rank, world, local, dev)


def teardown(info: DistInfo) -> None:
    if info.active:
        if dist.is_initialized():
            dist.destroy_process_group()


def local_batch(batch: int, world: int, minimum: int = 1, why: str = "") -> int:
    """Each process's share of the global ``batch`` (``--batch``), at least ``minimum`` (``why``: what needs it)."""
    if batch % world:
        raise HyperdomainError(f"--batch {batch} does not split over {world} processes; use a multiple")
    share = batch // world
    if share < minimum:
        raise HyperdomainError(f"--batch {batch} over {world} processes leaves {share} per process ({why}: at "
                               f"least {minimum})")
    return share


def any_rank(info: DistInfo, flags: list[bool]) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks (one small all-reduce)."""
    if not info.active:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def mean_over_ranks(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over all ranks (for logging)."""
    if not info.active or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], device=info.device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}


def broadcast_buffers(info: DistInfo, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, as DDP does before each forward."""
    if not info.active:
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)
