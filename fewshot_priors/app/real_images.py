"""QGNet on a folder of real photos (FSS-1000 layout), cross-validated over classes.

``fewshot-priors real-images --root PATH`` (or :func:`run_real_images`) runs, for each seed:

1. **Prior extractors.** :func:`~fewshot_priors.engine.pretrain.pretrain` trains a
   :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` (``pretrain.backbone``) on *all* unique
   images of the folder without labels (the paper pretrains on all PASCAL train images): from
   random init (prior ``"moco"``) and, when ``pretrain.weights`` names initial weights (e.g.
   ImageNet), from those (``"imagenet_moco"``); each is shared by the folds of the seed.
2. **Folds.** The classes with at least ``min_images`` images are split into
   ``num_folds`` seeded folds (:func:`class_folds`); each fold is held out in turn
   and QGNet trains on all other classes (the small classes are always training
   classes).
3. **Models** per fold (:data:`VARIANTS`, chosen by ``study.variants``): the same frozen
   supervised backbone (``model.backbone`` + ``model.weights``), data and schedule, with the
   prior extractor (``pretrain.backbone``) from GlobalLocalMoCo, from ImageNet + GlobalLocalMoCo,
   from ImageNet alone, random-init, or no prior map at all (PFENet-style). The backbone pair is
   free: the two backbones each normalise their input with their own mean/std.
4. **Evaluation** 1-shot and 5-shot on the held-out classes, with two baselines
   on the same episodes (the thresholded guided region map and all-foreground), the Table-7
   recall of the region maps, and their threshold-free pixel ROC AUC / AP
   (:class:`~fewshot_priors.app.report.MapAUC`).
5. **Outputs**: ``metrics.json`` (every run and the summary), ``results.md``
   (mean, std, min-max over seeds of the fold-averaged mIoU / FB-IoU, map AUC / AP,
   recall), Fig. 5 panels on real photos.
"""

from __future__ import annotations

import copy
import json
import platform
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validate import is_int
from ..data.folder import class_image_counts, list_unique_images
from .report import gains_markdown, paired_gains, results_markdown, summarize
from .report import pct as _pct
from .study import (
    BASELINES,
    GroupResult,
    PriorCache,
    ScoredVariant,
    Unit,
    UnitGroup,
    run_config,
    run_study,
    train_and_score,
    training_record,
)
from .study import timer as _timer

__all__ = ["BASELINES", "PRESET_CONFIGS", "PRIOR_KINDS", "VARIANTS", "class_folds", "real_images_config",
           "run_real_images", "train_and_evaluate"]

#: The shipped configs of the presets (``fewshot_priors/configs/real_images/<preset>.yaml``), exactly what
#: runs: ``full`` (the default), the recipe of ``docs/how-to/real-images.md`` (ImageNet tf_efficientnet_lite0
#: backbones from ``model.weights`` / ``pretrain.weights``, 224 px at stride 16, the foreground weight from the
#: data) with the two models that need no pretraining (time: see the how-to); ``long``, the same settings
#: with every variant of the prior extractor (hours on a CPU, minutes on a GPU; it shares the two models'
#: results with ``full`` in one output folder); ``scratch``, no ImageNet weights at all (every backbone from
#: the seed's GlobalLocalMoCo run: on real photos it collapses to background); ``quick``, everything end to
#: end in a minute or two (tests; the numbers are meaningless).
PRESET_CONFIGS = {"full": "real_images/full", "long": "real_images/long", "scratch": "real_images/scratch",
                  "quick": "real_images/quick"}
#: The presets whose recipe assumes ImageNet weights for the frozen supervised backbone (a warning without).
_IMAGENET_PRESETS = ("full", "long")


def real_images_config(preset: str = "full", overrides: Iterable[str] | Mapping[str, Any] | None = None) -> dict:
    """The study's config: the preset's tree (:data:`PRESET_CONFIGS`) with ``section.key=value`` overrides."""
    from fewshot_priors.config import ConfigError, load_config

    if preset not in PRESET_CONFIGS:
        import difflib

        close = difflib.get_close_matches(str(preset), PRESET_CONFIGS, n=1)
        raise ConfigError(f"unknown real-images preset {preset!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                          + f" (valid: {', '.join(PRESET_CONFIGS)})")
    return load_config(PRESET_CONFIGS[preset], overrides)


#: Where the prior extractor of a variant comes from: ``"moco"`` GlobalLocalMoCo from random init on
#: the photos, ``"imagenet_moco"`` GlobalLocalMoCo from ``pretrain.weights``, ``"imagenet"`` the
#: ``pretrain.weights`` file itself (no self-supervision), ``"random"`` random init, ``None`` no prior.
PRIOR_KINDS = ("moco", "imagenet_moco", "imagenet", "random", None)

#: The compared models: key -> (description, prior kind of :data:`PRIOR_KINDS`).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "qgnet": ("QGNet, prior extractor pretrained by GlobalLocalMoCo on the photos from random init", "moco"),
    "qgnet_imagenet_moco_prior": ("QGNet, prior extractor = pretrain.weights (e.g. ImageNet), then GlobalLocalMoCo "
                                  "on the photos", "imagenet_moco"),
    "qgnet_imagenet_prior": ("QGNet, prior extractor = pretrain.weights (e.g. ImageNet), no self-supervision",
                             "imagenet"),
    "qgnet_random_prior": ("QGNet, random-init frozen prior extractor", "random"),
    "qgnet_without_prior": ("QGNet without the prior region map (PFENet-style, use_prior=False)", None),
}
_NEEDS_INIT = ("imagenet_moco", "imagenet")  # prior kinds that need pretrain.weights


def class_folds(counts: Mapping[str, int], num_folds: int = 4, min_images: int = 5, seed: int = 0) -> list[list[str]]:
    """Split the classes with ``>= min_images`` images into ``num_folds`` seeded folds.

    Args:
        counts: ``{class name: number of images}`` (see :func:`class_image_counts`).
        num_folds: number of folds (each is held out once).
        min_images: classes with fewer images are never held out (training only).
        seed: seed of the class permutation.

    Returns:
        ``num_folds`` sorted lists of class names; sizes differ by at most one.
    """
    if not is_int(num_folds) or num_folds < 2:
        raise ValueError(f"`num_folds` must be an int >= 2, got {num_folds!r}")
    big = sorted(c for c, n in counts.items() if n >= min_images)
    if len(big) < num_folds:
        raise ValueError(f"only {len(big)} classes have >= {min_images} images ({big}); "
                         f"`num_folds`={num_folds} needs at least that many")
    perm = np.random.default_rng([int(seed), 4242]).permutation(len(big))
    return [sorted(big[int(i)] for i in perm[f::num_folds]) for f in range(num_folds)]


def _prior_settings(cfg: Mapping, kind: str | None, priors: Mapping[str, str]) -> dict[str, Any]:
    """The ``model`` keys of the prior extractor of ``kind`` (``priors``: kind -> exported file)."""
    if kind is None:
        return {"use_prior": False, "prior_backbone": None, "prior_weights": None}
    weights = {"random": None, "imagenet": cfg["pretrain"]["weights"]}.get(kind, priors.get(kind))
    if kind != "random" and weights is None:
        raise ValueError(f"the {kind!r} prior needs " + ("pretrain.weights (a local weights file, e.g. ImageNet)"
                                                          if kind in _NEEDS_INIT else f"the {kind!r} pretraining"))
    # a prior from pretrain.weights normalises as those weights want (the file, else timm's cfg)
    return {"use_prior": True, "prior_backbone": cfg["pretrain"]["backbone"], "prior_weights": weights}


def train_and_evaluate(
    root: str | Path,
    test_classes: Sequence[str],
    out: str | Path,
    cfg: Mapping[str, Any],
    *,
    seed: int,
    priors: Mapping[str, str],
    variant: str = "qgnet",
    shots: Sequence[int] = (1, 5),
    progress: bool = False,
    with_baselines: bool = True,
    figure_episodes: int = 0,
    dataset_cache: dict | None = None,
    keep_checkpoint: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train one QGNet ``variant`` on every class but ``test_classes`` and score it on them.

    Args:
        root: the folder dataset.
        test_classes: held-out class folder names (never seen in training).
        out: run folder (checkpoints, logs).
        cfg: the study's config (:func:`real_images_config`); its ``model`` section names the frozen
            supervised backbone (``model.weights``: null = the ``"moco"`` encoder of ``priors`` when
            ``model.backbone == pretrain.backbone``, else random init).
        seed: seed of the model init, training and test episodes.
        priors: ``{prior kind: exported prior-extractor file}`` of this seed's pretraining runs.
        variant: a key of :data:`VARIANTS`.
        shots: the K of the evaluations.
        with_baselines: also score the guided-map and all-foreground baselines.
        figure_episodes: draw Fig. 5 panels of this many test episodes per K.
        dataset_cache: a dict shared by the calls of one (seed, fold): reuses its datasets.
        keep_checkpoint: keep the trained model's ``last`` checkpoint in ``out``.
        overwrite: ``out`` may hold an earlier (e.g. interrupted) run: it is replaced.

    Returns:
        ``{"results": {"1-shot": {name: metrics}}, "recall": ..., "map_auc": ..., "train": ...,
        "timings_s": ..., "figures": ..., "skipped": {"5-shot": why}}``: a K is skipped when no
        held-out class has K+1 eligible images.
    """
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(VARIANTS)}, got {variant!r}")
    root, out = Path(root), Path(out)
    prior = _prior_settings(cfg, VARIANTS[variant][1], priors)
    cfg = run_config(cfg, output_dir=out, root=root, seed=seed, weights=supervised_weights(cfg, priors),
                     prior_weights=prior["prior_weights"], use_prior=prior["use_prior"])
    cfg["model"]["prior_backbone"] = prior["prior_backbone"]
    # the datasets come from the run config (engine.build_dataset): the held-out classes are data.fold_classes
    # (so the run folder's config names them too); training pairs need study.train_min_pixels px of the
    # class (default data.min_pixels), test pairs data.min_pixels; no label-index cache files are written
    cfg["data"]["fold_classes"] = list(test_classes)
    train_min = cfg["study"]["train_min_pixels"]
    train_kw = {"cache": False} if train_min is None else {"cache": False, "min_pixels": int(train_min)}
    run = train_and_score(cfg, shots=shots, with_baselines=with_baselines, progress=progress, label=variant,
                          recall=True, map_auc=True,
                          dataset_kwargs={"train": train_kw, "val": {"cache": False}}, dataset_cache=dataset_cache,
                          skip_ineligible=True, overwrite=overwrite)
    if not keep_checkpoint:  # ~100 MB each (the frozen backbones included); dozens per full run
        from fewshot_priors.engine.checkpoint import checkpoint_paths

        for path in (*checkpoint_paths(out / "last"), *checkpoint_paths(out / "best")):
            Path(path).unlink(missing_ok=True)
    figures = _draw_figures(run, out, f"{variant} on real photos, held-out {', '.join(sorted(test_classes))}",
                            figure_episodes) if figure_episodes else {}
    return _model_record(run, variant, cfg, figures)


def _draw_figures(run: ScoredVariant, out: Path, title: str, n: int) -> dict[str, str]:
    """``{"1-shot": png}``: Fig. 5 panels of ``n`` held-out episodes per K, in ``out``."""
    from fewshot_priors.app.report import episode_rows
    from fewshot_priors.app.report import figure_episodes as pick_figure_episodes
    from fewshot_priors.viz import save_episode_figures

    figures = {}
    for k, ds in run.datasets.items():
        rows = episode_rows(run.model, ds, pick_figure_episodes(ds, n))
        figures[f"{k}-shot"] = str(save_episode_figures(rows, out / f"fig5_{k}shot.png", title=f"{title}, {k}-shot"))
    return figures


def _model_record(run: ScoredVariant, variant: str, cfg: Mapping, figures: dict[str, str]) -> dict[str, Any]:
    """What :func:`train_and_evaluate` returns: the scores (the model's under ``variant``, with the
    held-out classes scored), the map diagnostics and the training summary."""
    results = {}
    for name, r in run.results.items():
        r[variant] = r.pop("qgnet")
        r[variant]["predicted_foreground_share"] = run.foreground_share[name]
        ds = run.datasets[int(name.split("-")[0])]
        for v in r.values():
            v["test_classes"] = [ds.class_names[c] for c in ds.class_ids]
        results[name] = r
    res = run.train
    return {
        "results": results,
        "recall": run.recall,
        "map_auc": run.map_auc,
        "support_check": run.support_check,
        "train": {**training_record(res, cfg),
                  "train_classes": len(run.train_set.class_ids),
                  "validation_classes": [run.train_set.class_names[c] for c in run.train_set.val_class_ids],
                  "validation": res["val"], "selected": res["selected"], "plateau": res["plateau"]},
        "timings_s": run.timings_s,
        "figures": figures,
        "skipped": run.skipped,
    }


def supervised_weights(cfg: Mapping, priors: Mapping[str, str]) -> str | None:
    """The frozen supervised backbone's weights: ``model.weights``; when null, the seed's
    GlobalLocalMoCo encoder (prior kind ``"moco"``) if it has the backbone's architecture (no
    ImageNet weights needed, as in the demo), else None (random init)."""
    if cfg["model"]["weights"] is not None:
        return cfg["model"]["weights"]
    return priors.get("moco") if _backbone_from_moco(cfg) else None


def _backbone_from_moco(cfg: Mapping) -> bool:
    """Whether the frozen supervised backbone is initialised from the seed's GlobalLocalMoCo encoder
    (no ``model.weights`` file, and the encoder has the backbone's architecture)."""
    return cfg["model"]["weights"] is None and cfg["model"]["backbone"] == cfg["pretrain"]["backbone"]


def _unit_stamp(cfg: Mapping, test_classes: Sequence[str], seed: int, weights: str | None) -> dict[str, Any]:
    """What a (seed, fold) unit's results depend on, whatever the variant: the study's settings (but the
    list of variants), the held-out classes, the seed and the frozen supervised backbone's weights."""
    settings = copy.deepcopy(dict(cfg))
    settings["study"] = {k: v for k, v in settings["study"].items() if k != "variants"}
    return json.loads(json.dumps({"settings": settings, "test_classes": list(test_classes), "seed": seed,
                                  "supervised_weights": weights}, default=str))


def _variant_stamp(variant: str, priors: Mapping[str, str]) -> dict[str, Any]:
    kind = VARIANTS[variant][1]
    return {"variant": variant, "prior_extractor": priors.get(kind) if kind else None}


def _needed_pretraining(cfg: Mapping, variants: Sequence[str]) -> list[str]:
    kinds = {VARIANTS[v][1] for v in variants}
    if _backbone_from_moco(cfg):
        kinds.add("moco")  # the supervised backbone's init
    return [k for k in ("moco", "imagenet_moco") if k in kinds]


def _mean_over(units: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    """Mean over (seed, fold) units of the per-variant, per-shot, per-map numbers under ``key``
    (``map_auc``: auc / ap / foreground_share; ``recall``: the pooled recall per threshold)."""
    acc: dict[str, Any] = {}
    for u in units:
        for variant, shots in u.get(key, {}).items():
            for shot, maps in shots.items():
                for name, val in maps.items():
                    cell = acc.setdefault(variant, {}).setdefault(shot, {}).setdefault(name, [])
                    cell.append(val)
    out: dict[str, Any] = {}
    for variant, shots in acc.items():
        for shot, maps in shots.items():
            for name, vals in maps.items():
                if isinstance(vals[0], Mapping) and "pooled" in vals[0]:  # recall
                    pooled = [statistics.fmean(col) for col in zip(*(v["pooled"] for v in vals))]
                    val = {"thresholds": vals[0]["thresholds"], "pooled": pooled, "units": len(vals)}
                elif isinstance(vals[0], Mapping):  # auc / ap
                    val = {k: statistics.fmean(v[k] for v in vals) for k in ("auc", "ap")}
                    val["units"] = len(vals)
                else:
                    val = statistics.fmean(vals)
                out.setdefault(variant, {}).setdefault(shot, {})[name] = val
    return out


def _maps_markdown(map_auc: Mapping[str, Any], recall: Mapping[str, Any]) -> str:
    lines = ["", "Threshold-free scores of the region maps on the held-out episodes (mean over episodes, then over "
             "seeds x folds): pixel ROC AUC (0.5 = no information) and average precision (chance = the foreground "
             "share); the prior map is scored as 1 - p (it is low on objects, Sec. 4.3).", "",
             "| model | shots | map | AUC | AP | foreground share |", "|---|---|---|---|---|---|"]
    for variant, shots in map_auc.items():
        for shot, maps in shots.items():
            fg = maps.get("foreground_share")
            for name, m in maps.items():
                if name != "foreground_share":
                    lines.append(f"| {variant} | {shot} | {name} | {m['auc']:.3f} | {m['ap']:.3f} | "
                                 f"{'n/a' if fg is None else f'{fg:.3f}'} |")
    rows, thr = [], None
    for variant, shots in recall.items():
        for shot, maps in shots.items():
            for name, r in maps.items():
                thr = r["thresholds"]
                rows.append(f"| {variant} | {shot} | {name} | " + " | ".join(_pct(x) for x in r["pooled"]) + " |")
    if thr is not None:
        lines += ["", "Table-7 recall (%) of the ground-truth query mask by the object region {map >= alpha} "
                      "(pooled over the episodes of a unit, mean over seeds x folds):", "",
                  "| model | shots | map | " + " | ".join(f"{a:g}" for a in thr) + " |",
                  "|---|---|---|" + "---|" * len(thr)] + rows
    return "\n".join(lines) + "\n"


def _selection_text(cfg: Mapping) -> str:
    """The protocol's sentence on how a model's checkpoint is chosen."""
    t = cfg["train"]
    if not t["val_every"]:
        return " Each model is scored as it ends its training (no validation)."
    if t["val_split"] == "test":
        return (f" Each model is validated every {t['val_every']} epoch(s) on the held-out test classes and the "
                "checkpoint with the best validation mIoU is scored (the PFENet lineage's protocol: selection on "
                "the test split).")
    return (f" Each model holds back {100 * cfg['data']['val_class_ratio']:.0f} % of its training classes (seeded, "
            f"never a test class) as validation classes, is validated on {cfg['data']['val_episodes']} of their "
            f"episodes every {t['val_every']} epoch(s), and the checkpoint with the best validation mIoU is scored.")


def _support_check_totals(units: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{variant: {"5-shot": {"episodes", "map_answers", "model_iou", "guided_map_iou"}}}``: what the support
    check did, summed over the (seed, fold) units (IoUs: means over the checked episodes)."""
    acc: dict[str, Any] = {}
    for u in units:
        for variant, shots in u.get("support_check", {}).items():
            for shot, c in shots.items():
                cell = acc.setdefault(variant, {}).setdefault(shot, {"episodes": 0, "map_answers": 0, "model_iou": 0.0,
                                                                      "guided_map_iou": 0.0})
                cell["episodes"] += c["episodes"]
                cell["map_answers"] += c["map_answers"]
                for key in ("model_iou", "guided_map_iou"):
                    cell[key] += c[key] * c["episodes"]
    for shots in acc.values():
        for cell in shots.values():
            for key in ("model_iou", "guided_map_iou"):
                cell[key] /= cell["episodes"]
    return acc


def _support_check_markdown(totals: Mapping[str, Any]) -> str:
    """The results.md section of the support check (``eval.support_check``; empty without it)."""
    rows = [f"| {variant} | {shot} | {c['episodes']} | {c['map_answers']} | {_pct(c['model_iou'])} | "
            f"{_pct(c['guided_map_iou'])} |" for variant, shots in totals.items() for shot, c in shots.items()]
    if not rows:
        return ""
    intro = ("Support check (`eval.support_check`): in each K >= 2 episode every support was segmented from the "
             "others; where the guided map >= 0.5 scored a higher IoU on them than the model, the map answered the "
             "query (the model's scores above include this):")
    return "\n".join(["", intro, "", "| model | K | episodes | the map answered | model's support IoU | "
                                      "map's support IoU |", "|---|---|---|---|---|---|", *rows]) + "\n"


def _plateau_markdown(plateaus: Sequence[Mapping[str, Any]]) -> str:
    """The results.md section listing the models that ended on the background plateau (empty if none)."""
    from fewshot_priors.engine.train import PLATEAU_ADVICE, PLATEAU_FINDING

    if not plateaus:
        return ""
    rows = [f"| {p['seed']} | {p['fold']} | {p['model']} | "
            f"{p['warning'].removeprefix(PLATEAU_FINDING + ': ').removesuffix(' ' + PLATEAU_ADVICE)} |"
            for p in plateaus]
    intro = ("Models that ended on the background plateau (they predict almost no foreground; see "
             "'When training collapses' in the real-images how-to):")
    return "\n".join(["", intro, "", "| seed | fold | model | finding |", "|---|---|---|---|", *rows]) + "\n"


def _study_config(preset: str, device: str | None, overrides: Iterable[str] | Mapping[str, Any] | None) -> dict:
    """The study's config with ``device``; refuses the keys the study sets itself, before any work."""
    from fewshot_priors.config import ConfigError, parse_overrides

    over: dict[str, Any] = {f"{sec}.{k}": v for sec, kv in parse_overrides(overrides).items() for k, v in kv.items()}
    if device is not None:
        over["experiment.device"] = device
    cfg = real_images_config(preset, over)
    # the study sets data.fold_classes per fold itself: keys that shape other folds would only fail
    # when the first dataset is built, after pretraining -- refuse them now
    clash = [k for k in ("fold_classes", "num_folds", "test_ratio", "min_class_images") if cfg["data"].get(k) is not None]
    if clash:
        raise ConfigError(f"data.{clash[0]} cannot be set for the real-images study: it holds out each of its own "
                          "class folds in turn (use --num-folds / --min-images / --fold-seed / --folds instead)")
    if cfg["model"]["prior_backbone"] is not None:
        raise ConfigError("model.prior_backbone cannot be set for the real-images study: the prior extractor is "
                          "pretrain.backbone (set that; pretrain.weights for its ImageNet initialisation)")
    return cfg


def _check_variants(cfg: Mapping, variants: Sequence[str] | None) -> list[str]:
    """The models to train: ``variants`` (default ``study.variants`` less those needing a missing
    ``pretrain.weights``), checked."""
    from fewshot_priors.config import ConfigError

    if variants is None:
        variants = [v for v in cfg["study"]["variants"]
                    if cfg["pretrain"]["weights"] is not None or VARIANTS[v][1] not in _NEEDS_INIT]
    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        import difflib

        close = difflib.get_close_matches(str(unknown[0]), VARIANTS, n=1) if unknown else []
        raise ValueError(f"`variants` must be a non-empty subset of {sorted(VARIANTS)}, got {variants}"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
    if len(set(variants)) != len(variants):
        raise ValueError(f"`variants` must be distinct, got {variants}")
    missing_init = [v for v in variants if VARIANTS[v][1] in _NEEDS_INIT]
    if missing_init and cfg["pretrain"]["weights"] is None:
        raise ConfigError(f"{missing_init} need pretrain.weights (the prior extractor's initial weights, e.g. a local "
                          "ImageNet file); set it or leave these variants out")
    return variants


def _check_weights(cfg: Mapping, preset: str) -> None:
    """The weights files exist; the ImageNet presets without ImageNet weights get a warning (at the
    caller of :func:`run_real_images`)."""
    from fewshot_priors.config import ConfigError

    for key in ("model.weights", "pretrain.weights"):
        sec, k = key.split(".")
        if cfg[sec][k] is not None and not Path(cfg[sec][k]).is_file():
            raise ConfigError(f"{key}: no such file {cfg[sec][k]!r}")
    if preset in _IMAGENET_PRESETS and cfg["model"]["weights"] is None and not cfg["model"]["pretrained"]:
        import warnings

        start = "the seed's GlobalLocalMoCo encoder" if _backbone_from_moco(cfg) else "random init"
        warnings.warn(
            f"the {preset!r} preset is the recipe with ImageNet features, but the frozen supervised backbone "
            f"{cfg['model']['backbone']} gets no ImageNet weights (model.weights is null, model.pretrained false): it "
            f"starts from {start}, "
            "and on real photos such features leave QGNet at the background plateau (the documentation's page "
            "'QGNet on your own photos (cross-validated)'). "
            "Pass --backbone-weights FILE (and --prior-weights FILE for the ImageNet prior), or --set "
            "model.pretrained=true to download timm's; --preset scratch is this setting on purpose.",
            UserWarning, stacklevel=3)


def _check_folds(seeds: Sequence[int], folds: Sequence[int] | None, num_folds: int) -> tuple[list[int], list[int]]:
    """``(seeds, fold ids)`` as ints, checked (default: every fold)."""
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct ints, got {seeds}")
    fold_ids = list(range(num_folds)) if folds is None else [int(f) for f in folds]
    bad = [f for f in fold_ids if not 0 <= f < num_folds]
    if bad:
        raise ValueError(f"`folds` must be in 0..{num_folds - 1}, got {bad}")
    return seeds, fold_ids


def _seed_priors(cfg: Mapping, kinds: Sequence[str], seed: int, images: Sequence[str], out: Path, progress: bool,
                 say) -> dict[str, dict[str, Any]]:
    """``{kind: pretrain() result}``: the seed's GlobalLocalMoCo prior extractors, each pretrained on all
    ``images`` or reused from a previous run with the same settings (:class:`~fewshot_priors.app.study.PriorCache`)."""
    done = {}
    for kind in kinds:
        pre_dir = out / f"seed{seed}" / f"prior_{kind}"
        pcfg = copy.deepcopy(dict(cfg))
        if kind == "moco":
            pcfg["pretrain"]["weights"] = None  # from random init
        cache = PriorCache(pre_dir, {"settings": copy.deepcopy(pcfg["pretrain"]), "seed": seed, "images": len(images)})
        pre = cache.load()
        if pre is not None:
            say(f"seed {seed}: reusing the {kind!r} prior extractor pretrained by a previous run with the same "
                "settings")
        else:
            init = pcfg["pretrain"]["weights"] or "random init"
            say(f"seed {seed}: pretraining the {kind!r} prior extractor (GlobalLocalMoCo, "
                f"{cfg['pretrain']['backbone']} from {init}) on all {len(images)} unlabelled images (shared by "
                "the folds of this seed)")
            pcfg["pretrain"]["images"] = list(images)
            pcfg["experiment"].update(seed=seed, output_dir=str(pre_dir))
            pre = cache.pretrain(pcfg, progress=progress)  # replaces an interrupted or outdated run
        done[kind] = pre
    return done


def _unit_record(res: GroupResult, test_classes: Sequence[str]) -> dict[str, Any]:
    """The ``runs`` entry of ``metrics.json`` of a (seed, fold) group: every model's and the baselines' scores."""
    unit: dict[str, Any] = {"seed": res.group.seed, "fold": res.group.fold, "test_classes": list(test_classes),
                            "results": res.scores(), "train": {}, "recall": {}, "map_auc": {}, "support_check": {},
                            "timings_s": {}}
    for v, r in res.results.items():
        unit["train"][v] = r["train"]
        unit["recall"][v] = r["recall"]
        unit["map_auc"][v] = r["map_auc"]
        unit["support_check"][v] = r.get("support_check", {})  # results saved before the check have none
        unit["skipped"] = r["skipped"]
        unit["timings_s"][v] = r["timings_s"]
    return unit


def _protocol(cfg: Mapping, all_folds: Sequence[Sequence[str]], num_folds: int, min_images: int,
              fold_seed: int) -> str:
    """The protocol paragraph of ``metrics.json`` and ``results.md``."""
    protocol = (
        f"{num_folds}-fold cross-validation over the {sum(len(f) for f in all_folds)} classes with >= {min_images} "
        f"images (class split seeded by fold_seed={fold_seed}, the same for every seed); each fold's classes are "
        "held out in turn and QGNet trains on all other classes (classes with fewer images are always training "
        f"classes; {_novel_text(cfg)}). "
        f"Frozen supervised backbone: {cfg['model']['backbone']} from {_supervised_source(cfg)}. Prior extractor: "
        f"{cfg['pretrain']['backbone']}, per variant (see methods); the GlobalLocalMoCo runs are pretrained "
        "self-supervised (no labels) on all unique images of the folder, once per seed, and shared by that seed's "
        "folds (the paper pretrains on all PASCAL train images). "
        f"K-shot episodes need K+1 images with >= {cfg['data']['min_pixels']} px of the class (original resolution): "
        "classes with fewer are left out of that K (see test_classes per run), and a fold with no such class "
        "is not scored for that K (see skipped per run; folds_per_seed in the summary). mIoU = mean over the fold's "
        "evaluated classes of the class IoU accumulated over its episodes; each seed's number is the mean over "
        "folds; spread = over seeds."
    )
    return protocol + _selection_text(cfg)


def _novel_text(cfg: Mapping) -> str:
    """What the training photos that show a held-out class are, in words (``data.exclude_novel_images``)."""
    if cfg["data"].get("exclude_novel_images"):
        return "the photos that show a held-out class are left out of training, as in BAM (data.exclude_novel_images)"
    return "a held-out class's objects in training photos are background, as in COCO-20i"


def _supervised_source(cfg: Mapping) -> str:
    """Where the frozen supervised backbone's weights come from, in words."""
    return cfg["model"]["weights"] or ("the seed's GlobalLocalMoCo encoder" if _backbone_from_moco(cfg)
                                       else "random init")


def _write_reports(out: Path, metrics: Mapping[str, Any], fold_ids: Sequence[int]) -> None:
    """Write ``metrics.json`` and ``results.md``."""
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    header = (f"# QGNet on {metrics['root']}\n\n{metrics['protocol']}\n\nMethods: "
              + "; ".join(f"`{k}`: {v}" for k, v in metrics["methods"].items())
              + f"\n\nPreset `{metrics['preset']}`, seeds {metrics['seeds']}, folds {list(fold_ids)}, "
                f"{metrics['timings_s']['total'] / 60:.1f} min.\n"
              + ("\n**The quick preset is a smoke test of the pipeline (a few steps at a tiny size): these numbers "
                 "are meaningless; run without --quick for results.**\n" if metrics["preset"] == "quick" else ""))
    (out / "results.md").write_text(results_markdown(metrics["summary"], header) + gains_markdown(metrics["gains"])
                                    + _maps_markdown(metrics["map_auc"], metrics["recall"])
                                    + _support_check_markdown(metrics["support_check"])
                                    + _plateau_markdown(metrics["plateau"]), encoding="utf-8")


def _figures(groups: Sequence[GroupResult]) -> dict[str, dict[str, Any]]:
    """``{"fold<F>": {variant: {"1-shot": png}}}``: the Fig. 5 panels drawn (first seed)."""
    figures: dict[str, dict[str, Any]] = {}
    for g in groups:
        for unit in g.group.units:
            if unit.figures and g.results[unit.variant]["figures"]:
                figures.setdefault(f"fold{g.group.fold}", {})[unit.variant] = g.results[unit.variant]["figures"]
    return figures


@dataclass
class _Study:
    """One run of the study: its settings, data and folds; it plans the (seed, fold, variant) units,
    trains one when the runner asks, and assembles ``metrics.json``."""

    root: Path
    out: Path
    cfg: dict[str, Any]
    preset: str
    seeds: list[int]
    fold_ids: list[int]
    variants: list[str]
    counts: dict[str, int]
    all_folds: list[list[str]]
    images: list[str]
    progress: bool
    say: Callable[[str], None]
    pretrained: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"pretrain": 0.0, "units": 0.0, "models": 0.0})

    def priors(self, seed: int) -> dict[str, str]:
        """``{prior kind: exported file}`` of the seed's pretraining runs."""
        return {k: pre["prior_extractor"] for k, pre in self.pretrained[seed].items()}

    def plan(self) -> Iterator[UnitGroup]:
        """Per seed: its prior extractors (pretrained or reused), then its (seed, fold) groups."""
        cfg, kinds = self.cfg, _needed_pretraining(self.cfg, self.variants)
        for seed in self.seeds:
            t = _timer()
            self.pretrained[seed] = _seed_priors(cfg, kinds, seed, self.images, self.out, self.progress, self.say)
            self.timings["pretrain"] += t()
            priors = self.priors(seed)
            for f in self.fold_ids:
                draw = seed == self.seeds[0] and cfg["study"]["figure_episodes"] > 0  # Fig. 5 panels: the first seed
                held = self.all_folds[f]
                # what a finished model's saved result.json depends on: rerunning the same command after an
                # interruption, or with more seeds, folds or variants, reuses it instead of training again
                base = _unit_stamp(cfg, held, seed, supervised_weights(cfg, priors))
                fold_dir = self.out / f"seed{seed}" / f"fold{f}"
                units = [Unit(seed, f, v, fold_dir / v, {**base, **_variant_stamp(v, priors)}, draw)
                         for v in self.variants]
                yield UnitGroup(seed, f, units, base, f" on {len(self.counts) - len(held)} classes, held out {held}")

    def train_unit(self, unit: Unit, with_baselines: bool, datasets: dict) -> dict[str, Any]:
        """Train and score one unit (:func:`train_and_evaluate`)."""
        return train_and_evaluate(self.root, self.all_folds[unit.fold], unit.folder, self.cfg, seed=unit.seed,
                                  priors=self.priors(unit.seed), variant=unit.variant, progress=False,
                                  with_baselines=with_baselines,
                                  figure_episodes=self.cfg["study"]["figure_episodes"] if unit.figures else 0,
                                  dataset_cache=datasets, overwrite=True)

    def metrics(self, groups: Sequence[GroupResult], protocol: str) -> dict[str, Any]:
        """The content of ``metrics.json``: settings, every run, the summaries and the timings."""
        cfg, runs = self.cfg, [_unit_record(g, self.all_folds[g.group.fold]) for g in groups]
        per_seed = {seed: {kind: {"export": pre["prior_extractor"], "steps": pre["step"],
                                  "final_loss": pre["history"][-1]["loss"] if pre["history"] else None}
                           for kind, pre in kinds.items()}
                    for seed, kinds in self.pretrained.items() if kinds}
        return {
            "root": str(self.root),
            "preset": self.preset,
            "settings": cfg,
            "preset_config": PRESET_CONFIGS[self.preset],
            "seeds": self.seeds,
            "protocol": protocol,
            "folds": {f"fold{i}": c for i, c in enumerate(self.all_folds)},
            "folds_run": self.fold_ids,
            "methods": {**{k: VARIANTS[k][0] for k in self.variants}, **BASELINES},
            "summary": summarize(runs),
            "gains": {b: paired_gains(runs, b) for b in BASELINES},
            "map_auc": _mean_over(runs, "map_auc"),
            "recall": _mean_over(runs, "recall"),
            "support_check": _support_check_totals(runs),
            "runs": runs,
            "prior_extractor": {"method": "GlobalLocalMoCo (global + local superpixel InfoNCE), self-supervised",
                                "backbone": cfg["pretrain"]["backbone"], "init_weights": cfg["pretrain"]["weights"],
                                "shared_across_folds": True, "per_seed": per_seed},
            "backbone_init": f"frozen supervised backbone {cfg['model']['backbone']} from {_supervised_source(cfg)}",
            "figures": _figures(groups),
            "plateau": [{"seed": u["seed"], "fold": u["fold"], "model": v, "warning": t["plateau"]}
                        for u in runs for v, t in u["train"].items() if t.get("plateau")],
            "timings_s": self.timings,
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        }


def run_real_images(
    root: str | Path,
    output: str | Path = "real_images_output",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    folds: Sequence[int] | None = None,
    num_folds: int = 4,
    min_images: int = 5,
    fold_seed: int = 0,
    preset: str = "full",
    variants: Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain, train and cross-validate QGNet on a folder dataset; write ``metrics.json``,
    ``results.md`` and Fig. 5 panels under ``output``.

    The study is a plan of units (seed, fold, variant) run by :func:`~fewshot_priors.app.study.run_study`:
    each seed's prior extractors are pretrained first (or reused), then each fold's models are trained
    (or reused) and scored.

    Args:
        root: folder dataset (``<class>/<stem>.jpg`` + ``<stem>.png`` masks).
        output: output folder. Pretrained prior extractors and finished models
            (``seed<S>/fold<F>/<variant>/result.json``) are reused when their settings match, so an
            interrupted run resumes where it stopped when run again.
        seeds: training seeds (pretraining, model init, episodes); the spread over
            seeds is reported.
        folds: run only these folds (default: all ``num_folds``).
        num_folds: number of class folds of the classes with ``>= min_images`` images.
        min_images: classes with fewer images are training-only.
        fold_seed: seed of the class-to-fold split (the same for every training seed).
        preset: a key of :data:`PRESET_CONFIGS` (``"full"``, ``"long"``, ``"scratch"``, ``"quick"``: a
            minute or two, numbers meaningless).
        variants: which models of :data:`VARIANTS` to train (default: ``study.variants`` of the
            config; the variants needing ``pretrain.weights`` are left out when it is null).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (default: ``experiment.device`` of the config).
        progress: print progress lines (per unit, with elapsed time and an estimate of the rest).
        overrides: ``section.key=value`` changes to the preset's config, e.g.
            ``{"train.epochs": 4, "model.weights": "mobilenetv2_100.safetensors"}``.

    Returns:
        The content of ``metrics.json``.
    """
    root, out = Path(root), Path(output)
    cfg = _study_config(preset, device, overrides)
    variants = _check_variants(cfg, variants)
    _check_weights(cfg, preset)
    seeds, fold_ids = _check_folds(seeds, folds, num_folds)
    counts = class_image_counts(root)
    all_folds = class_folds(counts, num_folds=num_folds, min_images=min_images, seed=fold_seed)
    images = list_unique_images(root)
    out.mkdir(parents=True, exist_ok=True)
    total = _timer()

    def say(msg: str) -> None:
        if progress:
            print(f"[real-images {total():7.0f}s] {msg}", flush=True)

    say(f"{len(counts)} classes, {len(images)} unique images; {num_folds} folds over the "
        f"{sum(len(f) for f in all_folds)} classes with >= {min_images} images (fold seed {fold_seed}); "
        f"seeds {seeds}; preset {preset}; backbone {cfg['model']['backbone']} "
        f"({cfg['model']['weights'] or 'no weights file'}), prior extractor {cfg['pretrain']['backbone']}; "
        f"models {variants}")
    study = _Study(root, out, cfg, preset, seeds, fold_ids, variants, counts, all_folds, images, progress, say)
    groups = run_study(study.plan(), study.train_unit, groups=len(seeds) * len(fold_ids), say=say)
    study.timings.update(units=sum(g.seconds for g in groups), models=sum(g.train_seconds for g in groups),
                         total=total())
    metrics = study.metrics(groups, _protocol(cfg, all_folds, num_folds, min_images, fold_seed))
    _write_reports(out, metrics, fold_ids)
    if metrics["plateau"]:
        say(f"{len(metrics['plateau'])} of {sum(len(u['train']) for u in metrics['runs'])} models ended on the "
            f"background plateau (they predict almost no foreground): listed in {out / 'results.md'}")
    say(f"done in {study.timings['total'] / 60:.1f} min; wrote {out / 'metrics.json'} and {out / 'results.md'}")
    return metrics
