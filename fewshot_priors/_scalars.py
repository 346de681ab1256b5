"""The ``scalars.csv`` run log format (bottom layer: standard library only).

:class:`~fewshot_priors.engine.logging.RunLogger` writes it; :func:`read_scalars` reads
it back for :func:`~fewshot_priors.viz.plot_loss_curve` and for resuming. One row per
scalar, long format, after a ``step,tag,value`` header::

    step,tag,value
    10,train/loss,0.693
    10,train/lr,0.1
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["SCALARS_HEADER", "read_scalars", "scalar_rows"]

#: Header row of ``scalars.csv``.
SCALARS_HEADER = ("step", "tag", "value")


def scalar_rows(path: str | os.PathLike) -> Iterator[list[str]]:
    """The data rows of a ``scalars.csv`` as ``[step, tag, value]`` strings (header skipped)."""
    with open(Path(path), newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)
        yield from reader


def read_scalars(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Read a ``scalars.csv`` back as ``tag -> [(step, value), ...]`` (non-finite values kept)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, tag, value in scalar_rows(path):
        v = float(value)
        out.setdefault(tag, []).append((int(step), v if not math.isnan(v) else float("nan")))
    return out
