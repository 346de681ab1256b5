"""Distributed helpers for ``torchrun`` (DDP), in one module: rank info, init, reductions, gathers.

Launch any training command under ``torchrun`` and the engine picks it up::

    torchrun --nproc_per_node 4 -m fewshot_priors train --config coco/resnet50_473_fold0

Only rank 0 logs, writes checkpoints and draws progress bars. Who uses what:

* the engine: :func:`init_distributed`, :func:`dist_info`, :func:`barrier`,
  :func:`cleanup_distributed`, and :func:`shard_indices` to split evaluation episodes
  across ranks (rank ``r`` takes every ``world``-th index starting at ``r``);
* :meth:`fewshot_priors.metrics.FewShotSegMeter.all_reduce`: sums the metric
  accumulators of all ranks with :func:`all_reduce_sum`;
* :class:`fewshot_priors.ssl.moco.GlobalLocalMoCo` and its
  :class:`~fewshot_priors.ssl.queue.MemoryQueue`: :func:`concat_all_gather` and
  :func:`broadcast` (shuffle-BN across ranks), :func:`all_gather_variable` (queue keys;
  patch counts differ per rank), :func:`all_reduce_min` (every rank skips a non-finite
  batch together) and :func:`world_size`.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs as a
single process and these helpers are no-ops (the gathers return their input).
This is a bottom-layer module: it imports only ``torch`` and the standard library.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_variable",
    "all_reduce_min",
    "all_reduce_sum",
    "barrier",
    "broadcast",
    "cleanup_distributed",
    "concat_all_gather",
    "dist_info",
    "init_distributed",
    "shard_indices",
    "world_size",
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


def world_size() -> int:
    """Number of processes of the initialised default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


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
    """Destroy the default process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
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
    """Sum a tensor over all ranks in place (no-op on one process); returns it.

    A CPU tensor under the ``nccl`` backend is reduced through a CUDA copy of it
    (on the current device) and copied back, so callers need not move it.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        if backend == "nccl" and t.device.type != "cuda":
            moved = t.cuda()
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of a tensor over all ranks, in place (no-op on one process); returns it."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` on every rank with rank ``src``'s copy, in place (no-op on one process); returns it."""
    if world_size() > 1:
        dist.broadcast(t, src=src)
    return t


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather equally sized tensors along dim 0 in rank order (no gradient).

    ``N, ...`` on each rank -> ``world * N, ...``; identity on one process.
    """
    world = world_size()
    if world == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def all_gather_variable(x: torch.Tensor) -> torch.Tensor:
    """All-gather tensors whose dim 0 differs across ranks (pads to the max, then trims).

    ``N_r, ...`` on rank ``r`` -> ``sum_r N_r, ...`` in rank order; identity on one process.
    """
    world = world_size()
    if world == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    m = max(sizes_i)
    pad = x.new_zeros((m, *x.shape[1:]))
    pad[: x.shape[0]] = x
    out = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(out, pad)
    return torch.cat([o[:s] for o, s in zip(out, sizes_i)])
