"""Evaluation protocols by name (``eval --protocol``) and ``data.exclude_novel_images`` (BAM's filter)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_priors.app.cli import EVAL_PROTOCOLS, main
from fewshot_priors.config import load_config, save_config
from fewshot_priors.data import generate_synthetic_dataset
from fewshot_priors.data.io import read_label
from fewshot_priors.engine.build import build_dataset, build_model
from fewshot_priors.engine.checkpoint import save_checkpoint
from fewshot_priors.engine.evaluate import evaluate, format_results
from fewshot_priors.engine.protocols import (
    PROTOCOLS,
    EvalProtocol,
    evaluate_protocol,
    get_protocol,
    protocol_name,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_classes=4, images_per_class=12,
                                      image_size=48, min_pixels=200, progress=False)


def _cfg(root: Path, *over: str) -> dict:
    return load_config("demo/quick", [f"data.root={root}", "data.image_size=48", "data.min_pixels=200",
                                      "model.bins=[4, 2]", "model.channels=16", "experiment.device=cpu", *over])


# ----------------------------------------------------------------------------- protocols


def test_the_protocols_and_their_names():
    assert EVAL_PROTOCOLS == tuple(PROTOCOLS)  # the CLI's copy (parsed without torch) is the table's
    assert get_protocol("pfenet").episodes_for("pascal") == 5000 and get_protocol("pfenet").episodes_for("coco") == 20000
    assert get_protocol("pfenet").seeds == (321,) and get_protocol("hsnet").seeds == (0,)
    assert len(get_protocol("multi-seed").seeds) == 5 and get_protocol("multi-seed").episodes_for("folder") == 1000
    with pytest.raises(ValueError, match="defined for data.dataset pascal / coco, not 'folder'"):
        get_protocol("pfenet").episodes_for("folder")
    with pytest.raises(ValueError, match="Did you mean 'hsnet'"):
        get_protocol("hsnett")
    assert protocol_name("pascal", 5000, [321]) == "pfenet" and protocol_name("coco", 20000, (321,)) == "pfenet"
    assert protocol_name("coco", 5000, [321]) == "custom"  # PASCAL's count on COCO is no protocol
    assert protocol_name("folder", 1000, [0]) == "hsnet" and protocol_name("pascal", 1000, [321, 322]) == "custom"
    assert protocol_name("pascal", 1000, list(get_protocol("multi-seed").seeds)) == "multi-seed"


def test_several_seeds_give_the_mean_and_the_sample_std():
    fake = {1: {"miou": 0.5, "fbiou": 0.6, "per_class_iou": {"1": 0.4, "2": 0.6}, "episodes": 3, "seed": 1},
            2: {"miou": 0.7, "fbiou": 0.8, "per_class_iou": {"1": 0.6, "2": 0.8}, "episodes": 3, "seed": 2},
            3: {"miou": 0.9, "fbiou": 0.7, "per_class_iou": {"1": 0.8, "2": 1.0}, "episodes": 3, "seed": 3}}
    calls = []

    def run(episodes, seed):
        calls.append((episodes, seed))
        return fake[seed]

    res = evaluate_protocol(EvalProtocol("three", 3, (1, 2, 3), "test"), "pascal", run)
    assert calls == [(3, 1), (3, 2), (3, 3)]
    assert res["miou"] == pytest.approx(0.7) and res["miou_std"] == pytest.approx(0.2)
    assert res["fbiou"] == pytest.approx(0.7) and res["fbiou_std"] == pytest.approx(statistics.stdev([0.6, 0.8, 0.7]))
    assert res["per_class_iou"] == pytest.approx({"1": 0.6, "2": 0.8})
    assert res["seeds"] == [1, 2, 3] and res["protocol"] == "three" and len(res["runs"]) == 3
    assert "3 x 3 episodes, seeds 1, 2, 3 (protocol three)" in format_results(res)
    assert "70.00 +- 20.00" in format_results(res)
    one = evaluate_protocol("hsnet", "pascal", lambda e, s: {**fake[1], "episodes": e, "seed": s})
    assert one["protocol"] == "hsnet" and one["episodes"] == 1000 and one["seed"] == 0 and "miou_std" not in one


def test_every_evaluation_records_its_protocol(root):
    cfg = _cfg(root)
    model = build_model(cfg)
    for episodes, seed, name in ((4, 321, "custom"), (4, 0, "custom")):
        ds = build_dataset(cfg, "val", episodes=episodes, seed=seed, progress=False)
        res = evaluate(model, ds, seed=seed, progress=False)
        assert res["protocol"] == name and f"(protocol {name})" in format_results(res)
    ds = build_dataset(cfg, "val", episodes=1000, seed=0, progress=False)
    res = evaluate(None, ds, seed=0, progress=False,  # the episodes of HSNet's protocol, scored trivially
                   predict_fn=lambda b: torch.zeros(b["query_image"].shape[0], *b["query_image"].shape[-2:],
                                                    dtype=torch.long))
    assert res["protocol"] == "hsnet"
    ds7 = build_dataset(cfg, "val", episodes=1000, seed=7, progress=False)
    assert evaluate(None, ds7, seed=0, progress=False, predict_fn=lambda b: torch.zeros(
        b["query_image"].shape[0], *b["query_image"].shape[-2:], dtype=torch.long))["protocol"] == "custom"


def test_eval_command_with_a_protocol(root, tmp_path, capsys, monkeypatch):
    cfg = _cfg(root)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", model=build_model(cfg))
    save_config(cfg, tmp_path / "cfg.yaml")
    # a shorter multi-seed protocol for the test: 3 episodes x 2 seeds
    monkeypatch.setitem(PROTOCOLS, "multi-seed", EvalProtocol("multi-seed", 3, (4, 5), "test"))
    out = tmp_path / "res.json"
    base = ["eval", "--config", str(tmp_path / "cfg.yaml"), "--checkpoint", str(tmp_path / "ckpt"), "--no-progress"]
    assert main([*base, "--protocol", "multi-seed", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "multi-seed" and res["seeds"] == [4, 5] and res["episodes"] == 3
    assert [r["seed"] for r in res["runs"]] == [4, 5] and res["shots"] == 1
    assert res["miou"] == pytest.approx(np.mean([r["miou"] for r in res["runs"]]))
    assert "2 x 3 episodes, seeds 4, 5 (protocol multi-seed)" in capsys.readouterr().out
    assert main([*base, "--episodes", "2", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["protocol"] == "custom"
    capsys.readouterr()
    assert main([*base, "--protocol", "hsnet", "--seed", "3"]) == 2
    assert capsys.readouterr().err.startswith("error: --protocol hsnet sets the episodes and seeds")


# ----------------------------------------------------------------------------- exclude_novel_images


def test_exclude_novel_images_drops_exactly_the_training_images_holding_a_held_out_class(root):
    keep = build_dataset(_cfg(root, "data.exclude_novel_images=false"), "train", progress=False)
    drop = build_dataset(_cfg(root, "data.exclude_novel_images=true"), "train", progress=False)
    novel = set(keep.test_class_ids)

    def has_novel(entry) -> bool:
        return bool(novel & set(np.unique(read_label(entry.label)).tolist()))

    expected = [e.name for e in keep.entries if not has_novel(e)]
    assert [e.name for e in drop.entries] == expected
    assert drop.excluded_novel_images == len(keep.entries) - len(expected) > 0 and keep.excluded_novel_images == 0
    assert len(drop) < len(keep)
    # the default keeps them, the held-out class's pixels as background of the training masks
    for i in range(len(keep)):
        qi, c, _ = keep.episode(i)
        if has_novel(keep.entries[qi]):
            label = read_label(keep.entries[qi].label)
            _, mask = keep._binary(keep.entries[qi], c)
            assert (mask[np.isin(label, list(novel))] == 0).all()
            break
    else:
        pytest.fail("no training episode with a held-out class in its query image")
    val = build_dataset(_cfg(root, "data.exclude_novel_images=true"), "val", episodes=4, progress=False)
    assert val.excluded_novel_images == 0  # the held-out split is never filtered


def test_exclude_novel_images_on_a_folder_dataset_goes_by_the_photo(tmp_path):
    """A folder mask holds one class: a training photo shows a held-out class when that class's
    folder holds the same photo (as the COCO sample stores a photo once per class in it)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = {"ant": ["a", "b", "c"], "bee": ["b", "d", "e"], "cat": ["c", "f", "g", "h"]}
    for cls, stems in photos.items():
        (tmp_path / cls).mkdir()
        for stem in stems:
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / cls / f"{stem}.jpg")
            mask = np.zeros((40, 40), np.uint8)
            mask[5:35, 5:35] = 255
            Image.fromarray(mask).save(tmp_path / cls / f"{stem}.png")
    over = [f"data.root={tmp_path}", "data.dataset=folder", "data.image_size=32", "data.min_pixels=10",
            "data.fold_classes=[ant]"]
    keep = build_dataset(load_config(None, over), "train", progress=False)
    drop = build_dataset(load_config(None, [*over, "data.exclude_novel_images=true"]), "train", progress=False)
    assert sorted(e.name for e in keep.entries) == ["bee/b", "bee/d", "bee/e", "cat/c", "cat/f", "cat/g", "cat/h"]
    assert sorted(e.name for e in drop.entries) == ["bee/d", "bee/e", "cat/f", "cat/g", "cat/h"]  # b, c show ants
    assert drop.excluded_novel_images == 2
