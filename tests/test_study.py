"""The study runner's reuse of a pretrained prior extractor (:class:`~fewshot_priors.app.study.PriorCache`):
a run with the same settings reuses it, an interrupted re-pretraining never leaves a stamp vouching for an
export that is gone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import fewshot_priors.engine.pretrain as engine_pretrain
from fewshot_priors.app.study import PriorCache
from fewshot_priors.models.weights import PRIOR_EXTRACTOR_FORMAT


def _fake_pretrain(calls):
    """A pretrain() that writes a loadable export, as the real one does at the end of its run."""

    def pretrain(cfg, *, overwrite=False, progress=True):
        calls.append(cfg["experiment"]["output_dir"])
        out = engine_pretrain.prepare_run_dir(cfg["experiment"]["output_dir"], resume=False, overwrite=overwrite,
                                              kind="pretrain")
        path = out / "prior_extractor.safetensors"
        save_file({"w": torch.ones(2)}, str(path), metadata={"format": PRIOR_EXTRACTOR_FORMAT})
        return {"prior_extractor": str(path), "step": 1, "history": []}

    return pretrain


def _cfg(folder, images):
    return {"experiment": {"output_dir": str(folder), "seed": 0}, "pretrain": {"images": str(images)}}


def test_a_matching_stamp_is_reused_without_pretraining(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(engine_pretrain, "pretrain", _fake_pretrain(calls))
    folder = tmp_path / "prior"
    first = PriorCache(folder, {"settings": {"lr": 0.1}, "seed": 0}).pretrain(_cfg(folder, tmp_path))
    assert calls == [str(folder)]
    assert json.loads((folder / PriorCache.STAMP_FILE).read_text()) == {"settings": {"lr": 0.1}, "seed": 0}

    def no_pretraining(*a, **k):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(engine_pretrain, "pretrain", no_pretraining)
    again = PriorCache(folder, {"settings": {"lr": 0.1}, "seed": 0})  # the same settings (compared as JSON)
    assert again.load() == first
    assert PriorCache(folder, {"settings": {"lr": 0.2}, "seed": 0}).load() is None  # other settings
    assert PriorCache(folder, {"settings": {"lr": 0.1}}).load() is None
    with pytest.raises(ValueError, match="output_dir"):
        again.pretrain(_cfg(tmp_path / "elsewhere", tmp_path))


def test_an_interrupted_repretraining_is_pretrained_again_not_reused(tmp_path, monkeypatch):
    """Settings A are pretrained; a run with settings B starts pretraining again (the real pretrain(), which
    deletes A's export first) and is killed; a run with settings A must then pretrain, not reuse a stamp that
    names the deleted file."""
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(images / f"{i}.jpg")
    calls = []
    monkeypatch.setattr(engine_pretrain, "pretrain", _fake_pretrain(calls))
    folder = tmp_path / "prior"
    stamp_a, stamp_b = {"settings": "A"}, {"settings": "B"}
    export = PriorCache(folder, stamp_a).pretrain(_cfg(folder, images))["prior_extractor"]
    monkeypatch.undo()

    def killed(*a, **k):  # the real pretrain() has deleted the previous run's export by now
        raise KeyboardInterrupt

    monkeypatch.setattr(engine_pretrain, "list_images", killed)
    with pytest.raises(KeyboardInterrupt):
        PriorCache(folder, stamp_b).pretrain(_cfg(folder, images))
    monkeypatch.undo()
    assert not (folder / "prior_extractor.safetensors").exists()
    assert not (folder / PriorCache.STAMP_FILE).exists()  # removed before pretraining started
    assert PriorCache(folder, stamp_a).load() is None  # no stamp vouches for the deleted export
    monkeypatch.setattr(engine_pretrain, "pretrain", _fake_pretrain(calls))
    cache = PriorCache(folder, stamp_a)
    result = cache.load() or cache.pretrain(_cfg(folder, images))
    assert len(calls) == 2 and result["prior_extractor"] == export and cache.load() == result


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign"])
def test_a_stamp_whose_export_is_gone_or_damaged_is_not_reused(tmp_path, monkeypatch, damage):
    """A stamp left by an older version (or an export removed by hand) is not trusted: the export must load."""
    monkeypatch.setattr(engine_pretrain, "pretrain", _fake_pretrain([]))
    folder = tmp_path / "prior"
    cache = PriorCache(folder, {"settings": "A"})
    path = folder / "prior_extractor.safetensors"
    cache.pretrain(_cfg(folder, tmp_path))
    assert cache.load() is not None
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    else:
        save_file({"w": torch.ones(2)}, str(path), metadata={"format": "something else"})
    assert cache.load() is None


# ----------------------------------------------------------------------------- the study runner

BASE = {"settings": {"lr": 0.1}, "seed": 0}


def _group(tmp_path, variants, base=BASE):
    from fewshot_priors.app.study import Unit, UnitGroup

    units = [Unit(0, 1, v, tmp_path / "seed0" / "fold1" / v, {**base, "variant": v}) for v in variants]
    return UnitGroup(0, 1, units, dict(base))


def _trainer(calls, fail_on=None):
    """A stand-in for training: scores the model by its name, the baselines only when asked."""

    def train(unit, with_baselines, datasets):
        if unit.variant == fail_on:
            raise KeyboardInterrupt
        calls.append((unit.variant, with_baselines))
        datasets.setdefault("built", []).append(unit.variant)  # one dict per group
        res = {unit.variant: {"miou": 0.5 if unit.variant == "a" else 0.25}}
        if with_baselines:
            res.update({"baseline_all_foreground": {"miou": 0.125}, "baseline_guided_map_0.5": {"miou": 0.0625}})
        return {"results": {"1-shot": res}, "shared": sorted(datasets["built"])}

    return train


def test_the_runner_scores_the_baselines_once_per_group_and_reuses_finished_units(tmp_path):
    from fewshot_priors.app.study import BASELINES, RESULT_FILE, run_study

    calls, lines = [], []
    (g,) = run_study([_group(tmp_path, ["a", "b"])], _trainer(calls), groups=1, say=lines.append)
    assert calls == [("a", True), ("b", False)]  # the baselines with the first model only
    assert g.results["b"]["shared"] == ["a", "b"] and g.trained == 2
    assert g.scores() == {"1-shot": {"a": {"miou": 0.5}, "b": {"miou": 0.25}, **{
        b: g.baselines["results"]["1-shot"][b] for b in BASELINES}}}
    assert "training a" in lines[0] and "done in" in lines[-1] and "min left" not in lines[-1]
    saved = json.loads((tmp_path / "seed0" / "fold1" / "b" / RESULT_FILE).read_text())
    assert saved["stamp"] == {**BASE, "variant": "b"} and saved["result"] == g.results["b"]

    calls.clear()
    (again,) = run_study([_group(tmp_path, ["a", "b"])], _trainer(calls), groups=1, say=lines.append)
    assert calls == [] and again.results == g.results and again.scores() == g.scores()
    # a subset without the model that scored the baselines takes them from its saved result
    (sub,) = run_study([_group(tmp_path, ["b"])], _trainer(calls), groups=1, say=lines.append)
    assert calls == [] and sub.scores()["1-shot"]["baseline_all_foreground"] == {"miou": 0.125}
    # other settings: trained again
    (other,) = run_study([_group(tmp_path, ["a", "b"], {**BASE, "seed": 1})], _trainer(calls), groups=1,
                         say=lines.append)
    assert calls == [("a", True), ("b", False)] and other.trained == 2


def test_an_interrupted_study_resumes_with_the_units_it_had_finished(tmp_path):
    from fewshot_priors.app.study import run_study

    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_study([_group(tmp_path, ["a", "b", "c"])], _trainer(calls, fail_on="b"), groups=1, say=lambda m: None)
    assert calls == [("a", True)]
    calls.clear()
    (g,) = run_study([_group(tmp_path, ["a", "b", "c"])], _trainer(calls), groups=1, say=lambda m: None)
    assert calls == [("b", False), ("c", False)]  # a (and its baselines) reused
    assert set(g.scores()["1-shot"]) == {"a", "b", "c", "baseline_all_foreground", "baseline_guided_map_0.5"}


def test_units_without_a_stamp_are_always_trained_and_never_saved(tmp_path):
    from fewshot_priors.app.study import Unit, UnitGroup, run_study

    calls, lines = [], []
    plan = [UnitGroup(3, 0, [Unit(3, 0, v, tmp_path / v) for v in ("a", "b")]) for _ in range(2)]
    run_study(plan, _trainer(calls), groups=2, say=lines.append)
    assert calls == [("a", True), ("b", False)] * 2 and not list(tmp_path.rglob("*.json"))
    assert "(2/2): training a" in lines[3] and "min left" in lines[2] and "min left" not in lines[-1]
