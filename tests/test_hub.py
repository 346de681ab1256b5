"""save_pretrained / from_pretrained: config.json + model.safetensors, local folders and Hub repo ids."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

import fewshot_priors as fp
from fewshot_priors.models import hub
from fewshot_priors.models.backbone import FrozenBackbone, create_backbone
from fewshot_priors.models.qgnet import QGNet

TINY = dict(backbone="test_resnet", bins=(6, 3, 2, 1), channels=16)


def _episode(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, s = torch.rand(2, 3, 33, 33, generator=g), torch.rand(2, 2, 3, 33, 33, generator=g)
    sm = (torch.rand(2, 2, 33, 33, generator=g) > 0.5).float()
    return q, s, sm


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A QGNet whose trainable weights differ from any random init, saved once."""
    torch.manual_seed(0)
    model = QGNet(region_map_backend="chunked", max_chunk_bytes=4096, eps=1e-6, fg_weight=2.0, map_skip=1.5,
                  **TINY)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("qgnet")
    assert model.save_pretrained(folder) == folder
    return model.eval(), folder


def test_qgnet_round_trip_gives_identical_outputs(trained):
    model, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "fewshot_priors.qgnet" and config["version"] == hub.HUB_VERSION
    assert config["model"]["max_chunk_bytes"] == 4096 and config["model"]["bins"] == [6, 3, 2, 1]
    rng = torch.get_rng_state()
    loaded = QGNet.from_pretrained(folder)
    assert torch.equal(torch.get_rng_state(), rng)  # the discarded random init ran on a forked RNG
    assert not loaded.training and loaded.fg_weight == 2.0
    assert config["model"]["map_skip"] == 1.5 and torch.equal(loaded.decoder.map_gain, model.decoder.map_gain)
    assert (loaded.guided_map.backend, loaded.guided_map.max_chunk_bytes, loaded.prior_map.eps) == (
        "chunked", 4096, 1e-6)
    q, s, sm = _episode()
    a, b = model(q, s, sm), loaded(q, s, sm)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["prior_map"], b["prior_map"])
    # overrides win; a region-map setting does not change the parameters
    other = fp.models.from_pretrained(folder, region_map_backend="reference")
    assert other.region_map_backend == "reference"
    torch.testing.assert_close(other(q, s, sm)["logits"], a["logits"])


def test_weight_files_named_in_the_config_are_not_read_again(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone("test_resnet")
    weights = tmp_path / "backbone.pt"
    torch.save(backbone.body.state_dict(), weights)
    model = QGNet(weights=weights, **TINY)
    folder = model.save_pretrained(tmp_path / "saved")
    assert json.loads((folder / "config.json").read_text())["model"]["weights"] == str(weights)
    weights.unlink()  # provenance only: the weights come from model.safetensors
    loaded = QGNet.from_pretrained(folder)
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_prior_extractor_round_trip(tmp_path):
    torch.manual_seed(1)
    prior = create_backbone("test_resnet", output_stride=16)
    prior.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["format"] == "fewshot_priors.frozen_backbone"
    loaded = FrozenBackbone.from_pretrained(tmp_path)
    assert isinstance(loaded, FrozenBackbone) and loaded.output_stride == 16 and loaded.frozen
    x = torch.rand(1, 3, 40, 40)
    for u, v in zip(prior.eval()(x), loaded(x)):
        assert torch.equal(u, v)
    with pytest.raises(TypeError, match="not a QGNet"):
        QGNet.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown backbone setting"):
        hub.from_pretrained(tmp_path, bins=[1])


def _copy(src, dst):
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_missing_and_corrupted_files_are_named(trained, tmp_path):
    _, folder = trained
    with pytest.raises(FileNotFoundError, match="no folder"):
        QGNet.from_pretrained(tmp_path / "nope" / "deeper")
    bad = _copy(folder, tmp_path / "no_weights")
    (bad / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        QGNet.from_pretrained(bad)
    bad = _copy(folder, tmp_path / "no_config")
    (bad / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        QGNet.from_pretrained(bad)
    bad = _copy(folder, tmp_path / "truncated")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors.*corrupted"):
        QGNet.from_pretrained(bad)
    bad = _copy(folder, tmp_path / "bad_json")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json.*not valid JSON"):
        QGNet.from_pretrained(bad)
    for field, value, match in (("format", "timm", r"`format` must be one of"),
                                ("version", 99, r"version 99.*upgrade"),
                                ("model", [], r"`model` must be a mapping")):
        bad = _copy(folder, tmp_path / f"bad_{field}")
        cfg = json.loads((bad / "config.json").read_text())
        cfg[field] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match=match):
            QGNet.from_pretrained(bad)


def test_key_mismatch_is_named(trained, tmp_path):
    _, folder = trained
    bad = _copy(folder, tmp_path / "ablation")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model"]["use_prior"] = False  # the weights still hold the prior branch
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unexpected keys: .*down_bridge"):
        QGNet.from_pretrained(bad)
    with pytest.raises(ValueError, match=r"missing keys: .*decoder"):
        QGNet.from_pretrained(folder, bins=(6, 3, 2, 1, 1))
    with pytest.raises(ValueError, match="unknown model keyword 'bin'"):
        QGNet.from_pretrained(folder, bin=(6,))


def test_custom_parts_cannot_be_saved(tmp_path):
    class Guided(torch.nn.Module):
        def forward(self, query, support, mask):
            return torch.zeros(query.shape[0], 1, *query.shape[-2:])

    with pytest.raises(ValueError, match="custom guided_map"):
        QGNet(guided_map=Guided(), **TINY).save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="QGNet or a FrozenBackbone"):
        hub.save_pretrained(torch.nn.Linear(2, 2), tmp_path)


def test_repo_id_uses_snapshot_download(trained, monkeypatch, tmp_path):
    _, folder = trained
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(folder)

    monkeypatch.chdir(tmp_path)  # no local folder named like the repo id
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    model = QGNet.from_pretrained("owner/qgnet-tiny", revision="v1")
    assert calls == [("owner/qgnet-tiny", "v1", ("config.json", "model.safetensors"))]
    assert isinstance(model, QGNet)

    def offline(**kw):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=offline))
    with pytest.raises(OSError, match=r"'owner/qgnet-tiny' is not a local folder.*ConnectionError: no network"):
        QGNet.from_pretrained("owner/qgnet-tiny")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        QGNet.from_pretrained("owner/qgnet-tiny")
    # a local folder of that name wins over the Hub
    (tmp_path / "owner").mkdir()
    _copy(folder, tmp_path / "owner" / "qgnet-tiny")
    assert isinstance(QGNet.from_pretrained("owner/qgnet-tiny"), QGNet)
