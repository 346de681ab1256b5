"""The config ``model`` section as :class:`~fewshot_priors.models.qgnet.QGNet` arguments.

The one place where config keys become QGNet keyword arguments, used by
:func:`~fewshot_priors.models.create_qgnet` and by ``QGNet.from_pretrained``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

__all__ = ["MODEL_KEYS", "qgnet_kwargs"]

#: Keys of the config ``model`` section, each an argument of :class:`QGNet`.
MODEL_KEYS = ("backbone", "prior_backbone", "pretrained", "weights", "prior_weights", "use_prior", "bins",
              "channels", "aux_weight", "fg_weight", "output_stride", "region_map_backend", "max_chunk_bytes",
              "eps", "mean", "std", "prior_mean", "prior_std")

#: Keys that configure the prior extractor: ignored (None) when ``use_prior`` is false, so one
#: config serves the model with and without the prior.
PRIOR_KEYS = ("prior_backbone", "prior_weights", "prior_mean", "prior_std")

#: Keyword arguments that are modules, not config values (parts to swap in, see :class:`QGNet`).
PART_KEYS = ("guided_map", "prior_map", "decoder")


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
        if key in valid:
            continue
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {where} {key!r}{hint} (valid: {', '.join(valid)})")


def qgnet_kwargs(model_cfg: Mapping | None = None, **overrides: Any) -> dict[str, Any]:
    """QGNet keyword arguments from a ``model`` section (or a whole tree) and overrides.

    Raises:
        ValueError: an unknown key, named with the closest valid key.
    """
    m = _section(model_cfg)
    _check_keys(m, "config key")
    _check_keys(overrides, "keyword")
    m.update(overrides)
    kwargs: dict[str, Any] = {k: m[k] for k in (*MODEL_KEYS, *PART_KEYS) if k in m}
    # the casts the engine's build_model always made (config values may come as e.g. YAML ints for floats)
    for key, cast in (("pretrained", bool), ("use_prior", bool), ("bins", tuple), ("channels", int),
                      ("aux_weight", float), ("fg_weight", float), ("output_stride", int)):
        if key in kwargs:
            kwargs[key] = cast(kwargs[key])
    if not kwargs.get("use_prior", True):
        for key in PRIOR_KEYS:
            if key in kwargs:
                kwargs[key] = None
    return kwargs
