"""Config loading / zoo and the `fewshot-priors` command line (train -> eval -> visualize)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot_priors.app.cli import main
from fewshot_priors.config import (
    CONFIG_DIR,
    DEFAULTS,
    ConfigError,
    available_configs,
    load_config,
    render_zoo_file,
    zoo_configs,
)

# ----------------------------------------------------------------------------- configs


def test_zoo_has_every_paper_row_and_matches_the_generator():
    names = set(available_configs())
    zoo = zoo_configs()
    assert len(zoo) == 2 * 3 * 2 * 4  # dataset x backbone x size x fold
    for name, cfg in zoo.items():
        assert name in names
        assert (CONFIG_DIR / f"{name}.yaml").read_text() == render_zoo_file(name, cfg), name
    assert "demo" in names


@pytest.mark.parametrize("name, lr, backbone, size, fold, classes", [
    ("pascal/resnet50_473_fold0", 0.025, "resnet50s", 473, 0, None),
    ("pascal/vgg16_321_fold3", 0.025, "vgg16_bn", 321, 3, None),
    ("coco/resnet101_473_fold2", 0.2, "resnet101s", 473, 2, None),
])
def test_zoo_rows_resolve_with_effective_lr(name, lr, backbone, size, fold, classes):
    cfg = load_config(name)
    assert cfg["train"]["lr"] == lr
    assert cfg["model"]["backbone"] == backbone
    assert cfg["model"]["prior_backbone"] == "resnet50"  # QGNet's MoCo network, for every row
    assert cfg["data"]["image_size"] == size and cfg["data"]["fold"] == fold
    assert cfg["train"]["momentum"] == 0.9 and cfg["train"]["weight_decay"] == 1e-4
    assert cfg["train"]["poly_power"] == 0.9
    assert cfg["experiment"]["seed"] == 321
    if size == 473:
        assert cfg["model"]["bins"] == [60, 30, 15, 8]
    elif backbone.startswith("vgg"):  # stride 16 (PFENet's VGG layering): 21 x 21 features at 321
        assert cfg["model"]["bins"] == [21, 10, 5, 2]
    else:  # dilated ResNet, stride 8: 41 x 41 features at 321
        assert cfg["model"]["bins"] == [41, 20, 10, 5]
    assert cfg["data"]["test_episodes"] == (5000 if name.startswith("pascal") else 20000)


def test_overrides_are_typed_and_unknown_keys_rejected(tmp_path):
    cfg = load_config("pascal/resnet50_473_fold0", ["train.lr=0.01", "data.shots=5", "model.bins=[4, 2]",
                                                    "model.weights=null"])
    assert cfg["train"]["lr"] == 0.01 and cfg["data"]["shots"] == 5 and cfg["model"]["bins"] == [4, 2]
    assert "shots" not in cfg["model"]
    with pytest.raises(ConfigError, match=r"train\.'lrr'.*Did you mean 'lr'"):
        load_config("demo", ["train.lrr=1"])
    with pytest.raises(ConfigError, match="section.*'trian'"):
        load_config("demo", ["trian.lr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("demo", ["train.lr"])
    with pytest.raises(ConfigError, match=r"train\.batch_size must be a int"):
        load_config("demo", ["train.batch_size=four"])
    with pytest.raises(ConfigError, match="data.dataset must be one of"):
        load_config("demo", ["data.dataset=imagenet"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbon: resnet18\n")
    with pytest.raises(ConfigError, match="model.'backbon'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="Did you mean.*pascal/resnet50_473_fold0"):
        load_config("pascal/resnet50_473_fold9")


def test_config_file_with_base(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.5\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain:\n  epochs: 7\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg["train"]["lr"] == 0.5 and cfg["train"]["epochs"] == 7
    assert cfg["train"]["batch_size"] == DEFAULTS["train"]["batch_size"]


# ----------------------------------------------------------------------------- CLI


def test_help_and_configs_listing(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "demo" in capsys.readouterr().out
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    listed = out.split()
    assert "pascal/resnet50_473_fold0" in listed and "coco/vgg16_321_fold1" in listed
    assert "demo -> demo/full (alias)" in out.splitlines()  # the alias says what it names
    with pytest.raises(SystemExit):
        main(["configs", "--help"])
    assert "table rows" in capsys.readouterr().out  # configs has a description


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "fewshot_priors", "train", "--help"],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--resume" in r.stdout and "--set" in r.stdout


def test_help_and_version_do_not_import_torch():
    """--help must be instant: neither the package root nor cli.py imports torch to build the parser."""
    code = ("import sys\nfrom fewshot_priors.app.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['eval', '--help'], ['predict', '--help'],\n"
            "             ['prepare', 'pascal', '--help'], ['export', '--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("NO-TORCH"), r.stdout[-300:]
    import fewshot_priors

    assert f"fewshot-priors {fewshot_priors.__version__}" in r.stdout


def test_errors_are_reported_not_raised(capsys, tmp_path):
    assert main(["eval", "--config", "demo", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_argument_errors_show_the_subcommand_usage_and_abbreviations_are_refused(capsys):
    for argv, bad in ((["demo", "--quik"], "--quik"), (["train", "--config", "demo", "--max-step", "3"], "--max-step"),
                      (["demo", "--output", "x"], "--output")):  # --output of a folder is --output-dir
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"usage: fewshot-priors {argv[0]} ") and bad in err, err


#: The flags every command that runs a model takes, and the one output convention.
RUN_COMMANDS = {"train": ["--config", "demo"], "eval": ["--config", "demo", "--checkpoint", "x"],
                "visualize": ["--config", "demo", "--checkpoint", "x"], "pretrain": [], "demo": [],
                "real-images": ["--root", "r"], "predict": ["--model", "m", "--support", "s", "m", "--query", "q"],
                "export": ["--model", "m", "--output", "m.onnx"]}


def test_every_command_that_runs_a_model_takes_the_common_flags():
    from fewshot_priors.app.cli import build_parser

    parser = build_parser()
    for command, args in RUN_COMMANDS.items():
        ns = parser.parse_args([command, *args, "--device", "cpu", "--no-progress",
                                "--set", "train.lr=0.5", "--set", "data.shots=2"])
        assert ns.overrides == ["train.lr=0.5", "data.shots=2"] and ns.device == "cpu" and ns.no_progress, command
    ns = parser.parse_args(["convert", "x.pth", "--kind", "qgnet", "--output", "o.safetensors", "--set", "data.fold=1"])
    assert ns.overrides == ["data.fold=1"]


def test_one_output_convention_across_commands():
    """--output-dir DIR for a command that writes a folder, --output FILE for one that writes one file."""
    from fewshot_priors.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    flags = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.items()}
    for name in ("demo", "real-images", "train", "pretrain", "predict"):
        assert "--output-dir" in flags[name] and "--output" not in flags[name], name
    for name in ("eval", "visualize", "convert", "export"):
        assert "--output" in flags[name] and "--output-dir" not in flags[name], name
    for name, parser_ in sub.items():
        for action in parser_._actions:
            if action.dest == "output_dir":
                assert action.metavar == "DIR", name
            if action.dest == "output":
                assert action.metavar == "FILE", name


def test_set_takes_one_override_and_never_swallows_a_positional():
    from fewshot_priors.app.cli import build_parser

    ns = build_parser().parse_args(["convert", "--set", "data.fold=2", "official.pth", "--kind", "pfenet",
                                    "--output", "o.safetensors"])
    assert ns.source == "official.pth" and ns.overrides == ["data.fold=2"]


def test_help_writes_every_default_one_way():
    import re

    from fewshot_priors.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name, p in sub.items():
        text = " ".join(p.format_help().split())
        assert not re.search(r"\(default \d|default:\s*None|\(default [a-z]|\bdefault \d", text), (name, text)
        for action in p._actions:
            if (action.option_strings and action.default not in (None, False, [], "==SUPPRESS==")
                    and action.help and action.dest != "help"):
                assert "(default: " in p._get_formatter()._get_help_string(action), (name, action.dest)
    help_text = " ".join(sub["demo"].format_help().split())
    # --ablation's help names a documentation page (a pip user has no docs/ folder) that exists
    named = re.search(r"documentation's page '([^']+)'", help_text).group(1)
    assert f"- {named}: " in (Path(__file__).resolve().parents[1] / "mkdocs.yml").read_text(), named


def test_train_eval_visualize_round_trip(tmp_path, capsys):
    """Train 2 steps on a tiny generated PASCAL-layout set, evaluate the checkpoint, draw Fig. 5."""
    from fewshot_priors.data import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path / "data", num_classes=4, images_per_class=12, image_size=64,
                                      min_pixels=400, progress=False)
    common = [f"data.root={root}", "data.image_size=64", "model.bins=[8, 4]", "model.channels=16",
              "train.batch_size=2", "train.epochs=1", "train.log_every=1", "model.use_prior=false",
              "data.num_workers=0", "data.min_pixels=400", f"experiment.output_dir={tmp_path / 'run'}"]
    common = [arg for item in common for arg in ("--set", item)]
    assert main(["train", "--config", "demo", "--max-steps", "2", "--no-progress", *common]) == 0
    assert (tmp_path / "run" / "last.safetensors").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    capsys.readouterr()
    # the trained run is neither overwritten by a fresh run nor resumed under another schedule
    assert main(["train", "--config", "demo", "--max-steps", "2", "--no-progress", *common]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--config", "demo", "--resume", "--no-progress", *common, "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and "Traceback" not in err
    out_json = tmp_path / "results.json"
    assert main(["eval", "--config", "demo", "--checkpoint", str(tmp_path / "run" / "last"), "--shots", "1",
                 "--episodes", "6", "--seed", "7", "--output", str(out_json), "--no-progress", *common]) == 0
    res = json.loads(out_json.read_text())
    assert res["episodes"] == 6 and res["seed"] == 7 and res["shots"] == 1
    assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["fbiou"] <= 1.0
    assert set(res["per_class_iou"]) == {"1"}  # fold 0 of 4 classes holds out class 1
    name = json.loads((root / "dataset.json").read_text())["class_names"][0]
    assert res["class_names"] == {"1": name}
    out = capsys.readouterr().out
    assert "mIoU" in out and f"{name} (1)" in out and "class 1" not in out  # the class's name, not its id
    # eval.support_check: the command scores the checked model, as the Python side does
    from fewshot_priors.config import load_config
    from fewshot_priors.engine import build_dataset, evaluate
    from fewshot_priors.engine.predict import model_from_checkpoint
    from fewshot_priors.engine.support_check import SupportCheck

    checked = ["--shots", "2", "--episodes", "4", "--seed", "7", "--no-progress", *common]
    assert main(["eval", "--config", "demo", "--checkpoint", str(tmp_path / "run" / "last"), *checked,
                 "--output", str(out_json), "--set", "eval.support_check=true"]) == 0
    cfg = load_config("demo", common[1::2])
    ds = build_dataset(cfg, "val", shots=2, episodes=4, seed=7, progress=False)
    ref = evaluate(SupportCheck(model_from_checkpoint(cfg, tmp_path / "run" / "last")), ds, seed=7, progress=False)
    plain = evaluate(model_from_checkpoint(cfg, tmp_path / "run" / "last"), ds, seed=7, progress=False)
    assert json.loads(out_json.read_text())["miou"] == pytest.approx(ref["miou"])
    assert ref["miou"] != pytest.approx(plain["miou"])  # the check changed answers: the key reached the command
    fig = tmp_path / "fig5.png"
    assert main(["visualize", "--config", "demo", "--checkpoint", str(tmp_path / "run" / "last"),
                 "--episodes", "2", "--output", str(fig), *common]) == 0
    assert fig.stat().st_size > 1000


def test_pretrain_command_exports_a_loadable_prior_extractor(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from fewshot_priors.models.backbone import create_backbone

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.jpg")
    assert main(["pretrain", "--images", str(tmp_path / "imgs"), "--set", "pretrain.nope=1"]) == 2
    assert "unknown config key pretrain.'nope'" in capsys.readouterr().err
    assert main(["pretrain", "--images", str(tmp_path / "imgs"), "--set", "queue_size=8"]) == 2  # no section: refused
    assert "'queue_size' must be section.key" in capsys.readouterr().err
    args = ["pretrain", "--images", str(tmp_path / "imgs"), "--output-dir", str(tmp_path / "pre"),
            "--backbone", "resnet18", "--epochs", "1", "--batch-size", "4", "--size", "32", "--no-progress",
            "--diag-every", "1", "--no-tensorboard"]
    args += [arg for item in ("pretrain.queue_size=8", "pretrain.local_queue_size=16", "pretrain.dim=8",
                              "pretrain.mlp_hidden=16", "pretrain.n_segments=8", "pretrain.max_patches=8")
             for arg in ("--set", item)]
    assert main(args) == 0
    export = tmp_path / "pre" / "prior_extractor.safetensors"
    assert export.is_file()
    create_backbone("resnet18", weights=export)  # loads without missing / unexpected keys
    assert "1,diag/std_global," in (tmp_path / "pre" / "scalars.csv").read_text()  # --diag-every reached the loop
