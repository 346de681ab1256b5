"""The integer and number tests of the package's argument checks (bottom layer: imports nothing)."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["finite_number", "is_int"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``int`` or a NumPy integer), and not a ``bool``.

    ``True`` is an ``int`` to Python, never a count or a size here: ``is_int(True)`` is False.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def finite_number(name: str, value: Any, *, positive: bool = False, note: str = "") -> float:
    """``value`` as a ``float``, checked to be a finite number >= 0 (> 0 with ``positive``).

    Raises:
        ValueError: naming the argument ``name`` (a ``bool``, anything ``float()`` refuses, NaN or an
            infinity, a negative number, or zero with ``positive``); ``note`` is added after the bound.
    """
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or not (number > 0 if positive else number >= 0):
        raise ValueError(f"`{name}` must be a finite number {'> 0' if positive else '>= 0'}{note}, got {value!r}")
    return number
