"""The config schema: every section and key declared once, and :func:`validate` -- the one
place where a config tree is checked.

Sections: ``experiment`` (name, output folder, seed, device), ``data`` (dataset, folds, K),
``model`` (QGNet, declared in :mod:`fewshot_priors.models.qgnet_config`, read by
:func:`fewshot_priors.models.factory.create_qgnet`), ``train``, ``eval``, ``pretrain``
(self-supervised prior extractor, :func:`fewshot_priors.engine.pretrain.pretrain`) and
``study`` (settings only the demo and the real-images study read).

Each key is one :class:`~fewshot_priors._typecheck.ConfigKey` in :data:`SCHEMA`: its default,
help text, choices or lower bound (``min``), an extra ``rule``, whether it is a ``path`` and
what a resumed run may do with it (``resume``). :data:`DEFAULTS`, :func:`validate`, the
``--set`` parser (:func:`~fewshot_priors.config.loading.parse_overrides`), the resume check
(:func:`resume_changes`), the ``config.json`` check of ``save_pretrained`` folders (the
``model`` section) and ``fewshot-priors configs --keys`` all read these declarations.

To add a key, add one line to its section of :data:`SCHEMA` (``K`` is ``ConfigKey``), e.g.::

    "warmup_steps": K(0, "linear LR warm-up steps", min=0),
    "optimizer": K("sgd", "the optimiser", choices=("sgd", "adamw")),
    "val_root": K(None, "a separate validation dataset", path=True, resume="warn"),
    "log_images": K(False, "log sample predictions", resume=FREE),

(a non-``None`` default fixes the type; a ``None`` default accepts null), then read it where it
takes effect and add that consumer to ``tests/test_config_consumers.py``. The shipped presets
(``configs/demo/*.yaml``, ``configs/real_images/*.yaml``) list every key, so add it there too.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .._typecheck import ConfigKey, positive_error, stats_error
from .._validate import is_int
from ..constants import OPTIMIZERS, VAL_SPLITS
from ..data.coco import SPLIT_STYLES
from ..data.workers import resolve_num_workers
from ..models.qgnet_config import MODEL_SPEC
from ..models.weights import MOCO_ENCODERS
from ..ops.superpixel_pool import POOL_MODES
from ..ssl.moco import HEAD_NORMS, SHUFFLE_BN_MODES
from ..ssl.queue import QUEUE_INITS
from ..ssl.superpixels import METHODS as SUPERPIXEL_METHODS

__all__ = [
    "DEFAULTS",
    "SCHEMA",
    "ConfigError",
    "check_data_keys",
    "choices",
    "describe_keys",
    "merge",
    "resolve_shots",
    "resume_changes",
    "validate",
]


class ConfigError(ValueError):
    """A config file, name, key or value is invalid (the message says which)."""


def _workers_error(name: str, value: Any) -> str | None:
    try:
        resolve_num_workers(value)
    except (TypeError, ValueError) as err:
        return f"{name}: {err}"
    return None


def _non_negative_or_null(name: str, value: Any) -> str | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        return f"{name} must be a number >= 0 or null, got {value!r}"
    return None


def _positive_or_null(name: str, value: Any) -> str | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value <= 0):
        return f"{name} must be a number > 0 or null, got {value!r}"
    return None


K = ConfigKey
FREE = "free"  # a resumed run may change the key (it does not change what is trained)

#: Every section and key, declared once. Sections ``eval`` and ``study`` never change what a run
#: trains, so a resume may change all their keys.
SCHEMA: dict[str, dict[str, ConfigKey]] = {
    "experiment": {
        "name": K("qgnet", "run name (default output folder: runs/<name>)", resume=FREE),
        "output_dir": K(None, "output folder (null: runs/<name>)", path=True, resume=FREE),
        "seed": K(321, "seed of everything"),
        "device": K("auto", "auto | cpu | cuda | cuda:N (train, eval and pretrain)", resume=FREE),
        "channels_last": K(False, "QGNet in channels_last memory format (engine.build_model): on a CPU the frozen "
                           "backbones' depthwise and dilated convolutions run faster; results move in the last "
                           "digits", resume=FREE),
    },
    "data": {
        "dataset": K("pascal", "pascal | coco | folder (or a registered dataset)"),
        "root": K("data", "pascal: folder holding VOC2012/; coco: the COCO 2014 root; folder: class folders",
                  path=True, resume="warn"),
        "fold": K(0, "held-out fold"),
        "shots": K(1, "K support images per training / validation episode", min=1),
        "image_size": K(473, "training / evaluation image size", min=1),
        "split_style": K("interleaved", "coco only: the class split of the folds", choices=SPLIT_STYLES),
        "train_episodes": K(None, "null: one episode per eligible (image, class) pair", min=1),
        "val_episodes": K(1000, "periodic validation subset (fixed seed)", min=1),
        "val_class_ratio": K(0.0, "share of the training classes held back from training as validation classes "
                             "(train.val_split: train_classes); 0 = every training class trains"),
        "test_episodes": K(5000, "evaluation episodes (PASCAL 5000, COCO 20000)", min=1, resume=FREE),
        "scale_range": K([0.9, 1.1], "random scale range of the training augmentation"),
        "train_resize_long": K(None, "training crops: resize the longer side to image_size first (null: on for "
                               "folder, off for pascal / coco, PFENet's recipe)"),
        "min_pixels": K(2048, "an (image, class) pair is eligible if the class covers >= this many pixels"),
        "exclude_novel_images": K(False, "training images holding a held-out class: false keeps them, their pixels "
                                  "as background (PFENet); true drops them (BAM's filter)"),
        "num_workers": K("auto", "data-loader workers: int >= 0, or auto = min(CPU cores, 8)",
                         typed=False, rule=_workers_error, resume=FREE),
        "num_classes": K(None, "pascal layout only (e.g. the synthetic data): number of foreground classes"),
        "fold_classes": K(None, "held-out classes: ids 1..N (pascal, coco); folder names or ids (folder)"),
        "num_folds": K(None, "pascal: folds of num_classes (default 4); folder: seeded folds over classes"),
        "test_ratio": K(None, "folder: share of classes held out per seeded fold (default 0.2)"),
        "min_class_images": K(None, "folder: seeded folds only over classes with >= N images"),
        "split_seed": K(None, "folder: seed of the class split (default experiment.seed)"),
        "min_model_pixels": K(None, "folder: foreground pixels a pair keeps at image_size (default 1)"),
    },
    "model": MODEL_SPEC,
    "train": {
        "epochs": K(200, "training epochs", min=1),
        "max_steps": K(None, "stop early (the LR schedule still spans `epochs`)", min=1, resume=FREE),
        "min_steps": K(0, "at least this many optimiser steps: more whole epochs on tiny data", min=0),
        "max_shots": K(None, "each training step draws its K uniformly from data.shots .. this (one model for "
                       "every K; a class with fewer other images repeats them); null: every step data.shots", min=1),
        "batch_size": K(4, "episodes per step", min=1),
        "lr": K(0.025, "effective learning rate (PFENet: base 0.0025 x 10)", rule=positive_error),
        "momentum": K(0.9, "SGD momentum"),
        "weight_decay": K(1e-4, "SGD weight decay"),
        "poly_power": K(0.9, "power of the poly LR schedule"),
        "optimizer": K("sgd", "sgd (PFENet: SGD with momentum) | adamw (lr ~1e-3, weight_decay ~1e-2)",
                       choices=OPTIMIZERS),
        "warmup_steps": K(0, "linear warm-up of the LR over the first steps, then the poly schedule", min=0),
        "fg_balance": K(None, "null: model.fg_weight as set; a number c: model.fg_weight = c (1 - p) / p with p the "
                        "training queries' foreground share (1 = balanced classes: no constant answer is favoured)",
                        rule=_positive_or_null),
        "grad_clip": K(None, "max gradient norm (null: off)"),
        "amp": K(True, "bf16 autocast on CUDA (ignored on CPU)"),
        "val_every": K(1, "epochs between validations (0 = never)", min=0),
        "val_split": K("test", "what validates and selects the `best` checkpoint: test = the held-out test classes "
                       "(the PFENet lineage's protocol: it selects on the test split); train_classes = the classes "
                       "data.val_class_ratio holds back from training (never a test class)", choices=VAL_SPLITS),
        "ckpt_every_steps": K(None, "extra `last` checkpoints inside an epoch", min=1, resume=FREE),
        "log_every": K(10, "steps between log lines", min=1, resume=FREE),
        "check_inputs": K(False, "value checks of the model's inputs inside the training step (they synchronise "
                          "with the GPU; the datasets' items are valid, so off by default)", resume=FREE),
    },
    "eval": {
        "shots": K(None, "K of the evaluation episodes (null: data.shots)", min=1, resume=FREE),
        "episodes": K(None, "evaluation episodes (null: data.test_episodes)", min=1, resume=FREE),
        "seed": K(321, "seed of the evaluation episodes", resume=FREE),
        "batch_size": K(1, "episodes per evaluation batch", min=1, resume=FREE),
        "support_check": K(False, "K >= 2 shots: segment each support from the others and answer with the guided "
                           "map >= 0.5 in the episodes where it scored higher on them than the model "
                           "(engine.support_check; not in the paper)", resume=FREE),
    },
    "pretrain": {
        # self-supervised GlobalLocalMoCo pretraining of the prior extractor (engine/pretrain.py);
        # output folder, seed and device come from `experiment`
        "images": K(None, "a folder of images, a .txt list of paths, or a list of paths", resume="warn"),
        # model
        "backbone": K("resnet50", "timm name of the encoder"),
        "backbone_kwargs": K({}, "timm keyword arguments of the encoder, e.g. {output_stride: 8}"),
        "weights": K(None, "initial encoder weights (a local file, e.g. ImageNet); null: random init", path=True),
        "mean": K(None, "input normalisation of the encoder (null: the weights file's, else timm's cfg)",
                  rule=stats_error),
        "std": K(None, "input normalisation of the encoder (null: the weights file's, else timm's cfg)",
                 rule=stats_error),
        "dim": K(128, "embedding dimension of the projection heads", min=1),
        "queue_size": K(65536, "global negatives queue length", min=1),
        "local_queue_size": K(65536, "local (superpixel) negatives queue length", min=1),
        "queue_init": K("random", "random (MoCo) | empty (only real keys are negatives)", choices=QUEUE_INITS),
        "cap_queues": K(False, "shorten queues longer than one epoch of keys"),
        "moco_momentum": K(0.999, "momentum of the key encoder"),
        "temperature": K(0.2, "InfoNCE temperature"),
        "global_weight": K(1.0, "weight of the global contrastive loss"),
        "local_weight": K(1.0, "weight of the local (superpixel) contrastive loss"),
        "mlp_hidden": K(None, "hidden width of the projection heads (null: the encoder's width)", min=1),
        "head_norm": K("none", "normalisation inside the projection heads", choices=HEAD_NORMS),
        "max_patches": K(32, "superpixel patches per image", min=1),
        "pool_mode": K("area", "how features are pooled per superpixel", choices=POOL_MODES),
        "shuffle_bn": K("auto", "shuffle BN of the key encoder", choices=SHUFFLE_BN_MODES),
        "bn_splits": K(2, "BN splits of the split shuffle", min=1),
        # superpixels + views
        "superpixel_method": K("slic", "slic | felzenszwalb", choices=SUPERPIXEL_METHODS),
        "superpixel_backend": K("auto", "superpixel implementation (auto: the fastest available)"),
        "n_segments": K(64, "slic: number of segments", min=1),
        "compactness": K(10.0, "slic: compactness"),
        "scale": K(100.0, "felzenszwalb: scale"),
        "sigma": K(0.8, "smoothing before segmentation"),
        "min_size": K(50, "felzenszwalb: minimum segment size", min=0),
        "min_area": K(0, "minimum superpixel area in pixels", min=0),
        "view_min_area": K(4, "minimum superpixel area kept in a view", min=0),
        "size": K(224, "side of the training views", min=1),
        "cache_dir": K(None, "superpixel cache folder", path=True, resume="warn"),
        "build_cache": K(False, "build the superpixel cache before training", resume=FREE),
        "cache_workers": K(0, "processes that build the superpixel cache", min=0, resume=FREE),
        # optimisation
        "batch_size": K(256, "images per step", min=1),
        "epochs": K(200, "pretraining epochs", min=1),
        "max_steps": K(None, "stop early (the LR schedule still spans `epochs`)", min=1, resume=FREE),
        "lr": K(None, "null: 0.03 * batch_size / 256 (0: the encoder stays at its init, a control run)",
                rule=_non_negative_or_null),
        "momentum": K(0.9, "SGD momentum"),
        "weight_decay": K(1e-4, "SGD weight decay"),
        "warmup_steps": K(0, "linear LR warm-up steps", min=0),
        "amp": K(True, "bf16 autocast on CUDA (ignored on CPU)"),
        "num_workers": K("auto", "data-loader workers (they make the superpixels and views): int >= 0 or auto",
                         typed=False, rule=_workers_error, resume=FREE),
        "log_every": K(10, "steps between log lines", min=1, resume=FREE),
        # collapse diagnostics (ssl diagnostics), logged under diag/ and probe/
        "diag_every": K(0, "steps between collapse diagnostics (0 = never)", min=0, resume=FREE),
        "probe_root": K(None, "labelled folder dataset of the kNN probe", path=True, resume="warn"),
        "probe_every": K(0, "steps between kNN probes (0 = before and after only)", min=0, resume=FREE),
        "probe_size": K(None, "image side of the probe (null: size)", min=1, resume=FREE),
        "probe_k": K(20, "k of the kNN probe", min=1, resume=FREE),
        "probe_train_fraction": K(0.5, "share of the probe images that are kNN training images", resume=FREE),
        "probe_max_images": K(None, "at most this many probe images", min=1, resume=FREE),
        "ckpt_every_steps": K(None, "extra `last` checkpoints inside an epoch", min=1, resume=FREE),
        "export_path": K(None, "where the prior extractor is exported (null: in the output folder)", path=True,
                         resume=FREE),
        "export_encoder": K("key", "key (momentum encoder, as the official QGNet) | query",
                            choices=tuple(MOCO_ENCODERS)),
    },
    "study": {
        # read only by the demo (fewshot_priors/app/demo.py) and the real-images study
        # (fewshot_priors/app/real_images.py); train / eval / pretrain ignore this section
        "num_classes": K(12, "demo: classes of the generated dataset", min=1, resume=FREE),
        "images_per_class": K(40, "demo: images per class of the generated dataset", min=1, resume=FREE),
        "ablation": K(False, "demo: also train the random-prior and no-prior models (Table 7 recall)", resume=FREE),
        "figure_episodes": K(4, "Fig. 5 rows per K", min=0, resume=FREE),
        "train_min_pixels": K(None, "real-images: eligibility of training pairs (null: data.min_pixels)", min=1,
                              resume=FREE),
        "variants": K(["qgnet", "qgnet_imagenet_moco_prior", "qgnet_imagenet_prior", "qgnet_random_prior",
                       "qgnet_without_prior"], "real-images: the compared models (the ImageNet-prior variants "
                      "need pretrain.weights and are left out without it)", resume=FREE),
    },
}

#: Every accepted key with its default (read from :data:`SCHEMA`).
DEFAULTS: dict[str, dict[str, Any]] = {
    section: {key: copy.deepcopy(spec.default) for key, spec in keys.items()} for section, keys in SCHEMA.items()
}

#: Keys a resumed run may change without a word (``resume="free"``): they do not change what is
#: trained (where the run is written, how often it logs or checkpoints, where this call stops,
#: workers, evaluation-only and monitoring settings).
RESUME_FREE_KEYS = frozenset((s, k) for s, keys in SCHEMA.items() for k, spec in keys.items() if spec.resume == FREE)
#: Path keys a resumed run may change, with a warning (``resume="warn"``): the files may have moved
#: (what they hold is the user's responsibility; the schedule check still catches another number of items).
RESUME_PATH_KEYS = frozenset((s, k) for s, keys in SCHEMA.items() for k, spec in keys.items() if spec.resume == "warn")


def choices(section: str, key: str) -> tuple[str, ...] | None:
    """The allowed values of ``section.key``, or None if it is not a choice key."""
    spec = SCHEMA.get(section, {}).get(key)
    return None if spec is None else spec.choices


def describe_keys() -> list[str]:
    """One line per key, ``section.key = default  help [notes]`` (``fewshot-priors configs --keys``)."""
    return [spec.describe(f"{section}.{key}") for section, keys in SCHEMA.items() for key, spec in keys.items()]


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
        is trained (a resume must be refused), and of the keys declared ``resume="warn"``
        (:data:`RESUME_PATH_KEYS`) that differ (allowed, to be reported).
    """
    refused, moved = [], []
    for section, values in new.items():
        old_values = old.get(section)
        if section not in SCHEMA or not isinstance(values, Mapping) or not isinstance(old_values, Mapping):
            continue
        for key, value in values.items():
            spec = SCHEMA[section].get(key)
            if key not in old_values or spec is None or spec.resume == FREE:
                continue
            a, b = _comparable(old_values[key]), _comparable(value)
            if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
                continue
            (moved if spec.resume == "warn" else refused).append(f"{section}.{key}: {a!r} -> {b!r}")
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
    """Check every key and value of a full config against :data:`SCHEMA`, then the ``data``
    section against its dataset (:func:`check_data_keys`).

    Raises:
        ConfigError: unknown section/key, wrong type, or a value outside its choices or range.
    """
    for section, values in cfg.items():
        if section not in SCHEMA:
            raise _unknown(section, SCHEMA, "section ")
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {section!r} must be a mapping, got {type(values).__name__}")
        for key, value in values.items():
            spec = SCHEMA[section].get(key)
            if spec is None:
                raise _unknown(key, SCHEMA[section], f"{section}.")
            error = spec.error(f"{section}.{key}", value)
            if error is not None:
                raise ConfigError(error)
    check_data_keys(cfg["data"])
    t = cfg["train"]
    if t.get("max_shots") is not None and t["max_shots"] < cfg["data"]["shots"]:
        raise ConfigError(f"train.max_shots={t['max_shots']} is below data.shots={cfg['data']['shots']}: set it "
                          f">= data.shots (each step draws K from data.shots .. train.max_shots), or null")
    if t["val_split"] == "train_classes" and t["val_every"] and not cfg["data"]["val_class_ratio"]:
        raise ConfigError("train.val_split=train_classes validates on the training classes that data.val_class_ratio "
                          "holds back; set data.val_class_ratio (e.g. 0.2), or train.val_split=test")
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
