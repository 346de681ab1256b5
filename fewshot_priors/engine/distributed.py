"""Distributed helpers for ``torchrun`` (DDP): init from the environment, rank info, reductions.

Launch any training command under ``torchrun`` and the engine picks it up::

    torchrun --nproc_per_node 4 -m fewshot_priors.cli train --config coco/resnet50_473_fold0

Only rank 0 logs, writes checkpoints and draws progress bars; episodes are split
across ranks by :func:`shard_indices` (rank ``r`` takes every ``world``-th index
starting at ``r``), and metric accumulators are summed with :func:`all_reduce_sum`.
Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs as a
single process and these helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "barrier",
    "cleanup_distributed",
    "dist_info",
    "init_distributed",
    "is_main_process",
    "shard_indices",
]


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process (``rank=0, world=1`` when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Current rank info (from the initialised process group, else single process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def is_main_process() -> bool:
    return dist_info().is_main


def init_distributed(backend: str | None = None) -> DistInfo:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Does nothing (and returns a single-process :class:`DistInfo`) when
    ``WORLD_SIZE`` is unset or 1, or when the group is already initialised.

    Args:
        backend: ``"nccl"`` / ``"gloo"``; default nccl when CUDA is available, else gloo.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist_info()


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_indices(n: int, info: DistInfo | None = None) -> range:
    """Indices ``0..n-1`` owned by this rank: ``range(rank, n, world)``.

    Every index is owned by exactly one rank, so summing per-rank metric
    accumulators gives the single-process result.
    """
    info = info or dist_info()
    return range(info.rank, n, info.world_size)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (no-op on one process); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        if backend == "nccl" and t.device.type != "cuda":
            moved = t.cuda()
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
