"""Episodic training of a few-shot segmentation model (PFENet's recipe, docs/how-to/reproduce.md), exactly resumable.

The loop is model-agnostic: any module whose ``forward(query_image, support_images,
support_masks, query_mask=...)`` returns a dict with a ``"loss"`` works (QGNet does).
This module holds the supervised step (forward, loss, backward, SGD + poly LR) and the
validation hook; the device, seeds and loader come from :class:`~.runtime.Runtime`, the
step loop, logging, checkpoints and exact resume from :class:`~.loop.StepLoop`
(see :mod:`.runtime` for what makes a resumed run equal an uninterrupted one).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .._validate import is_int
from ..constants import IGNORE_INDEX, OPTIMIZERS
from ..distributed import DistInfo, dist_info
from ..ops import checks_disabled
from .checkpoint import load_checkpoint
from .loop import StepLoop, check_finite_loss
from .rundir import prepare_run_dir
from .runtime import Runtime

__all__ = ["PLATEAU_ADVICE", "PLATEAU_FINDING", "PLATEAU_RATIO", "BackgroundPlateauWarning", "balanced_fg_weight", "check_plateau", "foreground_share",
           "foreground_shares",
           "make_optimizer", "make_poly_scheduler", "plateau_message", "train"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- optimisation


def make_optimizer(params, cfg_train: Mapping) -> torch.optim.Optimizer:
    """The optimizer of ``train.optimizer`` with the config's effective LR and weight decay:
    ``"sgd"`` (PFENet's recipe: SGD with ``train.momentum``) or ``"adamw"`` (``train.momentum``
    unused)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    name = cfg_train.get("optimizer", "sgd")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg_train["lr"], weight_decay=cfg_train["weight_decay"])
    if name != "sgd":
        raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {name!r}")
    return torch.optim.SGD(params, lr=cfg_train["lr"], momentum=cfg_train["momentum"],
                           weight_decay=cfg_train["weight_decay"])


def make_poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9,
                        warmup_steps: int = 0):
    """Poly schedule ``lr = base * (1 - step / total) ** power`` (stepped once per iteration),
    times a linear warm-up ``min(1, (step + 1) / (warmup_steps + 1))`` over the first ``warmup_steps``."""
    total = max(1, int(total_steps))
    warm = max(0, int(warmup_steps))

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / (warm + 1))
        return ramp * max(0.0, 1.0 - min(step, total) / total) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------- self-checks

#: A model predicting less than this share of the true foreground share sits on the background
#: plateau (its best answer, under an unweighted CE on small objects, is background everywhere).
PLATEAU_RATIO = 0.25
#: The validation results logged, with their tags (``val/<tag>``).
VAL_TAGS = {"miou": "miou", "fbiou": "fbiou", "predicted_foreground_share": "fg_pred",
            "true_foreground_share": "fg_true"}


class BackgroundPlateauWarning(UserWarning):
    """A trained model predicts (almost) no foreground: it has not learned to segment."""


def foreground_shares(logits: torch.Tensor | None, query_mask: torch.Tensor) -> dict[str, float]:
    """``{"fg_pred", "fg_true"}``: the shares of the labelled pixels (not 255) that the
    ``B, 2, H, W`` ``logits`` and the ``B, H, W`` ``query_mask`` call foreground; ``{}`` without
    logits (a model that returns only a loss)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[-2:] != query_mask.shape[-2:]:
        return {}
    with torch.no_grad():
        valid = query_mask != IGNORE_INDEX
        n = valid.sum().clamp(min=1)
        pred = ((logits.argmax(1) == 1) & valid).sum() / n
        true = ((query_mask == 1) & valid).sum() / n
        return {"fg_pred": float(pred), "fg_true": float(true)}


#: The plateau warning's first words and its advice (:func:`plateau_message`), for reports that quote
#: only the finding between them.
PLATEAU_FINDING = "training did not leave the background plateau"
PLATEAU_ADVICE = ("Train longer (train.epochs, train.min_steps), set the foreground weight from the data "
                  "(train.fg_balance) or raise the input size (data.image_size); see 'When training collapses' "
                  "in the real-images how-to")


def plateau_message(predicted: float, true: float, where: str) -> str | None:
    """The one-line warning for a model whose ``predicted`` foreground share is below
    :data:`PLATEAU_RATIO` x the ``true`` share (measured on ``where``), else None:
    ``"<PLATEAU_FINDING>: on <where> ... <true> %. <PLATEAU_ADVICE>"``."""
    if not (true > 0 and predicted < PLATEAU_RATIO * true):
        return None
    return (f"{PLATEAU_FINDING}: on {where} the model predicts {100 * predicted:.1f} % of the pixels as foreground "
            f"where the labels have {100 * true:.1f} %. {PLATEAU_ADVICE}")


def check_plateau(val_history: list[dict], history: list[dict], *, selected: str, best: float) -> str | None:
    """Warn (:class:`BackgroundPlateauWarning`) if the model that training returns sits on the
    background plateau: judged on the validation of the selected checkpoint when one ran, else on
    the last logged training steps. Returns the message, or None."""
    vals = [v for v in val_history if "predicted_foreground_share" in v]
    if vals:
        v = max(vals, key=lambda r: r.get("miou", -math.inf)) if selected == "best" else vals[-1]
        msg = plateau_message(v["predicted_foreground_share"], v["true_foreground_share"],
                              f"the validation episodes (mIoU {100 * v.get('miou', float('nan')):.1f})")
    elif history and "fg_pred" in history[-1]:
        msg = plateau_message(history[-1]["fg_pred"], history[-1]["fg_true"], "the last training batches")
    else:
        msg = None
    if msg is not None:
        warnings.warn(msg, BackgroundPlateauWarning, stacklevel=3)
    return msg


def foreground_share(train_set: Dataset, episodes: int = 64) -> float:
    """The share of the labelled query pixels that are foreground, over up to ``episodes`` training
    items spread evenly over ``train_set`` (the global RNG states are restored afterwards, so a
    run's draws do not change)."""
    n = len(train_set)  # type: ignore[arg-type]
    fg = valid = 0
    with torch.random.fork_rng(devices=[]):
        np_state, py_state = np.random.get_state(), random.getstate()
        for i in np.linspace(0, n - 1, num=min(n, episodes)).astype(int).tolist():
            mask = train_set[i]["query_mask"]
            fg += int((mask == 1).sum())
            valid += int((mask != IGNORE_INDEX).sum())
        np.random.set_state(np_state)
        random.setstate(py_state)
    return fg / max(valid, 1)


def balanced_fg_weight(train_set: Dataset, balance: float, episodes: int = 64) -> tuple[float, float]:
    """``(balance * (1 - p) / p, p)`` with ``p`` the training queries' foreground share
    (:func:`foreground_share`): the foreground weight of ``train.fg_balance``. At ``balance`` 1
    the weighted CE's best constant answer is 50 / 50, so the background plateau no longer
    attracts the model whatever the objects' size; the weight follows the data (~4 at a 17 %
    foreground share and ``balance`` 0.8, ~9 at 8 %).

    Raises:
        ValueError: the sampled training queries have no foreground (or nothing else).
    """
    p = foreground_share(train_set, episodes)
    if not 0 < p < 1:
        raise ValueError(f"train.fg_balance needs training queries with both foreground and background; the "
                         f"{min(len(train_set), episodes)} sampled have a foreground share of {p:.3f}")  # type: ignore[arg-type]
    return float(balance) * (1 - p) / p, p


def _postfix(row: Mapping[str, float]) -> dict[str, str]:
    out = {"loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.2e}"}
    if "fg_pred" in row:
        out["fg"] = f"{100 * row['fg_pred']:.0f}/{100 * row['fg_true']:.0f}%"
    return out


def _set_balanced_fg_weight(model: torch.nn.Module, train_set: Dataset, balance: float | None) -> dict[str, float]:
    """With ``train.fg_balance`` set, give ``model`` (its ``fg_weight``) the weight of
    :func:`balanced_fg_weight`; returns ``{"fg_weight", "train_fg_share"}`` (empty when unset)."""
    if balance is None:
        return {}
    if not hasattr(model, "fg_weight"):
        raise ValueError(f"train.fg_balance sets the model's fg_weight; {type(model).__name__} has none")
    weight, share = balanced_fg_weight(train_set, balance)
    model.fg_weight = weight
    if isinstance(getattr(model, "config", None), dict):
        model.config["fg_weight"] = weight  # what save_pretrained records
    return {"fg_weight": weight, "train_fg_share": share}


def _check_positive(name: str, value: Any) -> None:
    if not is_int(value) or value < 1:
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
    select_best: bool = False,
) -> dict[str, Any]:
    """Train ``model`` episodically with SGD + poly LR, checkpointing and logging.

    Args:
        cfg: full config (see :mod:`fewshot_priors.config`); uses ``experiment.seed``,
            ``train.*`` and ``data.num_workers``. The schedule spans ``train.epochs`` epochs,
            or more whole epochs when that gives fewer than ``train.min_steps`` steps. With
            ``train.max_shots`` each step draws its K from ``train_set.shots .. train.max_shots``.
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
        select_best: after training, load the ``best`` checkpoint (the highest validation
            mIoU) into ``model``, when a validation ran; else ``model`` keeps the last weights.

    The run watches itself: each log step records the share of the training queries'
    pixels the model predicts foreground (``fg_pred``) beside the true share (``fg_true``),
    each validation its mIoU, FB-IoU and the same two shares (``val/fg_pred``,
    ``val/fg_true``). A model that ends on the background plateau (it predicts less than
    :data:`PLATEAU_RATIO` of the true foreground share; judged on the selected checkpoint's
    validation, else on the last training steps) gets a :class:`BackgroundPlateauWarning`.

    Returns:
        dict with ``step``, ``epoch``, ``best_miou``, ``history`` (list of per-log-step
        dicts), ``val`` (list of validation results), ``output_dir``, ``last`` (the path
        of the ``last`` checkpoint), ``selected`` (``"best"`` or ``"last"``: the weights
        ``model`` holds) and ``plateau`` (the warning's text, or None).

    Raises:
        ValueError: ``train.epochs`` < 1 or a ``max_steps`` < 1, fewer episodes than a batch,
            a ``train.max_shots`` below ``train_set.shots`` or with a dataset that is not
            episodic, or a resume checkpoint trained with another number of total steps.
        RunFolderError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    tcfg = cfg["train"]
    _check_positive("train.epochs", tcfg["epochs"])
    if max_steps is not None:
        _check_positive("max_steps", max_steps)
    elif tcfg.get("max_steps") is not None:
        _check_positive("train.max_steps", tcfg["max_steps"])
    shots = _shot_range(tcfg, train_set)
    dist = dist or dist_info()
    out = prepare_run_dir(output_dir or cfg["experiment"]["output_dir"], resume=bool(resume), overwrite=overwrite,
                          kind="train", dist=dist)
    rt = Runtime.from_config(cfg, amp=bool(tcfg["amp"]), dist=dist, device=next(model.parameters()).device)
    if collate_fn is None:
        from fewshot_priors.data import collate_episodes as collate_fn  # noqa: N813

    fg = _set_balanced_fg_weight(model, train_set, tcfg.get("fg_balance"))
    params = model.trainable_parameters() if hasattr(model, "trainable_parameters") else model.parameters()
    optimizer = make_optimizer(params, tcfg)
    steps_per_epoch, total_steps, stop = _schedule(tcfg, len(train_set), max_steps)  # type: ignore[arg-type]
    scheduler = make_poly_scheduler(optimizer, total_steps, tcfg["poly_power"], tcfg.get("warmup_steps", 0))
    val = _Validation(val_fn, model, int(tcfg["val_every"] or 0), total_steps)
    loop = StepLoop(rt, out, model=model, optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, stop=stop, config=cfg, prefix="train",
                    log_every=tcfg["log_every"], ckpt_every=tcfg.get("ckpt_every_steps"), progress=progress,
                    meta=val.meta, changed="epochs/batch size/dataset changed")
    val.start(loop, loop.start(resume))
    if dist.is_main:
        from fewshot_priors.config import save_config

        save_config(cfg, out / "config.yaml")
    loader = rt.loader(train_set, batch_size=tcfg["batch_size"], start_step=loop.step, end_step=stop,
                       collate_fn=collate_fn, num_workers=cfg["data"].get("num_workers", 0), shots=shots)
    step_fn = _step_fn(rt, ddp_model if ddp_model is not None else model, optimizer, scheduler,
                       float(tcfg["grad_clip"]) if tcfg.get("grad_clip") else None,
                       bool(tcfg.get("check_inputs", False)))  # value checks sync with the GPU: off in the hot loop
    history = loop.run(loader, step_fn, on_epoch_end=val.on_epoch_end, on_end=val.on_end,
                       history_keys=("loss", "lr", "fg_pred", "fg_true"), postfix=_postfix)
    if dist.is_main and (out / "scalars.csv").exists():
        _draw_loss_curve(out)
    selected = "last"
    if select_best and math.isfinite(val.best):
        load_checkpoint(out / "best", model=model, map_location=rt.device)
        selected = "best"
    plateau = check_plateau(val.history, history, selected=selected, best=val.best)
    return {"step": loop.step, "epoch": loop.epoch, "best_miou": val.best, "history": history, "val": val.history,
            "output_dir": str(out), "last": loop.last_path, "selected": selected, "plateau": plateau, **fg}


def _schedule(tcfg: Mapping, n: int, max_steps: int | None) -> tuple[int, int, int]:
    """``(steps per epoch, total steps, stop step)`` of a run on ``n`` episodes: ``train.epochs``
    epochs, or more whole epochs when that gives fewer than ``train.min_steps`` steps; it stops
    early at ``max_steps`` (else ``train.max_steps``) when set."""
    steps_per_epoch = n // tcfg["batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {n} episodes, fewer than train.batch_size={tcfg['batch_size']}")
    # on tiny data a few epochs are too few optimiser steps: train.min_steps adds whole epochs
    epochs = max(int(tcfg["epochs"]), math.ceil(int(tcfg.get("min_steps") or 0) / steps_per_epoch))
    total_steps = steps_per_epoch * epochs
    stop = total_steps if max_steps is None and tcfg.get("max_steps") is None else min(
        total_steps, int(max_steps if max_steps is not None else tcfg["max_steps"]))
    return steps_per_epoch, total_steps, stop


def _shot_range(tcfg: Mapping, train_set: Dataset) -> tuple[int, int] | None:
    """``(data.shots, train.max_shots)``: the K range the steps draw from; None without ``train.max_shots``."""
    high = tcfg.get("max_shots")
    if high is None:
        return None
    low = getattr(train_set, "shots", None)
    if low is None or not hasattr(train_set, "set_epoch"):
        raise ValueError(f"train.max_shots={high} needs an episodic training set with `shots` and `set_epoch`, "
                         f"got {type(train_set).__name__}")
    if high < low:
        raise ValueError(f"train.max_shots={high} is below the training set's shots={low}")
    return int(low), int(high)


def _step_fn(rt: Runtime, runner: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             clip: float | None, check_inputs: bool) -> Callable[[dict[str, Any], int], dict[str, float]]:
    """One supervised step: forward (``runner``), loss check, backward, optional gradient clipping,
    SGD and LR steps; returns the loss and the foreground shares."""

    def step_fn(batch: dict[str, Any], step: int) -> dict[str, float]:
        with rt.autocast(), contextlib.nullcontext() if check_inputs else checks_disabled():
            outputs = runner(batch["query_image"], batch["support_images"], batch["support_masks"],
                             query_mask=batch["query_mask"])
        loss = outputs["loss"].float()
        check_finite_loss(loss, "training loss", step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        optimizer.step()
        scheduler.step()
        return {"loss": loss.item(), **foreground_shares(outputs.get("logits"), batch["query_mask"])}

    return step_fn


class _Validation:
    """The validation hook of :func:`train`: ``val_fn`` every ``val_every`` epochs and at the end,
    logged, with the best ``miou`` kept as the ``best`` checkpoint (state resumed from the checkpoint's meta)."""

    def __init__(self, val_fn: Callable[[torch.nn.Module], Mapping[str, float]] | None, model: torch.nn.Module,
                 val_every: int, total_steps: int):
        self.val_fn, self.model, self.val_every, self.total_steps = val_fn, model, val_every, total_steps
        self.best, self.history = -math.inf, []
        self.loop: StepLoop | None = None

    def meta(self) -> dict[str, Any]:
        """What each checkpoint records of the validation."""
        return {"best_miou": self.best, "val": self.history}

    def start(self, loop: StepLoop, meta: Mapping[str, Any] | None) -> None:
        """Attach to the started ``loop``; a resumed run takes back its best mIoU and validation history."""
        self.loop = loop
        if meta is not None:
            self.best = float(meta.get("best_miou", -math.inf))
            self.history = list(meta.get("val", []))

    def validate(self, epoch: int) -> None:
        loop = self.loop
        if self.val_fn is None or loop is None:
            return
        res = dict(self.val_fn(self.model))
        res.update(step=loop.step, epoch=epoch)
        self.history.append({k: v for k, v in res.items() if k != "per_class_iou"})
        loop.log(loop.step, {f"val/{VAL_TAGS[k]}": v for k, v in res.items() if k in VAL_TAGS})
        if res.get("miou", -math.inf) > self.best:
            self.best = float(res["miou"])
            loop.save("best")
        self.model.train()

    def on_epoch_end(self, epoch: int) -> None:
        if self.val_every and epoch % self.val_every == 0:
            self.validate(epoch)

    def on_end(self, step: int) -> None:
        """The final validation, unless the last epoch end just ran it."""
        loop = self.loop
        if (loop is not None and step == self.total_steps and self.val_fn is not None
                and not (self.val_every and loop.epoch % self.val_every == 0)):
            self.validate(loop.epoch)
            loop.save("last")  # its meta then holds this validation too


def _draw_loss_curve(out: Path) -> None:
    """``loss_curve.png`` of the run's ``scalars.csv``; a failure is logged, never raised."""
    try:
        from fewshot_priors.viz import plot_loss_curve

        plot_loss_curve(out / "scalars.csv", out / "loss_curve.png")
    except Exception as exc:  # pragma: no cover - plotting must never kill a finished run
        log.warning("could not draw the loss curve: %s", exc)
