"""The end-to-end demo, quick preset: every stage runs through the real loaders and writes its outputs.

The full preset's "beats both baselines" check is run by `make demo` (numbers in
metrics.json); at the quick size the model sees a handful of steps and its
numbers mean nothing, so this test checks structure and finiteness only.
"""

from __future__ import annotations

import json
import math

import pytest


@pytest.mark.slow  # the whole pipeline (data, MoCo pretraining, QGNet training, 2 evaluations, figures): ~40-80 s
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    from fewshot_priors.app.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--quick", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # --no-progress hides the bars only: the status lines and the results are still printed, once
    assert "[demo] generating the dataset" in printed and "[demo] done in" in printed
    assert printed.count("1-shot mIoU (%): qgnet") == 1 and '"1-shot qgnet mIoU"' not in printed  # no JSON echo
    metrics = json.loads((out / "metrics.json").read_text())
    # the printed result says that --quick numbers mean nothing, as metrics.json does
    assert "meaningless" in printed.splitlines()[-1]
    assert "meaningless" in metrics["note"]
    for name in ("fig5_1shot.png", "fig5_5shot.png", "loss_curve.png", "pretrain_curve.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "prior_extractor" / "prior_extractor.safetensors").is_file()
    assert (out / "qgnet" / "last.safetensors").is_file()
    assert (out / "data" / "VOC2012" / "SegmentationClassAug").is_dir()
    assert metrics["preset"] == "quick"
    # the foreground weight set from the data (train.fg_balance 1) is the one recorded, not the placeholder
    tr = metrics["training"]
    assert 0.0 < tr["train_fg_share"] < 1.0
    assert tr["fg_weight"] == pytest.approx((1 - tr["train_fg_share"]) / tr["train_fg_share"])
    for shots in ("1-shot", "5-shot"):
        res = metrics["results"][shots]
        assert set(res) >= {"qgnet", "baseline_guided_map_0.5", "baseline_all_foreground"}
        for r in res.values():
            assert math.isfinite(r["miou"]) and math.isfinite(r["fbiou"])
            assert 0.0 <= r["miou"] <= 1.0
            assert r["episodes"] == metrics["dataset"]["test_episodes"]
        # all-foreground: IoU = foreground area / non-ignored area, never 0 and never 1 on this data
        assert 0.0 < res["baseline_all_foreground"]["miou"] < 1.0
    assert set(metrics["dataset"]["test_classes"]).isdisjoint(metrics["dataset"]["train_classes"])
    assert isinstance(metrics["beats_baselines"], bool)
    # Table-7 recall of the demo model's region maps: both prior conventions, recall falls with the threshold
    for shots in ("1-shot", "5-shot"):
        rec = metrics["region_map_recall"][shots]
        assert set(rec) == {"guided_map", "prior_map (1-p)", "prior_map (p)"}
        for r in rec.values():
            assert len(r["pooled"]) == 9 and r["episodes"] > 0
            assert all(0.0 <= x <= 1.0 for x in r["pooled"] + r["area"])
            assert all(a >= b for a, b in zip(r["pooled"], r["pooled"][1:]))
    assert metrics["ablation"] is None  # --ablation not given


def test_map_recall_scores_both_prior_conventions_and_skips_a_missing_prior():
    import torch

    from fewshot_priors.app.report import MapRecall as _MapRecall

    prior = torch.tensor([[[[0.05, 0.95], [0.95, 0.95]]]])  # low on the object pixel
    label = torch.tensor([[[1, 0], [0, 255]]])
    rec = _MapRecall()
    rec.update({"guided_map": 1 - prior, "prior_map": prior}, label)
    res = rec.compute()
    assert res["prior_map (1-p)"]["pooled"] == [1.0] * 9  # 1 - 0.05 >= every alpha
    assert res["prior_map (p)"]["pooled"] == [0.0] * 9  # 0.05 < every alpha
    # R = the 2 background pixels (0.95) of the 3 scored ones; the ignored pixel is not counted
    assert res["prior_map (p)"]["area"] == pytest.approx([2 / 3] * 9)
    assert res["guided_map"]["pooled"] == res["prior_map (1-p)"]["pooled"]
    # no prior (use_prior=False): only the guided map is reported
    rec = _MapRecall()
    rec.update({"guided_map": 1 - prior, "prior_map": None}, label)
    assert set(rec.compute()) == {"guided_map"}


def test_ablation_markdown_lists_every_variant_and_threshold():
    from fewshot_priors.app.demo import ABLATION_VARIANTS, ablation_markdown

    rec = {"thresholds": [0.1, 0.5], "pooled": [0.95, 0.25], "mean": [0.9, 0.2], "area": [0.5, 0.125],
           "episodes": 3}
    variants = {}
    for i, (key, (desc, _, use_prior)) in enumerate(ABLATION_VARIANTS.items()):
        res = {"miou": 0.5 + i / 10, "fbiou": 0.7}
        recall = {"guided_map": rec, **({"prior_map (1-p)": rec} if use_prior else {})}
        variants[key] = {"description": desc, "results": {"1-shot": res, "5-shot": res},
                         "recall": {"1-shot": recall, "5-shot": recall}}
    md = ablation_markdown({"variants": variants})
    assert set(ABLATION_VARIANTS) == {"pretrained_prior", "random_prior", "no_prior"}
    assert "| pretrained_prior: " in md and "| 50.0 | 70.0 | 50.0 | 70.0 |" in md
    assert "| 70.0 | 70.0 | 70.0 | 70.0 |" in md  # the third variant's mIoU
    assert "| random_prior | prior_map (1-p) | 95.0 | 25.0 |" in md
    assert "| no_prior | guided_map: area of R | 50.0 | 12.5 |" in md
    assert "no_prior | prior_map" not in md
    assert md.count("| model | map | 0.1 | 0.5 |") == 2  # 1-shot and 5-shot tables


def test_held_out_episodes_are_built_before_training(monkeypatch):
    """A K without eligible held-out images fails before any training step, not after it."""
    import sys

    import fewshot_priors.engine.train  # noqa: F401  (the package attribute `train` is the function)
    from fewshot_priors.app import study

    engine_train = sys.modules["fewshot_priors.engine.train"]
    from fewshot_priors.app.demo import demo_config

    calls = []

    def fake_dataset(cfg, split, memo=None, **kwargs):
        calls.append((split, kwargs.get("shots")))
        if split == "val" and kwargs.get("shots") == 5:
            raise ValueError("no held-out class has the 6 eligible images a 5-shot episode needs")
        return object()

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the held-out episodes were built")

    monkeypatch.setattr(study, "cached_dataset", fake_dataset)
    monkeypatch.setattr(engine_train, "train", no_training)
    with pytest.raises(ValueError, match="eligible images"):
        study.train_and_score(demo_config(quick=True), shots=(1, 5))
    assert calls == [("val", 1), ("val", 5)]


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_shipped_demo_presets_raise_none_of_the_librarys_own_warnings(quick, tmp_path):
    """The flagship run must be one the library approves of: its pretraining settings pass
    the queue checks (no queue longer than one epoch of keys, no random queue that fills
    late) on the very dataset the demo generates, and its config loads without warnings."""
    import warnings

    from fewshot_priors.data import generate_synthetic_dataset
    from fewshot_priors.app.demo import demo_config
    from fewshot_priors.engine.pretrain import queue_sizes_for

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = demo_config(quick)
        d, study, p = cfg["data"], cfg["study"], cfg["pretrain"]
        root = generate_synthetic_dataset(tmp_path / "data", num_classes=study["num_classes"],
                                          images_per_class=study["images_per_class"], image_size=d["image_size"],
                                          seed=cfg["experiment"]["seed"], min_pixels=int(d["min_pixels"]),
                                          progress=False)
        n = len((root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
        # the schedule exactly as pretrain() derives it from the image list
        total = n // p["batch_size"] * p["epochs"]
        stop = total if p["max_steps"] is None else min(total, int(p["max_steps"]))
        assert queue_sizes_for(p, n, stop) == (p["queue_size"], p["local_queue_size"])  # nothing capped


def test_demo_help_says_quick_numbers_are_meaningless(capsys):
    from fewshot_priors.app.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--quick" in help_text and "meaningless" in help_text.rsplit("--quick", 1)[-1].split("--", 1)[0]
