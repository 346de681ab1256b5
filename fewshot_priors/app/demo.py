"""The end-to-end demo: the whole QGNet pipeline on a generated dataset, on a CPU, in minutes.

``fewshot-priors demo --output demo_output`` (or :func:`run_demo`) runs:

1. **Data.** :func:`~fewshot_priors.data.generate_synthetic_dataset` writes textured
   objects composited onto photos (all from scikit-image, nothing downloaded) to
   disk in the PASCAL VOC layout; every later step reads it with the real loader,
   :class:`~fewshot_priors.data.PascalFewShot`. Classes are split into folds like
   PASCAL-5i: the model trains on the fold's training classes and is scored on
   its held-out classes only.
2. **Prior extractor** (paper Sec. 4.1). :func:`~fewshot_priors.engine.pretrain.pretrain`
   trains a :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` (global + SLIC-superpixel
   local InfoNCE) on the training images without labels and exports its encoder.
3. **The supervised backbone.** The paper's backbone is ImageNet-pretrained and
   frozen. No pretrained weights exist offline, and a frozen *random* ResNet gives
   nearly uninformative features, so the demo initialises the frozen backbone
   from the self-supervised encoder it has just trained (same weights as the
   prior extractor). This is the one departure from the paper, and it is
   recorded in ``metrics.json`` (``backbone_init``).
4. **QGNet training** with the library's engine (SGD, poly LR, the paper's
   augmentation) at a small input size (96 px, resnet18, decoder width 64), on the
   fold's training classes. The demo trains for 12 epochs instead of 200, so it uses
   an effective LR of 0.1 instead of PASCAL's 0.025: at 0.02 the decoder was still
   on the class-prior plateau (all-background predictions) after 186 steps.
5. **Evaluation** on the held-out classes, 1-shot and 5-shot, fixed seed, scored
   at the original label resolution, against two baselines computed on the same
   episodes: (a) the guided region map alone thresholded at 0.5, (b) predicting
   all foreground. ``--ablation`` also trains, with everything else equal, QGNet with a
   *random-init* frozen prior extractor and the PFENet-style model without the
   prior region map (``use_prior=False``), and scores the Table-7 recall of the
   guided and prior region maps of each (triples the training time; ``ablation``
   in ``metrics.json`` and ``ablation.md``).
Every setting is in the shipped config ``demo/full`` (``--quick``: ``demo/quick``),
``fewshot_priors/configs/demo/*.yaml``: those files are exactly what runs; the demo
fills in only the run-time paths (output folder, dataset root, the pretrained
encoder) and ``--seed`` / ``--device``. ``--set section.key=value`` changes any key.

6. **Outputs**: ``metrics.json``, ``fig5_1shot.png`` / ``fig5_5shot.png`` (Fig. 5
   layout), ``loss_curve.png``, ``pretrain_curve.png``, the run folders with
   checkpoints, CSV and TensorBoard logs.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .report import ablation_markdown, episode_rows
from .report import figure_episodes as _figure_episodes
from .study import (
    BASELINES,
    GroupResult,
    PriorCache,
    Unit,
    UnitGroup,
    run_config,
    run_study,
    train_and_score,
    training_record,
)
from .study import timer as _timer

__all__ = ["ABLATION_VARIANTS", "ablation_markdown", "demo_config", "episode_rows", "run_demo"]

#: What ``--quick`` results mean (in ``metrics.json`` and printed with them).
QUICK_NOTE = ("--quick is a smoke test (a few training steps on a tiny dataset): these numbers are meaningless; "
              "run the demo without --quick for its results")

#: The shipped configs of the demo's presets (``fewshot_priors/configs/demo/<preset>.yaml``).
PRESET_CONFIGS = {"full": "demo/full", "quick": "demo/quick"}


def demo_config(quick: bool = False, overrides: Iterable[str] | Mapping[str, Any] | None = None) -> dict:
    """The demo's config: ``demo/quick`` or ``demo/full`` with ``section.key=value`` overrides."""
    from fewshot_priors.config import load_config

    return load_config(PRESET_CONFIGS["quick" if quick else "full"], overrides)


def _reuse_stamp(settings: Mapping[str, Any], device: str) -> dict[str, Any]:
    """Everything the pretrained prior extractor depends on besides ``settings``.

    A prior extractor from an earlier run is reused only if this matches exactly: the
    package version and a hash of every source file of the package (any code change,
    e.g. to the encoder, the augmentation or the sampler, re-pretrains), the versions
    of the numerical libraries, the superpixel backends present (fast-slic or
    scikit-image give different SLIC segmentations), torch's thread count (CPU
    reductions are not bitwise stable across thread counts) and the device.
    """
    import fewshot_priors
    from fewshot_priors.engine.runtime import resolve_device
    from fewshot_priors.ssl.superpixels import available_backends

    package = Path(fewshot_priors.__file__).parent
    digest = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        digest.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    versions = {}
    for dist in ("torch", "numpy", "scikit-image", "timm", "fast-slic", "pillow", "safetensors"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {"settings": settings, "package": fewshot_priors.__version__, "source_sha256": digest.hexdigest(),
            "libraries": versions, "superpixel_backends": available_backends("slic"),
            "torch_threads": torch.get_num_threads(), "device": str(resolve_device(device))}


#: The ablation's models: key -> (description, prior weights: "pretrained" / None (random init), use_prior).
ABLATION_VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "pretrained_prior": ("QGNet, prior extractor pretrained by GlobalLocalMoCo (the demo's model)", "pretrained", True),
    "random_prior": ("QGNet, random-init frozen prior extractor", None, True),
    "no_prior": ("QGNet without the prior region map (PFENet-style)", None, False),
}
#: The name of each model of :data:`ABLATION_VARIANTS` in the results.
RESULT_NAMES = {"pretrained_prior": "qgnet", "random_prior": "qgnet_random_prior", "no_prior": "qgnet_without_prior"}


def _run_folder(out: Path, variant: str) -> Path:
    """The run folder of a model of :data:`ABLATION_VARIANTS`: ``qgnet``, ``qgnet_random_prior``, ``qgnet_no_prior``."""
    return out / ("qgnet" if variant == "pretrained_prior" else f"qgnet_{variant}")


def _config(quick: bool, ablation: bool | None, seed: int | None, device: str | None,
            overrides: Iterable[str] | Mapping[str, Any] | None) -> dict:
    """The preset's config with the overrides and the explicit arguments."""
    from fewshot_priors.config import parse_overrides

    over = {f"{sec}.{k}": v for sec, kv in parse_overrides(overrides).items() for k, v in kv.items()}
    if seed is not None:
        over["experiment.seed"] = seed
    if device is not None:
        over["experiment.device"] = device
    if ablation is not None:
        over["study.ablation"] = bool(ablation)
    return demo_config(quick, over)


def _make_data(cfg: Mapping, out: Path, progress: bool, say) -> dict[str, Any]:
    """Generate the dataset (reused if present): ``{"root", "meta", "voc", "train_names", "train_images"}``."""
    from fewshot_priors.data import generate_synthetic_dataset

    d, study = cfg["data"], cfg["study"]
    say(f"generating the dataset ({study['num_classes']} classes x {study['images_per_class']} images) "
        f"in {out / 'data'}")
    root = generate_synthetic_dataset(out / "data", num_classes=study["num_classes"],
                                      images_per_class=study["images_per_class"], image_size=d["image_size"],
                                      seed=cfg["experiment"]["seed"], min_pixels=int(d["min_pixels"]),
                                      progress=progress)
    voc = Path(root) / "VOC2012"
    train_names = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    return {"root": root, "meta": json.loads((Path(root) / "dataset.json").read_text()), "voc": voc,
            "train_names": train_names, "train_images": [str(voc / "JPEGImages" / f"{n}.jpg") for n in train_names]}


def _prior_extractor(cfg: Mapping, out: Path, train_images: list[str], progress: bool, say) -> tuple[dict, bool]:
    """``(pretrain() result, reused)``: the GlobalLocalMoCo prior extractor pretrained on the training
    images without labels, or the one of a previous run with the same settings and code (:func:`_reuse_stamp`)."""
    p, d, study = cfg["pretrain"], cfg["data"], cfg["study"]
    pre_dir = out / "prior_extractor"
    cache = PriorCache(pre_dir, {
        **_reuse_stamp(p, cfg["experiment"]["device"]), "seed": cfg["experiment"]["seed"], "images": len(train_images),
        "data": {"image_size": d["image_size"], "min_pixels": d["min_pixels"], "num_classes": study["num_classes"],
                 "images_per_class": study["images_per_class"]}})
    pre = cache.load()
    if pre is not None:
        say("reusing the prior extractor pretrained by a previous run with the same settings")
        return pre, True
    say(f"pretraining the prior extractor (GlobalLocalMoCo, {p['backbone']}) on {len(train_images)} "
        "unlabelled images")
    pcfg = copy.deepcopy(dict(cfg))
    pcfg["pretrain"]["images"] = train_images
    pcfg["experiment"]["output_dir"] = str(pre_dir)
    return cache.pretrain(pcfg, progress=progress), False


def _train_models(cfg: Mapping, out: Path, data: Mapping[str, Any], prior_path: str, progress: bool,
                  say) -> tuple[GroupResult, dict[str, Any]]:
    """Train and score the demo's model (and, with ``study.ablation``, the random-prior and no-prior
    models) through the study runner: ``(group result, {variant: ScoredVariant})``. The demo trains
    every model on every run (its figures need the trained model): nothing is reused."""
    scored: dict[str, Any] = {}

    def train_unit(unit: Unit, with_baselines: bool, datasets: dict) -> dict[str, Any]:
        _, prior, use_prior = ABLATION_VARIANTS[unit.variant]
        cfg_v = run_config(cfg, output_dir=unit.folder, root=data["root"], weights=prior_path,
                           prior_weights=prior_path if prior else None, use_prior=use_prior)
        # the demo owns its run folders: a rerun replaces the previous run's checkpoints and logs
        main = unit.variant == "pretrained_prior"
        run = scored[unit.variant] = train_and_score(cfg_v, with_baselines=with_baselines, recall=True,
                                                     overwrite=True, progress=progress, say=say if main else None)
        if main:
            say(f"trained on the {len(run.train_set.entries)} of {len(data['train_names'])} training images "
                "without a held-out class")
        name = RESULT_NAMES[unit.variant]
        return {"results": {k: {(name if m == "qgnet" else m): r for m, r in res.items()}
                            for k, res in run.results.items()}, "recall": run.recall}

    seed, fold = cfg["experiment"]["seed"], cfg["data"]["fold"]
    variants = list(ABLATION_VARIANTS) if cfg["study"]["ablation"] else ["pretrained_prior"]
    units = [Unit(seed, fold, v, _run_folder(out, v)) for v in variants]
    (group,) = run_study([UnitGroup(seed, fold, units)], train_unit, groups=1, say=say)
    return group, scored


def _ablation(group: GroupResult) -> dict[str, Any]:
    """The ``ablation`` record of ``metrics.json``: each model's scores and region-map recall."""
    variants = {}
    for key, r in group.results.items():
        name = RESULT_NAMES[key]
        variants[key] = {"description": ABLATION_VARIANTS[key][0],
                         "results": {k: res[name] for k, res in r["results"].items()}, "recall": r["recall"]}
    return {
        "variants": variants,
        "recall_definition": "Recall = |R ∩ R_GT| / |R_GT| (paper Table 7); R = {map >= alpha} for the guided map, "
                             "R = {1 - p >= alpha} ('prior_map (1-p)', the prior map is low on objects) or "
                             "R = {p >= alpha} ('prior_map (p)'); maps resized bilinearly to the query label, "
                             "ignore pixels (255) excluded; 'pooled' = over all GT pixels of all episodes, "
                             "'mean' = mean of per-episode recalls; 'area' = |R| / scored pixels",
        "same_for_all": "dataset, seed, backbone init, training schedule and test episodes",
    }


def _draw(out: Path, run: Any, n_fig: int) -> dict[str, str]:
    """Fig. 5 panels of the demo model (``run``: its ScoredVariant) and the loss curves."""
    from fewshot_priors.viz import plot_loss_curve, save_episode_figures

    figures = {}
    for shots, ds in run.datasets.items():
        rows = episode_rows(run.model, ds, _figure_episodes(ds, n_fig))
        figures[f"fig5_{shots}shot"] = str(save_episode_figures(
            rows, out / f"fig5_{shots}shot.png", title=f"QGNet demo, held-out classes, {shots}-shot"))
    figures["loss_curve"] = str(plot_loss_curve(out / "qgnet" / "scalars.csv", out / "loss_curve.png",
                                                title="QGNet training loss"))
    figures["pretrain_curve"] = str(plot_loss_curve(
        out / "prior_extractor" / "scalars.csv", out / "pretrain_curve.png",
        tags=("pretrain/loss", "pretrain/loss_global", "pretrain/loss_local"), val_tags=(),
        title="GlobalLocalMoCo pretraining loss"))
    return figures


def _summary(results: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, float], bool]:
    """``({"1-shot qgnet mIoU": %, ...}, whether QGNet beats every baseline at every K)``."""
    summary: dict[str, Any] = {}
    beats = True
    for k, res in results.items():
        for name, r in res.items():
            summary[f"{k} {name} mIoU"] = round(100 * r["miou"], 2)
            summary[f"{k} {name} FB-IoU"] = round(100 * r["fbiou"], 2)
        q = res["qgnet"]["miou"]
        beats &= all(q > res[b]["miou"] for b in res if b in BASELINES)
    return summary, bool(beats)


def _print_results(results: Mapping[str, Mapping[str, Any]], beats: bool, quick: bool, say) -> None:
    """The closing status lines: the mIoU of every model per K, and what they mean."""
    for k, res in results.items():
        line = ", ".join(f"{n} {100 * r['miou']:.1f}" for n, r in res.items())
        say(f"{k} mIoU (%): {line}" + (" (meaningless: --quick)" if quick else ""))
    if quick:
        say(f"NOTE: {QUICK_NOTE}")
    if not beats and not quick:
        say("WARNING: QGNet did not beat both baselines on the held-out classes")
    if any(not math.isfinite(r["miou"]) for res in results.values() for r in res.values()):
        say("WARNING: non-finite metric")


def run_demo(
    output: str | os.PathLike = "demo_output",
    *,
    quick: bool = False,
    ablation: bool | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = True,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline and write ``metrics.json`` + figures under ``output``.

    Args:
        output: output folder (created; the generated dataset is reused if present).
        quick: use the tiny ``quick`` preset (30 s to 2 min on 2 CPU cores; numbers are meaningless).
        ablation: also train and score QGNet with a random-init prior extractor and
            without the prior region map, with Table-7 recall of the region maps
            (triples the training time; default: ``study.ablation`` of the config, off).
        seed: seed of the dataset, pretraining, training and evaluation
            (default: ``experiment.seed`` of the config, 321).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (default: ``experiment.device``, auto).
        progress: show progress bars (the ``[demo]`` status lines and the summary are
            printed either way).
        overrides: ``section.key=value`` changes to the preset's config (``demo/full`` or ``demo/quick``).

    Returns:
        The content of ``metrics.json``.
    """
    preset_cfg = _config(quick, ablation, seed, device, overrides)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    total = _timer()
    timings: dict[str, float] = {}

    def say(msg: str) -> None:  # status lines and the summary: printed with or without progress bars
        print(f"[demo] {msg}", flush=True)

    t = _timer()
    data = _make_data(preset_cfg, out, progress, say)
    timings["data"] = t()
    t = _timer()
    pre, reused = _prior_extractor(preset_cfg, out, data["train_images"], progress, say)
    timings["pretrain"] = t()
    t = _timer()
    meta, fold = data["meta"], preset_cfg["data"]["fold"]
    train_classes = [c for c in range(1, meta["num_classes"] + 1) if c not in meta["folds"][fold]]
    say(f"training QGNet on classes {train_classes}; held-out classes {meta['folds'][fold]}")
    # In the generated images every object is a class, so a held-out class often appears as a
    # distractor in training images, where PFENet's protocol labels it background. A first version
    # of the demo trained on all of them and learned to suppress exactly those held-out objects (their
    # IoU fell far below the guided-map baseline's), so the presets set data.exclude_novel_images:
    # QGNet never sees a held-out class during training. The loader prefers a train_aug.txt list,
    # which older versions of the demo wrote for their fold: it is removed.
    (data["voc"] / "ImageSets" / "Segmentation" / "train_aug.txt").unlink(missing_ok=True)
    prepared = t()
    group, scored = _train_models(preset_cfg, out, data, pre["prior_extractor"], progress, say)
    main = scored["pretrained_prior"]
    timings["train_qgnet"] = round(prepared + main.timings_s["train"], 2)
    timings["evaluate"] = main.timings_s["evaluate"]
    ablation_res = None
    if preset_cfg["study"]["ablation"]:
        ablation_res = _ablation(group)
        (out / "ablation.md").write_text(ablation_markdown(ablation_res), encoding="utf-8")
        timings["ablation"] = round(sum(r.timings_s["train"] + r.timings_s["evaluate"]
                                        for v, r in scored.items() if v != "pretrained_prior"), 2)
    t = _timer()
    figures = _draw(out, main, preset_cfg["study"]["figure_episodes"])
    timings["figures"] = t()
    timings["total"] = total()
    # the demo's model and the baselines first, then the ablation's models
    results = {k: dict(sorted(res.items(), key=lambda kv: kv[0] not in ("qgnet", *BASELINES)))
               for k, res in group.scores().items()}
    metrics = _metrics(preset_cfg, quick, data, train_classes, pre, reused, main, results, ablation_res, figures,
                       timings)
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, default=str, allow_nan=True), encoding="utf-8")
    say(f"done in {timings['total']:.0f}s; wrote {path}")
    _print_results(results, metrics["beats_baselines"], quick, say)
    return metrics


def _metrics(preset_cfg: Mapping, quick: bool, data: Mapping[str, Any], train_classes: list[int], pre: Mapping,
             reused: bool, main: Any, results: Mapping[str, Any], ablation_res: Mapping | None,
             figures: Mapping[str, str], timings: Mapping[str, float]) -> dict[str, Any]:
    """The content of ``metrics.json`` (``main``: the demo model's ScoredVariant)."""
    preset_name = "quick" if quick else "full"
    cfg, train_res, p, d = main.config, main.train, preset_cfg["pretrain"], preset_cfg["data"]
    summary, beats = _summary(results)
    return {
        "preset": preset_name,
        "note": QUICK_NOTE if quick else None,
        "seed": preset_cfg["experiment"]["seed"],
        "summary": summary,
        "beats_baselines": beats,
        "results": results,
        "dataset": {
            "root": str(data["root"]),
            "layout": "PASCAL VOC (JPEGImages, SegmentationClassAug, ImageSets/Segmentation), read by PascalFewShot",
            "classes": data["meta"].get("class_names"),
            "fold": d["fold"],
            "train_classes": train_classes,
            "test_classes": data["meta"]["folds"][d["fold"]],
            "train_images": len(data["train_images"]),
            "train_images_without_held_out_classes": len(main.train_set.entries),
            "protocol": "strict: QGNet trains only on images with no held-out class (data.exclude_novel_images); "
                        "the prior extractor pretrains on all training images without labels",
            "image_size": d["image_size"],
            "test_episodes": preset_cfg["eval"]["episodes"],
        },
        "prior_extractor": {
            "method": "GlobalLocalMoCo (global + local superpixel InfoNCE), self-supervised, no labels",
            "backbone": p["backbone"],
            "export": pre["prior_extractor"],
            "steps": pre["step"],
            "reused_from_previous_run": reused,
            "final_loss": pre["history"][-1]["loss"] if pre["history"] else None,
            "settings": p,
        },
        "backbone_init": (
            "frozen supervised backbone initialised from the self-supervised encoder above (no ImageNet "
            "weights are available offline; a frozen random backbone gives nearly uninformative features)"
        ),
        "training": {
            **training_record(train_res, cfg),
            "config": {k: cfg[k] for k in ("model", "train")},
            "preset_config": PRESET_CONFIGS[preset_name],
        },
        "region_map_recall": main.recall,
        "ablation": ablation_res,
        "figures": dict(figures),
        "timings_s": dict(timings),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(next(main.model.parameters()).device)},
    }
