"""The one type rule of a config value: a key's default fixes the type of its values.

Used by :func:`fewshot_priors.config.schema.validate` (every section of the config tree) and by
:func:`fewshot_priors.models.qgnet_config.check_model_values` (the ``model`` section, also in a
``save_pretrained`` folder's ``config.json``), so a value is accepted or refused the same way
wherever it comes from.
"""

from __future__ import annotations

import math
from typing import Any

from ._validate import is_int

__all__ = ["stats_error", "type_error"]


def type_error(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot be the value of key ``name`` whose default is ``default``, or None.

    bool defaults take bools only (never ``"false"`` or 0); int defaults ints (not bools);
    float defaults finite ints or floats (not bools); list defaults lists or tuples; str
    defaults strings. A ``None`` default accepts anything (the caller checks those keys).
    """
    if default is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = is_int(value)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return f"{name} must be a finite number (like {default!r}), got {value!r}"
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if ok:
        return None
    return f"{name} must be a {type(default).__name__} (like {default!r}), got {value!r} ({type(value).__name__})"


def stats_error(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the per-channel RGB statistic ``name`` (a ``...mean`` / ``...std`` key of
    the input normalisation: null or three finite numbers, each std > 0), or None."""
    if value is None:
        return None
    numbers = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
    if numbers and (not name.endswith("std") or all(x > 0 for x in value)):
        return None
    need = "three numbers > 0" if name.endswith("std") else "three numbers"
    return f"{name} must be null or {need} (one per RGB channel, for images in [0, 1]), got {value!r}"
