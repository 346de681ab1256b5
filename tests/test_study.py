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
