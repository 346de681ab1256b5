"""Wrong paths and impossible downloads are found first: one ``error: ...`` line naming
the config key and the flag to use, exit status 2, before a dataset is scanned, a model is built
or anything is downloaded (docs/how-to/failures.md)."""

from __future__ import annotations

import socket
import time

import pytest

import fewshot_priors.engine.build as build_mod
from fewshot_priors.app.cli import main
from fewshot_priors.config import load_config
from fewshot_priors.engine.preflight import check_run_inputs
from fewshot_priors.models.download import check_timm_download, network_available


@pytest.fixture
def no_build(monkeypatch):
    """Fail the test if a model or dataset is built (the checks must come first)."""
    def boom(*args, **kwargs):
        raise AssertionError("a model or dataset was built before the path checks")

    monkeypatch.setattr(build_mod, "build_model", boom)
    monkeypatch.setattr(build_mod, "build_dataset", boom)


def _train(tmp_path, capsys, *sets, extra=()):
    sets = (f"experiment.output_dir={tmp_path / 'run'}", *sets)
    rc = main(["train", "--config", "pascal/resnet50_473_fold0", "--no-progress", *extra,
               *(arg for kv in sets for arg in ("--set", kv))])  # --set: one KEY=VALUE per flag
    err = capsys.readouterr().err
    return rc, err


def _one_error_line(rc, err, *needles):
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_a_missing_data_root_is_one_error_before_any_work(tmp_path, capsys, no_build, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rc, err = _train(tmp_path, capsys, "data.root=/nonexistent")
    _one_error_line(rc, err, "data.root=/nonexistent", "--set data.root=PATH")


@pytest.mark.parametrize("key", ["model.weights", "model.prior_weights"])
def test_a_missing_weights_file_is_one_error_before_any_work(tmp_path, capsys, no_build, key):
    (tmp_path / "data").mkdir()
    rc, err = _train(tmp_path, capsys, f"data.root={tmp_path / 'data'}", "model.pretrained=false",
                     f"{key}={tmp_path / 'missing.safetensors'}")
    _one_error_line(rc, err, key, "missing.safetensors")


def test_an_offline_pretrained_download_is_one_error_naming_the_flags(tmp_path, capsys, no_build, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    t0 = time.perf_counter()
    rc, err = _train(tmp_path, capsys, f"data.root={tmp_path / 'data'}", "model.pretrained=true")
    assert time.perf_counter() - t0 < 10
    _one_error_line(rc, err, "--set model.weights=PATH --set model.pretrained=false", "HF_HUB_OFFLINE")


def test_create_backbone_offline_fails_at_once_without_calling_timm(monkeypatch):
    import fewshot_priors.models.backbone as bb

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(bb, "check_timm_download", check_timm_download)  # the real check

    def no_download(*args, pretrained=False, **kwargs):
        assert not pretrained, "timm was asked to download"
        raise AssertionError

    monkeypatch.setattr(bb.timm, "create_model", no_download)
    with pytest.raises(OSError, match="model.pretrained=false"):
        bb.create_backbone("resnet18", pretrained=True)


def test_an_unreachable_hub_is_detected_in_seconds(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    assert network_available("127.0.0.1", port, timeout=1.0) is False
    assert network_available("no-such-host.invalid", 443, timeout=0.5) is False
    assert time.perf_counter() - t0 < 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert network_available() is False


def test_a_resume_without_a_checkpoint_is_one_error_before_any_work(tmp_path, capsys, no_build):
    (tmp_path / "data").mkdir()
    rc, err = _train(tmp_path, capsys, f"data.root={tmp_path / 'data'}", "model.pretrained=false",
                     extra=("--resume",))
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err and "last" in err


def test_pretrain_with_missing_images_is_refused_before_anything_is_written(tmp_path):
    from fewshot_priors.engine.pretrain import pretrain

    out = tmp_path / "run"
    cfg = {"experiment": {"output_dir": str(out), "seed": 0, "device": "cpu"},
           "pretrain": {"images": str(tmp_path / "nope"), "backbone": "resnet10t"}}
    with pytest.raises(FileNotFoundError, match=r"pretrain\.images=.*nope.*--images"):
        pretrain(cfg, progress=False, tensorboard=False)
    assert not out.exists()


def test_the_library_checks_every_path_too(tmp_path):
    cfg = load_config("demo", [f"data.root={tmp_path}", f"model.weights={tmp_path}",
                               f"experiment.output_dir={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match="model.weights=.* is a folder"):
        check_run_inputs(cfg, "train")
