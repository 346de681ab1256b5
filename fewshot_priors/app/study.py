"""The one path the demo and the real-images study share: a run config from a preset tree, then
train one QGNet variant and score it 1-/5-shot on the held-out classes, with the baselines.

:mod:`fewshot_priors.app.demo` and :mod:`fewshot_priors.app.real_images` only orchestrate: they make
their data and prior extractor, then call :func:`run_config` and :func:`train_and_score` once per
model; :mod:`fewshot_priors.app.report` turns the scores into tables.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ScoredVariant", "cached_dataset", "run_config", "timer", "train_and_score"]


def timer() -> Callable[[], float]:
    """A stopwatch: ``t = timer(); ...; t()`` -> seconds since ``timer()``, rounded to 0.01 s."""
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 2)


def run_config(
    cfg: Mapping,
    *,
    output_dir: str | Path,
    root: str | Path,
    weights: str | None,
    prior_weights: str | None,
    use_prior: bool = True,
    seed: int | None = None,
) -> dict:
    """A copy of the preset tree ``cfg`` with the run-time values, validated.

    Args:
        cfg: the study's full config tree.
        output_dir: the run folder (``experiment.output_dir``).
        root: the dataset root (``data.root``).
        weights: the frozen backbone's weights (``model.weights``).
        prior_weights: the prior extractor's weights (``model.prior_weights``; None = random init);
            ignored (None) without the prior.
        use_prior: ``model.use_prior``.
        seed: ``experiment.seed`` (default: keep the tree's).
    """
    from fewshot_priors.config import validate

    c = copy.deepcopy(dict(cfg))
    if seed is not None:
        c["experiment"]["seed"] = int(seed)
    c["experiment"]["output_dir"] = str(output_dir)
    c["data"]["root"] = str(root)
    c["model"].update(weights=weights, prior_weights=prior_weights if use_prior else None, use_prior=use_prior)
    return validate(c)


def cached_dataset(cfg: Mapping, split: str, memo: dict | None = None, **kwargs: Any):
    """:func:`~fewshot_priors.engine.build.build_dataset` ``(cfg, split, **kwargs)``; with ``memo``
    (a dict), a dataset built from the same ``data`` section, seed and arguments is reused (its
    label scan reads every mask of the split; the models of one fold share it). A reused training
    set is rewound to epoch 0."""
    from fewshot_priors.engine.build import build_dataset

    key = None
    if memo is not None:
        key = (split, json.dumps([cfg["data"], cfg["experiment"]["seed"], kwargs], sort_keys=True, default=str))
        if key in memo:
            ds = memo[key]
            if split == "train" and hasattr(ds, "set_epoch"):
                ds.set_epoch(0)
            return ds
    ds = build_dataset(cfg, split, **kwargs)
    if memo is not None:
        memo[key] = ds
    return ds


def _validation(cfg: Mapping, train_set: Any, kwargs: Mapping[str, Any]) -> Callable | None:
    """The ``val_fn`` of a training run with ``train.val_every`` > 0 (else None): the mIoU of
    :func:`~fewshot_priors.engine.build.build_validation_set`'s episodes (``train.val_split``)."""
    from fewshot_priors.engine.build import build_validation_set
    from fewshot_priors.engine.evaluate import evaluate

    if not cfg["train"]["val_every"]:
        return None
    val_set = build_validation_set(cfg, train_set, progress=False, **kwargs)
    return lambda m: evaluate(m, val_set, seed=cfg["eval"]["seed"], batch_size=cfg["eval"]["batch_size"],
                              progress=False, desc="val")


@dataclass
class ScoredVariant:
    """What :func:`train_and_score` returns.

    Attributes:
        model: the trained model (eval mode after scoring).
        train: :func:`~fewshot_priors.engine.train.train`'s result plus ``episodes_per_epoch``.
        train_set: the training episodes.
        results: ``{"1-shot": {"qgnet": metrics, baseline name: metrics, ...}}`` (the
            baselines only with ``with_baselines``).
        datasets: ``{K: test episodes}`` of the scored K.
        recall: ``{"1-shot": Table-7 recall of the region maps}`` (with ``recall=True``).
        map_auc: ``{"1-shot": threshold-free AUC / AP of the region maps}`` (with ``map_auc=True``,
            see :class:`~fewshot_priors.app.report.MapAUC`).
        foreground_share: ``{"1-shot": share of the query pixels the model predicts foreground}``.
        skipped: ``{"5-shot": why}``: K not scored (``skip_ineligible``).
        timings_s: ``{"train": s, "evaluate": s}``.
    """

    model: torch.nn.Module
    train: dict[str, Any]
    train_set: Any
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[int, Any] = field(default_factory=dict)
    recall: dict[str, Any] = field(default_factory=dict)
    map_auc: dict[str, Any] = field(default_factory=dict)
    foreground_share: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


def train_and_score(
    cfg: Mapping,
    *,
    shots: Sequence[int] = (1, 5),
    with_baselines: bool = True,
    recall: bool = False,
    map_auc: bool = False,
    dataset_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    dataset_cache: dict | None = None,
    skip_ineligible: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    label: str = "eval",
    say: Callable[[str], None] | None = None,
) -> ScoredVariant:
    """Train the QGNet of the run config ``cfg`` (see :func:`run_config`) on its training classes,
    then score it K-shot on the held-out classes for each K of ``shots``.

    The model, seeded by ``experiment.seed``, is built on ``experiment.device`` and trained on
    ``build_dataset(cfg, "train")``; each K is scored on ``eval.episodes`` episodes of
    ``build_dataset(cfg, "val")`` (episode and evaluation seed ``experiment.seed``, batches of
    ``eval.batch_size``), with the baselines of :func:`fewshot_priors.app.report.predictors` on the
    same forward passes.

    Args:
        cfg: a run config.
        shots: the K of the evaluations.
        with_baselines: also score the guided-map and all-foreground baselines.
        recall: also measure the Table-7 recall of the region maps (:class:`~fewshot_priors.app.report.MapRecall`).
        map_auc: also measure the per-episode pixel ROC AUC / AP of the region maps
            (:class:`~fewshot_priors.app.report.MapAUC`).
        dataset_kwargs: ``{"train": {...}, "val": {...}}``: extra arguments of the datasets
            (e.g. ``min_pixels``, ``cache``).
        dataset_cache: a dict shared by calls on the same data: reuses their datasets (:func:`cached_dataset`).
        skip_ineligible: a K for which no held-out class has the K+1 eligible images an episode
            needs is recorded in ``skipped`` instead of raising.
        overwrite: the run folder may hold a previous run (replaced).
        progress: progress bars.
        label: the progress bars' label (``"<label> <K>-shot"``).
        say: called with a line before each evaluation.
    """
    from fewshot_priors.app.report import MapAUC, MapRecall, predictors
    from fewshot_priors.engine.build import build_model
    from fewshot_priors.engine.evaluate import evaluate
    from fewshot_priors.engine.runtime import Runtime, seed_everything
    from fewshot_priors.engine.train import train

    kw = dataset_kwargs or {}
    seed = cfg["experiment"]["seed"]
    # the held-out episodes first: a K without eligible images (or any data error) fails before training
    val_sets: dict[int, Any] = {}
    skipped: dict[str, str] = {}
    for k in shots:
        try:
            val_sets[k] = cached_dataset(cfg, "val", dataset_cache, shots=k, episodes=cfg["eval"]["episodes"],
                                         seed=seed, progress=progress, **kw.get("val", {}))
        except ValueError as exc:  # no held-out class has the K+1 eligible images a K-shot episode needs
            if not skip_ineligible or "eligible images" not in str(exc):
                raise
            skipped[f"{k}-shot"] = str(exc)
    t = timer()
    seed_everything(seed)
    model = build_model(cfg).to(Runtime.from_config(cfg).device)
    train_set = cached_dataset(cfg, "train", dataset_cache, progress=progress, **kw.get("train", {}))
    res = train(cfg, model=model, train_set=train_set, val_fn=_validation(cfg, train_set, kw.get("val", {})),
                progress=progress, overwrite=overwrite, select_best=True)
    res["episodes_per_epoch"] = len(train_set)
    run = ScoredVariant(model=model, train=res, train_set=train_set)
    run.timings_s["train"] = t()
    run.skipped.update(skipped)
    t = timer()
    for k, ds in val_sets.items():
        name = f"{k}-shot"
        if say is not None:
            say(f"evaluating {k}-shot on {len(ds)} held-out episodes" + (" (+ baselines)" if with_baselines else ""))
        meter = MapRecall() if recall else None
        auc_meter = MapAUC() if map_auc else None
        r = evaluate(model, ds, seed=seed, batch_size=cfg["eval"]["batch_size"],
                     predict_fn=predictors(model, recall=meter, with_baselines=with_baselines, auc=auc_meter),
                     progress=progress, desc=f"{label} {name}")
        run.results[name] = r if with_baselines else {"qgnet": r}
        run.datasets[k] = ds
        run.foreground_share[name] = run.results[name]["qgnet"]["predicted_foreground_share"]
        if meter is not None:
            run.recall[name] = meter.compute()
        if auc_meter is not None:
            run.map_auc[name] = auc_meter.compute()
    run.timings_s["evaluate"] = t()
    return run

