"""Every key of ``DEFAULTS`` reaches the object that uses it (no config value dies on the way).

For the ``model`` and ``data`` sections the test builds the object from a config where
the key has a non-default value and checks the effect on it (:data:`MODEL_EFFECTS`,
:data:`DATA_EFFECTS`). For the others (``experiment``, ``train``, ``eval``, ``pretrain``,
``study``) and the few model/data keys whose effect needs the internet, a weights file
or another dataset layout, :data:`CONSUMERS` names the consumer (a function, a module
or a dataset class) and the test asserts that its source reads the key (or that the
dataset's options class has it). A key of ``DEFAULTS`` in none of these tables fails
:func:`test_every_key_has_a_consumer`: a new key must come with its consumer.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest
import torch

from fewshot_priors.config import DEFAULTS, load_config

# ----------------------------------------------------------------------------- consumer table

#: ``pretrain`` keys that ``fewshot_priors.ssl.factory`` turns into GlobalLocalMoCo / sampler / dataset arguments
_SSL_FACTORY_KEYS = {"backbone", "dim", "queue_size", "local_queue_size", "moco_momentum", "temperature",
                     "global_weight", "local_weight", "mlp_hidden", "head_norm", "max_patches", "pool_mode",
                     "shuffle_bn", "bn_splits", "queue_init", "backbone_kwargs", "superpixel_method",
                     "superpixel_backend", "n_segments", "compactness", "scale", "sigma", "min_size", "min_area",
                     "size", "cache_dir", "view_min_area", "weights", "mean", "std"}

#: key -> consumers whose source must read it: "module", "module:function" or "options:module:Class"
#: (the dataset's options class has a field of that name; the data keys set only for some datasets).
CONSUMERS: dict[tuple[str, str], list[str]] = {
    ("experiment", "name"): ["fewshot_priors.config.loading:load_config"],
    ("experiment", "output_dir"): ["fewshot_priors.engine.train:train", "fewshot_priors.engine.pretrain:_config"],
    ("experiment", "seed"): ["fewshot_priors.engine.train:train", "fewshot_priors.engine.pretrain:pretrain",
                             "fewshot_priors.app.cli:_cmd_train"],
    ("experiment", "device"): ["fewshot_priors.app.cli:_cmd_train", "fewshot_priors.app.cli:_load_model_for_eval",
                               "fewshot_priors.engine.pretrain:_config"],
    ("model", "pretrained"): ["fewshot_priors.models.qgnet_config"],
    ("model", "weights"): ["fewshot_priors.models.qgnet_config"],
    ("model", "prior_weights"): ["fewshot_priors.models.qgnet_config"],
    ("data", "dataset"): ["fewshot_priors.data.registry:create_dataset"],
    ("data", "split_style"): ["fewshot_priors.data.registry",
                              "options:fewshot_priors.data:CocoFewShot"],
    ("data", "val_episodes"): ["fewshot_priors.engine.build:build_validation_set"],
    ("data", "num_workers"): ["fewshot_priors.engine.train:train", "fewshot_priors.app.cli:_cmd_eval"],
    ("data", "num_classes"): ["options:fewshot_priors.data:PascalFewShot"],
    # a generated dataset's dataset.json folds take precedence over num_folds, so no effect check here
    ("data", "num_folds"): ["options:fewshot_priors.data:PascalFewShot", "options:fewshot_priors.data:FolderFewShot"],
    ("data", "test_ratio"): ["options:fewshot_priors.data:FolderFewShot"],
    ("data", "min_class_images"): ["options:fewshot_priors.data:FolderFewShot"],
    ("data", "split_seed"): ["options:fewshot_priors.data:FolderFewShot"],
    ("data", "min_model_pixels"): ["options:fewshot_priors.data:FolderFewShot"],
    **{("train", k): ["fewshot_priors.engine.train"] for k in DEFAULTS["train"]},
    ("train", "val_split"): ["fewshot_priors.engine.build:build_validation_set", "fewshot_priors.config.schema"],
    ("experiment", "channels_last"): ["fewshot_priors.engine.build:build_model"],
    ("data", "val_class_ratio"): ["options:fewshot_priors.data:PascalFewShot", "options:fewshot_priors.data:CocoFewShot",
                                  "options:fewshot_priors.data:FolderFewShot"],
    ("eval", "shots"): ["fewshot_priors.config.schema:resolve_shots"],
    ("eval", "episodes"): ["fewshot_priors.app.cli:_cmd_eval", "fewshot_priors.app.study:train_and_score"],
    ("eval", "seed"): ["fewshot_priors.app.cli:_cmd_eval", "fewshot_priors.app.cli:_cmd_train"],
    ("eval", "batch_size"): ["fewshot_priors.app.cli:_cmd_eval", "fewshot_priors.app.study:train_and_score"],
    ("eval", "support_check"): ["fewshot_priors.app.cli:_cmd_eval", "fewshot_priors.app.study:_score"],
    # the pretraining loop, or the ssl builders it calls (ssl.factory: the section -> model, sampler, dataset)
    **{("pretrain", k): ["fewshot_priors.ssl.factory" if k in _SSL_FACTORY_KEYS else "fewshot_priors.engine.pretrain"]
       for k in DEFAULTS["pretrain"]},
    ("study", "num_classes"): ["fewshot_priors.app.demo:_make_data"],
    ("study", "images_per_class"): ["fewshot_priors.app.demo:_make_data"],
    ("study", "ablation"): ["fewshot_priors.app.demo:run_demo"],
    ("study", "figure_episodes"): ["fewshot_priors.app.demo:run_demo", "fewshot_priors.app.real_images:_Study"],
    ("study", "train_min_pixels"): ["fewshot_priors.app.real_images:train_and_evaluate"],
    ("study", "variants"): ["fewshot_priors.app.real_images:run_real_images"],
}


def _source_reads(src: str, key: str) -> bool:
    """``src`` reads ``key``: ``["key"]``, ``.get("key")``, ``'key'``, or an attribute ``.key`` (a config object)."""
    return bool(re.search(rf"""["']{re.escape(key)}["']|\.{re.escape(key)}\b""", src))


def _check_consumer(spec: str, key: str) -> None:
    if spec.startswith("options:"):
        _, module, cls = spec.split(":")
        options_class = getattr(importlib.import_module(module), cls).options_class
        assert key in {f.name for f in dataclasses.fields(options_class)}, f"{options_class.__name__} has no {key!r}"
        return
    module, _, func = spec.partition(":")
    mod = importlib.import_module(module)
    src = inspect.getsource(getattr(mod, func) if func else mod)
    assert _source_reads(src, key), f"{spec} does not read {key!r}"


# ----------------------------------------------------------------------------- model: real effects

_SMALL = {"model.backbone": "resnet18", "model.channels": 8, "model.bins": [4, 2]}


def _model(**over):
    cfg = load_config(None, {**_SMALL, **{f"model.{k}": v for k, v in over.items()}})
    from fewshot_priors.engine.build import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _holds(model: torch.nn.Module, attr: str, value) -> bool:
    """Some submodule (a region-map module) holds ``attr == value``."""
    return any(getattr(m, attr, object()) == value for m in model.modules())


def _needs_factory():
    try:
        importlib.import_module("fewshot_priors.models.factory")
    except ModuleNotFoundError:
        pytest.xfail("max_chunk_bytes / eps reach the region maps through models.factory.create_qgnet (H1)")


def _check_backbone():
    assert _n_params(_model(backbone="resnet34").backbone) > _n_params(_model().backbone)


def _check_prior_backbone():
    assert _n_params(_model(prior_backbone="resnet34").prior_extractor) > _n_params(_model().prior_extractor)


def _check_use_prior():
    m = _model(use_prior=False)
    assert not m.use_prior and m.decoder.n_maps == 1 and getattr(m, "prior_extractor", None) is None


def _check_output_stride():
    x = torch.rand(1, 3, 64, 64)
    assert _model(output_stride=16).backbone(x)[-1].shape[-1] < _model().backbone(x)[-1].shape[-1]


def _check_max_chunk_bytes():
    _needs_factory()
    assert _holds(_model(max_chunk_bytes=12345), "max_chunk_bytes", 12345)


def _check_eps():
    _needs_factory()
    assert _holds(_model(eps=1e-3), "eps", 1e-3)


MODEL_EFFECTS = {
    "backbone": _check_backbone,
    "prior_backbone": _check_prior_backbone,
    "use_prior": _check_use_prior,
    "bins": lambda: tuple(_model(bins=[3, 1]).decoder.bins) == (3, 1),
    "channels": lambda: _model(channels=12).decoder.channels == 12,
    "aux_weight": lambda: _model(aux_weight=0.25).aux_weight == 0.25,
    "fg_weight": lambda: _model(fg_weight=3.0).fg_weight == 3.0,
    "dice_weight": lambda: _model(dice_weight=0.5).dice_weight == 0.5,
    "dropout": lambda: _model(dropout=0.1).query_head[2].p == 0.1,
    "map_skip": lambda: _model(map_skip=2.0).decoder.map_gain.item() == 2.0,
    "region_map_backend": lambda: _holds(_model(region_map_backend="reference"), "region_map_backend", "reference")
    or _holds(_model(region_map_backend="reference"), "backend", "reference"),
    "output_stride": _check_output_stride,
    "max_chunk_bytes": _check_max_chunk_bytes,
    "eps": _check_eps,
    "mean": lambda: _model(mean=[0.5, 0.5, 0.5]).backbone.mean == (0.5, 0.5, 0.5),
    "std": lambda: _model(std=[0.5, 0.5, 0.5]).backbone.std == (0.5, 0.5, 0.5),
    "prior_mean": lambda: _model(prior_mean=[0.5, 0.5, 0.5]).prior_extractor.mean == (0.5, 0.5, 0.5),
    "prior_std": lambda: _model(prior_std=[0.5, 0.5, 0.5]).prior_extractor.std == (0.5, 0.5, 0.5),
    "region_maps": lambda: list(_model(region_maps=["prior", "guided"]).region_maps) == ["prior", "guided"],
}

# ----------------------------------------------------------------------------- data: real effects


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    from fewshot_priors.data import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("cons") / "data", num_classes=4, images_per_class=10,
                                      image_size=48, min_pixels=200, progress=False)


def _dataset(root, split, **over):
    from fewshot_priors.engine.build import build_dataset

    base = {"data.root": str(root), "data.image_size": 32, "data.min_pixels": 100, "data.num_workers": 0}
    cfg = load_config(None, {**base, **{f"data.{k}": v for k, v in over.items()}})
    return build_dataset(cfg, split, progress=False)


DATA_EFFECTS = {
    "root": lambda r: str(_dataset(r, "val").root) == str(r),
    "fold": lambda r: _dataset(r, "val", fold=1).fold == 1 and _dataset(r, "val", fold=1).test_class_ids == [2],
    "shots": lambda r: _dataset(r, "train", shots=2).shots == 2,
    "image_size": lambda r: _dataset(r, "val", image_size=24)[0]["query_image"].shape[-1] == 24,
    "train_episodes": lambda r: len(_dataset(r, "train", train_episodes=5)) == 5,
    "test_episodes": lambda r: len(_dataset(r, "val", test_episodes=7)) == 7,
    "scale_range": lambda r: _dataset(r, "train", scale_range=[0.5, 0.75]).transform.scale == (0.5, 0.75),
    "train_resize_long": lambda r: _dataset(r, "train", train_resize_long=True).transform.resize_long == 32,
    "min_pixels": lambda r: _dataset(r, "val", min_pixels=150).min_pixels == 150,
    "fold_classes": lambda r: _dataset(r, "val", fold_classes=[3]).test_class_ids == [3],
    "exclude_novel_images": lambda r: _dataset(r, "train", exclude_novel_images=True).excluded_novel_images > 0,
}

# ----------------------------------------------------------------------------- the tests


def test_every_key_has_a_consumer():
    tables = [{("model", k) for k in MODEL_EFFECTS}, {("data", k) for k in DATA_EFFECTS}, set(CONSUMERS)]
    missing = [f"{s}.{k}" for s, keys in DEFAULTS.items() for k in keys if not any((s, k) in t for t in tables)]
    assert not missing, f"config keys without a consumer check (add one to tests/test_config_consumers.py): {missing}"
    unknown = [f"{s}.{k}" for t in tables for s, k in t if k not in DEFAULTS.get(s, {})]
    assert not unknown, f"checks of keys that are not in DEFAULTS: {unknown}"


@pytest.mark.parametrize("key", sorted(CONSUMERS), ids=lambda k: f"{k[0]}.{k[1]}")
def test_consumer_reads_the_key(key):
    for spec in CONSUMERS[key]:
        _check_consumer(spec, key[1])


@pytest.mark.parametrize("key", sorted(MODEL_EFFECTS))
def test_model_key_reaches_the_model(key):
    assert MODEL_EFFECTS[key]() is not False, f"model.{key} had no effect on the built model"


@pytest.mark.parametrize("key", sorted(DATA_EFFECTS))
def test_data_key_reaches_the_dataset(key, voc_root):
    assert DATA_EFFECTS[key](voc_root), f"data.{key} had no effect on the built dataset"


def test_the_source_check_can_fail():
    assert _source_reads('cfg["train"]["lr"]', "lr") and _source_reads("c.queue_size", "queue_size")
    assert not _source_reads('cfg["train"]["lrx"]', "lr") and not _source_reads("queue_sizes", "queue_size")
    with pytest.raises(AssertionError, match="does not read 'no_such_key'"):
        _check_consumer("fewshot_priors.config.schema:resolve_shots", "no_such_key")
