"""MemoryQueue: MoCo's dictionary of negative keys, a FIFO ring buffer kept as module buffers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_gather_variable

__all__ = ["QUEUE_INITS", "MemoryQueue"]

QUEUE_INITS = ("random", "empty")


class MemoryQueue(nn.Module):
    """FIFO memory of L2-normalised keys (MoCo's dictionary), stored as buffers.

    The queue is a ring buffer of ``size`` rows: :meth:`enqueue` writes a batch at
    consecutive rows starting at ``ptr``, wrapping around the end, and advances
    ``ptr`` by the batch size modulo ``size``. Therefore ``size`` need *not* be a
    multiple of the batch size, batches may vary in size (patch counts do), and
    the oldest keys are always the ones replaced. A batch larger than ``size``
    keeps only its last ``size`` keys. Under DDP the keys of all ranks are
    all-gathered first (rank order), so every rank holds the same queue.

    ``queue`` (``size, dim``) and ``ptr`` (scalar int64) are buffers, so they are
    part of ``state_dict()`` and saved in checkpoints (exact resume).

    ``init="random"`` (MoCo) fills the queue with random unit vectors, which act as
    negatives until real keys replace them. ``init="empty"`` starts with NaN rows that
    mean "not written yet": :meth:`negatives` leaves them out, so every negative is a
    real key (an empty queue gives no negatives; the state dict is unchanged).

    Args:
        dim: key dimension ``D``.
        size: number of keys ``K``.
        seed: seed of the random-normal initialisation (default: global RNG).
        init: ``"random"`` or ``"empty"``.
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, dim: int, size: int, *, seed: int | None = None, init: str = "random") -> None:
        super().__init__()
        if int(dim) < 1 or int(size) < 1:
            raise ValueError(f"`dim` and `size` must be >= 1, got dim={dim}, size={size}")
        if init not in QUEUE_INITS:
            raise ValueError(f"`init` must be one of {QUEUE_INITS}, got {init!r}")
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        q = F.normalize(torch.randn(int(size), int(dim), generator=g), dim=1)
        if init == "empty":
            q.fill_(float("nan"))
        self.register_buffer("queue", q)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @property
    def dim(self) -> int:
        return self.queue.shape[1]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"

    def filled(self) -> int:
        """Number of rows holding keys or random init (NaN rows of an ``"empty"`` queue excluded)."""
        # rows are written in ring order from row 0, so unwritten rows are the tail [ptr, K)
        return self.size if not bool(torch.isnan(self.queue[-1, 0])) else int(self.ptr)

    def negatives(self) -> torch.Tensor:
        """A detached copy of the keys, ``K', D`` (safe to use before :meth:`enqueue`).

        ``K' = K`` except for an ``init="empty"`` queue that is not full yet.
        """
        return self.queue[: self.filled()].detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, *, gather: bool = True) -> None:
        """Write ``keys`` (``N, D``) over the oldest entries; all-gathered under DDP."""
        if not isinstance(keys, torch.Tensor) or keys.dim() != 2 or keys.shape[1] != self.dim:
            shape = tuple(keys.shape) if isinstance(keys, torch.Tensor) else type(keys).__name__
            raise ValueError(f"`keys` must have shape N, {self.dim}, got {shape}")
        keys = keys.detach().to(self.queue.dtype)
        if gather:
            keys = all_gather_variable(keys)
        n = keys.shape[0]
        if n == 0:
            return
        m = min(n, self.size)
        start = int(self.ptr) + n - m
        idx = (start + torch.arange(m, device=self.queue.device)) % self.size
        self.queue.index_copy_(0, idx, keys[-m:].to(self.queue.device))
        self.ptr.fill_((int(self.ptr) + n) % self.size)
