"""The one step loop of supervised training and pretraining: resume, steps, logging, checkpoints.

The model-specific part of a step (forward, loss, backward, optimizer and
scheduler step) is a ``step_fn(batch, step) -> {name: float}`` (``step`` counts from 1, as the
logs and checkpoints do) supplied by the
caller (:func:`~fewshot_priors.engine.train.train`,
:func:`~fewshot_priors.engine.pretrain.pretrain`). :class:`StepLoop` owns the rest:

* resume from a checkpoint (model, optimizer, scheduler, step, RNG state) with a
  check that the schedule and the settings of what is trained did not change;
* per-step seeding (:meth:`Runtime.seed_step`) before each ``step_fn``;
* running means of ``step_fn``'s scalars, logged every ``log_every`` steps as
  ``<prefix>/<name>`` with ``<prefix>/lr`` and ``<prefix>/steps_per_s``
  (:class:`~fewshot_priors.engine.logging.RunLogger`) and shown on the progress bar;
* hooks after each step, at the end of each epoch and after the last step;
* the ``last`` checkpoint every ``ckpt_every`` steps, at each epoch end and at the
  end, holding the RNG state so that a resumed run equals an uninterrupted one. Rank 0
  writes it, so under DDP every rank restores rank 0's state; the per-step and per-item
  seeds (which include the rank) carry the run there.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._progress import progress_bar
from .checkpoint import (
    capture_rng_state,
    checkpoint_paths,
    load_checkpoint,
    read_checkpoint_meta,
    restore_rng_state,
    save_checkpoint,
)
from .logging import RunLogger
from .runtime import Runtime

__all__ = ["StepLoop", "check_finite_loss", "check_resume_config", "check_schedule", "resume_meta"]


def _mean(values: Sequence[float]) -> float:
    """Mean over the finite-or-inf values, ignoring NaN (NaN when all are NaN)."""
    if all(math.isnan(x) for x in values):
        return float("nan")
    return float(np.nanmean(values))


def check_finite_loss(loss: torch.Tensor, what: str, step: int) -> None:
    """Stop at a non-finite ``loss`` of step ``step`` (numbered as :meth:`StepLoop.run` numbers
    them: the step logged at ``step`` in ``scalars.csv``), before it changes any weight.

    Raises:
        FloatingPointError: naming ``what`` (e.g. "training loss"), the value and the step.
    """
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite {what} {loss.item()} at step {step} (the step logged as {step}; "
                                 "the checkpoints from before it stay as they were)")


def check_schedule(path: str | Path, meta: Mapping[str, Any], total_steps: int, steps_per_epoch: int,
                   changed: str = "the schedule changed") -> None:
    """Refuse to resume checkpoint ``path`` (its ``meta``) into another schedule or epoch length.

    Raises:
        ValueError: ``meta`` records another ``total_steps`` or ``steps_per_epoch``.
    """
    for key, ours in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
        if meta.get(key) not in (None, ours):  # not the same run: other data order and epoch ends
            raise ValueError(f"cannot resume {path}: it was run with {key}={meta[key]}, this config "
                             f"gives {ours} ({changed})")


def check_resume_config(path: str | Path, meta: Mapping[str, Any], config: Mapping) -> None:
    """Refuse to resume checkpoint ``path`` (its ``meta``) under a config that changes what is trained.

    Every key is compared with the config the checkpoint recorded
    (:func:`~fewshot_priors.config.schema.resume_changes`): a changed learning rate, model,
    dataset, augmentation, seed, ... would continue the run with settings its record (the
    checkpoint, ``config.yaml``) does not describe. Changed paths (the files moved) are
    allowed with a warning.

    Raises:
        ValueError: listing every changed key with its old and new value.
    """
    from ..config.schema import resume_changes

    old = meta.get("config")
    if not isinstance(old, Mapping):
        return  # written without a config (an older version): nothing to compare
    refused, moved = resume_changes(old, config)
    if refused:
        raise ValueError(
            f"cannot resume {path}: this config changes what the run trains ({'; '.join(refused)}). "
            "Resume with the run's own settings (its config.yaml), or start a new run with --overwrite "
            "(overwrite=True) or another output folder")
    if moved:
        warnings.warn(f"resuming {path} with moved files: {'; '.join(moved)}; the run continues with "
                      "these paths (recorded in its config)", UserWarning, stacklevel=3)


def resume_meta(out: str | Path, resume: bool | str | Path) -> tuple[Path, Mapping[str, Any]]:
    """``(checkpoint path, its meta)`` of a resume (``True``: ``<out>/last``) from the sidecar alone
    (:func:`~fewshot_priors.engine.checkpoint.read_checkpoint_meta`), to check it before expensive
    preparation; :meth:`StepLoop.start` does the full, verified load.

    Raises:
        CheckpointError: a missing or corrupt checkpoint sidecar.
    """
    path = Path(out) / "last" if resume is True else Path(resume)
    return path, read_checkpoint_meta(path)


class StepLoop:
    """Run global steps ``step .. stop - 1`` of a run with checkpoints, logs and a progress bar.

    Args:
        runtime: device, seed, ranks, AMP.
        out: run folder (already prepared, see :func:`~fewshot_priors.engine.rundir.prepare_run_dir`).
        model: the model whose state is checkpointed (not a DDP wrapper).
        optimizer, scheduler: checkpointed with the model (the scheduler is stepped
            by ``step_fn``).
        total_steps: steps of the whole schedule (stored; a resume with another
            value is refused).
        steps_per_epoch: steps of one epoch (epoch ends and ``epoch`` in checkpoints).
        stop: one past the last step this call runs (``<= total_steps``).
        config: stored as ``meta["config"]`` in every checkpoint.
        prefix: tag prefix of the logged scalars (``train``, ``pretrain``).
        log_every: log the running means every this many steps (and at ``stop``).
        ckpt_every: also save ``last`` every this many steps (None: epoch ends only).
        meta: ``() -> dict`` of extra checkpoint meta, read at each save.
        progress: show a progress bar (rank 0).
        tensorboard: also write TensorBoard events.
        changed: what a resume with other ``total_steps`` means, for the error.
    """

    def __init__(self, runtime: Runtime, out: str | Path, *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, total_steps: int, steps_per_epoch: int,
                 stop: int, config: Mapping, prefix: str, log_every: int, ckpt_every: int | None = None,
                 meta: Callable[[], Mapping[str, Any]] | None = None, progress: bool = True,
                 tensorboard: bool = True, changed: str = "the schedule changed"):
        self.rt, self.out = runtime, Path(out)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.total_steps, self.steps_per_epoch, self.stop = int(total_steps), int(steps_per_epoch), int(stop)
        self.config, self.prefix, self.log_every = config, prefix, int(log_every)
        self.ckpt_every = int(ckpt_every) if ckpt_every else None
        self.meta, self.progress, self.tensorboard, self.changed = meta, progress, tensorboard, changed
        self.step = 0
        self.saved_at = -1
        self.history: list[dict[str, float]] = []
        self.logger: RunLogger | None = None
        self._rng_state: Mapping | None = None

    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.step // self.steps_per_epoch

    # ------------------------------------------------------------------ start / resume / save

    def start(self, resume: str | Path | bool | None = None) -> dict[str, Any] | None:
        """Open the logger; with ``resume`` first load the checkpoint (``True``: ``<out>/last``).

        Returns:
            The checkpoint's ``meta`` when resuming, else None.

        Raises:
            ValueError: the checkpoint was written with another ``total_steps`` or
                ``steps_per_epoch``, or with a config that differs in what is trained
                (:func:`check_resume_config`).
            CheckpointError: see :func:`~fewshot_priors.engine.checkpoint.load_checkpoint`.
        """
        meta = None
        if resume:
            path = self.out / "last" if resume is True else Path(resume)
            ck = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                 map_location=self.rt.device)
            meta = ck["meta"]
            check_schedule(path, meta, self.total_steps, self.steps_per_epoch, self.changed)
            check_resume_config(path, meta, self.config)
            self.step = self.saved_at = int(meta["step"])
            self._rng_state = ck["rng_state"]
            if self._rng_state is None:
                warnings.warn(f"{path} holds no RNG state (written by an older version): the run resumes with "
                              "its per-step seeds only; randomness drawn outside them is not restored",
                              UserWarning, stacklevel=3)
        self.logger = RunLogger(self.out, enabled=self.rt.dist.is_main, tensorboard=self.tensorboard)
        if resume:
            self.logger.truncate_after(self.step)
        return meta

    def save(self, name: str = "last") -> None:
        """Write checkpoint ``<out>/<name>`` (rank 0) with the RNG state and the meta."""
        if name == "last":
            self.saved_at = self.step
        if not self.rt.dist.is_main:
            return
        meta = {"config": self.config, "step": self.step, "epoch": self.epoch, "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, **(self.meta() if self.meta else {})}
        save_checkpoint(self.out / name, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        rng_state=capture_rng_state(), meta=meta)

    @property
    def last_path(self) -> str:
        return str(checkpoint_paths(self.out / "last")[0])

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log scalars at ``step`` (rank 0; after :meth:`start`)."""
        assert self.logger is not None, "call start() first"
        self.logger.log(step, scalars)

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        batches: Iterable[Mapping[str, Any]],
        step_fn: Callable[[dict[str, Any], int], Mapping[str, float]],
        *,
        after_step: Callable[[int], None] | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
        on_end: Callable[[int], None] | None = None,
        postfix: Callable[[Mapping[str, float]], Mapping[str, str]] | None = None,
        history_keys: Sequence[str] | None = None,
        desc: str | None = None,
    ) -> list[dict[str, float]]:
        """Run the steps; return the history (one row per log step: ``step`` and the means).

        Steps are numbered from 1 everywhere: step ``s`` is the ``s``-th step, its scalars
        are logged at ``s`` and a checkpoint with ``step: s`` holds the state after it.
        Per step: ``batch`` to the device, :meth:`Runtime.seed_step`, ``step_fn(batch,
        s)`` (its scalars join the running means; ``lr`` is read from the optimizer
        before it), ``after_step(step + 1)``, logging, ``on_epoch_end(epoch)`` at an
        epoch end, then the ``last`` checkpoint when due. After the last step:
        ``on_end(step)`` and a final ``last`` checkpoint unless the last step saved one.

        Args:
            batches: loader of the steps ``self.step .. stop - 1``.
            step_fn: the model-specific step (forward, loss, backward, optimizer and
                scheduler step) given the batch and the step's number ``s`` (from 1, as
                logged); returns the scalars to average.
            after_step: called with the number of completed steps.
            on_epoch_end: called with the completed epoch (before its checkpoint).
            on_end: called after the last step with the step count.
            postfix: row of means -> progress-bar postfix (default: each mean, 4 digits).
            history_keys: the row keys kept in the history (default: all).
            desc: progress-bar label (default: ``prefix``).
        """
        assert self.logger is not None, "call start() first"
        is_main = self.rt.dist.is_main
        self.model.train()
        bar = progress_bar(total=self.stop, initial=self.step, desc=desc or self.prefix,
                           disable=not (self.progress and is_main), dynamic_ncols=True)
        running: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        it = iter(batches)
        if self._rng_state is not None:  # the RNGs as they were right after the checkpointed step
            restore_rng_state(self._rng_state)
            self._rng_state = None
        for batch in it:
            batch = self.rt.to_device(batch)
            self.rt.seed_step(self.step)
            lr = self.optimizer.param_groups[0]["lr"]
            scalars = step_fn(batch, self.step + 1)  # the step's number in logs and checkpoints
            self.step += 1
            for k, v in scalars.items():
                running.setdefault(k, []).append(v)
            if after_step is not None:
                after_step(self.step)
            bar.update(1)
            if self.step % self.log_every == 0 or self.step == self.stop:
                row = {k: _mean(v) for k, v in running.items()}
                row["lr"] = lr
                row["steps_per_s"] = len(next(iter(running.values()), [])) / max(1e-9, time.perf_counter() - t0)
                keep = row if history_keys is None else {k: row[k] for k in history_keys if k in row}
                self.history.append({"step": self.step, **keep})
                self.logger.log(self.step, {f"{self.prefix}/{k}": v for k, v in row.items() if not math.isnan(v)})
                bar.set_postfix(postfix(row) if postfix else {k: f"{v:.4f}" for k, v in row.items()})
                running, t0 = {}, time.perf_counter()
            end_of_epoch = self.step % self.steps_per_epoch == 0
            if end_of_epoch and on_epoch_end is not None:
                on_epoch_end(self.epoch)
            if end_of_epoch or (self.ckpt_every and self.step % self.ckpt_every == 0):
                self.save("last")
        bar.close()
        if on_end is not None:
            on_end(self.step)
        if self.saved_at != self.step:
            self.save("last")
        self.logger.close()
        return self.history
