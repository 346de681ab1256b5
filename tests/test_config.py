"""The config package: schema (one validator), K resolution, shipped presets, entry point."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from fewshot_priors.config import DEFAULTS, ConfigError, load_config, resolve_shots, validate


def test_the_former_keys_are_unknown_keys(tmp_path):
    """model.shots and train.device (moved in 0.1.0) are refused like any unknown key, naming the valid ones."""
    assert "shots" not in DEFAULTS["model"] and "device" not in DEFAULTS["train"]
    f = tmp_path / "old.yaml"
    f.write_text("model:\n  shots: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key model\.'shots'.*Valid keys here:.*backbone"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"unknown config key train\.'device'"):
        load_config(None, {"train.device": "cpu"})
    cfg = load_config()
    cfg["model"]["shots"] = 5
    with pytest.raises(ConfigError, match="shots"):
        validate(cfg)


def test_resolve_shots_is_the_one_rule():
    cfg = load_config(None, {"data.shots": 3})
    assert resolve_shots(cfg, "train") == resolve_shots(cfg, "val") == resolve_shots(cfg, "eval") == 3
    cfg["eval"]["shots"] = 5
    assert resolve_shots(cfg, "eval") == 5 and resolve_shots(cfg, "train") == 3
    assert resolve_shots(cfg, "eval", 1) == 1 and resolve_shots(cfg, "train", 2) == 2
    with pytest.raises(ConfigError, match="purpose"):
        resolve_shots(cfg, "evaluation")
    with pytest.raises(ConfigError, match=">= 1"):
        resolve_shots(cfg, "train", 0)


@pytest.mark.parametrize("override, match", [
    ("pretrain.superpixel_method=slick", r"superpixel_method must be one of.*Did you mean 'slic'"),
    ("pretrain.queue_init=zeros", "queue_init must be one of"),
    ("pretrain.export_encoder=momentum", "export_encoder must be one of"),
    ("pretrain.shuffle_bn=yes", "shuffle_bn must be one of"),
    ("pretrain.pool_mode=max", "pool_mode must be one of"),
    ("pretrain.head_norm=ln", "head_norm must be one of"),
    ("model.region_map_backend=cuda", "region_map_backend must be one of"),
    ("pretrain.dim=0", "pretrain.dim must be an integer >= 1"),
    ("pretrain.max_steps=0", "pretrain.max_steps must be an integer >= 1 or null"),
    ("pretrain.lr=-1", "pretrain.lr must be a number >= 0"),
    ("pretrain.num_workers=many", "pretrain.num_workers"),
    ("data.shots=0", "data.shots must be an integer >= 1"),
    ("model.max_chunk_bytes=0", "model.max_chunk_bytes must be an integer >= 1"),
    ("study.figure_episodes=-1", "study.figure_episodes"),
    ("experiment.output_dir=[1, 2]", "experiment.output_dir must be a file path or null"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.batch_size=0", "train.batch_size must be an integer >= 1"),
    ("data.num_workers=-1", "data.num_workers"),
])
def test_schema_rejects_bad_values_naming_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_choices_come_from_the_layer_that_defines_them():
    from fewshot_priors.config import choices
    from fewshot_priors.ops.similarity import BACKENDS
    from fewshot_priors.ops.superpixel_pool import POOL_MODES

    assert choices("model", "region_map_backend") == tuple(BACKENDS)
    assert choices("pretrain", "pool_mode") == tuple(POOL_MODES)
    for good in ("felzenszwalb", "empty"):
        key = "superpixel_method" if good == "felzenszwalb" else "queue_init"
        assert load_config(None, {f"pretrain.{key}": good})["pretrain"][key] == good


@pytest.mark.parametrize("name", ["demo", "demo/full", "demo/quick", "real_images/full", "real_images/long",
                                  "real_images/scratch", "real_images/quick"])
def test_presets_are_full_config_trees(name):
    """The preset files hold every key (what runs is what the file says), so they stay in step with DEFAULTS."""
    import yaml

    from fewshot_priors.config import resolve_config_path

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no deprecated key in a shipped file
        cfg = load_config(name)
    if name != "demo":
        raw = yaml.safe_load(resolve_config_path(name).read_text())
        assert {s: set(v) for s, v in raw.items()} == {s: set(v) for s, v in DEFAULTS.items()}
    # the real-photo recipe (full, long) uses EfficientNet-Lite0 backbones (docs/how-to/real-images.md)
    want = "tf_efficientnet_lite0" if name in ("real_images/full", "real_images/long") else "resnet18"
    assert cfg["model"]["backbone"] == cfg["pretrain"]["backbone"] == want
    if name == "real_images/full":  # the default shares every setting but the variants with long
        long = load_config("real_images/long")
        assert {**cfg, "study": {}} == {**long, "study": {}}
        assert {k: v for k, v in cfg["study"].items() if k != "variants"} == {
            k: v for k, v in long["study"].items() if k != "variants"}
        assert set(cfg["study"]["variants"]) < set(long["study"]["variants"])


def test_demo_presets_hold_what_the_demo_runs():
    full, quick, legacy = load_config("demo/full"), load_config("demo/quick"), load_config("demo")
    assert legacy == {**full, "experiment": {**full["experiment"], "output_dir": "runs/demo"}}
    assert full["train"]["epochs"] == 12 and full["train"]["lr"] == 0.1 and full["model"]["bins"] == [12, 6, 3, 1]
    assert quick["train"]["max_steps"] == 4 and quick["pretrain"]["max_steps"] == 3
    assert full["eval"]["episodes"] == 300 and quick["eval"]["episodes"] == 8


def test_python_m_config_lists_and_the_zoo_module_is_importable():
    r = subprocess.run([sys.executable, "-m", "fewshot_priors.config"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "demo/quick" in r.stdout.split() and "pascal/resnet50_473_fold0" in r.stdout.split()
    from fewshot_priors.config import zoo

    assert zoo.fraction_bins(96) == [12, 6, 3, 1] and zoo.zoo_bins(473) == [60, 30, 15, 8]


def test_every_key_is_one_declaration_that_every_reader_uses():
    """SCHEMA declares each key once; DEFAULTS, the resume sets, choices and the key listing derive from it."""
    import inspect

    from fewshot_priors.config import SCHEMA, choices, describe_keys, schema
    from fewshot_priors.models.qgnet_config import MODEL_DEFAULTS, MODEL_SPEC

    assert SCHEMA["model"] is MODEL_SPEC and DEFAULTS["model"] == MODEL_DEFAULTS
    assert {s: set(v) for s, v in SCHEMA.items()} == {s: set(v) for s, v in DEFAULTS.items()}
    assert all(spec.help for keys in SCHEMA.values() for spec in keys.values())
    assert len(describe_keys()) == sum(map(len, SCHEMA.values()))
    assert ("data", "root") in schema.RESUME_PATH_KEYS and ("train", "log_every") in schema.RESUME_FREE_KEYS
    assert all((s, k) in schema.RESUME_FREE_KEYS for s in ("eval", "study") for k in SCHEMA[s])
    assert choices("data", "split_style") == ("interleaved", "contiguous") and choices("train", "lr") is None
    assert "importlib" not in inspect.getsource(schema)
    # a resume refuses a declared key that changes what is trained, warns for a moved path, ignores the free ones
    old = load_config()
    new = load_config(None, {"train.lr": 0.5, "data.root": "elsewhere", "train.log_every": 3, "eval.seed": 1})
    assert schema.resume_changes(old, new) == (["train.lr: 0.025 -> 0.5"], ["data.root: 'data' -> 'elsewhere'"])


def test_cli_lists_the_declared_keys():
    r = subprocess.run([sys.executable, "-m", "fewshot_priors", "configs", "--keys"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == sum(map(len, DEFAULTS.values()))
    assert "train.lr = 0.025  effective learning rate (PFENet: base 0.0025 x 10)" in lines
    assert any(line.startswith("model.region_map_backend = 'auto'") and "one of auto, chunked" in line for line in lines)


def test_max_shots_below_data_shots_is_refused():
    assert load_config(None, {"data.shots": 2, "train.max_shots": 5})["train"]["max_shots"] == 5
    with pytest.raises(ConfigError, match=r"train.max_shots=1 is below data.shots=2"):
        load_config(None, {"data.shots": 2, "train.max_shots": 1})
