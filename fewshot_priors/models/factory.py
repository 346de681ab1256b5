"""``create_qgnet``: a QGNet from the config's ``model`` section (timm's ``create_model`` style).

::

    model = create_qgnet(cfg["model"])                 # the section ...
    model = create_qgnet(cfg, use_prior=False)         # ... or the whole tree; keywords win
    model = create_qgnet(backbone="resnet18", bins=[8, 4, 2, 1])

This is the one place where config keys become QGNet arguments (the engine's
``build_model`` delegates here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fewshot_priors.models.qgnet import QGNet
from fewshot_priors.models.qgnet_config import MODEL_KEYS, qgnet_kwargs

__all__ = ["MODEL_KEYS", "create_qgnet"]


def create_qgnet(model_cfg: Mapping | None = None, **overrides: Any) -> QGNet:
    """Build a :class:`QGNet` from a ``model`` config section.

    Args:
        model_cfg: the config's ``model`` section (keys: :data:`MODEL_KEYS`), or a whole config tree (a mapping with a
            ``model`` mapping), or ``None`` (QGNet's defaults). Missing keys take
            QGNet's defaults, which equal the config defaults.
        **overrides: values that win over ``model_cfg`` (same keys), plus the parts
            ``guided_map=``, ``prior_map=``, ``decoder=`` (modules, see :class:`QGNet`) and
            ``backbone=`` / ``prior_backbone=`` given as modules.

    Returns:
        The model (frozen backbone and prior extractor, trainable heads and decoder).
        With ``use_prior=False`` the prior-extractor settings (``prior_backbone``,
        ``prior_weights``, ``prior_mean``, ``prior_std``) are dropped (the ablation has no
        prior extractor), so one config serves the model with and without the prior.

    Raises:
        ValueError: an unknown key (named, with the closest valid key), or what
            :class:`QGNet` raises for a bad value.
    """
    return QGNet(**qgnet_kwargs(model_cfg, **overrides))
