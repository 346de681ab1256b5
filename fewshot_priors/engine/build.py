"""Build models, datasets and the pretraining run from a full config tree (see :mod:`fewshot_priors.config`).

Thin: each function hands its section to the one factory that reads it --
``model`` to :func:`fewshot_priors.models.factory.create_qgnet`, ``data`` to
:func:`fewshot_priors.data.registry.create_dataset`, ``pretrain`` + ``experiment``
to :func:`fewshot_priors.engine.pretrain.pretrain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["build_dataset", "build_model", "run_pretrain"]


def build_model(cfg: Mapping, **overrides: Any) -> torch.nn.Module:
    """QGNet from ``cfg["model"]`` (keyword ``overrides`` win, e.g. ``use_prior=False``)."""
    try:
        from fewshot_priors.models.factory import create_qgnet
    except ModuleNotFoundError as exc:  # before the model factory exists: the same QGNet, built here
        if exc.name != "fewshot_priors.models.factory":
            raise
        return _build_model_legacy(cfg, **overrides)
    return create_qgnet(cfg["model"], **overrides)


def _build_model_legacy(cfg: Mapping, **overrides: Any) -> torch.nn.Module:
    from fewshot_priors.models.qgnet import QGNet

    m = dict(cfg["model"])
    m.update(overrides)
    return QGNet(
        backbone=m["backbone"],
        prior_backbone=m["prior_backbone"],
        pretrained=bool(m["pretrained"]),
        weights=m["weights"],
        prior_weights=m["prior_weights"] if m["use_prior"] else None,
        use_prior=bool(m["use_prior"]),
        bins=tuple(m["bins"]),
        channels=int(m["channels"]),
        aux_weight=float(m["aux_weight"]),
        fg_weight=float(m["fg_weight"]),
        region_map_backend=m["region_map_backend"],
        output_stride=int(m["output_stride"]),
    )


def build_dataset(
    cfg: Mapping,
    split: str,
    *,
    shots: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    **kwargs: Any,
):
    """The few-shot dataset of ``cfg["data"]`` for ``split`` ("train" or "val").

    Args:
        cfg: full config.
        split: "train" (training classes, training augmentation) or "val"
            (held-out classes, test transform, labels at original resolution).
        shots: K (default: :func:`~fewshot_priors.config.resolve_shots` -- ``data.shots``).
        episodes: number of episodes (default: ``data.train_episodes`` for train,
            ``data.test_episodes`` for val).
        seed: episode seed (default ``experiment.seed``). The class split of a
            folder dataset uses ``data.split_seed`` (default ``experiment.seed``),
            so train and val/eval hold out the same classes whatever the episode seed.
        **kwargs: passed to the dataset class.

    Raises:
        ConfigError: a dataset-specific ``data`` key set for a dataset it does not
            apply to (e.g. ``data.num_classes`` with ``dataset: folder``).
    """
    from fewshot_priors.config import resolve_shots

    shots = resolve_shots(cfg, split, shots)
    try:
        from fewshot_priors.data.registry import create_dataset
    except ModuleNotFoundError as exc:  # before the dataset registry exists: the same dataset, built here
        if exc.name != "fewshot_priors.data.registry":
            raise
        return _build_dataset_legacy(cfg, split, shots=shots, episodes=episodes, seed=seed, **kwargs)
    return create_dataset(cfg, split, shots=shots, episodes=episodes, seed=seed, **kwargs)


def _build_dataset_legacy(cfg: Mapping, split: str, *, shots: int, episodes: int | None, seed: int | None,
                          **kwargs: Any):
    from fewshot_priors import data as fsdata
    from fewshot_priors.config import DATASET_KEYS, check_data_keys
    from fewshot_priors.data.transforms import TestTransform, TrainTransform

    d = cfg["data"]
    check_data_keys(d)
    if episodes is None:
        episodes = d["train_episodes"] if split == "train" else d["test_episodes"]
    seed = int(seed if seed is not None else cfg["experiment"]["seed"])
    size = int(d["image_size"])
    # folder datasets hold photos of any size: train at the test scale (longer side ~ image_size);
    # PASCAL/COCO follow PFENet (data.train_resize_long overrides either way)
    resize_long = d.get("train_resize_long")
    if resize_long is None:
        resize_long = d["dataset"] == "folder"
    transform = (TrainTransform(size, scale=tuple(d["scale_range"]), resize_long=size if resize_long else None)
                 if split == "train" else TestTransform(size))
    common = dict(fold=int(d["fold"]), split=split, shots=shots, episodes=episodes, transform=transform, seed=seed,
                  min_pixels=int(d["min_pixels"]))
    if d.get("fold_classes") is not None:
        common["fold_classes"] = list(d["fold_classes"])
    # dataset-specific keys (check_data_keys refused those set for another dataset)
    common.update({k: d[k] for k in DATASET_KEYS if d.get(k) is not None})
    if d["dataset"] == "folder":
        common["image_size"] = size
        if common.get("split_seed") is None:
            # the class split must not follow the episode seed (val/eval pass eval.seed)
            common["split_seed"] = int(cfg["experiment"]["seed"])
    common.update(kwargs)
    if d["dataset"] == "pascal":
        return fsdata.PascalFewShot(d["root"], **common)
    if d["dataset"] == "coco":
        return fsdata.CocoFewShot(d["root"], split_style=d["split_style"], **common)
    if d["dataset"] == "folder":
        return fsdata.FolderFewShot(d["root"], **common)
    raise ValueError(f"data.dataset must be pascal, coco or folder, got {d['dataset']!r}")


def run_pretrain(
    cfg: Mapping,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Pretrain the prior extractor as ``cfg["pretrain"]`` says, in ``experiment.output_dir``
    with ``experiment.seed`` and ``experiment.device`` (the call arguments are not config keys).

    Returns:
        :func:`fewshot_priors.engine.pretrain.pretrain`'s result dict.
    """
    import inspect

    from fewshot_priors.engine import pretrain as mod

    e = cfg["experiment"]
    call = {"resume": resume, "overwrite": overwrite, "progress": progress, "tensorboard": tensorboard}
    if "tensorboard" not in inspect.signature(mod.pretrain).parameters:
        # the former pretrain(PretrainConfig | mapping, **fields): output folder, seed and device are fields
        call.update(output_dir=e["output_dir"], seed=e["seed"], device=e["device"])
    return mod.pretrain(cfg, **call)
