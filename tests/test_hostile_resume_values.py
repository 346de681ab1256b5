"""Hostile resumes and values: a resume under changed settings, numbers spelled in any
usual way, the step a non-finite loss is reported at. Each case is refused with an error naming
the problem, or handled; the record of a run (its checkpoints, config.yaml) never becomes false."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine import ToyEpisodes, ToyModel, _cfg

from fewshot_priors.app.cli import main
from fewshot_priors.config import ConfigError, load_config
from fewshot_priors.config.loading import load_yaml
from fewshot_priors.engine.checkpoint import load_checkpoint, save_checkpoint
from fewshot_priors.engine.evaluate import collate_eval
from fewshot_priors.engine.train import train


def _train(cfg, out, **kw):
    torch.manual_seed(0)
    model = kw.pop("model", None) or ToyModel()
    return train(cfg, model=model, train_set=ToyEpisodes(), collate_fn=collate_eval, output_dir=out,
                 progress=False, **kw)


# ----------------------------------------------------------------------------- resume with changed settings


@pytest.mark.parametrize("key, value", [("lr", 0.5), ("momentum", 0.5), ("weight_decay", 0.1),
                                        ("poly_power", 2.0), ("grad_clip", 1.0)])
def test_a_resume_that_changes_what_is_trained_is_refused_and_the_record_stays_true(tmp_path, key, value):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=3)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    changed = _cfg(tmp_path, **{key: value})
    with pytest.raises(ValueError) as e:
        _train(changed, out, resume=True)
    msg = str(e.value)
    assert f"train.{key}: {cfg['train'][key]!r} -> {value!r}" in msg and "--overwrite" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing rewritten
    assert load_checkpoint(out / "last")["meta"]["config"]["train"][key] == cfg["train"][key]


def test_every_changed_setting_is_listed(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=3)
    changed = _cfg(tmp_path, lr=0.5, amp=False)
    changed["experiment"]["seed"] = 6
    changed["model"]["aux_weight"] = 0.5
    with pytest.raises(ValueError) as e:
        _train(changed, out, resume=True)
    for part in ("train.lr: 0.05 -> 0.5", "train.amp: True -> False", "experiment.seed: 5 -> 6",
                 "model.aux_weight: 1.0 -> 0.5"):
        assert part in str(e.value)


def test_a_resume_may_change_where_it_stops_logs_and_checkpoints(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=3)
    more = _cfg(tmp_path, log_every=2, ckpt_every_steps=2, check_inputs=True)
    more["eval"]["episodes"] = 7
    more["data"]["num_workers"] = 0
    res = _train(more, out, resume=True, max_steps=5)
    assert res["step"] == 5
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["log_every"] == 2


def test_a_moved_data_root_resumes_with_a_warning(tmp_path):
    cfg = _cfg(tmp_path)
    out = tmp_path / "run"
    _train(cfg, out, max_steps=3)
    moved = _cfg(tmp_path)
    moved["data"]["root"] = str(tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match="data.root"):
        res = _train(moved, out, resume=True, max_steps=4)
    assert res["step"] == 4


def test_cli_train_resume_with_another_lr_is_one_error_line(tmp_path, capsys):
    """Through the CLI: `error: ...` naming train.lr, exit 2, and config.yaml still says the old lr."""
    from fewshot_priors.data import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path / "data", num_classes=4, images_per_class=12, image_size=64,
                                      min_pixels=400, progress=False)
    out = tmp_path / "run"
    sets = [f"data.root={root}", "data.image_size=64", "model.bins=[8, 4]", "model.channels=16", "train.batch_size=2",
            "train.epochs=1", "model.use_prior=false", "data.num_workers=0", "data.min_pixels=400",
            f"experiment.output_dir={out}"]
    common = ["--config", "demo", "--no-progress", *(arg for kv in sets for arg in ("--set", kv))]
    assert main(["train", "--max-steps", "2", *common]) == 0
    capsys.readouterr()
    saved = (out / "config.yaml").read_text()
    rc = main(["train", "--resume", *common, "--set", "train.lr=0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "train.lr" in err and "Traceback" not in err
    assert (out / "config.yaml").read_text() == saved


def test_pretrain_resume_with_another_lr_is_refused_before_any_work(tmp_path, monkeypatch):
    from PIL import Image

    import fewshot_priors.engine.pretrain as pre_mod

    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(images / f"{i}.jpg")
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(out / "last", model=torch.nn.Linear(1, 1),
                    meta={"step": 1, "total_steps": 4, "steps_per_epoch": 4,
                          "config": {"experiment": {"seed": 0}, "pretrain": {"lr": 0.01, "batch_size": 2}}})

    def no_cache(*args, **kwargs):
        raise AssertionError("the superpixel cache was built before the resume check")

    monkeypatch.setattr(pre_mod, "build_superpixel_cache", no_cache)
    cfg = {"experiment": {"output_dir": str(out), "seed": 0, "device": "cpu"},
           "pretrain": {"images": str(images), "batch_size": 2, "epochs": 1, "lr": 0.5, "build_cache": True,
                        "cache_dir": str(tmp_path / "cache"), "backbone": "resnet10t", "num_workers": 0}}
    with pytest.raises(ValueError, match=r"pretrain\.lr: 0\.01 -> 0\.5"):
        pre_mod.pretrain(cfg, resume=True, progress=False, tensorboard=False)
    assert not (out / "config.json").exists()


# ----------------------------------------------------------------------------- numbers in every spelling

_SPELLINGS = {"1e-3": 1e-3, "1E-3": 1e-3, "1.0e-3": 1e-3, "1.e-3": 1e-3, "+1e-3": 1e-3, "-1e-3": -1e-3,
              ".5": 0.5, "+.5": 0.5, "5.": 5.0, "1e3": 1000.0, "1E+3": 1000.0, "1_000.5": 1000.5}


@pytest.mark.parametrize("text, value", sorted(_SPELLINGS.items()))
def test_every_usual_spelling_of_a_float_is_a_float(text, value):
    assert load_yaml(text) == value and isinstance(load_yaml(text), float)


def test_scientific_notation_works_in_a_yaml_file_and_in_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 1E-4\npretrain:\n  temperature: +2e-1\n")
    cfg = load_config(path, ["train.momentum=9e-1", "model.eps=1e-8"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["weight_decay"] == 1e-4
    assert cfg["pretrain"]["temperature"] == 0.2 and cfg["train"]["momentum"] == 0.9
    assert cfg["model"]["eps"] == 1e-8
    assert load_config(None, ["train.batch_size=1_0"])["train"]["batch_size"] == 10


@pytest.mark.parametrize("text", ["true", "false", "yes", "1e", "e3", "1.2.3", "0x1p3", "1e-3x"])
def test_what_is_not_a_number_is_still_refused_as_a_float(text):
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, [f"train.lr={text}"])


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1e999"])
def test_a_non_finite_float_is_refused_naming_the_key(text):
    with pytest.raises(ConfigError, match="train.momentum must be a finite number"):
        load_config(None, [f"train.momentum={text}"])


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False),
       st.sampled_from(["{:e}", "{:E}", "{:.3e}", "{!r}", "{:g}", "+{:e}", "{:.10f}"]))
def test_any_python_spelling_of_a_positive_float_is_accepted_as_lr(x, fmt):
    text = fmt.format(x)
    want = float(text)
    if want <= 0:
        return
    assert load_config(None, [f"train.lr={text}"])["train"]["lr"] == pytest.approx(want, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789.eE+-_x", min_size=1, max_size=8))
def test_a_hostile_numeric_string_is_a_float_or_a_clean_config_error(text):
    try:
        cfg = load_config(None, [f"train.lr={text}"])
    except ConfigError as e:
        assert "train.lr" in str(e)
    else:
        assert isinstance(cfg["train"]["lr"], (int, float)) and cfg["train"]["lr"] > 0


# ----------------------------------------------------------------------------- the step of a non-finite loss


class NaNAtStep(ToyModel):
    """A model whose loss is NaN at its ``bad``-th forward (1-based)."""

    def __init__(self, bad):
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        self.calls += 1
        if self.calls == self.bad:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_the_non_finite_loss_error_names_the_step_as_logged_and_checkpointed(tmp_path):
    cfg = _cfg(tmp_path, ckpt_every_steps=1)
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="non-finite training loss nan at step 2 ") as e:
        _train(cfg, out, model=NaNAtStep(bad=2))
    assert "step 2" in str(e.value)
    with open(out / "scalars.csv") as f:
        steps = {int(r["step"]) for r in csv.DictReader(f) if r["tag"] == "train/loss"}
    assert steps == {1}  # step 1 was finite and logged; step 2 is the one reported
    assert load_checkpoint(out / "last")["meta"]["step"] == 1


def test_the_first_step_is_step_1(tmp_path):
    with pytest.raises(FloatingPointError, match="at step 1 "):
        _train(_cfg(tmp_path), tmp_path / "run", model=NaNAtStep(bad=1))
