"""Experiment configs: YAML files, named lookup, command-line overrides, validation.

Every run is described by one nested dict with the sections ``experiment``,
``data``, ``model``, ``train`` and ``eval`` (see :data:`DEFAULTS` for every key
and its default). Config files only need the keys they change; they are merged
over the defaults. Unknown keys and wrongly typed values are rejected with an
error naming the key.

The configs of every row of the paper's tables ship with the package and are
addressed by name (``fewshot-priors configs`` lists them)::

    cfg = load_config("pascal/resnet50_473_fold0", overrides=["train.lr=0.01", "model.shots=5"])

The zoo is generated from one template by :func:`generate_zoo`
(``python -m fewshot_priors.config --generate``); a test checks that the shipped
files match it.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CONFIG_DIR",
    "DEFAULTS",
    "ConfigError",
    "apply_overrides",
    "available_configs",
    "check_data_keys",
    "generate_zoo",
    "load_config",
    "merge",
    "resolve_config_path",
    "validate",
    "zoo_configs",
]

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file, name, key or value is invalid (the message says which)."""


#: Every accepted key with its default. ``None`` defaults accept any value of the
#: documented type; other defaults fix the type (ints are accepted for floats).
DEFAULTS: dict[str, dict[str, Any]] = {
    "experiment": {
        "name": "qgnet",
        "output_dir": None,  # default: runs/<name>
        "seed": 321,
        "device": "auto",  # auto | cpu | cuda | cuda:N (train, eval and pretrain)
    },
    "data": {
        "dataset": "pascal",  # pascal | coco | folder
        "root": "data",  # pascal: folder holding VOC2012/; coco: the COCO 2014 root; folder: class folders
        "fold": 0,
        "shots": 1,  # K support images per training / validation episode
        "image_size": 473,
        "split_style": "interleaved",  # coco only: interleaved | contiguous
        "train_episodes": None,  # None: one episode per eligible (image, class) pair
        "val_episodes": 1000,  # periodic validation subset (fixed seed)
        "test_episodes": 5000,  # PASCAL 5000, COCO 20000
        "scale_range": [0.9, 1.1],
        # training crops: resize the longer side to image_size first (TrainTransform.resize_long);
        # null = on for `folder` (photos of any size), off for pascal/coco (PFENet's recipe)
        "train_resize_long": None,
        "min_pixels": 2048,  # an (image, class) pair is eligible if the class covers >= 2 x 32 x 32 px
        "num_workers": "auto",  # int >= 0, or "auto" = min(CPU cores, 8)
        "num_classes": None,  # pascal layout only (e.g. the synthetic data): number of foreground classes
        "fold_classes": None,  # held-out classes: ids 1..N (pascal, coco); folder names or ids (folder)
        "num_folds": None,  # pascal: folds of num_classes (default 4); folder: seeded folds over classes
        "test_ratio": None,  # folder: share of classes held out per seeded fold (default 0.2)
        "min_class_images": None,  # folder: seeded folds only over classes with >= N images
        "split_seed": None,  # folder: seed of the class split (default experiment.seed)
        "min_model_pixels": None,  # folder: foreground px a pair keeps at image_size (default 1)
    },
    "model": {
        "backbone": "resnet50",
        "prior_backbone": None,  # default: same as backbone
        "pretrained": False,  # timm download of ImageNet weights (needs internet)
        "weights": None,  # local supervised-backbone weights file
        "prior_weights": None,  # self-supervised prior extractor (engine/pretrain.py export)
        "use_prior": True,
        "shots": 1,
        "bins": [60, 30, 15, 8],
        "channels": 256,
        "aux_weight": 1.0,
        "fg_weight": 1.0,  # foreground weight of the CE losses (1 = the paper's unweighted CE)
        "output_stride": 8,
        "region_map_backend": "auto",
        "max_chunk_bytes": None,  # region-map ops: memory bound of one chunk (None = the ops' default)
        "eps": 1e-7,  # region-map ops: cosine-similarity and min-max epsilon
    },
    "train": {
        "epochs": 200,
        "max_steps": None,  # stop early (the LR schedule still spans `epochs`)
        "batch_size": 4,
        "lr": 0.025,  # effective LR (PFENet: base 0.0025 x 10)
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "poly_power": 0.9,
        "grad_clip": None,  # max gradient norm, None = off
        "amp": True,  # bf16 autocast on CUDA (ignored on CPU)
        "val_every": 1,  # epochs between validations (0 = never)
        "ckpt_every_steps": None,  # extra `last` checkpoints inside an epoch
        "log_every": 10,
        "device": "auto",
    },
    "eval": {
        "shots": None,  # None: model.shots
        "episodes": None,  # None: data.test_episodes
        "seed": 321,
        "batch_size": 1,
    },
    "pretrain": {
        # self-supervised GlobalLocalMoCo pretraining of the prior extractor (engine/pretrain.py);
        # output folder, seed and device come from `experiment`
        "images": None,  # a folder of images, a .txt list of paths, or a list of paths
        # model
        "backbone": "resnet50",
        "backbone_kwargs": {},  # e.g. {"output_stride": 8}
        "dim": 128,
        "queue_size": 65536,
        "local_queue_size": 65536,
        "queue_init": "random",  # random (MoCo) | empty (only real keys are negatives)
        "cap_queues": False,  # shorten queues longer than one epoch of keys
        "moco_momentum": 0.999,
        "temperature": 0.2,
        "global_weight": 1.0,
        "local_weight": 1.0,
        "mlp_hidden": None,
        "head_norm": "none",
        "max_patches": 32,
        "pool_mode": "area",
        "shuffle_bn": "auto",
        "bn_splits": 2,
        # superpixels + views
        "superpixel_method": "slic",  # slic | felzenszwalb
        "superpixel_backend": "auto",
        "n_segments": 64,
        "compactness": 10.0,
        "scale": 100.0,
        "sigma": 0.8,
        "min_size": 50,
        "min_area": 0,
        "view_min_area": 4,
        "size": 224,
        "cache_dir": None,
        "build_cache": False,
        "cache_workers": 0,
        # optimisation
        "batch_size": 256,
        "epochs": 200,
        "max_steps": None,
        "lr": None,  # None: 0.03 * batch_size / 256
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_steps": 0,
        "amp": True,
        "num_workers": "auto",  # superpixels + views are made in the workers
        "log_every": 10,
        # collapse diagnostics (ssl diagnostics), logged under diag/ and probe/
        "diag_every": 0,
        "probe_root": None,
        "probe_every": 0,
        "probe_size": None,
        "probe_k": 20,
        "probe_train_fraction": 0.5,
        "probe_max_images": None,
        "ckpt_every_steps": None,
        "export_path": None,
        "export_encoder": "key",  # key (momentum encoder, as the official QGNet) | query
    },
}

#: Keys whose value may be any of several types (beyond None defaults).
_FREE_KEYS = {
    ("data", "fold_classes"), ("data", "num_classes"), ("data", "train_episodes"), ("model", "prior_backbone"),
    ("data", "train_resize_long"), ("pretrain", "num_workers"),
    ("model", "weights"), ("model", "prior_weights"), ("data", "num_workers"), ("train", "max_steps"), ("train", "grad_clip"),
    ("train", "ckpt_every_steps"), ("experiment", "output_dir"), ("eval", "shots"), ("eval", "episodes"),
}

#: ``data`` keys that apply to some datasets only (``None`` = unset). Setting one for
#: another dataset is an error rather than silently ignored.
DATASET_KEYS: dict[str, tuple[str, ...]] = {
    "num_classes": ("pascal",),
    "num_folds": ("pascal", "folder"),
    "test_ratio": ("folder",),
    "min_class_images": ("folder",),
    "split_seed": ("folder",),
    "min_model_pixels": ("folder",),
}

_CHOICES = {
    ("data", "dataset"): ("pascal", "coco", "folder"),
    ("data", "split_style"): ("interleaved", "contiguous"),
    ("model", "region_map_backend"): ("auto", "chunked", "reference", "fused"),
}


# --------------------------------------------------------------------------- merging / validation


def merge(base: Mapping, override: Mapping, _where: str = "") -> dict:
    """Deep-merge ``override`` into a copy of ``base`` (dicts merge, other values replace)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, f"{_where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown(key: str, valid: Iterable[str], where: str) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {where}{key!r}.{hint} Valid keys here: {', '.join(valid)}")


def validate(cfg: Mapping) -> dict:
    """Check every key and value type of a full config.

    Raises:
        ConfigError: unknown section/key, wrong type, or a value outside its choices.
    """
    for section, values in cfg.items():
        if section not in DEFAULTS:
            raise _unknown(section, DEFAULTS, "section ")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise _unknown(key, DEFAULTS[section], f"{section}.")
            default = DEFAULTS[section][key]
            name = f"{section}.{key}"
            if (section, key) in _CHOICES and value not in _CHOICES[(section, key)]:
                raise ConfigError(f"{name} must be one of {_CHOICES[(section, key)]}, got {value!r}")
            if default is None or (section, key) in _FREE_KEYS:
                continue
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int):
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            elif isinstance(default, list):
                ok = isinstance(value, (list, tuple))
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise ConfigError(
                    f"{name} must be a {type(default).__name__} (like {default!r}), got {value!r} "
                    f"({type(value).__name__})"
                )
    c = cfg
    check_data_keys(c["data"])
    if c["model"]["shots"] < 1:
        raise ConfigError(f"model.shots must be >= 1, got {c['model']['shots']}")
    if c["train"]["batch_size"] < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {c['train']['batch_size']}")
    if c["train"]["lr"] <= 0:
        raise ConfigError(f"train.lr must be > 0, got {c['train']['lr']}")
    from .data.workers import resolve_num_workers  # here: importing fewshot_priors.data loads torch

    try:
        resolve_num_workers(c["data"]["num_workers"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.num_workers: {err}") from None
    for name, low, optional in _INT_RANGES:
        section, key = name.split(".")
        value = c[section][key]
        if optional and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}{' or null' if optional else ''}, got {value!r}")
    return dict(cfg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_data_keys(data: Mapping) -> None:
    """Check the dataset-specific ``data`` keys: set only for a dataset they apply to, valid values.

    Raises:
        ConfigError: naming the key, the dataset and what is expected.
    """
    ds = data.get("dataset", DEFAULTS["data"]["dataset"])
    for key, allowed in DATASET_KEYS.items():
        if data.get(key) is not None and ds not in allowed:
            raise ConfigError(
                f"data.{key} does not apply to data.dataset={ds!r} (only to {', '.join(allowed)}); "
                f"remove it or set it to null"
            )
    fc = data.get("fold_classes")
    if fc is not None:
        ok = isinstance(fc, (list, tuple)) and len(fc) > 0
        if ds == "folder":
            ok = ok and all(_is_int(v) or isinstance(v, str) for v in fc)
            want = "a non-empty list of class folder names (or class ids 1..N)"
        else:
            ok = ok and all(_is_int(v) for v in fc)
            want = "a non-empty list of class ids"
        if not ok:
            raise ConfigError(f"data.fold_classes must be {want} for data.dataset={ds!r}, got {fc!r}")
    checks = {
        "num_classes": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "num_folds": (lambda v: _is_int(v) and v >= (2 if ds == "folder" else 1), "an int >= 2"),
        "test_ratio": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                       "a number in (0, 1)"),
        "min_class_images": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "split_seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
        "min_model_pixels": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    }
    for key, (ok, want) in checks.items():
        v = data.get(key)
        if v is not None and not ok(v):
            raise ConfigError(f"data.{key} must be {want} or null, got {v!r}")
    if ds == "folder":
        if data.get("num_folds") is not None and data.get("test_ratio") is not None:
            raise ConfigError("data.num_folds and data.test_ratio both set: the seeded folds take one of them")
        if fc is not None:
            clash = [k for k in ("num_folds", "test_ratio", "min_class_images") if data.get(k) is not None]
            if clash:
                raise ConfigError(
                    f"data.fold_classes names the held-out classes; data.{clash[0]} only shapes the "
                    "seeded folds and cannot be combined with it"
                )


#: Integer keys with a lower bound: (key, minimum, None allowed). A run of 0 epochs or
#: steps would only write an untrained checkpoint; 0 shots or episodes score nothing.
_INT_RANGES = (
    ("train.epochs", 1, False), ("train.max_steps", 1, True), ("train.log_every", 1, False),
    ("train.val_every", 0, False), ("train.ckpt_every_steps", 1, True),
    ("data.image_size", 1, False), ("data.val_episodes", 1, False),
    ("data.test_episodes", 1, False), ("data.train_episodes", 1, True),
    ("eval.shots", 1, True), ("eval.episodes", 1, True), ("eval.batch_size", 1, False),
)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: Mapping, overrides: Iterable[str] | Mapping[str, Any] | None) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML: ``0.01``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: malformed override or unknown key.
    """
    out = copy.deepcopy(dict(cfg))
    if not overrides:
        return out
    items = overrides.items() if isinstance(overrides, Mapping) else []
    if not isinstance(overrides, Mapping):
        parsed = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=0.01)")
            key, value = text.split("=", 1)
            parsed.append((key.strip(), _parse_value(value.strip())))
        items = parsed
    for dotted, value in items:
        parts = dotted.split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {dotted!r} must be section.key (e.g. train.lr)")
        section, key = parts
        if section not in DEFAULTS:
            raise _unknown(section, DEFAULTS, "section ")
        if key not in DEFAULTS[section]:
            raise _unknown(key, DEFAULTS[section], f"{section}.")
        out.setdefault(section, {})[key] = value
    return out


# --------------------------------------------------------------------------- files and names


def available_configs() -> list[str]:
    """Names of the shipped configs (``pascal/resnet50_473_fold0``, ``demo``, ...)."""
    return sorted(
        p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        for p in CONFIG_DIR.rglob("*.yaml")
        if not p.name.startswith("_")
    )


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """Find a config file by path or by shipped name.

    Raises:
        ConfigError: neither an existing file nor a shipped name (close names suggested).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = str(name_or_path).removesuffix(".yaml")
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    names = available_configs()
    close = difflib.get_close_matches(name, names, n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"config {str(name_or_path)!r} is neither a file nor a shipped config name.{hint} "
        "List them with `fewshot-priors configs`."
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    merged: dict = {}
    for b in [base] if isinstance(base, str) else base:
        bp = (path.parent / b).resolve()
        if bp in seen:
            raise ConfigError(f"{path}: circular _base_ include of {bp}")
        if not bp.is_file():
            raise ConfigError(f"{path}: _base_ file {b!r} not found (looked at {bp})")
        merged = merge(merged, _read_yaml(bp, seen + (bp,)))
    return merge(merged, data)


def load_config(
    name_or_path: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict:
    """Load a config by shipped name or path, merged over :data:`DEFAULTS`, overrides applied.

    Args:
        name_or_path: ``"pascal/resnet50_473_fold0"``, ``"demo"``, a YAML path, or None
            for the defaults alone.
        overrides: ``["train.lr=0.01", "model.shots=5"]`` or ``{"train.lr": 0.01}``.

    Returns:
        The full, validated config dict (``experiment.output_dir`` filled in).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        data = _read_yaml(path)
        validate(merge(DEFAULTS, data))  # report unknown keys against the file
        cfg = merge(cfg, data)
    cfg = validate(apply_overrides(cfg, overrides))
    if cfg["experiment"]["output_dir"] is None:
        cfg["experiment"]["output_dir"] = str(Path("runs") / cfg["experiment"]["name"])
    return cfg


def save_config(cfg: Mapping, path: str | os.PathLike) -> Path:
    """Write a config as YAML (used to record the effective config of a run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(cfg), sort_keys=False), encoding="utf-8")
    return path


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- the paper's zoo

#: Paper backbone name -> timm name of the supervised feature extractor. PFENet and
#: QGNet use VGG16 with BatchNorm and a *deep-stem* ResNet (three 3x3 convs
#: 3 -> 64 -> 64 -> 128, BN + ReLU each, max-pool; layer1 takes 128 channels; plain
#: 1x1 strided downsample): timm's ``resnet50s`` / ``resnet101s``, not ``resnet50``.
ZOO_BACKBONES = {"vgg16": "vgg16_bn", "resnet50": "resnet50s", "resnet101": "resnet101s"}
#: The prior extractor of every row: QGNet's self-supervised (MoCo) network is a plain
#: ResNet-50 (7x7 stem), whatever the supervised backbone.
ZOO_PRIOR_BACKBONE = "resnet50"
ZOO_SIZES = (321, 473)
ZOO_DATASETS = {
    # dataset: (root, scale range, effective lr, batch size, epochs, test episodes)
    "pascal": ("data/VOCdevkit", [0.9, 1.1], 0.025, 4, 200, 5000),
    "coco": ("data/coco", [0.8, 1.25], 0.2, 32, 50, 20000),
}


def zoo_bins(image_size: int, output_stride: int = 8) -> list[int]:
    """FEM pyramid bins: [60, 30, 15, 8] at 473 (PFENet), else feature-size fractions 1, 1/2, 1/4, 1/8.

    ``output_stride`` is the backbone's: 8 for the dilated ResNets, 16 for VGG (PFENet's layering).
    """
    if image_size == 473:
        return [60, 30, 15, 8]
    feat = (image_size - 1) // output_stride + 1
    return [feat, max(1, feat // 2), max(1, feat // 4), max(1, feat // 8)]


def zoo_configs() -> dict[str, dict]:
    """The paper's table rows as ``name -> partial config`` (what the shipped YAML files hold)."""
    out = {}
    for ds, (root, scale, lr, batch, epochs, episodes) in ZOO_DATASETS.items():
        for paper_name, timm_name in ZOO_BACKBONES.items():
            for size in ZOO_SIZES:
                for fold in range(4):
                    name = f"{ds}/{paper_name}_{size}_fold{fold}"
                    out[name] = {
                        "experiment": {"name": f"{ds}_{paper_name}_{size}_fold{fold}", "seed": 321},
                        "data": {"dataset": ds, "root": root, "fold": fold, "image_size": size,
                                 "scale_range": scale, "test_episodes": episodes},
                        "model": {"backbone": timm_name, "prior_backbone": ZOO_PRIOR_BACKBONE,
                                  "pretrained": True,
                                  "bins": zoo_bins(size, 16 if paper_name == "vgg16" else 8),
                                  "shots": 1},
                        "train": {"epochs": epochs, "batch_size": batch, "lr": lr},
                    }
    return out


_ZOO_HEADER = (
    "# Generated by `python -m fewshot_priors.config --generate` from fewshot_priors/config.py; do not edit.\n"
    "# Paper row: {name}. Keys not listed take the defaults of fewshot_priors.config.DEFAULTS.\n"
    "# Effective SGD learning rate written out (REFERENCE: PASCAL 0.025, COCO 0.2), poly power 0.9.\n"
    "# Backbone: PFENet's deep-stem ResNet (timm resnet50s / resnet101s) or VGG16-BN; prior extractor: a plain\n"
    "# ResNet-50 (QGNet's MoCo network), loaded from model.prior_weights.\n"
)


def render_zoo_file(name: str, cfg: Mapping) -> str:
    return _ZOO_HEADER.format(name=name) + yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


def generate_zoo(directory: str | os.PathLike = CONFIG_DIR) -> list[Path]:
    """(Re)write the zoo YAML files under ``directory``; returns the written paths."""
    written = []
    for name, cfg in zoo_configs().items():
        path = Path(directory) / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_zoo_file(name, cfg), encoding="utf-8")
        written.append(path)
    return written


def _main(argv: list[str] | None = None) -> None:  # pragma: no cover - maintenance entry point
    parser = argparse.ArgumentParser(description="Maintain the shipped config zoo.")
    parser.add_argument("--generate", action="store_true", help="rewrite configs/{pascal,coco}/*.yaml")
    args = parser.parse_args(argv)
    if args.generate:
        for p in generate_zoo():
            print(p)
    else:
        print("\n".join(available_configs()))


if __name__ == "__main__":  # pragma: no cover
    _main()
