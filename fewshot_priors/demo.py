"""The end-to-end demo: the whole QGNet pipeline on a generated dataset, on a CPU, in minutes.

``fewshot-priors demo --output demo_output`` (or :func:`run_demo`) runs:

1. **Data.** :func:`~fewshot_priors.data.generate_synthetic_dataset` writes textured
   objects composited onto photos (all from scikit-image, nothing downloaded) to
   disk in the PASCAL VOC layout; every later step reads it with the real loader,
   :class:`~fewshot_priors.data.PascalFewShot`. Classes are split into folds like
   PASCAL-5i: the model trains on the fold's training classes and is scored on
   its held-out classes only.
2. **Prior extractor** (paper Sec. 4.1). :func:`~fewshot_priors.engine.pretrain.pretrain`
   trains a :class:`~fewshot_priors.models.moco.GlobalLocalMoCo` (global + SLIC-superpixel
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
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ABLATION_VARIANTS", "PRESETS", "ablation_markdown", "episode_rows", "run_demo"]

#: Demo sizes. ``full`` is the README's ``make demo`` (< 10 min on 2 CPU cores);
#: ``quick`` runs the same pipeline end to end in about a minute (tests). The demo
#: pretrains for a few dozen steps only, where the momentum encoder still lags far
#: behind (after 90 steps at momentum 0.99, 0.99^90 = 40 % of it is still the random
#: init), so it exports the query encoder.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "data": {"num_classes": 12, "images_per_class": 40, "image_size": 96, "min_pixels": 1024},
        "pretrain": {"epochs": 6, "batch_size": 32, "size": 96, "n_segments": 24, "max_patches": 24,
                     "queue_size": 2048, "local_queue_size": 4096, "dim": 64, "mlp_hidden": 256,
                     "lr": 0.06, "moco_momentum": 0.99, "export_encoder": "query"},
        "train": {"epochs": 12, "batch_size": 8, "lr": 0.1},
        "episodes": 300,
        "ablation": False,
        "figure_episodes": 4,
    },
    "quick": {
        "data": {"num_classes": 4, "images_per_class": 20, "image_size": 64, "min_pixels": 400},
        "pretrain": {"epochs": 1, "batch_size": 8, "size": 64, "n_segments": 12, "max_patches": 12,
                     "queue_size": 64, "local_queue_size": 128, "dim": 32, "mlp_hidden": 64,
                     "lr": 0.03, "moco_momentum": 0.99, "max_steps": 3, "export_encoder": "query"},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.02, "max_steps": 4},
        "episodes": 8,
        "ablation": False,
        "figure_episodes": 2,
    },
}

BACKBONE = "resnet18"


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
    from fewshot_priors.engine.train import resolve_device
    from fewshot_priors.superpixels import available_backends

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


def _timer():
    start = time.perf_counter()
    return lambda: round(time.perf_counter() - start, 2)


def _upsample_map(m: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(m.float(), size=tuple(size), mode="bilinear", align_corners=True)[:, 0]


class _MapRecall:
    """Table-7 recall of the guided and prior region maps over the evaluated episodes.

    ``prior_map (1-p)`` is the object region ``{1 - p >= alpha}`` (the prior map is
    low on objects, Sec. 4.3); ``prior_map (p)`` is the literal ``{p >= alpha}``.
    """

    def __init__(self) -> None:
        from fewshot_priors.analysis import RecallMeter

        self.meters = {"guided_map": RecallMeter(),
                       "prior_map (1-p)": RecallMeter(low_is_object=True),
                       "prior_map (p)": RecallMeter(low_is_object=False)}

    def update(self, out: Mapping[str, Any], query_mask: torch.Tensor) -> None:
        label = query_mask.cpu()
        self.meters["guided_map"].update(out["guided_map"].float().cpu(), label)
        if out.get("prior_map") is not None:
            for name in ("prior_map (1-p)", "prior_map (p)"):
                self.meters[name].update(out["prior_map"].float().cpu(), label)

    def compute(self) -> dict[str, Any]:
        return {k: m.compute() for k, m in self.meters.items() if m.compute()["episodes"] > 0}


def _predictors(model: torch.nn.Module, recall: _MapRecall | None = None, with_baselines: bool = True):
    """``batch -> {name: prediction}``: the model's logits and the two baselines' label maps,
    from one forward pass (logits are scored by bilinear resize then argmax, as PFENet).

    With ``recall``, the region maps of each batch are also scored against
    ``batch["query_mask"]`` (Table 7). Without baselines it returns the model's logits.
    """

    def predict(batch: Mapping[str, Any]) -> dict[str, torch.Tensor] | torch.Tensor:
        out = model(batch["query_image"], batch["support_images"], batch["support_masks"])
        if recall is not None:
            recall.update(out, batch["query_mask"])
        if not with_baselines:
            return out["logits"].float()
        size = batch["query_image"].shape[-2:]
        guided = _upsample_map(out["guided_map"], size)
        return {
            "qgnet": out["logits"].float(),
            "baseline_guided_map_0.5": (guided >= 0.5).long(),
            "baseline_all_foreground": torch.ones_like(guided, dtype=torch.long),
        }

    return predict


@torch.no_grad()
def episode_rows(model: torch.nn.Module, dataset, indices: Iterable[int]) -> list[dict[str, Any]]:
    """Fig. 5 rows (see :func:`fewshot_priors.viz.episode_figure`) for some episodes of ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for i in indices:
        ep = dataset[i]
        out = model(ep["query_image"][None].to(device), ep["support_images"][None].to(device),
                    ep["support_masks"][None].to(device))
        size = ep["query_image"].shape[-2:]
        pm = out.get("prior_map")
        rows.append({
            "query_image": ep["query_image"],
            "support_image": ep["support_images"][0],
            "support_mask": ep["support_masks"][0],
            "guided_map": _upsample_map(out["guided_map"], size)[0].cpu(),
            "prior_map": _upsample_map(pm, size)[0].cpu() if pm is not None else None,
            "prediction": out["logits"].argmax(1)[0].cpu(),
            "ground_truth": ep["query_mask"],
        })
    return rows


def _write_training_list(voc: Path, train_names: list[str], held_out: list[int]) -> int:
    """Write ``train_aug.txt`` (preferred by the loader) with the training images free of held-out classes.

    In the generated images every object is a class, so a held-out class often
    appears as a distractor in training images, where the protocol labels it
    background. A first version of the demo trained on all of them and learned to
    suppress exactly those held-out objects (their IoU fell far below the
    guided-map baseline's), so the demo uses the strict variant of the protocol
    that never shows a held-out class during training.
    """
    from fewshot_priors.data.io import read_label

    held = set(int(c) for c in held_out)
    keep = [n for n in train_names
            if not held & set(int(v) for v in np.unique(read_label(voc / "SegmentationClassAug" / f"{n}.png")))]
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(keep) + "\n")
    return len(keep)


def _figure_episodes(dataset, n: int) -> list[int]:
    """The first ``n`` test episodes, taken round-robin over the held-out classes."""
    by_class: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        c = int(dataset.episode(i)[1]) if hasattr(dataset, "episode") else 0
        by_class.setdefault(c, []).append(i)
    picked: list[int] = []
    while len(picked) < min(n, len(dataset)):
        for idx in by_class.values():
            if idx and len(picked) < n:
                picked.append(idx.pop(0))
    return sorted(picked)


def _demo_config(root: Path, run_dir: Path, preset: Mapping, seed: int, device: str, prior: str | None,
                 use_prior: bool = True) -> dict:
    from fewshot_priors.config import load_config

    t = preset["train"]
    d = preset["data"]
    overrides = {
        "experiment.seed": seed,
        "experiment.output_dir": str(run_dir),
        "data.root": str(root),
        "data.image_size": d["image_size"],
        "data.min_pixels": d["min_pixels"],
        "train.epochs": t["epochs"],
        "train.batch_size": t["batch_size"],
        "train.lr": t["lr"],
        "train.max_steps": t.get("max_steps"),
        "train.device": device,
        "model.weights": prior,
        "model.prior_weights": prior if use_prior else None,
        "model.use_prior": use_prior,
    }
    feat = (d["image_size"] - 1) // 8 + 1
    overrides["model.bins"] = [feat, max(1, feat // 2), max(1, feat // 4), max(1, feat // 8)]
    return load_config("demo", overrides)


def _train_qgnet(cfg: Mapping, preset: Mapping, progress: bool, min_pixels: int) -> tuple[torch.nn.Module, dict]:
    from fewshot_priors.engine.build import build_dataset, build_model
    from fewshot_priors.engine.train import resolve_device, seed_everything, train

    seed_everything(cfg["experiment"]["seed"])
    model = build_model(cfg).to(resolve_device(cfg["train"]["device"]))
    train_set = build_dataset(cfg, "train", progress=progress)
    # the demo owns its run folders: a rerun replaces the previous run's checkpoints and logs
    res = train(cfg, model=model, train_set=train_set, progress=progress, overwrite=True)
    res["train_episodes_per_epoch"] = len(train_set)
    return model, res


def _evaluate_all(model, cfg, shots, episodes, seed, min_pixels, progress, with_baselines=True, recall=None):
    from fewshot_priors.engine.build import build_dataset
    from fewshot_priors.engine.evaluate import evaluate

    ds = build_dataset(cfg, "val", shots=shots, episodes=episodes, seed=seed, progress=progress)
    fn = _predictors(model, recall=recall, with_baselines=with_baselines)
    res = evaluate(model, ds, seed=seed, batch_size=8, predict_fn=fn, progress=progress,
                   desc=f"eval {shots}-shot")
    return (res if with_baselines else {"model": res}), ds


#: The ablation's models: key -> (description, prior weights: "pretrained" / None (random init), use_prior).
ABLATION_VARIANTS: dict[str, tuple[str, str | None, bool]] = {
    "pretrained_prior": ("QGNet, prior extractor pretrained by GlobalLocalMoCo (the demo's model)", "pretrained", True),
    "random_prior": ("QGNet, random-init frozen prior extractor", None, True),
    "no_prior": ("QGNet without the prior region map (PFENet-style)", None, False),
}


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def ablation_markdown(ablation: Mapping[str, Any]) -> str:
    """Markdown tables (mIoU / FB-IoU, Table-7 recall) of the ``"ablation"`` entry of ``metrics.json``."""
    variants = ablation["variants"]
    lines = ["| model | 1-shot mIoU | 1-shot FB-IoU | 5-shot mIoU | 5-shot FB-IoU |",
             "|---|---|---|---|---|"]
    for key, v in variants.items():
        r1, r5 = v["results"]["1-shot"], v["results"]["5-shot"]
        lines.append(f"| {key}: {v['description']} | {_pct(r1['miou'])} | {_pct(r1['fbiou'])} | "
                     f"{_pct(r5['miou'])} | {_pct(r5['fbiou'])} |")
    for shots in ("1-shot", "5-shot"):
        thr = None
        rows = []
        for key, v in variants.items():
            for name, rec in v["recall"][shots].items():
                thr = rec["thresholds"]
                rows.append(f"| {key} | {name} | " + " | ".join(_pct(x) for x in rec["pooled"]) + " |")
                if "area" in rec:
                    rows.append(f"| {key} | {name}: area of R | " + " | ".join(_pct(x) for x in rec["area"]) + " |")
        if thr is None:
            continue
        lines += ["", f"Recall (%) of the ground-truth query mask, {shots}, pooled over all episodes "
                      "(object region R at threshold alpha; 'area of R' = share of the scored pixels inside R, "
                      "which a recall alone does not penalise):", "",
                  "| model | map | " + " | ".join(f"{a:g}" for a in thr) + " |",
                  "|---|---|" + "---|" * len(thr)] + rows
    return "\n".join(lines) + "\n"


def _run_ablation(root: Path, out: Path, preset: Mapping, seed: int, device: str, prior_path: str,
                  main: Mapping[str, Any], progress: bool, min_pixels: int, say) -> dict[str, Any]:
    """Train and score the random-init-prior and no-prior variants; ``main`` holds the demo model's scores."""
    variants: dict[str, Any] = {"pretrained_prior": {"description": ABLATION_VARIANTS["pretrained_prior"][0],
                                                     **main}}
    for key in ("random_prior", "no_prior"):
        desc, _, use_prior = ABLATION_VARIANTS[key]
        say(f"ablation: training {desc}")
        cfg_v = _demo_config(root, out / f"qgnet_{key}", preset, seed, device, prior_path, use_prior=use_prior)
        if use_prior:
            cfg_v["model"]["prior_weights"] = None  # random init (seeded), frozen like the pretrained one
        model_v, _ = _train_qgnet(cfg_v, preset, progress, min_pixels)
        results, recall = {}, {}
        for shots in (1, 5):
            rec = _MapRecall()
            r, _ = _evaluate_all(model_v, cfg_v, shots, preset["episodes"], seed, min_pixels, progress,
                                 with_baselines=False, recall=rec)
            results[f"{shots}-shot"] = r["model"]
            recall[f"{shots}-shot"] = rec.compute()
        variants[key] = {"description": desc, "results": results, "recall": recall}
    return {
        "variants": variants,
        "recall_definition": "Recall = |R ∩ R_GT| / |R_GT| (paper Table 7); R = {map >= alpha} for the guided map, "
                             "R = {1 - p >= alpha} ('prior_map (1-p)', the prior map is low on objects) or "
                             "R = {p >= alpha} ('prior_map (p)'); maps resized bilinearly to the query label, "
                             "ignore pixels (255) excluded; 'pooled' = over all GT pixels of all episodes, "
                             "'mean' = mean of per-episode recalls; 'area' = |R| / scored pixels",
        "same_for_all": "dataset, seed, backbone init, training schedule and test episodes",
    }


def run_demo(
    output: str | os.PathLike = "demo_output",
    *,
    quick: bool = False,
    ablation: bool | None = None,
    seed: int = 321,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline and write ``metrics.json`` + figures under ``output``.

    Args:
        output: output folder (created; the generated dataset is reused if present).
        quick: use the tiny ``quick`` preset (about a minute; numbers are meaningless).
        ablation: also train and score QGNet with a random-init prior extractor and
            without the prior region map, with Table-7 recall of the region maps
            (triples the training time; default: the preset's choice, off).
        seed: seed of the dataset, pretraining, training and evaluation.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: show progress bars.

    Returns:
        The content of ``metrics.json``.
    """
    from fewshot_priors.data import generate_synthetic_dataset
    from fewshot_priors.engine.pretrain import pretrain
    from fewshot_priors.viz import plot_loss_curve, save_episode_figures

    preset_name = "quick" if quick else "full"
    preset = copy.deepcopy(PRESETS[preset_name])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    total = _timer()
    timings: dict[str, float] = {}
    d = preset["data"]
    min_pixels = int(d["min_pixels"])

    def say(msg: str) -> None:
        if progress:
            print(f"[demo] {msg}", flush=True)

    # 1. data ------------------------------------------------------------------------------
    t = _timer()
    say(f"generating the dataset ({d['num_classes']} classes x {d['images_per_class']} images) in {out / 'data'}")
    root = generate_synthetic_dataset(out / "data", num_classes=d["num_classes"],
                                      images_per_class=d["images_per_class"], image_size=d["image_size"],
                                      seed=seed, min_pixels=min_pixels, progress=progress)
    meta = json.loads((Path(root) / "dataset.json").read_text())
    voc = Path(root) / "VOC2012"
    train_names = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    train_images = [str(voc / "JPEGImages" / f"{n}.jpg") for n in train_names]
    timings["data"] = t()

    # 2. self-supervised prior extractor ---------------------------------------------------
    t = _timer()
    say(f"pretraining the prior extractor (GlobalLocalMoCo, {BACKBONE}) on {len(train_images)} unlabelled images")
    p = preset["pretrain"]
    pre_dir = out / "prior_extractor"
    stamp = {**_reuse_stamp(p, device), "seed": seed, "backbone": BACKBONE, "images": len(train_images),
             "data": d}
    stamp_path = pre_dir / "demo_settings.json"
    reused = False
    if (stamp_path.is_file() and (pre_dir / "prior_extractor.safetensors").is_file()
            and json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))):
        say("reusing the prior extractor pretrained by a previous run with the same settings")
        pre = json.loads((pre_dir / "demo_result.json").read_text())
        reused = True
    else:
        stamp_path.unlink(missing_ok=True)  # a crash below must not leave a stamp vouching for old files
        pre = pretrain(images=train_images, output_dir=str(pre_dir), backbone=BACKBONE, overwrite=True,
                       seed=seed, device=device, progress=progress, log_every=5, amp=True, **p)
        (pre_dir / "demo_result.json").write_text(json.dumps(pre, default=str))
        stamp_path.write_text(json.dumps(stamp))
    prior_path = pre["prior_extractor"]
    timings["pretrain"] = t()

    # 3-4. QGNet -------------------------------------------------------------------------
    t = _timer()
    cfg = _demo_config(Path(root), out / "qgnet", preset, seed, device, prior_path)
    train_classes = [c for c in range(1, meta["num_classes"] + 1) if c not in meta["folds"][cfg["data"]["fold"]]]
    say(f"training QGNet on classes {train_classes}; held-out classes {meta['folds'][cfg['data']['fold']]}")
    kept = _write_training_list(voc, train_names, meta["folds"][cfg["data"]["fold"]])
    say(f"training list: {kept} of {len(train_names)} training images contain no held-out class")
    model, train_res = _train_qgnet(cfg, preset, progress, min_pixels)
    timings["train_qgnet"] = t()

    # 5. evaluation ---------------------------------------------------------------------------
    results: dict[str, Any] = {}
    datasets = {}
    t = _timer()
    main_recall: dict[str, Any] = {}
    for shots in (1, 5):
        say(f"evaluating {shots}-shot on {preset['episodes']} held-out episodes (+ baselines)")
        rec = _MapRecall()
        results[f"{shots}-shot"], datasets[shots] = _evaluate_all(
            model, cfg, shots, preset["episodes"], seed, min_pixels, progress, recall=rec)
        main_recall[f"{shots}-shot"] = rec.compute()
    timings["evaluate"] = t()

    ablation_res = None
    if preset["ablation"] if ablation is None else ablation:
        t = _timer()
        main = {"results": {k: results[k]["qgnet"] for k in results}, "recall": main_recall}
        ablation_res = _run_ablation(Path(root), out, preset, seed, device, prior_path, main, progress,
                                     min_pixels, say)
        for key, name in (("random_prior", "qgnet_random_prior"), ("no_prior", "qgnet_without_prior")):
            for k, r in ablation_res["variants"][key]["results"].items():
                results[k][name] = r
        (out / "ablation.md").write_text(ablation_markdown(ablation_res), encoding="utf-8")
        timings["ablation"] = t()

    # 6. figures + metrics ------------------------------------------------------------------
    t = _timer()
    figures = {}
    n_fig = preset["figure_episodes"]
    for shots, ds in datasets.items():
        rows = episode_rows(model, ds, _figure_episodes(ds, n_fig))
        figures[f"fig5_{shots}shot"] = str(save_episode_figures(
            rows, out / f"fig5_{shots}shot.png", title=f"QGNet demo, held-out classes, {shots}-shot"))
    figures["loss_curve"] = str(plot_loss_curve(out / "qgnet" / "scalars.csv", out / "loss_curve.png"))
    figures["pretrain_curve"] = str(plot_loss_curve(
        out / "prior_extractor" / "scalars.csv", out / "pretrain_curve.png",
        tags=("pretrain/loss", "pretrain/loss_global", "pretrain/loss_local"), val_tags=()))
    timings["figures"] = t()
    timings["total"] = total()

    summary: dict[str, Any] = {}
    beats = True
    for k, res in results.items():
        for name, r in res.items():
            summary[f"{k} {name} mIoU"] = round(100 * r["miou"], 2)
            summary[f"{k} {name} FB-IoU"] = round(100 * r["fbiou"], 2)
        q = res["qgnet"]["miou"]
        beats &= all(q > res[b]["miou"] for b in res if b.startswith("baseline"))
    metrics = {
        "preset": preset_name,
        "seed": seed,
        "summary": summary,
        "beats_baselines": bool(beats),
        "results": results,
        "dataset": {
            "root": str(root),
            "layout": "PASCAL VOC (JPEGImages, SegmentationClassAug, ImageSets/Segmentation), read by PascalFewShot",
            "classes": meta.get("class_names"),
            "fold": cfg["data"]["fold"],
            "train_classes": train_classes,
            "test_classes": meta["folds"][cfg["data"]["fold"]],
            "train_images": len(train_images),
            "train_images_without_held_out_classes": kept,
            "protocol": "strict: QGNet trains only on images with no held-out class (train_aug.txt); "
                        "the prior extractor pretrains on all training images without labels",
            "image_size": d["image_size"],
            "test_episodes": preset["episodes"],
        },
        "prior_extractor": {
            "method": "GlobalLocalMoCo (global + local superpixel InfoNCE), self-supervised, no labels",
            "backbone": BACKBONE,
            "export": prior_path,
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
            "steps": train_res["step"],
            "episodes_per_epoch": train_res["train_episodes_per_epoch"],
            "final_loss": train_res["history"][-1]["loss"] if train_res["history"] else None,
            "config": {k: cfg[k] for k in ("model", "train")},
        },
        "region_map_recall": main_recall,
        "ablation": ablation_res,
        "figures": figures,
        "timings_s": timings,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(next(model.parameters()).device)},
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, default=str, allow_nan=True), encoding="utf-8")
    say(f"done in {timings['total']:.0f}s; wrote {path}")
    for k, res in results.items():
        line = ", ".join(f"{n} {100 * r['miou']:.1f}" for n, r in res.items())
        say(f"{k} mIoU (%): {line}")
    if not beats and not quick:
        say("WARNING: QGNet did not beat both baselines on the held-out classes")
    if any(not math.isfinite(r["miou"]) for res in results.values() for r in res.values()):
        say("WARNING: non-finite metric")
    return metrics
