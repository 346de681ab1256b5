"""Run logging: one CSV of scalars plus TensorBoard, written by rank 0 only."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path

from .._scalars import SCALARS_HEADER, read_scalars, scalar_rows

__all__ = ["RunLogger", "read_scalars"]


class RunLogger:
    """Append scalars to ``<dir>/scalars.csv`` (long format: step, tag, value) and TensorBoard.

    Args:
        directory: run directory.
        enabled: False on non-zero ranks (everything becomes a no-op).
        tensorboard: also write TensorBoard event files under ``<dir>/tb``.
    """

    def __init__(self, directory: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.directory = Path(directory)
        self.enabled = enabled
        self._tb = None
        self.csv_path = self.directory / "scalars.csv"
        if not enabled:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        new = not self.csv_path.exists()
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(SCALARS_HEADER)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.directory / "tb"))
            except Exception:  # pragma: no cover - tensorboard missing/broken: CSV still works
                self._tb = None

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``tag -> value`` at ``step``."""
        if not self.enabled:
            return
        for tag, value in scalars.items():
            value = float(value)
            self._csv.writerow([int(step), tag, repr(value)])
            if self._tb is not None:
                self._tb.add_scalar(tag, value, int(step))
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (on resume, so the CSV matches an uninterrupted run)."""
        if not self.enabled or not self.csv_path.exists():
            return
        self._file.close()
        rows = [r for r in scalar_rows(self.csv_path) if int(r[0]) <= step]
        with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(SCALARS_HEADER)
            w.writerows(rows)
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
