"""Episodic training of a few-shot segmentation model (REFERENCE §4), exactly resumable.

The loop is model-agnostic: any module whose ``forward(query_image, support_images,
support_masks, query_mask=...)`` returns a dict with a ``"loss"`` works (QGNet does).

Exact resume. Everything random is a pure function of ``(seed, step)``:

* the episodes of step ``s`` come from a per-epoch permutation seeded by
  ``(seed, epoch)`` (:class:`StepBatchSampler`), sliced at the step's position;
* each item's augmentation runs under RNGs seeded by ``(seed, step, slot)``
  (:class:`SeededItems`), whatever the number of data workers;
* the model's own randomness (dropout) runs under ``torch.manual_seed`` of
  ``(seed, step, rank)`` set before every step.

A checkpoint stores the model, optimizer, scheduler and the step, so a run
resumed at step ``N`` reproduces an uninterrupted run bit-for-bit on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .._progress import progress_bar
from .checkpoint import capture_rng_state, checkpoint_paths, load_checkpoint, save_checkpoint
from .distributed import DistInfo, dist_info
from .logging import RunLogger
from .rundir import prepare_run_dir

__all__ = [
    "SeededItems",
    "StepBatchSampler",
    "derive_seed",
    "make_optimizer",
    "make_poly_scheduler",
    "resolve_device",
    "seed_everything",
    "train",
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


class StepBatchSampler(Sampler):
    """Batches of ``(dataset index, item seed, epoch)`` as a pure function of the global step.

    Epoch ``e`` visits a permutation of the dataset seeded by ``(seed, e)``;
    step ``s`` takes slice ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``
    (the last incomplete batch of an epoch is dropped). Under DDP each rank takes
    every ``world``-th element of the global batch.

    Args:
        n: dataset length.
        batch_size: global batch size (all ranks together).
        seed: run seed.
        start_step: first global step to yield.
        end_step: one past the last step to yield.
        dist: rank info (default: current process group).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 dist: DistInfo | None = None):
        if n < batch_size:
            raise ValueError(f"the training set has {n} episodes, fewer than train.batch_size={batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
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

    def batch(self, step: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        idx = self._permutation(epoch)[pos * self.batch_size:(pos + 1) * self.batch_size].tolist()
        slots = range(self.dist.rank, self.batch_size, self.dist.world_size)
        return [(idx[j], derive_seed(self.seed, "item", step, j), epoch) for j in slots]

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

    def __getitem__(self, key: tuple[int, int, int]):
        index, seed, epoch = key
        seed_everything(seed)
        if hasattr(self.dataset, "set_epoch"):
            return self.dataset[(epoch, index)]
        return self.dataset[index]


# --------------------------------------------------------------------------- optimisation


def make_optimizer(params, cfg_train: Mapping) -> torch.optim.SGD:
    """SGD with the config's effective LR, momentum and weight decay (REFERENCE §4)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.SGD(params, lr=cfg_train["lr"], momentum=cfg_train["momentum"],
                           weight_decay=cfg_train["weight_decay"])


def make_poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9):
    """Poly schedule ``lr = base * (1 - step / total) ** power`` (stepped once per iteration)."""
    total = max(1, int(total_steps))

    def factor(step: int) -> float:
        return max(0.0, 1.0 - min(step, total) / total) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the loop


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}: a run of no steps "
                         "would only write an untrained checkpoint")


def train(
    cfg: Mapping,
    *,
    model: torch.nn.Module,
    train_set: Dataset,
    val_fn: Callable[[torch.nn.Module], Mapping[str, float]] | None = None,
    collate_fn: Callable | None = None,
    output_dir: str | Path | None = None,
    resume: str | Path | bool | None = None,
    overwrite: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
    dist: DistInfo | None = None,
    ddp_model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``model`` episodically with SGD + poly LR, checkpointing and logging.

    Args:
        cfg: full config (see :mod:`fewshot_priors.config`); uses ``experiment.seed``,
            ``train.*`` and ``data.num_workers``.
        model: the model (already on its device). Its ``trainable_parameters()`` are
            optimised if it has that method, else every parameter with ``requires_grad``.
        train_set: dataset of training episodes (dict items, see ``collate_fn``).
        val_fn: ``model -> {"miou": ..., ...}`` called every ``train.val_every`` epochs
            (and at the end); the best ``miou`` is kept as the ``best`` checkpoint.
        collate_fn: batch collation (default: the data package's ``collate_episodes``).
        output_dir: run directory (default ``experiment.output_dir``); gets
            ``last.*`` / ``best.*`` checkpoints, ``scalars.csv``, ``tb/``, ``loss_curve.png``.
        resume: checkpoint to resume from, or True for ``<output_dir>/last``.
        overwrite: ``output_dir`` may hold a previous run: delete its checkpoints and
            logs first. Without ``resume`` or ``overwrite`` a folder holding a run is
            refused (:class:`~fewshot_priors.engine.rundir.RunFolderError`).
        max_steps: stop after this global step, >= 1 (the schedule still spans all
            epochs); overrides ``train.max_steps``.
        progress: show a tqdm bar (rank 0).
        dist: rank info (default: current process group).
        ddp_model: DDP wrapper of ``model`` to run the forward through (multi-process).

    Returns:
        dict with ``step``, ``epoch``, ``best_miou``, ``history`` (list of per-log-step
        dicts), ``val`` (list of validation results) and ``output_dir``.

    Raises:
        ValueError: ``train.epochs`` < 1 or a ``max_steps`` < 1, fewer episodes than a batch,
            or a resume checkpoint trained with another number of total steps.
        RunFolderError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    tcfg = cfg["train"]
    _check_positive("train.epochs", tcfg["epochs"])
    if max_steps is not None:
        _check_positive("max_steps", max_steps)
    elif tcfg.get("max_steps") is not None:
        _check_positive("train.max_steps", tcfg["max_steps"])
    seed = int(cfg["experiment"]["seed"])
    dist = dist or dist_info()
    out = prepare_run_dir(output_dir or cfg["experiment"]["output_dir"], resume=bool(resume), overwrite=overwrite,
                          kind="train", dist=dist)
    device = next(model.parameters()).device
    if collate_fn is None:
        from fewshot_priors.data import collate_episodes as collate_fn  # noqa: N813

    params = model.trainable_parameters() if hasattr(model, "trainable_parameters") else model.parameters()
    optimizer = make_optimizer(params, tcfg)
    n = len(train_set)  # type: ignore[arg-type]
    steps_per_epoch = n // tcfg["batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {n} episodes, fewer than train.batch_size={tcfg['batch_size']}")
    total_steps = steps_per_epoch * int(tcfg["epochs"])
    scheduler = make_poly_scheduler(optimizer, total_steps, tcfg["poly_power"])
    stop = total_steps if max_steps is None and tcfg.get("max_steps") is None else min(
        total_steps, int(max_steps if max_steps is not None else tcfg["max_steps"]))

    step, best, val_history = 0, -math.inf, []
    if resume:
        path = out / "last" if resume is True else Path(resume)
        ck = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler,
                             map_location=device)
        step = int(ck["meta"]["step"])
        best = float(ck["meta"].get("best_miou", -math.inf))
        val_history = list(ck["meta"].get("val", []))
        if ck["meta"].get("total_steps") not in (None, total_steps):
            raise ValueError(
                f"cannot resume {path}: it was trained with {ck['meta']['total_steps']} total steps, this config "
                f"gives {total_steps} (epochs/batch size/dataset changed)"
            )

    logger = RunLogger(out, enabled=dist.is_main)
    if resume:
        logger.truncate_after(step)
    if dist.is_main:
        from fewshot_priors.config import save_config

        save_config(cfg, out / "config.yaml")

    sampler = StepBatchSampler(n, tcfg["batch_size"], seed, step, stop, dist)
    from fewshot_priors.data.workers import resolve_num_workers

    workers = resolve_num_workers(cfg["data"].get("num_workers", 0))  # "auto": min(cores, 8)
    loader = DataLoader(SeededItems(train_set), batch_sampler=sampler, collate_fn=collate_fn,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    runner = ddp_model if ddp_model is not None else model

    def save(name: str, epoch: int) -> None:
        if not dist.is_main:
            return
        save_checkpoint(out / name, model=model, optimizer=optimizer, scheduler=scheduler,
                        rng_state=capture_rng_state(),
                        meta={"config": cfg, "step": step, "epoch": epoch, "best_miou": best,
                              "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                              "val": val_history})

    def validate(epoch: int) -> None:
        nonlocal best
        if val_fn is None:
            return
        res = dict(val_fn(model))
        res.update(step=step, epoch=epoch)
        val_history.append({k: v for k, v in res.items() if k != "per_class_iou"})
        logger.log(step, {f"val/{k}": v for k, v in res.items() if k in ("miou", "fbiou")})
        if res.get("miou", -math.inf) > best:
            best = float(res["miou"])
            save("best", epoch)
        model.train()

    history: list[dict[str, float]] = []
    model.train()
    bar = progress_bar(total=stop, initial=step, desc="train", disable=not (progress and dist.is_main),
               dynamic_ncols=True)
    running, t0 = [], time.perf_counter()
    ckpt_every = tcfg.get("ckpt_every_steps")
    for batch in loader:
        epoch = step // steps_per_epoch
        batch = _to_device(batch, device)
        torch.manual_seed(derive_seed(seed, "step", step, dist.rank))
        with _autocast(device, bool(tcfg["amp"])):
            outputs = runner(batch["query_image"], batch["support_images"], batch["support_masks"],
                             query_mask=batch["query_mask"])
        loss = outputs["loss"].float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           float(tcfg["grad_clip"]))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        step += 1
        running.append(loss.item())
        bar.update(1)
        if step % int(tcfg["log_every"]) == 0 or step == stop:
            mean = float(np.mean(running))
            history.append({"step": step, "loss": mean, "lr": lr})
            logger.log(step, {"train/loss": mean, "train/lr": lr,
                              "train/steps_per_s": len(running) / max(1e-9, time.perf_counter() - t0)})
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}")
            running, t0 = [], time.perf_counter()
        end_of_epoch = step % steps_per_epoch == 0
        if ckpt_every and step % int(ckpt_every) == 0 and not end_of_epoch:
            save("last", epoch)
        if end_of_epoch:
            ep = step // steps_per_epoch
            if tcfg["val_every"] and ep % int(tcfg["val_every"]) == 0:
                validate(ep)
            save("last", ep)
    bar.close()
    epoch = step // steps_per_epoch
    if step == total_steps and val_fn is not None and not (tcfg["val_every"] and epoch % int(tcfg["val_every"]) == 0):
        validate(epoch)
    if step % steps_per_epoch != 0 or step == 0:
        save("last", epoch)
    logger.close()
    if dist.is_main and (out / "scalars.csv").exists():
        try:
            from fewshot_priors.viz import plot_loss_curve

            plot_loss_curve(out / "scalars.csv", out / "loss_curve.png")
        except Exception as exc:  # pragma: no cover - plotting must never kill a finished run
            print(f"warning: could not draw the loss curve: {exc}")
    return {"step": step, "epoch": epoch, "best_miou": best, "history": history, "val": val_history,
            "output_dir": str(out), "last": str(checkpoint_paths(out / "last")[0])}
