"""QGNet on a folder of real photos (FSS-1000 layout), cross-validated over classes.

``fewshot-priors real-images --root PATH`` (or :func:`run_real_images`) runs, for each seed:

1. **Prior extractor.** :func:`~fewshot_priors.engine.pretrain.pretrain` trains a
   :class:`~fewshot_priors.models.moco.GlobalLocalMoCo` on *all* unique images of
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
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["PRESETS", "VARIANTS", "class_folds", "class_image_counts", "list_unique_images", "results_markdown",
           "run_real_images", "summarize", "train_and_evaluate"]

#: Sizes. ``full`` fits 3 seeds x 4 folds x 3 models in about 35 min on 2 idle CPU cores;
#: ``quick`` runs everything end to end in a minute or two (tests; numbers are meaningless).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "image_size": 80,
        "min_pixels": 2048,
        "train_min_pixels": None,
        "train_resize_long": True,
        "pretrain": {"epochs": 3, "batch_size": 32, "size": 80, "n_segments": 24, "max_patches": 24,
                     "queue_size": 1024, "local_queue_size": 2048, "dim": 64, "mlp_hidden": 256,
                     # a short run on ~100 photos: an empty queue (random negatives collapse the
                     # embeddings while a random queue fills), lr 8x MoCo's 0.03 * B / 256 (16x drifted),
                     # and the query encoder (the momentum one is still ~90 % random init after 12 steps);
                     # measured in docs/how-to/pretrain.md ("Is it learning?")
                     "lr": 0.03, "moco_momentum": 0.99, "queue_init": "empty", "export_encoder": "query"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "max_steps": None},
        "backbone_weights": None,
        "fg_weight": 1.0,
        "episodes": 40,
        "figure_episodes": 4,
    },
    "quick": {
        "image_size": 64,
        "min_pixels": 2048,
        "train_min_pixels": None,
        "train_resize_long": True,
        "pretrain": {"epochs": 1, "batch_size": 8, "size": 64, "n_segments": 12, "max_patches": 12,
                     "queue_size": 64, "local_queue_size": 128, "dim": 32, "mlp_hidden": 64,
                     "lr": 0.03, "moco_momentum": 0.99, "max_steps": 2},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.05, "max_steps": 3},
        "backbone_weights": None,
        "fg_weight": 1.0,
        "episodes": 6,
        "figure_episodes": 2,
    },
}

BACKBONE = "resnet18"

#: The compared models: key -> (description, prior: "pretrained" / "random" / None, use_prior).
VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "qgnet": ("QGNet, prior extractor pretrained by GlobalLocalMoCo", "pretrained", True),
    "qgnet_random_prior": ("QGNet, random-init frozen prior extractor", "random", True),
    "qgnet_without_prior": ("QGNet without the prior region map (PFENet-style, use_prior=False)", None, False),
}
BASELINES = {"baseline_guided_map_0.5": "guided region map (of the pretrained-prior QGNet) thresholded at 0.5",
             "baseline_all_foreground": "every pixel foreground"}

IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 2)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _pairs(d: Path, mask_ext: str = ".png") -> list[Path]:
    """Images of a class folder that have a mask (``<stem><mask_ext>``, not the image itself)."""
    out = []
    for p in sorted(d.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.with_suffix(mask_ext) != p and p.with_suffix(mask_ext).is_file():
            out.append(p)
    return out


def class_image_counts(root: str | Path) -> dict[str, int]:
    """``{class folder: number of image/mask pairs}`` of a folder dataset."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root` {root} is not a folder")
    return {d.name: len(_pairs(d)) for d in _class_dirs(root)}


def list_unique_images(root: str | Path) -> list[str]:
    """Every image of the folder dataset once (the same photo may sit in several class folders;
    they are told apart by file stem), sorted by stem: the unlabelled pretraining set."""
    seen: dict[str, str] = {}
    for d in _class_dirs(Path(root)):
        for p in _pairs(d):
            seen.setdefault(p.stem, str(p))
    return [seen[k] for k in sorted(seen)]


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
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"`num_folds` must be an int >= 2, got {num_folds!r}")
    big = sorted(c for c, n in counts.items() if n >= min_images)
    if len(big) < num_folds:
        raise ValueError(f"only {len(big)} classes have >= {min_images} images ({big}); "
                         f"`num_folds`={num_folds} needs at least that many")
    perm = np.random.default_rng([int(seed), 4242]).permutation(len(big))
    return [sorted(big[int(i)] for i in perm[f::num_folds]) for f in range(num_folds)]


def _config(root: Path, run_dir: Path, preset: Mapping, seed: int, device: str, backbone_weights: str | None,
            prior_weights: str | None, use_prior: bool) -> dict:
    from fewshot_priors.config import load_config

    t = preset["train"]
    size = int(preset["image_size"])
    feat = (size - 1) // 8 + 1
    overrides = {
        "experiment.name": "real_images",
        "experiment.seed": seed,
        "experiment.output_dir": str(run_dir),
        "data.dataset": "folder",
        "data.root": str(root),
        "data.image_size": size,
        "data.min_pixels": int(preset["min_pixels"]),
        "train.epochs": t["epochs"],
        "train.batch_size": t["batch_size"],
        "train.lr": t["lr"],
        "train.max_steps": t.get("max_steps"),
        "train.device": device,
        "train.log_every": 5,
        "model.weights": backbone_weights,
        "model.prior_weights": prior_weights if use_prior else None,
        "model.use_prior": use_prior,
        "model.fg_weight": float(preset["fg_weight"]),
        "model.bins": [feat, max(1, feat // 2), max(1, feat // 4), max(1, feat // 8)],
    }
    return load_config("demo", overrides)


def _folder_dataset(root: Path, split: str, test_classes: Sequence[str], preset: Mapping, seed: int, *,
                    shots: int = 1, episodes: int | None = None, progress: bool = False,
                    cache: dict | None = None):
    """The fold's training episodes (``split="train"``) or test episodes; training pairs need
    ``train_min_pixels`` px of the class (default ``min_pixels``), test pairs ``min_pixels``.
    With ``cache`` (a dict), a dataset built with the same arguments is reused (the label scan
    reads every mask of the split, the same for each model of a fold)."""
    key = (str(root), split, tuple(sorted(test_classes)), seed, shots, episodes,
           json.dumps(preset, sort_keys=True, default=str))
    if cache is not None and key in cache:
        ds = cache[key]
        if split == "train":
            ds.set_epoch(0)
        return ds
    from fewshot_priors.data import FolderFewShot
    from fewshot_priors.data.transforms import TestTransform, TrainTransform

    size = int(preset["image_size"])
    transform = (TrainTransform(size, scale=(0.9, 1.1), resize_long=size if preset["train_resize_long"] else None)
                 if split == "train" else TestTransform(size))
    min_pixels = preset["min_pixels"]
    if split == "train" and preset.get("train_min_pixels") is not None:
        min_pixels = preset["train_min_pixels"]
    ds = FolderFewShot(root, shots=shots, split=split, test_classes=list(test_classes), seed=seed,
                       episodes=episodes, transform=transform, image_size=size, min_pixels=int(min_pixels),
                       cache=False, progress=progress)
    if cache is not None:
        cache[key] = ds
    return ds


def train_and_evaluate(
    root: str | Path,
    test_classes: Sequence[str],
    out: str | Path,
    preset: Mapping[str, Any],
    *,
    seed: int,
    prior_path: str | None,
    variant: str = "qgnet",
    shots: Sequence[int] = (1, 5),
    device: str = "auto",
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
        preset: sizes (see :data:`PRESETS`).
        seed: seed of the model init, training and test episodes.
        prior_path: the exported self-supervised encoder: the prior extractor for
            ``variant="qgnet"``, and the frozen backbone's init unless the preset's
            ``backbone_weights`` names a local checkpoint (e.g. ImageNet weights).
        variant: a key of :data:`VARIANTS`.
        shots: the K of the evaluations.
        with_baselines: also score the guided-map and all-foreground baselines.
        figure_episodes: draw Fig. 5 panels of this many test episodes per K.
        dataset_cache: a dict shared by the calls of one (seed, fold): reuses its datasets.
        keep_checkpoint: keep the trained model's ``last`` checkpoint in ``out``.

    Returns:
        ``{"results": {"1-shot": {name: metrics}}, "train": ..., "timings_s": ..., "figures": ...,
        "skipped": {"5-shot": why}}``: a K is skipped when no held-out class has K+1 eligible images.
    """
    from fewshot_priors.demo import _figure_episodes, _predictors, episode_rows
    from fewshot_priors.engine.build import build_model
    from fewshot_priors.engine.evaluate import evaluate
    from fewshot_priors.engine.train import resolve_device, seed_everything, train

    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {sorted(VARIANTS)}, got {variant!r}")
    root, out = Path(root), Path(out)
    _, prior_kind, use_prior = VARIANTS[variant]
    backbone_weights = preset.get("backbone_weights") or prior_path
    cfg = _config(root, out, preset, seed, device, backbone_weights,
                  prior_path if prior_kind == "pretrained" else None, use_prior)
    timings: dict[str, float] = {}
    t = _timer()
    seed_everything(seed)
    model = build_model(cfg).to(resolve_device(device))
    train_set = _folder_dataset(root, "train", test_classes, preset, seed, cache=dataset_cache)
    res = train(cfg, model=model, train_set=train_set, progress=progress)
    if not keep_checkpoint:  # ~100 MB each (the frozen backbones included); 36 per full run
        from fewshot_priors.engine.checkpoint import checkpoint_paths

        for path in checkpoint_paths(out / "last"):
            Path(path).unlink(missing_ok=True)
    timings["train"] = t()
    results, figures, skipped = {}, {}, {}
    t = _timer()
    for k in shots:
        try:
            ds = _folder_dataset(root, "test", test_classes, preset, seed, shots=k,
                                 episodes=int(preset["episodes"]), cache=dataset_cache)
        except ValueError as exc:  # no held-out class has the K+1 eligible images a K-shot episode needs
            if "eligible images" not in str(exc):
                raise
            skipped[f"{k}-shot"] = str(exc)
            continue
        base = _predictors(model, with_baselines=with_baselines)
        fg = [0, 0]

        def fn(batch, base=base, fg=fg):
            pred = base(batch)
            logits = pred["qgnet"] if with_baselines else pred
            fg[0] += int((logits.argmax(1) == 1).sum())
            fg[1] += logits[:, 0].numel()
            return pred

        r = evaluate(model, ds, seed=seed, batch_size=8, predict_fn=fn, progress=progress,
                     desc=f"{variant} {k}-shot")
        r = r if with_baselines else {"model": r}
        r[variant] = r.pop("qgnet" if with_baselines else "model")
        r[variant]["predicted_foreground_share"] = fg[0] / max(fg[1], 1)
        for v in r.values():
            v["test_classes"] = [ds.class_names[c] for c in ds.class_ids]
        results[f"{k}-shot"] = r
        if figure_episodes:
            from fewshot_priors.viz import save_episode_figures

            rows = episode_rows(model, ds, _figure_episodes(ds, figure_episodes))
            figures[f"{k}-shot"] = str(save_episode_figures(
                rows, out / f"fig5_{k}shot.png",
                title=f"QGNet on real photos, held-out {', '.join(sorted(test_classes))}, {k}-shot"))
    timings["evaluate"] = t()
    return {
        "results": results,
        "train": {"steps": res["step"], "episodes_per_epoch": len(train_set),
                  "final_loss": res["history"][-1]["loss"] if res["history"] else None,
                  "train_classes": len(train_set.class_ids)},
        "timings_s": timings,
        "figures": figures,
        "skipped": skipped,
    }


def _spread(xs: Sequence[float]) -> dict[str, Any]:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per shot and method: the fold-averaged mIoU / FB-IoU of each seed, and their mean, std, min-max.

    ``runs`` holds one entry per (seed, fold) with ``results[shot][method] = {"miou", "fbiou"}``.
    A method's seed value is the mean over the folds of that seed (PASCAL-5i style).
    """
    table: dict[str, dict[str, Any]] = {}
    seeds = sorted({r["seed"] for r in runs})
    for r in runs:
        for shot, methods in r["results"].items():
            for name, m in methods.items():
                cell = table.setdefault(shot, {}).setdefault(name, {"per_seed": {s: {"miou": [], "fbiou": []}
                                                                                  for s in seeds}})
                cell["per_seed"][r["seed"]]["miou"].append(m["miou"])
                cell["per_seed"][r["seed"]]["fbiou"].append(m["fbiou"])
    for methods in table.values():
        for cell in methods.values():
            per_seed = {s: {k: statistics.fmean(v) for k, v in d.items() if v} for s, d in cell["per_seed"].items()
                        if d["miou"]}
            cell["folds_per_seed"] = {s: len(d["miou"]) for s, d in cell["per_seed"].items()}
            cell["per_seed"] = per_seed
            cell["miou"] = _spread([d["miou"] for d in per_seed.values()])
            cell["fbiou"] = _spread([d["fbiou"] for d in per_seed.values()])
    return table


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def results_markdown(summary: Mapping[str, Any], header: str = "") -> str:
    """Markdown table (mean ± std [min-max] over seeds, %) of :func:`summarize`'s output."""
    lines = [header] if header else []
    lines += ["| shots | method | mIoU mean ± std [min-max] | FB-IoU mean ± std [min-max] | seeds |",
              "|---|---|---|---|---|"]
    for shot, methods in summary.items():
        for name, cell in methods.items():
            m, f = cell["miou"], cell["fbiou"]
            lines.append(f"| {shot} | {name} | {_pct(m['mean'])} ± {_pct(m['std'])} [{_pct(m['min'])}-{_pct(m['max'])}] "
                         f"| {_pct(f['mean'])} ± {_pct(f['std'])} [{_pct(f['min'])}-{_pct(f['max'])}] | {m['n']} |")
    return "\n".join(lines) + "\n"


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
    preset_overrides: Mapping[str, Any] | None = None,
    variants: Sequence[str] = tuple(VARIANTS),
    device: str = "auto",
    progress: bool = True,
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
        preset_overrides: top-level preset entries to replace (``image_size``,
            ``episodes``, ``fg_weight``, ...) and ``train`` / ``pretrain`` sub-dicts to merge.
        variants: which models of :data:`VARIANTS` to train.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: print progress lines (per unit, with elapsed time and an estimate of the rest).

    Returns:
        The content of ``metrics.json``.
    """
    from fewshot_priors.engine.pretrain import pretrain

    root, out = Path(root), Path(output)
    preset_name = "quick" if quick else "full"
    preset = copy.deepcopy(PRESETS[preset_name])
    for k, v in (preset_overrides or {}).items():
        if k not in preset:
            raise ValueError(f"unknown preset entry {k!r}; valid: {sorted(preset)}")
        if isinstance(preset[k], dict):
            preset[k].update(v)
        else:
            preset[k] = v
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
        stamp = {"settings": preset["pretrain"], "seed": seed, "backbone": BACKBONE, "images": len(images)}
        stamp_path = pre_dir / "settings.json"
        if (stamp_path.is_file() and (pre_dir / "result.json").is_file()
                and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))):
            say(f"seed {seed}: reusing the prior extractor pretrained by a previous run with the same settings")
            pre = json.loads((pre_dir / "result.json").read_text())
        else:
            say(f"seed {seed}: pretraining the prior extractor (GlobalLocalMoCo, {BACKBONE}) on all "
                f"{len(images)} unlabelled images (shared by the folds of this seed)")
            pre = pretrain(images=images, output_dir=str(pre_dir), backbone=BACKBONE, seed=seed, device=device,
                           progress=progress, log_every=5, amp=True, **preset["pretrain"])
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
                r = train_and_evaluate(root, held, out / f"seed{seed}" / f"fold{f}" / v, preset, seed=seed,
                                       prior_path=pre["prior_extractor"], variant=v, device=device,
                                       progress=False, with_baselines=v == "qgnet",
                                       figure_episodes=preset["figure_episodes"] if seed == seeds[0] else 0,
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
        f"K-shot episodes need K+1 images with >= {preset['min_pixels']} px of the class (original resolution): "
        "classes with fewer are left out of that K (see test_classes per run), and a fold with no such class "
        "is not scored for that K (see skipped per run; folds_per_seed in the summary). mIoU = mean over the fold's "
        "evaluated classes of the class IoU accumulated over its episodes; each seed's number is the mean over "
        "folds; spread = over seeds."
    )
    metrics = {
        "root": str(root),
        "preset": preset_name,
        "settings": preset,
        "seeds": seeds,
        "protocol": protocol,
        "folds": {f"fold{i}": c for i, c in enumerate(all_folds)},
        "folds_run": fold_ids,
        "methods": methods,
        "summary": summary,
        "runs": runs,
        "prior_extractor": {"method": "GlobalLocalMoCo (global + local superpixel InfoNCE), self-supervised",
                            "backbone": BACKBONE, "shared_across_folds": True, "per_seed": pretrain_info},
        "backbone_init": (f"frozen supervised backbone loaded from {preset['backbone_weights']}"
                          if preset.get("backbone_weights") else
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
