"""The config ``model`` section as :class:`~fewshot_priors.models.qgnet.QGNet` arguments.

The one place where config keys become QGNet keyword arguments, used by
:func:`~fewshot_priors.models.create_qgnet` and by ``QGNet.from_pretrained``; and the one
place the section's keys, defaults and value rules are defined (:data:`MODEL_DEFAULTS`,
:func:`check_model_values`): the config tree's ``model`` section
(:mod:`fewshot_priors.config.schema`) and a ``save_pretrained`` folder's ``config.json`` are
checked by the same rules.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .._typecheck import stats_error, type_error
from ..constants import DEFAULT_MAX_CHUNK_BYTES

__all__ = ["MODEL_DEFAULTS", "MODEL_KEYS", "check_model_values", "qgnet_kwargs"]

#: Every key of the config ``model`` section with its default (the config tree's
#: ``DEFAULTS["model"]``). A default fixes the type of the key's values (ints are accepted
#: for floats; :func:`fewshot_priors._typecheck.type_error`); ``None`` defaults are checked
#: by :func:`check_model_values`.
MODEL_DEFAULTS: dict[str, Any] = {
    "backbone": "resnet50",
    "prior_backbone": None,  # default: same as backbone
    "pretrained": False,  # timm download of ImageNet weights (needs internet)
    "weights": None,  # local supervised-backbone weights file
    "prior_weights": None,  # self-supervised prior extractor (engine/pretrain.py export)
    "use_prior": True,
    "bins": [60, 30, 15, 8],
    "channels": 256,
    "aux_weight": 1.0,
    "fg_weight": 1.0,  # foreground weight of the CE losses (1 = the paper's unweighted CE)
    "output_stride": 8,
    "region_map_backend": "auto",
    "max_chunk_bytes": DEFAULT_MAX_CHUNK_BYTES,  # region-map ops: memory bound of one similarity tile
    "eps": 1e-7,  # region-map ops: cosine-similarity and min-max epsilon
    # input normalisation of the [0, 1] RGB images, per backbone (null: from the weights file,
    # else the timm pretrained_cfg of the model: ImageNet mean/std, 0.5/0.5 for EfficientNet-Lite)
    "mean": None,
    "std": None,
    "prior_mean": None,
    "prior_std": None,
    # the region maps in the decoder's order: registered names or {"type", "name", "kwargs"} entries
    # (fewshot_priors.models.region_maps); null: the paper's ["guided", "prior"] (["guided"] without the prior)
    "region_maps": None,
}

#: Keys of the config ``model`` section, each an argument of :class:`QGNet`.
MODEL_KEYS = ("backbone", "prior_backbone", "pretrained", "weights", "prior_weights", "use_prior", "bins",
              "channels", "aux_weight", "fg_weight", "output_stride", "region_map_backend", "max_chunk_bytes",
              "eps", "mean", "std", "prior_mean", "prior_std", "region_maps")

#: Keys that configure the prior extractor: ignored (None) when ``use_prior`` is false, so one
#: config serves the model with and without the prior.
PRIOR_KEYS = ("prior_backbone", "prior_weights", "prior_mean", "prior_std")

#: Keyword arguments that are modules, not config values (parts to swap in, see :class:`QGNet`).
PART_KEYS = ("guided_map", "prior_map", "decoder")


def check_model_values(model_cfg: Mapping, where: str = "") -> None:
    """Check the values of a ``model`` section (keys of :data:`MODEL_DEFAULTS` only; others are
    the caller's to refuse): types, ``bins`` entries, sizes, the keys without a typed default
    (``region_map_backend`` is checked by the region-map modules, naming the close match).

    Args:
        model_cfg: the section.
        where: prefix of the messages (e.g. the file the section was read from).

    Raises:
        ValueError: naming the key (``model.<key>``) and what it must be.
    """
    for key, value in model_cfg.items():
        if key not in MODEL_DEFAULTS:
            continue
        name, default = f"model.{key}", MODEL_DEFAULTS[key]
        error = type_error(name, value, default)
        if error is None and key == "bins":
            bad = [b for b in value if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0]
            if bad or not value:
                error = (f"{name} must be a non-empty list of positive numbers (sizes, or fractions <= 1), "
                         f"like {default!r}; got {value!r}")
        elif error is None and key in ("channels", "output_stride") and value < 1:
            error = f"{name} must be an integer >= 1, got {value!r}"
        elif error is None and key == "eps" and not value > 0:
            error = f"{name} must be > 0, got {value!r}"
        elif key in ("prior_backbone", "weights", "prior_weights") and isinstance(
                value, (bool, int, float, list, tuple, Mapping)):
            error = f"{name} must be {'a timm model name' if key == 'prior_backbone' else 'a file path'} or null, " \
                    f"got {value!r} ({type(value).__name__})"
        elif error is None and key == "max_chunk_bytes" and value < 1:
            error = f"{name} must be an integer >= 1 (bytes), got {value!r}"
        elif key in ("mean", "std", "prior_mean", "prior_std"):
            error = stats_error(name, value)
        elif key == "region_maps":
            error = _region_maps_error(name, value)
        if error is not None:
            raise ValueError(where + error)


def _region_maps_error(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``model.region_maps`` (null, or a non-empty list of registered names
    or ``{"type": name, "name": key, "kwargs": {...}}`` entries), or None. The names are checked
    against the registry when the model is built."""
    def entry_ok(e: Any) -> bool:
        if isinstance(e, str):
            return True
        return (isinstance(e, Mapping) and isinstance(e.get("type"), str) and set(e) <= {"type", "name", "kwargs"}
                and isinstance(e.get("name", ""), str) and isinstance(e.get("kwargs", {}), Mapping))
    if value is None or (isinstance(value, (list, tuple)) and value and all(entry_ok(e) for e in value)):
        return None
    return (f"{name} must be null (the paper's guided + prior maps) or a non-empty list of region map names "
            f"or {{type, name, kwargs}} entries, like ['guided', 'prior']; got {value!r}")


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
