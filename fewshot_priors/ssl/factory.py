"""The config's ``pretrain`` section as pretraining parts (``create_qgnet``'s counterpart)::

    model = create_moco(cfg["pretrain"], queue_size=q, local_queue_size=lq, seed=s)
    sampler = create_patch_sampler(cfg["pretrain"], seed=s)
    dataset = create_unlabeled_dataset(cfg["pretrain"], paths, sampler, seed=s)

The one place where ``pretrain`` keys become :class:`GlobalLocalMoCo`,
:class:`SuperpixelPatchSampler` and :class:`UnlabeledImages` arguments; the section is
the checked one of :func:`fewshot_priors.engine.pretrain.pretrain` (or any mapping with
the keys of ``fewshot_priors.config.DEFAULTS["pretrain"]`` that a part reads). Keywords
win over the section's values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .augment import TwoViewAugment
from .dataset import UnlabeledImages
from .moco import GlobalLocalMoCo
from .superpixels import SuperpixelPatchSampler

__all__ = ["MOCO_KEYS", "SAMPLER_KEYS", "create_moco", "create_patch_sampler", "create_unlabeled_dataset"]

#: ``pretrain`` key -> :class:`GlobalLocalMoCo` argument (``backbone_kwargs`` are passed on as keywords).
MOCO_KEYS = {
    "backbone": "backbone", "dim": "dim", "queue_size": "queue_size", "local_queue_size": "local_queue_size",
    "moco_momentum": "momentum", "temperature": "temperature", "global_weight": "global_weight",
    "local_weight": "local_weight", "mlp_hidden": "mlp_hidden", "head_norm": "head_norm",
    "max_patches": "max_patches", "pool_mode": "pool_mode", "shuffle_bn": "shuffle_bn", "bn_splits": "bn_splits",
    "queue_init": "queue_init", "weights": "weights", "mean": "mean", "std": "std",
}
#: ``pretrain`` key -> :class:`SuperpixelPatchSampler` argument.
SAMPLER_KEYS = {
    "superpixel_method": "method", "superpixel_backend": "backend", "n_segments": "n_segments",
    "compactness": "compactness", "scale": "scale", "sigma": "sigma", "min_size": "min_size",
    "min_area": "min_area", "max_patches": "max_patches",
}


def _section(pretrain_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(pretrain_cfg, Mapping):
        raise TypeError(f"`pretrain_cfg` must be the config's `pretrain` section (a mapping), "
                        f"got {type(pretrain_cfg).__name__}")
    if isinstance(pretrain_cfg.get("pretrain"), Mapping):  # a whole config tree
        return pretrain_cfg["pretrain"]
    return pretrain_cfg


def _arguments(pretrain_cfg: Mapping[str, Any], keys: Mapping[str, str], overrides: Mapping[str, Any]) -> dict:
    section = _section(pretrain_cfg)
    return {**{arg: section[key] for key, arg in keys.items() if key in section}, **overrides}


def create_moco(pretrain_cfg: Mapping[str, Any], **overrides: Any) -> GlobalLocalMoCo:
    """A :class:`GlobalLocalMoCo` from the ``pretrain`` section (or a whole tree).

    Args:
        pretrain_cfg: the section; keys of :data:`MOCO_KEYS` and ``backbone_kwargs``.
        **overrides: :class:`GlobalLocalMoCo` arguments that win (the run's capped
            ``queue_size`` / ``local_queue_size``, the queue ``seed``).
    """
    kwargs = _arguments(pretrain_cfg, MOCO_KEYS, overrides)
    return GlobalLocalMoCo(**kwargs, **dict(_section(pretrain_cfg).get("backbone_kwargs") or {}))


def create_patch_sampler(pretrain_cfg: Mapping[str, Any], **overrides: Any) -> SuperpixelPatchSampler:
    """The :class:`SuperpixelPatchSampler` of the ``pretrain`` section, one thread per image
    (parallelism comes from the data-loader workers; see :class:`SuperpixelPatchSampler`)."""
    return SuperpixelPatchSampler(**{"num_threads": 1, **_arguments(pretrain_cfg, SAMPLER_KEYS, overrides)})


def create_unlabeled_dataset(
    pretrain_cfg: Mapping[str, Any],
    images: str | os.PathLike | Sequence[str | os.PathLike],
    sampler: SuperpixelPatchSampler,
    *,
    seed: int,
) -> UnlabeledImages:
    """The two-view dataset of ``images``: ``size``, ``max_patches``, ``cache_dir`` and the
    views' ``view_min_area`` from the ``pretrain`` section."""
    p = _arguments(pretrain_cfg, {k: k for k in ("size", "max_patches", "cache_dir", "view_min_area")}, {})
    return UnlabeledImages(images, size=p["size"], sampler=sampler, max_patches=p["max_patches"],
                           cache_dir=p["cache_dir"], augment=TwoViewAugment(p["size"], min_area=p["view_min_area"]),
                           seed=seed)
