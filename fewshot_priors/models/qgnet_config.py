"""The config ``model`` section as :class:`~fewshot_priors.models.qgnet.QGNet` arguments.

The one place where config keys become QGNet keyword arguments, used by
:func:`~fewshot_priors.models.create_qgnet` and by ``QGNet.from_pretrained``; and the one
place the section's keys, defaults and value rules are declared (:data:`MODEL_SPEC`, read by
:func:`check_model_values`): the config tree's ``model`` section
(:mod:`fewshot_priors.config.schema`) and a ``save_pretrained`` folder's ``config.json`` are
checked by the same rules.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from .._typecheck import ConfigKey, nonnegative_error, positive_error, stats_error
from ..constants import DEFAULT_MAX_CHUNK_BYTES
from ..ops.similarity import BACKENDS

__all__ = ["MODEL_DEFAULTS", "MODEL_KEYS", "MODEL_SPEC", "check_model_values", "qgnet_kwargs"]


def _bins_error(name: str, value: Any) -> str | None:
    bad = [b for b in value if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0]
    if bad or not value:
        return (f"{name} must be a non-empty list of positive numbers (sizes, or fractions <= 1), "
                f"like {MODEL_SPEC['bins'].default!r}; got {value!r}")
    return None


def _name_error(name: str, value: Any) -> str | None:
    if isinstance(value, (bool, int, float, list, tuple, Mapping)):
        return f"{name} must be a timm model name or null, got {value!r} ({type(value).__name__})"
    return None


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


_NORMALISATION = ("input normalisation of the [0, 1] RGB images, per channel (null: from the weights file, "
                  "else the model's timm pretrained_cfg: ImageNet mean/std, 0.5/0.5 for EfficientNet-Lite)")

#: Every key of the config ``model`` section, declared once (:class:`~fewshot_priors._typecheck.ConfigKey`):
#: the config tree's ``model`` section and a ``save_pretrained`` folder's ``config.json`` are checked by it.
MODEL_SPEC: dict[str, ConfigKey] = {
    "backbone": ConfigKey("resnet50", "timm name of the frozen supervised backbone"),
    "prior_backbone": ConfigKey(None, "timm name of the frozen prior extractor (null: the same as backbone)",
                                rule=_name_error),
    "pretrained": ConfigKey(False, "timm download of the backbone's ImageNet weights (needs internet)"),
    "weights": ConfigKey(None, "local weights file of the supervised backbone", path=True, resume="warn"),
    "prior_weights": ConfigKey(None, "the self-supervised prior extractor's weights (the pretrain export)",
                               path=True, resume="warn"),
    "use_prior": ConfigKey(True, "false: the PFENet ablation (no prior extractor, no prior map)"),
    "bins": ConfigKey([60, 30, 15, 8], "FEM pyramid sizes (ints) or fractions of the feature size (floats)",
                      rule=_bins_error),
    "channels": ConfigKey(256, "width of the decoder and the heads", min=1),
    "aux_weight": ConfigKey(1.0, "weight of the mean auxiliary (per-scale) loss"),
    "fg_weight": ConfigKey(1.0, "foreground weight of the CE losses (1 = the paper's unweighted CE)"),
    "dice_weight": ConfigKey(0.0, "weight of a soft Dice loss on the main prediction, added to the CE (0 = the "
                             "paper's loss)"),
    "dropout": ConfigKey(0.5, "Dropout2d after the query / support heads and the prior projections (the paper's "
                         "0.5)"),
    "map_skip": ConfigKey(0.0, "initial gain of a learnable skip from the guided map to the foreground logits (0 = "
                          "none: the paper)", rule=nonnegative_error),
    "output_stride": ConfigKey(8, "backbone output stride (dilated)", min=1),
    "region_map_backend": ConfigKey("auto", "backend of the region-map ops", choices=tuple(BACKENDS)),
    "max_chunk_bytes": ConfigKey(DEFAULT_MAX_CHUNK_BYTES, "region-map ops: memory bound of one similarity tile "
                                 "(bytes)", min=1),
    "eps": ConfigKey(1e-7, "region-map ops: cosine-similarity and min-max epsilon", rule=positive_error),
    "mean": ConfigKey(None, "supervised backbone: " + _NORMALISATION, rule=stats_error),
    "std": ConfigKey(None, "supervised backbone: " + _NORMALISATION, rule=stats_error),
    "prior_mean": ConfigKey(None, "prior extractor: " + _NORMALISATION, rule=stats_error),
    "prior_std": ConfigKey(None, "prior extractor: " + _NORMALISATION, rule=stats_error),
    "region_maps": ConfigKey(None, "the region maps in the decoder's order: registered names or {type, name, "
                             "kwargs} entries (null: the paper's guided + prior maps)", rule=_region_maps_error),
}

#: Every key of the config ``model`` section with its default (the config tree's ``DEFAULTS["model"]``).
MODEL_DEFAULTS: dict[str, Any] = {key: spec.default for key, spec in MODEL_SPEC.items()}

#: Keys of the config ``model`` section, each an argument of :class:`QGNet`.
MODEL_KEYS = tuple(MODEL_SPEC)

#: Keys that configure the prior extractor: ignored (None) when ``use_prior`` is false, so one
#: config serves the model with and without the prior.
PRIOR_KEYS = ("prior_backbone", "prior_weights", "prior_mean", "prior_std")

#: Keyword arguments that are modules, not config values (parts to swap in, see :class:`QGNet`).
PART_KEYS = ("guided_map", "prior_map", "decoder")


def check_model_values(model_cfg: Mapping, where: str = "") -> None:
    """Check the values of a ``model`` section against :data:`MODEL_SPEC` (keys of it only; others
    are the caller's to refuse).

    Args:
        model_cfg: the section.
        where: prefix of the messages (e.g. the file the section was read from).

    Raises:
        ValueError: naming the key (``model.<key>``) and what it must be.
    """
    for key, value in model_cfg.items():
        spec = MODEL_SPEC.get(key)
        error = None if spec is None else spec.error(f"model.{key}", value)
        if error is not None:
            raise ValueError(where + error)


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
                      ("aux_weight", float), ("fg_weight", float), ("dice_weight", float), ("dropout", float),
                      ("map_skip", float), ("output_stride", int)):
        if key in kwargs:
            kwargs[key] = cast(kwargs[key])
    if not kwargs.get("use_prior", True):
        for key in PRIOR_KEYS:
            if key in kwargs:
                kwargs[key] = None
    return kwargs
