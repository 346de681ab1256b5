"""Build models and datasets from a full config tree (see :mod:`fewshot_priors.config`).

Thin: each function hands its section to the one factory that reads it --
``model`` to :func:`fewshot_priors.models.factory.create_qgnet`, ``data`` to
:func:`fewshot_priors.data.registry.create_dataset`. Pretraining reads its tree itself:
:func:`fewshot_priors.engine.pretrain.pretrain`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["build_dataset", "build_model", "build_validation_set"]


def build_model(cfg: Mapping, **overrides: Any) -> torch.nn.Module:
    """QGNet from ``cfg["model"]`` (keyword ``overrides`` win, e.g. ``use_prior=False``);
    see :func:`fewshot_priors.models.create_qgnet`. With ``experiment.channels_last`` its
    parameters are in channels_last memory format (faster convolutions on a CPU; the
    checkpoints hold contiguous tensors either way)."""
    from fewshot_priors.models.factory import create_qgnet

    model = create_qgnet(cfg["model"], **overrides)
    if cfg.get("experiment", {}).get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return model


def build_dataset(
    cfg: Mapping,
    split: str,
    *,
    shots: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    **overrides: Any,
):
    """The few-shot dataset of ``cfg["data"]`` for ``split`` (``"train"`` or ``"val"``):
    :func:`~fewshot_priors.data.create_dataset` with config errors raised as ``ConfigError``.

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
        **overrides: constructor arguments or options of the dataset (e.g. ``progress=False``,
            ``cache=False``), see :func:`~fewshot_priors.data.create_dataset`.

    Raises:
        ConfigError: a bad ``data`` key, e.g. a dataset-specific one set for a dataset it
            does not apply to (``data.num_classes`` with ``dataset: folder``), or a bad K.
    """
    from fewshot_priors.config import ConfigError, resolve_shots
    from fewshot_priors.data.registry import create_dataset

    shots = resolve_shots(cfg, split, shots)
    return create_dataset(cfg, split, shots=shots, episodes=episodes, seed=seed, error=ConfigError, **overrides)


def build_validation_set(cfg: Mapping, train_set: Any = None, **overrides: Any):
    """The episodes that validate a training run and select its ``best`` checkpoint, by
    ``train.val_split``:

    * ``"test"``: the held-out test classes (``build_dataset(cfg, "val")``), the PFENet
      lineage's protocol, which selects the checkpoint on the split it reports;
    * ``"train_classes"``: the classes that ``train_set`` held back from training
      (``data.val_class_ratio``; its ``val_class_ids``), never a test class.

    ``data.val_episodes`` episodes with the evaluation seed ``eval.seed``; ``overrides`` as
    :func:`build_dataset`'s (e.g. ``progress=False``, ``cache=False``).

    Raises:
        ValueError: ``"train_classes"`` with a training set that held back no class.
    """
    import copy

    kw = {"episodes": cfg["data"]["val_episodes"], "seed": cfg["eval"]["seed"], **overrides}
    if cfg["train"]["val_split"] == "test":
        return build_dataset(cfg, "val", **kw)
    ids = list(getattr(train_set, "val_class_ids", None) or [])
    if not ids:
        raise ValueError("train.val_split=train_classes needs the training set's held-back classes: build it with "
                         "data.val_class_ratio > 0 and pass it as `train_set`")
    vcfg = copy.deepcopy(dict(cfg))
    vcfg["data"] = {**cfg["data"], "fold_classes": ids, "val_class_ratio": 0.0}
    return build_dataset(vcfg, "val", **kw)
