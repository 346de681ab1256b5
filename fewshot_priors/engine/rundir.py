"""The run-folder policy shared by :func:`~fewshot_priors.engine.train.train` and
:func:`~fewshot_priors.engine.pretrain.pretrain`.

A run folder holds one run: its checkpoints, ``scalars.csv``, TensorBoard events
and config. Starting a run in a folder that already holds one is refused unless
the caller says what to do with it:

* ``resume``: continue it (the checkpoint is loaded and the logs are truncated to
  its step, see :class:`~fewshot_priors.engine.logging.RunLogger`);
* ``overwrite``: delete that run's files (only the files a run writes, listed by
  the caller; anything else in the folder is kept) and start afresh.

Otherwise :class:`RunFolderError` names the folder and both options. Either way,
temporary files of killed checkpoint writes are removed
(:func:`~fewshot_priors.engine.checkpoint.clean_stale_temp_files`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..distributed import DistInfo, barrier, dist_info
from .checkpoint import checkpoint_paths, clean_stale_temp_files

__all__ = ["RUN_FILES", "RunFolderError", "check_run_dir", "prepare_run_dir", "run_files"]

#: What marks a folder as holding a run (relative names; checkpoints by stem).
_CHECKPOINT_STEMS = ("last", "best")
_LOG_FILES = ("scalars.csv", "tb")
#: The other files each kind of run writes (deleted on overwrite, counted as a previous run).
RUN_FILES: dict[str, tuple[str, ...]] = {
    "train": ("config.yaml", "loss_curve.png"),
    "pretrain": ("config.json", "prior_extractor.safetensors"),
}


class RunFolderError(FileExistsError):
    """The run folder already holds a run and neither resume nor overwrite was asked for,
    or it cannot be a folder (a file is in the way)."""


def run_files(directory: str | os.PathLike, kind: str = "train") -> list[Path]:
    """The files and folders of a previous run that exist in ``directory``.

    Args:
        directory: run folder.
        kind: ``"train"`` or ``"pretrain"`` (see :data:`RUN_FILES`).
    """
    d = Path(directory)
    names: list[Path] = []
    for stem in _CHECKPOINT_STEMS:
        names.extend(checkpoint_paths(d / stem))
    names.extend(d / n for n in (*_LOG_FILES, *RUN_FILES[kind]))
    return [p for p in names if p.exists() or p.is_symlink()]


def _check_is_folder(d: Path) -> None:
    for p in (d, *d.parents):
        if p.exists() and not p.is_dir():
            raise RunFolderError(f"cannot use {d} as a run folder: {p} is a file, not a folder")
        if p.exists():
            return


def check_run_dir(directory: str | os.PathLike, *, resume: bool, overwrite: bool,
                  kind: str = "train") -> list[Path]:
    """Check the run-folder policy without changing anything (to fail before expensive work).

    Returns:
        The previous run's files found (deleted by :func:`prepare_run_dir` on ``overwrite``).

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        RunFolderError: a previous run without ``resume``/``overwrite``, or a file where
            the folder (or one of its parents) should be.
    """
    d = Path(directory)
    if resume and overwrite:
        raise ValueError(f"resume and overwrite exclude each other: continue the run in {d}, "
                         "or delete it and start afresh, not both")
    _check_is_folder(d)
    found = run_files(d, kind)
    if found and not resume and not overwrite:
        shown = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise RunFolderError(
            f"{d} already holds a run ({shown}). Continue it from its last checkpoint with --resume "
            "(resume=True in Python), or delete its checkpoints and logs and start afresh with --overwrite "
            "(overwrite=True), or choose another output folder"
        )
    return found


def prepare_run_dir(
    directory: str | os.PathLike,
    *,
    resume: bool,
    overwrite: bool,
    kind: str = "train",
    dist: DistInfo | None = None,
) -> Path:
    """Apply the run-folder policy to ``directory``, create it and clean stale temp files (rank 0).

    Args:
        directory: run folder.
        resume: the run continues a checkpoint; an existing run is expected.
        overwrite: delete the files of an existing run first (not with ``resume``);
            other files in the folder are kept.
        kind: ``"train"`` or ``"pretrain"``: which files the run writes (:data:`RUN_FILES`).
        dist: rank info; only rank 0 deletes and creates, every rank checks.

    Returns:
        ``directory`` as a Path.

    Raises:
        ValueError, RunFolderError: see :func:`check_run_dir`.
    """
    d = Path(directory)
    dist = dist or dist_info()
    found = check_run_dir(d, resume=resume, overwrite=overwrite, kind=kind)
    barrier()  # every rank has looked before rank 0 changes anything
    if dist.is_main:
        if overwrite:
            for p in found:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(d)
    barrier()
    return d
