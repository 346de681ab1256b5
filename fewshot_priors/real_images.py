"""QGNet on a folder of real photos (FSS-1000 layout), cross-validated over classes.

``fewshot-priors real-images --root PATH`` (or :func:`run_real_images`) runs, for each seed:

1. **Prior extractor.** :func:`~fewshot_priors.engine.pretrain.pretrain` trains a
   :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` on *all* unique images of
   the folder without labels (the paper pretrains on all PASCAL train images); it
   is shared by the folds of the seed. As in the demo, the frozen supervised
   backbone is initialised from this self-supervised encoder (no ImageNet weights
   offline).
2. **Folds.** The classes with at least ``min_images`` images are split into
   ``num_folds`` seeded folds (:func:`class_folds`); each fold is held out in turn
   and QGNet trains on all other classes (the small classes are always training
   classes).
3. **Models** per fold, same data, schedule and backbone: QGNet with the
   pretrained prior extractor, QGNet with a random-init prior extractor, and the
   PFENet-style model without the prior (``use_prior=False``).
4. **Evaluation** 1-shot and 5-shot on the held-out classes, with two baselines
   on the same episodes: the thresholded guided region map and all-foreground.
5. **Outputs**: ``metrics.json`` (every run and the summary), ``results.md``
   (mean, std, min-max over seeds of the fold-averaged mIoU / FB-IoU), Fig. 5
   panels on real photos.
"""

from __future__ import annotations

import copy
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._validate import is_int
from .data.folder import class_image_counts, list_unique_images
from .report import pct as _pct
from .report import results_markdown, summarize
from .study import run_config, train_and_score
from .study import timer as _timer

__all__ = ["VARIANTS", "class_folds", "class_image_counts", "list_unique_images",
           "real_images_config", "results_markdown", "run_real_images", "summarize", "train_and_evaluate"]

#: The shipped configs of the presets (``fewshot_priors/configs/real_images/<preset>.yaml``): ``full``
#: fits 3 seeds x 4 folds x 3 models in about 35 min on 2 idle CPU cores; ``quick`` runs everything end
#: to end in a minute or two (tests; numbers are meaningless). The files are exactly what runs.
PRESET_CONFIGS = {"full": "real_images/full", "quick": "real_images/quick"}


def real_images_config(quick: bool = False, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> dict:
    """The study's config: ``real_images/quick`` or ``real_images/full`` with ``section.key=value`` overrides."""
    from fewshot_priors.config import load_config

    return load_config(PRESET_CONFIGS["quick" if quick else "full"], overrides)


#: The compared models: key -> (description, prior: "pretrained" / "random" / None, use_prior).
VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "qgnet": ("QGNet, prior extractor pretrained by GlobalLocalMoCo", "pretrained", True),
    "qgnet_random_prior": ("QGNet, random-init frozen prior extractor", "random", True),
    "qgnet_without_prior": ("QGNet without the prior region map (PFENet-style, use_prior=False)", None, False),
}
BASELINES = {"baseline_guided_map_0.5": "guided region map (of the pretrained-prior QGNet) thresholded at 0.5",
             "baseline_all_foreground": "every pixel foreground"}


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


def train_and_evaluate(
    root: str | Path,
    test_classes: Sequence[str],
    out: str | Path,
    cfg: Mapping[str, Any],
    *,
    seed: int,
    prior_path: str | None,
    variant: str = "qgnet",
    shots: Sequence[int] = (1, 5),
    device: str | None = None,
    progress: bool = False,
    with_baselines: bool = True,
    figure_episodes: int = 0,
    dataset_cache: dict | None = None,
    keep_checkpoint: bool = False,
) -> dict[str, Any]:
    """Train one QGNet ``variant`` on every class but ``test_classes`` and score it on them.

    Args:
        root: the folder dataset.
        test_classes: held-out class folder names (never seen in training).
        out: run folder (checkpoints, logs).
        cfg: the study's config (:func:`real_images_config`).
        seed: seed of the model init, training and test episodes.
        prior_path: the exported self-supervised encoder: the prior extractor for
            ``variant="qgnet"``, and the frozen backbone's init unless the config's
            ``model.weights`` names a local checkpoint (e.g. ImageNet weights).
        variant: a key of :data:`VARIANTS`.
        shots: the K of the evaluations.
        device: default ``experiment.device`` of ``cfg``.
        with_baselines: also score the guided-map and all-foreground baselines.
        figure_episodes: draw Fig. 5 panels of this many test episodes per K.
        dataset_cache: a dict shared by the calls of one (seed, fold): reuses its datasets.
        keep_checkpoint: keep the trained model's ``last`` checkpoint in ``out``.

    Returns:
        ``{"results": {"1-shot": {name: metrics}}, "train": ..., "timings_s": ..., "figures": ...,
        "skipped": {"5-shot": why}}``: a K is skipped when no held-out class has K+1 eligible images.
    """
    from fewshot_priors.report import episode_rows
    from fewshot_priors.report import figure_episodes as pick_figure_episodes

    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(VARIANTS)}, got {variant!r}")
    if device is not None:
        cfg = copy.deepcopy(dict(cfg))
        cfg["experiment"]["device"] = device
    root, out = Path(root), Path(out)
    _, prior_kind, use_prior = VARIANTS[variant]
    cfg = run_config(cfg, output_dir=out, root=root, seed=seed, weights=cfg["model"]["weights"] or prior_path,
                     prior_weights=prior_path if prior_kind == "pretrained" else None, use_prior=use_prior)
    # the datasets come from the run config (engine.build_dataset): the held-out classes are data.fold_classes
    # (so the run folder's config names them too); training pairs need study.train_min_pixels px of the
    # class (default data.min_pixels), test pairs data.min_pixels; no label-index cache files are written
    cfg["data"]["fold_classes"] = list(test_classes)
    train_min = cfg["study"]["train_min_pixels"]
    train_kw = {"cache": False} if train_min is None else {"cache": False, "min_pixels": int(train_min)}
    run = train_and_score(cfg, shots=shots, with_baselines=with_baselines, progress=progress, label=variant,
                          dataset_kwargs={"train": train_kw, "val": {"cache": False}}, dataset_cache=dataset_cache,
                          skip_ineligible=True)
    if not keep_checkpoint:  # ~100 MB each (the frozen backbones included); 36 per full run
        from fewshot_priors.engine.checkpoint import checkpoint_paths

        for path in checkpoint_paths(out / "last"):
            Path(path).unlink(missing_ok=True)
    results, figures = {}, {}
    for name, r in run.results.items():
        r[variant] = r.pop("qgnet")
        r[variant]["predicted_foreground_share"] = run.foreground_share[name]
        ds = run.datasets[int(name.split("-")[0])]
        for v in r.values():
            v["test_classes"] = [ds.class_names[c] for c in ds.class_ids]
        results[name] = r
    if figure_episodes:
        from fewshot_priors.viz import save_episode_figures

        for k, ds in run.datasets.items():
            rows = episode_rows(run.model, ds, pick_figure_episodes(ds, figure_episodes))
            figures[f"{k}-shot"] = str(save_episode_figures(
                rows, out / f"fig5_{k}shot.png",
                title=f"QGNet on real photos, held-out {', '.join(sorted(test_classes))}, {k}-shot"))
    res = run.train
    return {
        "results": results,
        "train": {"steps": res["step"], "episodes_per_epoch": res["episodes_per_epoch"],
                  "final_loss": res["history"][-1]["loss"] if res["history"] else None,
                  "train_classes": len(run.train_set.class_ids)},
        "timings_s": run.timings_s,
        "figures": figures,
        "skipped": run.skipped,
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
    quick: bool = False,
    variants: Sequence[str] = tuple(VARIANTS),
    device: str | None = None,
    progress: bool = True,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Pretrain, train and cross-validate QGNet on a folder dataset; write ``metrics.json``,
    ``results.md`` and Fig. 5 panels under ``output``.

    Args:
        root: folder dataset (``<class>/<stem>.jpg`` + ``<stem>.png`` masks).
        output: output folder (pretrained prior extractors are reused when the
            settings match).
        seeds: training seeds (pretraining, model init, episodes); the spread over
            seeds is reported.
        folds: run only these folds (default: all ``num_folds``).
        num_folds: number of class folds of the classes with ``>= min_images`` images.
        min_images: classes with fewer images are training-only.
        fold_seed: seed of the class-to-fold split (the same for every training seed).
        quick: the tiny ``quick`` preset (a minute or two; numbers are meaningless).
        variants: which models of :data:`VARIANTS` to train.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (default: ``experiment.device`` of the config).
        progress: print progress lines (per unit, with elapsed time and an estimate of the rest).
        overrides: ``section.key=value`` changes to the preset's config (``real_images/full`` or
            ``real_images/quick``), e.g. ``{"train.epochs": 4, "data.image_size": 96}``.

    Returns:
        The content of ``metrics.json``.
    """
    from fewshot_priors.config import parse_overrides
    from fewshot_priors.engine.pretrain import pretrain

    root, out = Path(root), Path(output)
    preset_name = "quick" if quick else "full"
    over: dict[str, Any] = {}
    over.update({f"{sec}.{k}": v for sec, kv in parse_overrides(overrides).items() for k, v in kv.items()})
    if device is not None:
        over["experiment.device"] = device
    cfg = real_images_config(quick, over)
    # the study sets data.fold_classes per fold itself: keys that shape other folds would only fail
    # when the first dataset is built, after pretraining -- refuse them now
    clash = [k for k in ("fold_classes", "num_folds", "test_ratio", "min_class_images") if cfg["data"].get(k) is not None]
    if clash:
        from fewshot_priors.config import ConfigError

        raise ConfigError(f"data.{clash[0]} cannot be set for the real-images study: it holds out each of its own "
                          "class folds in turn (use --num-folds / --min-images / --fold-seed / --folds instead)")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"`variants` must be a non-empty subset of {sorted(VARIANTS)}, got {list(variants)}")
    if "qgnet" not in variants:
        variants = ["qgnet", *variants]  # the baselines come from its guided map
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` must be distinct ints, got {seeds}")
    counts = class_image_counts(root)
    all_folds = class_folds(counts, num_folds=num_folds, min_images=min_images, seed=fold_seed)
    fold_ids = list(range(num_folds)) if folds is None else [int(f) for f in folds]
    bad = [f for f in fold_ids if not 0 <= f < num_folds]
    if bad:
        raise ValueError(f"`folds` must be in 0..{num_folds - 1}, got {bad}")
    images = list_unique_images(root)
    out.mkdir(parents=True, exist_ok=True)
    total = _timer()
    units_total = len(seeds) * len(fold_ids)
    done = 0

    def say(msg: str) -> None:
        if progress:
            print(f"[real-images {total():7.0f}s] {msg}", flush=True)

    say(f"{len(counts)} classes, {len(images)} unique images; {num_folds} folds over the "
        f"{sum(len(f) for f in all_folds)} classes with >= {min_images} images (fold seed {fold_seed}); "
        f"seeds {seeds}; preset {preset_name}; models {list(variants)}")
    runs, pretrain_info, figures = [], {}, {}
    timings: dict[str, float] = {"pretrain": 0.0, "units": 0.0}
    for seed in seeds:
        t = _timer()
        pre_dir = out / f"seed{seed}" / "prior_extractor"
        stamp = {"settings": cfg["pretrain"], "seed": seed, "images": len(images)}
        stamp_path = pre_dir / "settings.json"
        if (stamp_path.is_file() and (pre_dir / "result.json").is_file()
                and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))):
            say(f"seed {seed}: reusing the prior extractor pretrained by a previous run with the same settings")
            pre = json.loads((pre_dir / "result.json").read_text())
        else:
            say(f"seed {seed}: pretraining the prior extractor (GlobalLocalMoCo, {cfg['pretrain']['backbone']}) on all "
                f"{len(images)} unlabelled images (shared by the folds of this seed)")
            pcfg = copy.deepcopy(cfg)
            pcfg["pretrain"]["images"] = images
            pcfg["experiment"].update(seed=seed, output_dir=str(pre_dir))
            pre = pretrain(pcfg, progress=progress)
            pre_dir.mkdir(parents=True, exist_ok=True)
            (pre_dir / "result.json").write_text(json.dumps(pre, default=str))
            stamp_path.write_text(json.dumps(stamp))
        pretrain_info[seed] = {"export": pre["prior_extractor"], "steps": pre["step"],
                               "final_loss": pre["history"][-1]["loss"] if pre["history"] else None}
        timings["pretrain"] += t()
        for f in fold_ids:
            t = _timer()
            held = all_folds[f]
            datasets: dict = {}
            unit: dict[str, Any] = {"seed": seed, "fold": f, "test_classes": held, "results": {}, "train": {},
                                    "timings_s": {}}
            for v in variants:
                say(f"seed {seed} fold {f} ({done + 1}/{units_total}): training {v} on {len(counts) - len(held)} "
                    f"classes, held out {held}")
                r = train_and_evaluate(root, held, out / f"seed{seed}" / f"fold{f}" / v, cfg, seed=seed,
                                       prior_path=pre["prior_extractor"], variant=v,
                                       progress=False, with_baselines=v == "qgnet",
                                       figure_episodes=cfg["study"]["figure_episodes"] if seed == seeds[0] else 0,
                                       dataset_cache=datasets)
                for shot, methods in r["results"].items():
                    unit["results"].setdefault(shot, {}).update(methods)
                unit["train"][v] = r["train"]
                unit["skipped"] = r["skipped"]
                unit["timings_s"][v] = r["timings_s"]
                if r["figures"]:
                    figures[f"fold{f}"] = r["figures"]
            runs.append(unit)
            done += 1
            sec = t()
            timings["units"] += sec
            left = (units_total - done) * timings["units"] / done
            line = "; ".join(f"{shot}: " + ", ".join(f"{n} {_pct(m['miou'])}" for n, m in ms.items())
                             for shot, ms in unit["results"].items())
            say(f"seed {seed} fold {f} done in {sec:.0f}s (mIoU %: {line}); about {left / 60:.1f} min left")
    timings["total"] = total()
    summary = summarize(runs)
    methods = {**{k: VARIANTS[k][0] for k in variants}, **BASELINES}
    protocol = (
        f"{num_folds}-fold cross-validation over the {sum(len(f) for f in all_folds)} classes with >= {min_images} "
        f"images (class split seeded by fold_seed={fold_seed}, the same for every seed); each fold's classes are "
        "held out in turn and QGNet trains on all other classes (classes with fewer images are always training "
        "classes; a held-out class's objects in training photos are background, as in COCO-20i). "
        "The prior extractor is pretrained self-supervised (no labels) on all unique images of the folder, once per "
        "seed, and shared by that seed's folds (the paper pretrains on all PASCAL train images); the frozen "
        "supervised backbone is initialised from the same encoder (no ImageNet weights offline). "
        f"K-shot episodes need K+1 images with >= {cfg['data']['min_pixels']} px of the class (original resolution): "
        "classes with fewer are left out of that K (see test_classes per run), and a fold with no such class "
        "is not scored for that K (see skipped per run; folds_per_seed in the summary). mIoU = mean over the fold's "
        "evaluated classes of the class IoU accumulated over its episodes; each seed's number is the mean over "
        "folds; spread = over seeds."
    )
    metrics = {
        "root": str(root),
        "preset": preset_name,
        "settings": cfg,
        "preset_config": PRESET_CONFIGS[preset_name],
        "seeds": seeds,
        "protocol": protocol,
        "folds": {f"fold{i}": c for i, c in enumerate(all_folds)},
        "folds_run": fold_ids,
        "methods": methods,
        "summary": summary,
        "runs": runs,
        "prior_extractor": {"method": "GlobalLocalMoCo (global + local superpixel InfoNCE), self-supervised",
                            "backbone": cfg["pretrain"]["backbone"], "shared_across_folds": True, "per_seed": pretrain_info},
        "backbone_init": (f"frozen supervised backbone loaded from {cfg['model']['weights']}"
                          if cfg["model"]["weights"] else
                          "frozen supervised backbone initialised from the seed's self-supervised encoder "
                          "(no ImageNet weights offline)"),
        "figures": figures,
        "timings_s": timings,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    header = (f"# QGNet on {root}\n\n{protocol}\n\nMethods: " + "; ".join(f"`{k}`: {v}" for k, v in methods.items())
              + f"\n\nPreset `{preset_name}`, seeds {seeds}, folds {fold_ids}, {timings['total'] / 60:.1f} min.\n")
    (out / "results.md").write_text(results_markdown(summary, header), encoding="utf-8")
    say(f"done in {timings['total'] / 60:.1f} min; wrote {out / 'metrics.json'} and {out / 'results.md'}")
    return metrics
