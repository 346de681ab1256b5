"""The one integer test of the package's argument checks (bottom layer: imports nothing)."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["is_int"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``int`` or a NumPy integer), and not a ``bool``.

    ``True`` is an ``int`` to Python, never a count or a size here: ``is_int(True)`` is False.
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
