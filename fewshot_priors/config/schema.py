"""The config schema: every section and key with its default, the allowed choices and ranges,
and :func:`validate` -- the one place where a config tree is checked.

Sections: ``experiment`` (name, output folder, seed, device), ``data`` (dataset, folds, K),
``model`` (QGNet, read by :func:`fewshot_priors.models.factory.create_qgnet`), ``train``,
``eval``, ``pretrain`` (self-supervised prior extractor, :func:`fewshot_priors.engine.pretrain.pretrain`)
and ``study`` (settings only the demo and the real-images study read).
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .._typecheck import stats_error, type_error
from .._validate import is_int
from ..models.qgnet_config import MODEL_DEFAULTS, check_model_values

__all__ = [
    "DEFAULTS",
    "ConfigError",
    "check_data_keys",
    "choices",
    "merge",
    "resolve_shots",
    "resume_changes",
    "validate",
]


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
        # training images holding a held-out class: false keeps them, their pixels as background
        # (PFENet); true drops them (BAM's filter)
        "exclude_novel_images": False,
        "num_workers": "auto",  # int >= 0, or "auto" = min(CPU cores, 8)
        "num_classes": None,  # pascal layout only (e.g. the synthetic data): number of foreground classes
        "fold_classes": None,  # held-out classes: ids 1..N (pascal, coco); folder names or ids (folder)
        "num_folds": None,  # pascal: folds of num_classes (default 4); folder: seeded folds over classes
        "test_ratio": None,  # folder: share of classes held out per seeded fold (default 0.2)
        "min_class_images": None,  # folder: seeded folds only over classes with >= N images
        "split_seed": None,  # folder: seed of the class split (default experiment.seed)
        "min_model_pixels": None,  # folder: foreground px a pair keeps at image_size (default 1)
    },
    "model": dict(MODEL_DEFAULTS),  # QGNet's settings: defined (and checked) in models/qgnet_config.py
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
        # value checks of the model's inputs inside the training step (they synchronise with the
        # GPU; fewshot_priors.set_checks); the datasets' items are valid, so off by default
        "check_inputs": False,
    },
    "eval": {
        "shots": None,  # None: data.shots
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
        "weights": None,  # initial encoder weights (a local file, e.g. ImageNet); null: random init
        "mean": None,  # input normalisation of the encoder (null: the weights file's, else timm's cfg)
        "std": None,
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
        "lr": None,  # None: 0.03 * batch_size / 256 (0: the encoder stays at its init, a control run)
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
    "study": {
        # read only by the demo (fewshot_priors/app/demo.py) and the real-images study
        # (fewshot_priors/app/real_images.py); train / eval / pretrain ignore this section
        "num_classes": 12,  # demo: classes of the generated dataset
        "images_per_class": 40,  # demo: images per class of the generated dataset
        "ablation": False,  # demo: also train the random-prior and no-prior models (Table 7 recall)
        "figure_episodes": 4,  # Fig. 5 rows per K
        "train_min_pixels": None,  # real-images: eligibility of training pairs (None: data.min_pixels)
        # real-images: the compared models (fewshot_priors.app.real_images.VARIANTS); the ImageNet-prior
        # variants need pretrain.weights and are left out without it
        "variants": ["qgnet", "qgnet_imagenet_moco_prior", "qgnet_imagenet_prior", "qgnet_random_prior",
                     "qgnet_without_prior"],
    },
}

#: Keys whose value may be any of several types (beyond None defaults).
_FREE_KEYS = {
    ("data", "fold_classes"), ("data", "num_classes"), ("data", "train_episodes"), ("model", "prior_backbone"),
    ("data", "train_resize_long"), ("pretrain", "num_workers"),
    ("model", "weights"), ("model", "prior_weights"), ("data", "num_workers"), ("train", "max_steps"), ("train", "grad_clip"),
    ("train", "ckpt_every_steps"), ("experiment", "output_dir"), ("eval", "shots"), ("eval", "episodes"),
    ("pretrain", "images"), ("pretrain", "mlp_hidden"), ("pretrain", "lr"),
    ("pretrain", "max_steps"), ("pretrain", "cache_dir"), ("pretrain", "probe_root"), ("pretrain", "probe_size"),
    ("pretrain", "probe_max_images"), ("pretrain", "ckpt_every_steps"), ("pretrain", "export_path"),
    ("study", "train_min_pixels"), ("pretrain", "weights"),
}

#: Per-channel RGB statistics of the input normalisation: null or three numbers (std > 0).
#: (the model's are checked by models.qgnet_config.check_model_values, with the same rule)
_STATS_KEYS = ("pretrain.mean", "pretrain.std")

#: Fixed choices of string keys.
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "split_style"): ("interleaved", "contiguous"),
    ("pretrain", "superpixel_method"): ("slic", "felzenszwalb"),
    ("pretrain", "queue_init"): ("random", "empty"),
}

#: Choices defined by the layer that uses them: (module, attribute). Imported only when a
#: value differs from its default (the modules load torch; the default is always valid).
_IMPORTED_CHOICES: dict[tuple[str, str], tuple[str, str]] = {
    ("model", "region_map_backend"): ("fewshot_priors.ops.similarity", "BACKENDS"),
    ("pretrain", "pool_mode"): ("fewshot_priors.ops.superpixel_pool", "POOL_MODES"),
    ("pretrain", "shuffle_bn"): ("fewshot_priors.ssl.moco", "SHUFFLE_BN_MODES"),
    ("pretrain", "head_norm"): ("fewshot_priors.ssl.moco", "HEAD_NORMS"),
    ("pretrain", "export_encoder"): ("fewshot_priors.models.weights", "MOCO_ENCODERS"),
}


def choices(section: str, key: str) -> tuple[str, ...] | None:
    """The allowed values of ``section.key``, or None if it is not a choice key."""
    if (section, key) in _CHOICES:
        return _CHOICES[(section, key)]
    if (section, key) in _IMPORTED_CHOICES:
        import importlib

        module, attr = _IMPORTED_CHOICES[(section, key)]
        return tuple(getattr(importlib.import_module(module), attr))
    return None


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


#: Keys a resumed run may change without a word: they do not change what is trained (where
#: the run is written, how often it logs or checkpoints, where this call stops, workers,
#: evaluation-only and monitoring settings).
RESUME_FREE_KEYS = frozenset({
    ("experiment", "name"), ("experiment", "output_dir"), ("experiment", "device"),
    ("data", "num_workers"), ("data", "test_episodes"),
    ("train", "max_steps"), ("train", "log_every"), ("train", "ckpt_every_steps"), ("train", "check_inputs"),
    ("pretrain", "max_steps"), ("pretrain", "log_every"), ("pretrain", "ckpt_every_steps"),
    ("pretrain", "num_workers"), ("pretrain", "export_path"), ("pretrain", "build_cache"),
    ("pretrain", "cache_workers"), ("pretrain", "diag_every"), ("pretrain", "probe_every"),
    ("pretrain", "probe_size"), ("pretrain", "probe_k"), ("pretrain", "probe_train_fraction"),
    ("pretrain", "probe_max_images"),
})
#: Path keys a resumed run may change, with a warning: the files may have moved (what they hold
#: is the user's responsibility; the schedule check still catches another number of items).
RESUME_PATH_KEYS = frozenset({
    ("data", "root"), ("model", "weights"), ("model", "prior_weights"), ("pretrain", "images"),
    ("pretrain", "probe_root"), ("pretrain", "cache_dir"),
})
#: Sections no run reads for its training (eval settings, the demo / study presets).
_RESUME_FREE_SECTIONS = frozenset({"eval", "study"})


def _comparable(value: Any) -> Any:
    """``value`` as the JSON sidecar of a checkpoint holds it (tuples are lists, paths strings)."""
    if isinstance(value, Mapping):
        return {str(k): _comparable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resume_changes(old: Mapping, new: Mapping) -> tuple[list[str], list[str]]:
    """What resuming a run recorded with config ``old`` under config ``new`` changes.

    Compares every key present in both (a key an older version did not record is skipped).

    Returns:
        ``(refused, moved)``: ``"section.key: old -> new"`` lines of the keys that change what
        is trained (a resume must be refused), and of the path keys of
        :data:`RESUME_PATH_KEYS` that differ (allowed, to be reported).
    """
    refused, moved = [], []
    for section, values in new.items():
        old_values = old.get(section)
        if section in _RESUME_FREE_SECTIONS or not isinstance(values, Mapping) or not isinstance(old_values, Mapping):
            continue
        for key, value in values.items():
            if key not in old_values or (section, key) in RESUME_FREE_KEYS:
                continue
            a, b = _comparable(old_values[key]), _comparable(value)
            if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
                continue
            (moved if (section, key) in RESUME_PATH_KEYS else refused).append(f"{section}.{key}: {a!r} -> {b!r}")
    return refused, moved


def resolve_shots(cfg: Mapping, purpose: str = "train", shots: int | None = None) -> int:
    """K of an episode: the one place where the number of shots is decided.

    Args:
        cfg: full config.
        purpose: ``"train"`` / ``"val"`` (the dataset splits: ``data.shots``, what
            :func:`~fewshot_priors.engine.build_dataset` uses) or ``"eval"``
            (``eval.shots``, else ``data.shots``).
        shots: an explicit K (a command-line ``--shots``); wins when not None.

    Raises:
        ConfigError: an unknown ``purpose`` or a K < 1.
    """
    if purpose not in ("train", "val", "eval"):
        raise ConfigError(f"`purpose` must be 'train', 'val' or 'eval', got {purpose!r}")
    if shots is None and purpose == "eval":
        shots = cfg["eval"].get("shots")
    if shots is None:
        shots = cfg["data"]["shots"]
    if not is_int(shots) or shots < 1:
        raise ConfigError(f"shots must be an integer >= 1, got {shots!r}")
    return int(shots)


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
            if value != default:
                allowed = choices(section, key)
                if allowed is not None and value not in allowed:
                    close = difflib.get_close_matches(str(value), allowed, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(f"{name} must be one of {allowed}, got {value!r}.{hint}")
            if default is None or (section, key) in _FREE_KEYS:
                continue
            error = type_error(name, value, default)
            if error is not None:
                raise ConfigError(error)
    try:
        check_model_values(cfg.get("model", {}))  # the model rules beyond types (shared with config.json)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    c = cfg
    check_data_keys(c["data"])
    if c["train"]["batch_size"] < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {c['train']['batch_size']}")
    if c["train"]["lr"] <= 0:
        raise ConfigError(f"train.lr must be > 0, got {c['train']['lr']}")
    from fewshot_priors.data.workers import (
        resolve_num_workers,  # here: importing fewshot_priors.data loads torch
    )

    for name in ("data.num_workers", "pretrain.num_workers"):
        section, key = name.split(".")
        try:
            resolve_num_workers(c[section][key])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: {err}") from None
    for name in ("pretrain.lr",):  # 0 is allowed: a frozen-encoder control run (tests/test_pretrain.py)
        section, key = name.split(".")
        v = c[section][key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"{name} must be a number >= 0 or null, got {v!r}")
    for name in _STATS_KEYS:
        section, key = name.split(".")
        error = stats_error(name, c[section][key])
        if error is not None:
            raise ConfigError(error)
    for name, low, optional in _INT_RANGES:
        section, key = name.split(".")
        value = c[section][key]
        if optional and value is None:
            continue
        if not is_int(value) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}{' or null' if optional else ''}, got {value!r}")
    return dict(cfg)



def check_data_keys(data: Mapping) -> None:
    """Check the ``data`` section against its dataset: a registered ``data.dataset``,
    dataset-specific keys set only for a dataset they apply to, valid values (the rules live
    in :func:`fewshot_priors.data.registry.check_data_keys`; here they raise ConfigError).

    Raises:
        ConfigError: naming the key, the dataset and what is expected.
    """
    from fewshot_priors.data.registry import (
        check_data_keys as check,  # here: fewshot_priors.data loads torch
    )

    check(data, error=ConfigError)


#: Integer keys with a lower bound: (key, minimum, None allowed). A run of 0 epochs or
#: steps would only write an untrained checkpoint; 0 shots or episodes score nothing.
_INT_RANGES = (
    ("train.epochs", 1, False), ("train.max_steps", 1, True), ("train.log_every", 1, False),
    ("train.val_every", 0, False), ("train.ckpt_every_steps", 1, True),
    ("data.image_size", 1, False), ("data.val_episodes", 1, False),
    ("data.test_episodes", 1, False), ("data.train_episodes", 1, True),
    ("eval.shots", 1, True), ("eval.episodes", 1, True), ("eval.batch_size", 1, False),
    ("data.shots", 1, False), ("model.max_chunk_bytes", 1, False),
    ("pretrain.dim", 1, False), ("pretrain.queue_size", 1, False), ("pretrain.local_queue_size", 1, False),
    ("pretrain.mlp_hidden", 1, True), ("pretrain.max_patches", 1, False), ("pretrain.bn_splits", 1, False),
    ("pretrain.n_segments", 1, False), ("pretrain.min_size", 0, False), ("pretrain.min_area", 0, False),
    ("pretrain.view_min_area", 0, False), ("pretrain.size", 1, False), ("pretrain.cache_workers", 0, False),
    ("pretrain.batch_size", 1, False), ("pretrain.epochs", 1, False), ("pretrain.max_steps", 1, True),
    ("pretrain.warmup_steps", 0, False), ("pretrain.log_every", 1, False), ("pretrain.diag_every", 0, False),
    ("pretrain.probe_every", 0, False), ("pretrain.probe_size", 1, True), ("pretrain.probe_k", 1, False),
    ("pretrain.probe_max_images", 1, True), ("pretrain.ckpt_every_steps", 1, True),
    ("study.num_classes", 1, False), ("study.images_per_class", 1, False), ("study.figure_episodes", 0, False),
    ("study.train_min_pixels", 1, True),
)


