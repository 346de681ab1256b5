"""``create_qgnet``: a QGNet from the config's ``model`` section (timm's ``create_model`` style).

::

    model = create_qgnet(cfg["model"])                 # the section ...
    model = create_qgnet(cfg, use_prior=False)         # ... or the whole tree; keywords win
    model = create_qgnet(backbone="resnet18", bins=[8, 4, 2, 1])

This is the one place where config keys become QGNet arguments (the engine's
``build_model`` delegates here).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from fewshot_priors.models.qgnet import QGNet

__all__ = ["MODEL_KEYS", "create_qgnet"]

#: Keys of the config ``model`` section, each an argument of :class:`QGNet`.
MODEL_KEYS = ("backbone", "prior_backbone", "pretrained", "weights", "prior_weights", "use_prior", "bins",
              "channels", "aux_weight", "fg_weight", "output_stride", "region_map_backend", "max_chunk_bytes",
              "eps")

#: Keyword arguments that are modules, not config values (parts to swap in, see :class:`QGNet`).
PART_KEYS = ("guided_map", "prior_map", "decoder")

#: Keys accepted in a ``model`` section but not used here: ``shots`` moved to ``data.shots``
#: (the config layer warns about it; K comes from the data at run time).
IGNORED_KEYS = ("shots",)


def _section(model_cfg: Mapping | None) -> dict[str, Any]:
    if model_cfg is None:
        return {}
    if not isinstance(model_cfg, Mapping):
        raise TypeError(f"`model_cfg` must be a mapping (the config's `model` section or the whole tree), "
                        f"got {type(model_cfg).__name__}")
    if isinstance(model_cfg.get("model"), Mapping):  # a full config tree
        return dict(model_cfg["model"])
    return dict(model_cfg)


def _check_keys(keys, where: str) -> None:
    valid = (*MODEL_KEYS, *PART_KEYS) if where == "keyword" else MODEL_KEYS
    for key in keys:
        if key in valid or key in IGNORED_KEYS:
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {where} {key!r}{hint} (valid: {', '.join(valid)})")


def create_qgnet(model_cfg: Mapping | None = None, **overrides: Any) -> QGNet:
    """Build a :class:`QGNet` from a ``model`` config section.

    Args:
        model_cfg: the config's ``model`` section (keys: :data:`MODEL_KEYS`; a ``shots``
            key is accepted and ignored), or a whole config tree (a mapping with a
            ``model`` mapping), or ``None`` (QGNet's defaults). Missing keys take
            QGNet's defaults, which equal the config defaults.
        **overrides: values that win over ``model_cfg`` (same keys), plus the parts
            ``guided_map=``, ``prior_map=``, ``decoder=`` (modules, see :class:`QGNet`) and
            ``backbone=`` / ``prior_backbone=`` given as modules.

    Returns:
        The model (frozen backbone and prior extractor, trainable heads and decoder).
        With ``use_prior=False`` a ``prior_weights`` value is dropped (the ablation has
        no prior extractor), as the config layer allows it to stay set.

    Raises:
        ValueError: an unknown key (named, with the closest valid key), or what
            :class:`QGNet` raises for a bad value.
    """
    m = _section(model_cfg)
    _check_keys(m, "config key")
    _check_keys(overrides, "keyword")
    m.update(overrides)
    for key in IGNORED_KEYS:
        m.pop(key, None)
    kwargs: dict[str, Any] = {k: m[k] for k in (*MODEL_KEYS, *PART_KEYS) if k in m}
    # the casts the engine's build_model always made (config values may come as e.g. YAML ints for floats)
    for key, cast in (("pretrained", bool), ("use_prior", bool), ("bins", tuple), ("channels", int),
                      ("aux_weight", float), ("fg_weight", float), ("output_stride", int)):
        if key in kwargs:
            kwargs[key] = cast(kwargs[key])
    if not kwargs.get("use_prior", True):
        kwargs["prior_weights"] = None
    return QGNet(**kwargs)
