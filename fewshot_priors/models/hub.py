"""Share trained models with their configuration: ``save_pretrained`` / ``from_pretrained``.

The functions here take or return any model of this package that can be shared: a
:class:`~fewshot_priors.models.qgnet.QGNet` or the prior extractor (a
:class:`~fewshot_priors.models.backbone.FrozenBackbone`); the classes carry the same
methods (``QGNet.from_pretrained(...)``). The folder holds ``config.json`` and
``model.safetensors``, written atomically; see :mod:`fewshot_priors.models._pretrained`
for the format. A folder that does not exist and looks like ``"owner/name"`` is fetched
from the Hugging Face Hub (``huggingface_hub``, an optional dependency).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from fewshot_priors.models._pretrained import (
    BACKBONE_FORMAT,
    CONFIG_NAME,
    FORMATS,
    HUB_VERSION,
    QGNET_FORMAT,
    WEIGHTS_NAME,
    read_pretrained,
)
from fewshot_priors.models.backbone import FrozenBackbone
from fewshot_priors.models.qgnet import QGNet

__all__ = ["CONFIG_NAME", "FORMATS", "HUB_VERSION", "WEIGHTS_NAME", "from_pretrained", "save_pretrained"]

_CLASSES = {QGNET_FORMAT: QGNet, BACKBONE_FORMAT: FrozenBackbone}


def save_pretrained(model: nn.Module, folder: str | os.PathLike) -> Path:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` for ``model``.

    Args:
        model: a :class:`~fewshot_priors.models.qgnet.QGNet` built from config values
            (its :attr:`~QGNet.config` is not ``None``) or a
            :class:`~fewshot_priors.models.backbone.FrozenBackbone` (the prior extractor).
            A ``DistributedDataParallel`` wrapper is unwrapped.
        folder: created if needed; existing files of these two names are replaced.

    Returns:
        The folder as a :class:`~pathlib.Path`.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if not isinstance(model, tuple(_CLASSES.values())):
        raise TypeError(f"`model` must be a QGNet or a FrozenBackbone (prior extractor), got {type(model).__name__}")
    return model.save_pretrained(folder)


def from_pretrained(
    folder_or_repo_id: str | os.PathLike, *, revision: str | None = None, **overrides: Any
) -> nn.Module:
    """Load a model saved by :func:`save_pretrained`.

    Args:
        folder_or_repo_id: a local folder, or (when no such folder exists) a Hugging Face
            Hub repo id ``"owner/name"`` fetched with ``huggingface_hub.snapshot_download``.
        revision: Hub revision (branch, tag or commit) of a repo id.
        **overrides: model settings that win over the saved config: for a QGNet the
            ``model`` keys of :func:`~fewshot_priors.models.create_qgnet` (e.g.
            ``region_map_backend="chunked"``, ``max_chunk_bytes=...``); for a backbone
            ``output_stride`` / ``frozen``. Keys that change the parameters make the load
            fail with the mismatching keys named.

    Returns:
        The model in eval mode, on the CPU. The global random state is left untouched
        (the random init that the loaded weights replace runs on a forked RNG).

    Raises:
        FileNotFoundError: no such folder (and not a repo id), or a missing file.
        ValueError: a corrupted file, a wrong ``format`` tag or too new ``version``,
            state-dict keys that do not match the config (named).
        ImportError: a repo id without ``huggingface_hub`` installed.
        OSError: the download failed (offline, unknown repo, ...).
    """
    folder, config, state = read_pretrained(folder_or_repo_id, revision)
    return _CLASSES[config["format"]]._load_pretrained(folder, config, state, overrides)
