"""Hostile use of the engine and the CLI: existing run folders, stale temp files, zero / negative
counts, impossible devices and output paths. Nothing is lost and nothing runs silently wrong:
each case is either refused with an ``error: ...`` naming the problem (exit status 2) before any
work, or handled (results printed when they cannot be written)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from test_engine import ToyEpisodes, ToyModel, _cfg, _losses

from fewshot_priors.app.cli import main
from fewshot_priors.config import ConfigError, load_config
from fewshot_priors.engine.checkpoint import load_checkpoint
from fewshot_priors.engine.evaluate import collate_eval
from fewshot_priors.engine.rundir import RunFolderError
from fewshot_priors.engine.runtime import resolve_device
from fewshot_priors.engine.train import train


def _train(cfg, out, init_seed=0, **kw):
    torch.manual_seed(init_seed)
    model = ToyModel()
    res = train(cfg, model=model, train_set=ToyEpisodes(), collate_fn=collate_eval, output_dir=out,
                progress=False, **kw)
    return model, res


# ----------------------------------------------------------------------------- run folder policy


def test_a_fresh_run_into_a_run_folder_is_refused_and_changes_nothing(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=4)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(RunFolderError) as e:
        _train(cfg, out, max_steps=2, init_seed=1)
    msg = str(e.value)
    assert str(out) in msg and "--resume" in msg and "--overwrite" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert load_checkpoint(out / "last")["meta"]["step"] == 4


def test_overwrite_starts_afresh_and_keeps_unrelated_files(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=4)
    (out / "notes.txt").write_text("mine")
    fresh, _ = _train(cfg, tmp_path / "fresh", max_steps=2, init_seed=1)
    again, res = _train(cfg, out, max_steps=2, init_seed=1, overwrite=True)
    assert res["step"] == 2 and load_checkpoint(out / "last")["meta"]["step"] == 2
    assert _losses(out / "scalars.csv") == _losses(tmp_path / "fresh" / "scalars.csv")  # no old rows
    for (k, a), (_, b) in zip(fresh.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="exclude each other"):
        _train(cfg, out, max_steps=3, resume=True, overwrite=True)


def test_pretrain_follows_the_same_policy_before_reading_images(tmp_path):
    from fewshot_priors.engine.pretrain import pretrain

    (tmp_path / "scalars.csv").write_text("step,tag,value\n")
    cfg = {"experiment": {"output_dir": str(tmp_path)}, "pretrain": {"images": str(tmp_path / "no-images")}}
    with pytest.raises(RunFolderError, match="already holds a run"):
        pretrain(cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="pretrain.images"):  # with overwrite: the (missing) images
        pretrain(cfg, progress=False, overwrite=True)
    assert (tmp_path / "scalars.csv").exists()  # a run that cannot start deletes nothing


def test_cli_train_refuses_an_existing_run_folder_before_building_anything(tmp_path, capsys):
    (tmp_path / "last.json").write_text("{}")
    assert main(["train", "--config", "demo", "--output-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path) in err and "--overwrite" in err
    with pytest.raises(SystemExit) as e:
        main(["train", "--config", "demo", "--resume", "--overwrite"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_resumed_run_removes_stale_checkpoint_temp_files(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=2)
    stale = out / ".last.safetensors.999999999-abcd1234.tmp"  # a writer killed mid-save
    stale.write_bytes(b"\0" * 1000)
    keep = out / "my.tmp"
    keep.write_bytes(b"1")
    _train(cfg, out, max_steps=3, resume=True)
    assert not stale.exists() and keep.exists()


# ----------------------------------------------------------------------------- counts and sizes


@pytest.mark.parametrize("override", ["train.epochs=0", "train.epochs=-1", "train.max_steps=0",
                                      "data.image_size=-5", "data.num_workers=-1", "eval.episodes=0",
                                      "eval.shots=0", "train.log_every=0"])
def test_config_rejects_counts_that_would_run_nothing(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config("demo", [override])


@pytest.mark.parametrize("epochs, max_steps", [(0, None), (-1, None), (2, 0), (2, -2)])
def test_train_rejects_runs_of_no_steps_and_writes_nothing(tmp_path, epochs, max_steps):
    cfg = _cfg(tmp_path)
    cfg["train"]["epochs"] = epochs  # past load_config's validation: train() checks too
    with pytest.raises(ValueError, match="positive integer"):
        _train(cfg, tmp_path / "run", max_steps=max_steps)
    assert not (tmp_path / "run" / "last.safetensors").exists()


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--episodes", "0"], "--episodes"), (["eval", "--episodes", "-3"], "--episodes"),
    (["eval", "--shots", "0"], "--shots"), (["eval", "--shots", "-1"], "--shots"),
    (["eval", "--num-workers", "-1"], "--num-workers"), (["train", "--max-steps", "-2"], "--max-steps"),
    (["train", "--max-steps", "0"], "--max-steps"), (["visualize", "--episodes", "0"], "--episodes"),
])
def test_cli_rejects_non_positive_counts(argv, flag, capsys):
    argv = [argv[0], "--config", "demo", *(["--checkpoint", "x"] if argv[0] != "train" else []), *argv[1:]]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "integer >=" in err


# ----------------------------------------------------------------------------- the CLI error path


def test_cli_reports_bad_values_devices_and_paths_as_errors(tmp_path, capsys):
    plain = tmp_path / "file"
    plain.write_text("x")
    cases = [
        (["train", "--config", "demo", "--output-dir", str(plain / "run")], "is a file"),
        (["train", "--config", "demo", "--set", "data.image_size=-5"], "data.image_size"),
        (["train", "--config", "demo", "--set", "data.num_workers=-1"], "data.num_workers"),
        (["eval", "--config", "demo", "--checkpoint", "x", "--output", str(tmp_path)], "is a folder"),
        (["eval", "--config", "demo", "--checkpoint", "x", "--output", str(plain / "r.json")], "is a file"),
        (["visualize", "--config", "demo", "--checkpoint", "x", "--output", str(tmp_path)], "is a folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", "--config", "demo", "--output-dir", str(tmp_path / "r"),
                       "--set", "experiment.device=cuda"], "no CUDA GPU"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, (argv, err)


def test_resolve_device_names_the_problem():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:0")


@pytest.fixture
def fake_eval(monkeypatch):
    """`eval` with the model, dataset and evaluation replaced by recorders (no real work)."""
    import fewshot_priors.app.cli as cli

    build = importlib.import_module("fewshot_priors.engine.build")
    ev = importlib.import_module("fewshot_priors.engine.evaluate")  # the package exports a same-named function
    calls: dict = {}

    def evaluate(model, dataset, **kw):
        calls.update(kw)
        return {"miou": 0.5, "fbiou": 0.75, "per_class_iou": {"1": 0.5}, "episodes": 3, "seed": kw["seed"]}

    monkeypatch.setattr(cli, "_load_model_for_eval", lambda cfg, ck: None)
    monkeypatch.setattr(build, "build_dataset", lambda cfg, split, **kw: calls.update(dataset=kw) or None)
    monkeypatch.setattr(ev, "evaluate", evaluate)
    return calls


def test_eval_num_workers_reaches_the_evaluation(fake_eval, tmp_path):
    assert main(["eval", "--config", "demo", "--checkpoint", "x", "--num-workers", "3", "--no-progress"]) == 0
    assert fake_eval["num_workers"] == 3
    assert main(["eval", "--config", "demo", "--checkpoint", "x", "--set", "data.num_workers=2"]) == 0
    assert fake_eval["num_workers"] == 2


def test_eval_defaults_come_from_the_config_not_from_falsy_checks(fake_eval):
    assert main(["eval", "--config", "demo", "--checkpoint", "x", "--set", "eval.episodes=7",
                 "--set", "data.test_episodes=9", "--set", "data.shots=2"]) == 0
    assert fake_eval["dataset"]["episodes"] == 7 and fake_eval["dataset"]["shots"] == 2
    assert main(["eval", "--config", "demo", "--checkpoint", "x", "--episodes", "4", "--shots", "5"]) == 0
    assert fake_eval["dataset"]["episodes"] == 4 and fake_eval["dataset"]["shots"] == 5


def test_eval_prints_the_results_when_they_cannot_be_written(fake_eval, monkeypatch, tmp_path, capsys):
    ev = importlib.import_module("fewshot_priors.engine.evaluate")

    def fail(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(ev, "write_results", fail)
    out = tmp_path / "results.json"
    assert main(["eval", "--config", "demo", "--checkpoint", "ck", "--output", str(out)]) == 2
    captured = capsys.readouterr()
    assert "could not write" in captured.err and "read-only" in captured.err
    text = captured.out[captured.out.index("{"):]
    res = json.loads(text)
    assert res["miou"] == 0.5 and res["checkpoint"] == "ck" and res["shots"] == 1
    assert not Path(out).exists()


# ----------------------------------------------------------------------------- the demo's reuse


def test_demo_reuses_a_prior_extractor_only_from_the_same_code_and_environment(tmp_path, monkeypatch):
    """The reuse stamp changes with any package source file, the thread count and the SLIC backends
    (a stamp of the settings alone let a stale extractor from older code through)."""
    import shutil

    import fewshot_priors
    import fewshot_priors.ssl.superpixels as sp
    from fewshot_priors.app.demo import _reuse_stamp, demo_config

    settings = demo_config(quick=True)["pretrain"]
    copy = tmp_path / "fewshot_priors"
    shutil.copytree(Path(fewshot_priors.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fewshot_priors, "__file__", str(copy / "__init__.py"))
    base = _reuse_stamp(settings, "cpu")
    assert _reuse_stamp(settings, "cpu") == base
    assert json.loads(json.dumps(base)) == base  # compared after a JSON round trip
    pre = copy / "engine" / "pretrain.py"
    pre.write_text(pre.read_text() + "\n# a change to the code that trains the extractor\n")
    assert _reuse_stamp(settings, "cpu")["source_sha256"] != base["source_sha256"]
    pre.write_text(pre.read_text()[: -len("\n# a change to the code that trains the extractor\n")])
    assert _reuse_stamp(settings, "cpu") == base
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert _reuse_stamp(settings, "cpu")["torch_threads"] != base["torch_threads"]
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(sp, "available_backends", lambda method="slic": ["skimage"])
    if base["superpixel_backends"] != ["skimage"]:
        assert _reuse_stamp(settings, "cpu") != base


def test_evaluation_does_not_depend_on_the_number_of_workers(tmp_path):
    """data.num_workers now reaches evaluate(): the scores must not change with it."""
    from fewshot_priors.data import PascalFewShot, PascalOptions, generate_synthetic_dataset
    from fewshot_priors.engine.evaluate import evaluate

    root = generate_synthetic_dataset(tmp_path / "data", num_classes=4, images_per_class=6, image_size=48,
                                      min_pixels=300, progress=False)
    ds = PascalFewShot(root, fold=0, split="val", image_size=32, episodes=6, seed=3,
                       options=PascalOptions(min_pixels=300))
    torch.manual_seed(0)
    model = ToyModel()
    scores = [evaluate(model, ds, seed=3, batch_size=2, num_workers=w, progress=False) for w in (0, 2)]
    assert scores[0]["miou"] == scores[1]["miou"] and scores[0]["per_class_iou"] == scores[1]["per_class_iou"]
