"""Checks before any expensive work: every path a run needs, the resume checkpoint, downloads.

``fewshot-priors train`` / ``eval`` and :func:`~fewshot_priors.engine.pretrain.pretrain` call
these first, so a wrong path or an impossible download is one error naming the config key (and
the flag to use instead) before a dataset is scanned, a model is built or anything is
downloaded (docs/how-to/failures.md):

* :func:`check_paths`: ``data.root`` (a folder), ``model.weights`` / ``model.prior_weights``
  (files), ``pretrain.images`` / ``pretrain.probe_root``, and the resume checkpoint;
* :func:`check_download`: ``model.pretrained=true`` without a local copy of timm's weights
  and without a network (``HF_HUB_OFFLINE`` set, or the Hub unreachable within a couple of
  seconds) is refused at once instead of retrying downloads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..models.download import check_timm_download, network_available

__all__ = ["check_download", "check_paths", "check_run_inputs", "network_available"]


def _missing(key: str, value: Any, what: str, hint: str = "") -> FileNotFoundError:
    return FileNotFoundError(f"{key}={value} {what}{hint}")


def _check_file(key: str, value: Any) -> None:
    if value is None:
        return
    p = Path(value)
    if p.is_dir():
        raise _missing(key, value, "is a folder, not a weights file",
                       f"; set --set {key}=FILE (a .safetensors or .pth file)")
    if not p.is_file():
        raise _missing(key, value, "does not exist", f"; set --set {key}=FILE (a .safetensors or .pth file)")


def _check_folder(key: str, value: Any, hint: str) -> None:
    if value is None:
        return
    p = Path(value)
    if not p.exists():
        raise _missing(key, value, "does not exist", hint)
    if not p.is_dir():
        raise _missing(key, value, "is not a folder", hint)


def check_paths(cfg: Mapping, kind: str = "train", *, resume: bool | str | os.PathLike | None = None) -> None:
    """Check that every path of ``cfg`` that a ``kind`` run reads exists.

    Args:
        cfg: the config tree.
        kind: ``"train"`` / ``"eval"`` (``data`` and ``model`` paths) or ``"pretrain"``
            (``pretrain.images``, ``pretrain.probe_root``).
        resume: a resume (True: ``<experiment.output_dir>/last``, or a checkpoint path):
            its checkpoint must exist and be readable.

    Raises:
        FileNotFoundError: naming the key, the path and the flag to set.
        CheckpointError: the resume checkpoint is missing or corrupt.
    """
    if kind in ("train", "eval"):
        _check_folder("data.root", cfg["data"]["root"],
                      "; set --set data.root=PATH (the dataset folder, laid out as the documentation's page 'Reproduce "
                      "PASCAL-5i and COCO-20i' shows; docs/how-to/reproduce.md in the source)")
        m = cfg["model"]
        if kind == "train":  # eval reads the weights from its checkpoint
            _check_file("model.weights", m.get("weights"))
            if m.get("use_prior", True):
                _check_file("model.prior_weights", m.get("prior_weights"))
    if kind == "pretrain":
        p = cfg["pretrain"]
        images = p.get("images")
        if isinstance(images, (str, os.PathLike)) and not Path(images).exists():
            raise _missing("pretrain.images", images, "does not exist",
                           "; pass --images PATH (a folder of images or a .txt list of paths)")
        _check_folder("pretrain.probe_root", p.get("probe_root"),
                      "; set --set pretrain.probe_root=PATH (a labelled folder dataset) or leave it unset")
    if resume:
        from .loop import resume_meta

        resume_meta(cfg["experiment"]["output_dir"], resume)  # CheckpointError naming the missing file


def check_download(cfg: Mapping) -> None:
    """Refuse ``model.pretrained=true`` at once when timm's weights are neither cached nor downloadable
    (:func:`fewshot_priors.models.download.check_timm_download`).

    Raises:
        OSError: naming the model and the flags to use instead (a local weights file).
    """
    m = cfg["model"]
    if m.get("pretrained") and m.get("weights") is None:
        check_timm_download(m["backbone"])


def check_run_inputs(cfg: Mapping, kind: str = "train", *, resume: bool | str | os.PathLike | None = None,
                     overwrite: bool = False) -> None:
    """Everything a ``kind`` run (``train``, ``eval``, ``pretrain``) can check before expensive work:
    the run folder (train / pretrain, :func:`~fewshot_priors.engine.rundir.check_run_dir`), the
    paths (:func:`check_paths`), the resume checkpoint and its settings
    (:func:`~fewshot_priors.engine.loop.check_resume_config`) and downloads (:func:`check_download`).

    Raises:
        RunFolderError, FileNotFoundError, CheckpointError, ValueError, OSError: naming the problem.
    """
    from .runtime import config_device, resolve_device

    resolve_device(config_device(cfg))  # an impossible experiment.device first (cheapest)
    if kind in ("train", "pretrain"):
        from .rundir import check_run_dir

        check_run_dir(cfg["experiment"]["output_dir"], resume=bool(resume), overwrite=overwrite, kind=kind)
    check_paths(cfg, kind, resume=resume)
    if kind == "train":
        if resume:
            from .loop import check_resume_config, resume_meta

            with warnings.catch_warnings():  # moved paths: the loop warns once, when it resumes
                warnings.simplefilter("ignore", UserWarning)
                check_resume_config(*resume_meta(cfg["experiment"]["output_dir"], resume), cfg)
        check_download(cfg)
