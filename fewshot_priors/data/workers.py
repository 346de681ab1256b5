"""How many DataLoader worker processes to start: ``"auto"`` follows the machine's cores."""

from __future__ import annotations

import os

__all__ = ["MAX_AUTO_WORKERS", "available_cores", "resolve_num_workers"]

#: Upper bound of ``num_workers="auto"``: past ~8 workers one episode loader rarely gains more.
MAX_AUTO_WORKERS = 8


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def resolve_num_workers(value: int | str | None) -> int:
    """``num_workers`` for a DataLoader: an int >= 0 as given; ``"auto"`` / ``None``: ``min(cores, 8)``.

    Raises:
        ValueError: a negative number or another string.
        TypeError: neither an int nor a string (e.g. a float or a bool).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return min(available_cores(), MAX_AUTO_WORKERS)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"`num_workers` must be an int >= 0 or 'auto', got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"`num_workers` must be an int >= 0 or 'auto', got {value!r}") from None
    if n < 0:
        raise ValueError(f"`num_workers` must be an int >= 0 or 'auto', got {value!r}")
    return n
