"""What the demo and the real-images study share: a run config from a preset tree, the reuse of a
pretrained prior extractor (:class:`PriorCache`), training one QGNet variant and scoring it
1-/5-shot on the held-out classes with the baselines (:func:`train_and_score`), and the runner of a
study's plan of models (:func:`run_study`), which reuses the finished ones.

:mod:`fewshot_priors.app.demo` and :mod:`fewshot_priors.app.real_images` only orchestrate: they make
their data, plan their models and hand them to :func:`run_study`;
:mod:`fewshot_priors.app.report` turns the scores into tables.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write

__all__ = ["BASELINES", "RESULT_FILE", "GroupResult", "PriorCache", "ScoredVariant", "TrainUnit", "Unit", "UnitGroup",
           "as_json", "cached_dataset", "read_result", "reusable_result", "run_config", "run_study", "saved_baselines",
           "timer", "train_and_score", "training_record"]


def timer() -> Callable[[], float]:
    """A stopwatch: ``t = timer(); ...; t()`` -> seconds since ``timer()``, rounded to 0.01 s."""
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 2)


def training_record(train_res: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What a study records of one :func:`~fewshot_priors.engine.train.train` run: its steps, episodes
    per epoch, last logged loss, and the CE's foreground weight it trained with (``train.fg_balance``
    sets it from the training queries' foreground share ``train_fg_share``; otherwise it is the
    config's ``model.fg_weight`` and ``train_fg_share`` is ``None``)."""
    return {"steps": train_res["step"], "episodes_per_epoch": train_res["episodes_per_epoch"],
            "final_loss": train_res["history"][-1]["loss"] if train_res["history"] else None,
            "fg_weight": train_res.get("fg_weight", cfg["model"]["fg_weight"]),
            "train_fg_share": train_res.get("train_fg_share")}


def _read_json(path: Path) -> Any:
    """The content of a JSON file; None when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, paths strings): the form in which
    stamps and results are compared with saved ones."""
    return json.loads(json.dumps(value, default=str))


#: The file in a run folder holding its result (a study unit's: with the stamp of what produced it).
RESULT_FILE = "result.json"


class PriorCache:
    """A pretrained prior extractor kept in its run folder with what produced it, reused by a later
    run with the same settings.

    The folder holds :func:`~fewshot_priors.engine.pretrain.pretrain`'s run, its returned dict
    (``result.json``) and the settings stamp (``settings.json``). The stamp is written last, once
    the export exists, and removed before pretraining again; as ``pretrain(overwrite=True)``
    deletes the old export first, an interrupted pretraining leaves no stamp vouching for a file
    that is gone. :meth:`load` reuses a run only if the stamp matches, the result is readable and
    its export exists and loads as a prior extractor.

    Args:
        folder: the pretraining run folder.
        stamp: everything the pretrained extractor depends on (JSON-able; compared as JSON).

    Example:
        >>> cache = PriorCache("out/prior_extractor", {"settings": cfg["pretrain"], "seed": 0})  # doctest: +SKIP
        >>> result = cache.load() or cache.pretrain(cfg)  # doctest: +SKIP
    """

    STAMP_FILE = "settings.json"

    def __init__(self, folder: str | Path, stamp: Mapping[str, Any]):
        self.folder = Path(folder)
        self.stamp = as_json(stamp)

    def load(self) -> dict[str, Any] | None:
        """The result of an earlier pretraining with this stamp whose export loads, else None."""
        from fewshot_priors.ssl.export import load_prior_extractor

        if _read_json(self.folder / self.STAMP_FILE) != self.stamp:
            return None
        result = _read_json(self.folder / RESULT_FILE)
        if not isinstance(result, dict) or not result.get("prior_extractor"):
            return None
        try:
            load_prior_extractor(result["prior_extractor"])
        except (OSError, ValueError):  # missing, truncated or foreign: pretrain again
            return None
        return result

    def pretrain(self, cfg: Mapping[str, Any], *, progress: bool = False) -> dict[str, Any]:
        """Pretrain afresh in the folder (``pretrain(cfg, overwrite=True)``; ``cfg``'s
        ``experiment.output_dir`` must be the folder), then save the result and the stamp."""
        from fewshot_priors.engine.pretrain import pretrain

        if Path(cfg["experiment"]["output_dir"]) != self.folder:
            raise ValueError(f"experiment.output_dir must be the cache's folder {self.folder}, got "
                             f"{cfg['experiment']['output_dir']!r}")
        (self.folder / self.STAMP_FILE).unlink(missing_ok=True)  # before pretrain() deletes the export
        result = pretrain(cfg, overwrite=True, progress=progress)
        if result["prior_extractor"] and Path(result["prior_extractor"]).is_file():
            atomic_write((self.folder / RESULT_FILE, json.dumps(result, default=str).encode()))
            atomic_write((self.folder / self.STAMP_FILE, json.dumps(self.stamp).encode()))
        return result


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
        support_check: ``{"5-shot": what the support check did}`` (with ``eval.support_check``, the
            K >= 2 scored; see :class:`~fewshot_priors.app.report.SupportCheckTally`).
        foreground_share: ``{"1-shot": share of the query pixels the model predicts foreground}``.
        skipped: ``{"5-shot": why}``: K not scored (``skip_ineligible``).
        timings_s: ``{"train": s, "evaluate": s}``.
        config: the run config it was trained with.
    """

    model: torch.nn.Module
    train: dict[str, Any]
    train_set: Any
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[int, Any] = field(default_factory=dict)
    recall: dict[str, Any] = field(default_factory=dict)
    map_auc: dict[str, Any] = field(default_factory=dict)
    support_check: dict[str, Any] = field(default_factory=dict)
    foreground_share: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


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
    from fewshot_priors.engine.build import build_model
    from fewshot_priors.engine.runtime import Runtime, seed_everything
    from fewshot_priors.engine.train import train

    kw = dataset_kwargs or {}
    # the held-out episodes first: a K without eligible images (or any data error) fails before training
    val_sets, skipped = _held_out_sets(cfg, shots, dataset_cache, progress, kw.get("val", {}), skip_ineligible)
    t = timer()
    seed_everything(cfg["experiment"]["seed"])
    model = build_model(cfg).to(Runtime.from_config(cfg).device)
    train_set = cached_dataset(cfg, "train", dataset_cache, progress=progress, **kw.get("train", {}))
    res = train(cfg, model=model, train_set=train_set, val_fn=_validation(cfg, train_set, kw.get("val", {})),
                progress=progress, overwrite=overwrite, select_best=True)
    res["episodes_per_epoch"] = len(train_set)
    run = ScoredVariant(model=model, train=res, train_set=train_set, config=dict(cfg))
    run.timings_s["train"] = t()
    run.skipped.update(skipped)
    t = timer()
    for k, ds in val_sets.items():
        if say is not None:
            say(f"evaluating {k}-shot on {len(ds)} held-out episodes" + (" (+ baselines)" if with_baselines else ""))
        _score(run, k, ds, with_baselines=with_baselines, recall=recall, map_auc=map_auc, progress=progress,
               desc=f"{label} {k}-shot")
    run.timings_s["evaluate"] = t()
    return run


def _held_out_sets(cfg: Mapping, shots: Sequence[int], dataset_cache: dict | None, progress: bool,
                   kwargs: Mapping[str, Any], skip_ineligible: bool) -> tuple[dict[int, Any], dict[str, str]]:
    """``({K: held-out episodes}, {"5-shot": why not})`` (see :func:`train_and_score`)."""
    val_sets: dict[int, Any] = {}
    skipped: dict[str, str] = {}
    for k in shots:
        try:
            val_sets[k] = cached_dataset(cfg, "val", dataset_cache, shots=k, episodes=cfg["eval"]["episodes"],
                                         seed=cfg["experiment"]["seed"], progress=progress, **kwargs)
        except ValueError as exc:  # no held-out class has the K+1 eligible images a K-shot episode needs
            if not skip_ineligible or "eligible images" not in str(exc):
                raise
            skipped[f"{k}-shot"] = str(exc)
    return val_sets, skipped


def _score(run: ScoredVariant, k: int, ds: Any, *, with_baselines: bool, recall: bool, map_auc: bool,
           progress: bool, desc: str) -> None:
    """Score ``run.model`` K-shot on the episodes ``ds`` (with the baselines and map meters asked for)
    into ``run``."""
    from fewshot_priors.app.report import MapAUC, MapRecall, SupportCheckTally, predictors
    from fewshot_priors.engine.evaluate import evaluate

    cfg, name = run.config, f"{k}-shot"
    meter = MapRecall() if recall else None
    auc_meter = MapAUC() if map_auc else None
    checks = SupportCheckTally() if cfg["eval"]["support_check"] else None
    r = evaluate(run.model, ds, seed=cfg["experiment"]["seed"], batch_size=cfg["eval"]["batch_size"],
                 predict_fn=predictors(run.model, recall=meter, with_baselines=with_baselines, auc=auc_meter,
                                       checks=checks),
                 progress=progress, desc=desc)
    run.results[name] = r if with_baselines else {"qgnet": r}
    run.datasets[k] = ds
    run.foreground_share[name] = run.results[name]["qgnet"]["predicted_foreground_share"]
    if meter is not None:
        run.recall[name] = meter.compute()
    if auc_meter is not None:
        run.map_auc[name] = auc_meter.compute()
    checked = checks.compute() if checks is not None else {}
    if checked:
        run.support_check[name] = checked



# --------------------------------------------------------------------------- the plan of a study and its runner

#: The baselines scored beside each model (:func:`fewshot_priors.app.report.predictors`): name -> what it is.
BASELINES = {"baseline_guided_map_0.5": "guided region map thresholded at 0.5 (it depends only on the frozen "
                                        "supervised backbone, the same in every variant)",
             "baseline_all_foreground": "every pixel foreground"}


@dataclass
class Unit:
    """One model of a study's plan: ``variant`` trained with ``seed`` while ``fold`` is held out.

    Attributes:
        seed: the training seed.
        fold: the held-out class fold.
        variant: which model.
        folder: its run folder; a finished unit's result is saved there (:data:`RESULT_FILE`).
        stamp: everything its result depends on (JSON-able); None: never reused nor saved.
        figures: its result must list Fig. 5 panels that exist (a saved one without is trained again).
    """

    seed: int
    fold: int
    variant: str
    folder: Path
    stamp: dict[str, Any] | None = None
    figures: bool = False


@dataclass
class UnitGroup:
    """The units of one (seed, fold): they share their held-out episodes, so the baselines are
    scored once per group, with its first model trained.

    Attributes:
        seed: the training seed.
        fold: the held-out class fold.
        units: the group's models, in training order.
        base: the part of the stamps its units share (a saved result of any model of the group
            with this base holds valid baselines); None: nothing is reused.
        about: said after ``training <variant>`` in the status line.
    """

    seed: int
    fold: int
    units: list[Unit]
    base: dict[str, Any] | None = None
    about: str = ""


@dataclass
class GroupResult:
    """What :func:`run_study` returns per group.

    Attributes:
        group: the group.
        results: ``{variant: result}``: what the training function returned (as JSON reads it back
            for a stamped unit), with ``with_baselines``.
        baselines: the result holding the baselines' scores.
        trained: how many models this run trained (the others were reused).
        seconds: the group's time.
        train_seconds: the time of the models it trained (training and scoring).
    """

    group: UnitGroup
    results: dict[str, dict[str, Any]]
    baselines: dict[str, Any]
    trained: int
    seconds: float
    train_seconds: float

    def scores(self) -> dict[str, dict[str, Any]]:
        """``{"1-shot": {name: metrics}}``: every model's scores and the baselines'."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.results.values():
            for shot, methods in r["results"].items():
                out.setdefault(shot, {}).update({k: m for k, m in methods.items() if k not in BASELINES})
        for shot, methods in self.baselines["results"].items():
            out.setdefault(shot, {}).update({k: m for k, m in methods.items() if k in BASELINES})
        return out


def read_result(path: Path) -> tuple[dict, dict] | None:
    """``(stamp, result)`` of a saved unit's :data:`RESULT_FILE`; None when missing, damaged or not ours."""
    saved = _read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("stamp"), dict) or not isinstance(
            saved.get("result"), dict):
        return None
    return saved["stamp"], saved["result"]


def reusable_result(path: Path, stamp: Mapping[str, Any], draw: bool) -> dict[str, Any] | None:
    """A saved unit result with this stamp (and its Fig. 5 panels when ``draw``), else None (trained again)."""
    saved = read_result(path)
    if saved is None or saved[0] != stamp:
        return None
    r = saved[1]
    if draw and not (r.get("figures") and all(Path(p).is_file() for p in r["figures"].values())):
        return None
    return r


def saved_baselines(group_dir: Path, base: Mapping[str, Any]) -> dict[str, Any] | None:
    """A saved result of a unit under ``group_dir`` (any variant) with the stamp ``base`` that scored
    the baselines."""
    for path in sorted(group_dir.glob(f"*/{RESULT_FILE}")):
        saved = read_result(path)
        if saved is not None and saved[1].get("with_baselines") and {k: saved[0].get(k) for k in base} == dict(base):
            return saved[1]
    return None


def _saved_units(group: UnitGroup) -> tuple[dict[str, dict | None], dict | None]:
    """``({variant: saved result or None}, the saved result holding the baselines or None)``; when every
    model is saved but none scored the baselines, the first is trained again to score them."""
    saved = {u.variant: None if u.stamp is None else reusable_result(u.folder / RESULT_FILE, as_json(u.stamp),
                                                                     u.figures)
             for u in group.units}
    baselines = next((r for r in saved.values() if r is not None and r["with_baselines"]), None)
    if baselines is None and group.base is not None and all(r is not None for r in saved.values()):
        folders = {u.folder.parent for u in group.units}
        baselines = next((b for d in sorted(folders) if (b := saved_baselines(d, as_json(group.base)))), None)
        if baselines is None:
            saved[group.units[0].variant] = None
    return saved, baselines


#: ``(unit, with_baselines, dataset_cache) -> result``: trains and scores one unit; the result holds
#: ``results`` (``{"1-shot": {name: metrics}}``) and anything JSON-able (saved for a stamped unit).
TrainUnit = Callable[[Unit, bool, dict], Mapping[str, Any]]


def _train_unit(unit: Unit, train: TrainUnit, with_baselines: bool, datasets: dict) -> dict[str, Any]:
    """Train ``unit`` and save its result with its stamp (when it has one)."""
    r = {**train(unit, with_baselines, datasets), "with_baselines": with_baselines}
    if unit.stamp is not None:  # a fresh result reads like a reused one
        r = as_json(r)
        unit.folder.mkdir(parents=True, exist_ok=True)
        atomic_write((unit.folder / RESULT_FILE, json.dumps({"stamp": as_json(unit.stamp), "result": r},
                                                            indent=1).encode()))
    return r


def run_study(plan: Iterable[UnitGroup], train: TrainUnit, *, groups: int, say: Callable[[str], None]
              ) -> list[GroupResult]:
    """Run a study's plan: each group's units in turn, reusing the finished ones.

    A unit whose folder holds a result saved with the same stamp (and its Fig. 5 panels, when it
    draws them) is reused; any other is trained by ``train``, which gets the unit, whether to score
    the baselines (for the group's first model trained, unless a saved result of the group holds
    them) and a dict shared by the group's calls (for :func:`cached_dataset`). A stamped unit's
    result is saved at once, so a run interrupted later resumes where it stopped.

    Args:
        plan: the groups, in order (a generator may do each seed's shared work, e.g. pretraining,
            before yielding its groups).
        train: trains and scores one unit (:data:`TrainUnit`).
        groups: how many groups the plan has (for the status lines).
        say: called with each status line (which unit is trained or reused, each group's scores
            and an estimate of the time left).

    Returns:
        One :class:`GroupResult` per group.
    """
    done: list[GroupResult] = []
    model_s, trained = 0.0, 0
    for i, group in enumerate(plan):
        t = timer()
        where = f"seed {group.seed} fold {group.fold} ({i + 1}/{groups})"
        saved, baselines = _saved_units(group)
        results, datasets, new, group_model_s = {}, {}, 0, 0.0
        for unit in group.units:
            r = saved[unit.variant]
            if r is None:
                say(f"{where}: training {unit.variant}{group.about}")
                tv = timer()
                r = _train_unit(unit, train, baselines is None, datasets)
                group_model_s += tv()
                new += 1
                if baselines is None:
                    baselines = r
            else:
                say(f"{where}: reusing {unit.variant} from a previous run with the same settings "
                    f"({unit.folder / RESULT_FILE})")
            results[unit.variant] = r
        trained, model_s = trained + new, model_s + group_model_s
        res = GroupResult(group, results, baselines, new, t(), group_model_s)
        done.append(res)
        left = groups - len(done)
        say(_group_line(res, left, left * len(group.units) * (model_s / trained if trained else 0.0)))
    return done


def _group_line(res: GroupResult, groups_left: int, left_s: float) -> str:
    """The status line of a finished group: its time, models trained, scores and (while groups are
    left) an estimate of the time left."""
    from fewshot_priors.app.report import pct

    line = "; ".join(f"{shot}: " + ", ".join(f"{n} {pct(m['miou'])}" for n, m in ms.items())
                     for shot, ms in res.scores().items())
    return (f"seed {res.group.seed} fold {res.group.fold} done in {res.seconds:.0f}s, {res.trained} model(s) trained "
            f"(mIoU %: {line})" + (f"; at most about {left_s / 60:.1f} min left" if groups_left else ""))
