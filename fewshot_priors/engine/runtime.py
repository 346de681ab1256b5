"""Where and how a run executes: device, seeds, ranks, mixed precision and the step-indexed loader.

One :class:`Runtime` is shared by supervised training (:mod:`.train`) and
pretraining (:mod:`.pretrain`); both hand it to the step loop (:mod:`.loop`).

Everything random in a run is a pure function of ``(seed, step)``:

* the items of step ``s`` come from a per-epoch permutation seeded by
  ``(seed, epoch)``, sliced at the step's position (:class:`StepBatchSampler`);
* each item's augmentation runs under RNGs seeded by ``(seed, "item", s, slot)``
  (:class:`SeededItems`, or the dataset itself when it takes the item seed),
  whatever the number of data workers;
* the model's own randomness (dropout, shuffle-BN permutations) runs under
  ``torch.manual_seed`` of ``(seed, "step", s, rank)`` set before every step
  (:meth:`Runtime.seed_step`).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .._validate import is_int
from ..distributed import DistInfo, dist_info

__all__ = [
    "Runtime",
    "SeededItems",
    "StepBatchSampler",
    "config_device",
    "derive_seed",
    "resolve_device",
    "seed_everything",
]


# --------------------------------------------------------------------------- seeding


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across machines and Python runs)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: an unknown device name, or a CUDA device on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available here "
                             "(torch.cuda.is_available() is False): use device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


# --------------------------------------------------------------------------- sampling


class StepBatchSampler(Sampler):
    """Batches of ``(dataset index, item seed, epoch)`` as a pure function of the global step.

    Epoch ``e`` visits a permutation of the dataset seeded by ``(seed, e)``;
    step ``s`` takes slice ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``
    (the last incomplete batch of an epoch is dropped). Under DDP each rank takes
    every ``world``-th element of the global batch.

    With ``shots=(low, high)`` each step also draws its K uniformly from ``low .. high``
    (seeded by ``(seed, step)``, so every rank and a resumed run draw the same) and
    its items are ``(dataset index, item seed, epoch, K)``.

    Args:
        n: dataset length.
        batch_size: global batch size (all ranks together).
        seed: run seed.
        start_step: first global step to yield.
        end_step: one past the last step to yield.
        dist: rank info (default: current process group).
        shots: ``(low, high)``, ``1 <= low <= high``: the range of each step's K; None: no K.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 dist: DistInfo | None = None, shots: tuple[int, int] | None = None):
        if n < batch_size:
            raise ValueError(f"the training set has {n} episodes, fewer than train.batch_size={batch_size}")
        if shots is not None and not (isinstance(shots, (tuple, list)) and len(shots) == 2
                                      and all(is_int(k) for k in shots) and 1 <= shots[0] <= shots[1]):
            raise ValueError(f"`shots` must be (low, high) with 1 <= low <= high, got {shots!r}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.shots = None if shots is None else (int(shots[0]), int(shots[1]))
        self.dist = dist or dist_info()
        if batch_size % self.dist.world_size:
            raise ValueError(
                f"train.batch_size={batch_size} must be divisible by the number of processes {self.dist.world_size}"
            )
        self.steps_per_epoch = n // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def batch(self, step: int) -> list[tuple[int, ...]]:
        """This rank's ``(index, item seed, epoch)`` triples of global step ``step``
        (``(index, item seed, epoch, K)`` with ``shots``)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self._permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()
        slots = range(self.dist.rank, self.batch_size, self.dist.world_size)
        extra = () if self.shots is None else (self.step_shots(step),)
        return [(idx[j], derive_seed(self.seed, "item", step, j), epoch, *extra) for j in slots]

    def step_shots(self, step: int) -> int:
        """The K of global step ``step`` (``shots`` set): uniform on ``low .. high``, seeded by ``(seed, step)``."""
        if self.shots is None:
            raise ValueError("this sampler draws no K (shots=None)")
        low, high = self.shots
        g = torch.Generator().manual_seed(derive_seed(self.seed, "shots", step))
        return low + int(torch.randint(high - low + 1, (), generator=g))

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)


class SeededItems(Dataset):
    """Wrap a dataset so that ``ds[(index, seed, epoch)]`` runs under seeded RNGs.

    Augmentations that draw from Python ``random``, NumPy or torch become
    deterministic per item, independent of the data worker that loads it.
    Episodic datasets with ``set_epoch`` (this library's) are indexed with
    ``(epoch, index)`` so that every epoch gets fresh episodes and augmentation
    without relying on per-worker dataset state.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, ...]):
        """``key``: ``(index, seed, epoch)``, or ``(index, seed, epoch, K)`` for an episodic
        dataset, which is then indexed ``(epoch, index, K)`` (the step's number of shots)."""
        index, seed, epoch, *shots = key
        seed_everything(seed)
        if hasattr(self.dataset, "set_epoch"):
            return self.dataset[(epoch, index, *shots)]
        if shots:
            raise TypeError(f"a K per step needs an episodic dataset (with set_epoch); got {type(self.dataset).__name__}")
        return self.dataset[index]


# --------------------------------------------------------------------------- the runtime


def config_device(cfg: Mapping) -> str:
    """The device name of a config tree: ``experiment.device`` (``"auto"`` when unset)."""
    name = (cfg.get("experiment") or {}).get("device")
    return "auto" if name is None else str(name)


@dataclass
class Runtime:
    """Device, run seed, rank info and mixed precision of one run.

    Attributes:
        device: where the model and the batches live.
        seed: the run seed (``experiment.seed``); every other seed derives from it.
        dist: rank info (:class:`~fewshot_priors.distributed.DistInfo`).
        amp: bf16 autocast on CUDA (ignored on CPU).
    """

    device: torch.device
    seed: int
    dist: DistInfo
    amp: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping, *, amp: bool = False, dist: DistInfo | None = None,
                    device: str | torch.device | None = None) -> Runtime:
        """Resolve ``experiment.device`` and ``experiment.seed``.

        Under DDP a CUDA device becomes this process's ``cuda:<local_rank>``.

        Args:
            cfg: config tree with an ``experiment`` section.
            amp: use bf16 autocast on CUDA.
            dist: rank info (default: current process group).
            device: a device that replaces the config's (e.g. the model's).
        """
        dist = dist or dist_info()
        if isinstance(device, torch.device):
            dev = device
        else:
            dev = resolve_device(device if device is not None else config_device(cfg))
            if dist.distributed and dev.type == "cuda":
                dev = torch.device("cuda", dist.local_rank)
        return cls(device=dev, seed=int(cfg["experiment"]["seed"]), dist=dist, amp=bool(amp))

    def wrap_ddp(self, model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module | None:
        """A ``DistributedDataParallel`` wrapper of ``model`` on :attr:`device` when this is a
        multi-process run, else None (run the model itself). ``kwargs`` go to DDP."""
        if not self.dist.distributed:
            return None
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, **kwargs)

    def seed_step(self, step: int) -> None:
        """Seed torch for the model's own randomness in global step ``step`` (per rank)."""
        torch.manual_seed(derive_seed(self.seed, "step", step, self.dist.rank))

    def autocast(self):
        """bf16 autocast on CUDA when ``amp``; a no-op context otherwise."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Move the tensors of a collated batch to :attr:`device` (other values unchanged)."""
        return {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()}

    def loader(self, dataset: Dataset, *, batch_size: int, start_step: int, end_step: int,
               collate_fn: Callable, num_workers: int | str = 0, seeded_items: bool = True,
               shots: tuple[int, int] | None = None) -> DataLoader:
        """The loader of global steps ``start_step .. end_step - 1`` (a :class:`StepBatchSampler`).

        Args:
            dataset: the items; indexed with ``(index, item seed, epoch)`` when
                ``seeded_items`` is False (it seeds itself), else wrapped in
                :class:`SeededItems`.
            batch_size: global batch size (all ranks).
            start_step, end_step: the steps to load.
            collate_fn: batch collation.
            num_workers: data workers (``"auto"``: see
                :func:`~fewshot_priors.data.workers.resolve_num_workers`).
            seeded_items: wrap ``dataset`` in :class:`SeededItems`.
            shots: ``(low, high)``: each step draws its K from this range (an episodic
                ``dataset``; see :class:`StepBatchSampler`); None: the dataset's own K.
        """
        from fewshot_priors.data.workers import resolve_num_workers

        sampler = StepBatchSampler(len(dataset), batch_size, self.seed, start_step, end_step,  # type: ignore[arg-type]
                                   self.dist, shots=shots)
        return DataLoader(SeededItems(dataset) if seeded_items else dataset, batch_sampler=sampler,
                          collate_fn=collate_fn, num_workers=resolve_num_workers(num_workers),
                          pin_memory=self.device.type == "cuda", persistent_workers=False)
