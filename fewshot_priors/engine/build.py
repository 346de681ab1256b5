"""Build models and datasets from a config (see :mod:`fewshot_priors.config`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["build_dataset", "build_model"]


def build_model(cfg: Mapping, **overrides: Any) -> torch.nn.Module:
    """QGNet from ``cfg["model"]`` (keyword ``overrides`` win, e.g. ``use_prior=False``)."""
    from fewshot_priors.models.qgnet import QGNet

    m = dict(cfg["model"])
    m.update(overrides)
    return QGNet(
        backbone=m["backbone"],
        prior_backbone=m["prior_backbone"],
        shots=int(m["shots"]),
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
        shots: K (default ``model.shots``).
        episodes: number of episodes (default: ``data.train_episodes`` for train,
            ``data.test_episodes`` for val).
        seed: episode seed (default ``experiment.seed``).
        **kwargs: passed to the dataset class.
    """
    from fewshot_priors import data as fsdata
    from fewshot_priors.data.transforms import TestTransform, TrainTransform

    d = cfg["data"]
    shots = int(shots if shots is not None else cfg["model"]["shots"])
    if episodes is None:
        episodes = d["train_episodes"] if split == "train" else d["test_episodes"]
    seed = int(seed if seed is not None else cfg["experiment"]["seed"])
    size = int(d["image_size"])
    resize_long = d.get("train_resize_long")
    if resize_long is None:  # folder datasets hold photos of any size; PASCAL/COCO follow PFENet
        resize_long = d["dataset"] == "folder"
    transform = (TrainTransform(size, scale=tuple(d["scale_range"]), resize_long=bool(resize_long))
                 if split == "train" else TestTransform(size))
    common = dict(fold=int(d["fold"]), split=split, shots=shots, episodes=episodes, transform=transform, seed=seed,
                  min_pixels=int(d["min_pixels"]))
    if d.get("fold_classes") is not None:
        common["fold_classes"] = list(d["fold_classes"])
    if d.get("num_classes") is not None:
        common["num_classes"] = int(d["num_classes"])
    common.update(kwargs)
    if d["dataset"] == "pascal":
        return fsdata.PascalFewShot(d["root"], **common)
    if d["dataset"] == "coco":
        return fsdata.CocoFewShot(d["root"], split_style=d["split_style"], **common)
    if d["dataset"] == "folder":
        return fsdata.FolderFewShot(d["root"], **common)
    raise ValueError(f"data.dataset must be pascal, coco or folder, got {d['dataset']!r}")
