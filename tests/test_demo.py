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
def test_quick_demo_runs_end_to_end(tmp_path):
    from fewshot_priors.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--quick", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("fig5_1shot.png", "fig5_5shot.png", "loss_curve.png", "pretrain_curve.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "prior_extractor" / "prior_extractor.safetensors").is_file()
    assert (out / "qgnet" / "last.safetensors").is_file()
    assert (out / "data" / "VOC2012" / "SegmentationClassAug").is_dir()
    assert metrics["preset"] == "quick"
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
