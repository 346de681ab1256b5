"""Export the pretrained encoder as a prior extractor file for QGNet, and read it back.

The file is safetensors: the ``state_dict()`` of ``timm.create_model(backbone)``
without its classifier head, with metadata
``{"format": "fewshot_priors.prior_extractor", "backbone": <timm name>, "mean": "[...]",
"std": "[...]"}`` (the input normalisation the encoder was trained with, JSON lists), which
``create_backbone(name, weights=path)`` and ``QGNet(prior_weights=path)`` load. The format
tag, :data:`~fewshot_priors.models.weights.PRIOR_EXTRACTOR_FORMAT`, lives beside that
reader in :mod:`fewshot_priors.models.weights` (below this package), which both sides import.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._io import atomic_write
from ..models.protocols import PriorEncoderSource
from ..models.weights import MOCO_ENCODERS, PRIOR_EXTRACTOR_FORMAT

__all__ = ["export_prior_extractor", "load_prior_extractor"]


def export_prior_extractor(
    model: nn.Module,
    path: str | os.PathLike,
    backbone: str | None = None,
    encoder: str = "key",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> str:
    """Save a prior extractor's encoder weights as safetensors.

    Keys are exactly the ``state_dict()`` keys of ``timm.create_model(backbone)``
    without its classifier head; metadata is
    ``{"format": "fewshot_priors.prior_extractor", "backbone": <timm name>}``, which
    ``create_backbone(name, weights=path)`` and ``QGNet(prior_weights=path)`` load.

    Args:
        model: a :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` (the encoder picked by ``encoder`` is
            written; a DDP wrapper is unwrapped) or a bare timm encoder (then pass
            ``backbone``).
        path: output ``.safetensors`` file (parent folders are created; written
            atomically).
        backbone: timm name (default: the GlobalLocalMoCo's ``prior_encoder_spec().architecture``).
        encoder: which encoder of a :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` is written: ``"key"``
            (the momentum encoder, default; the official QGNet release uses MoCo's
            ``encoder_k``) or ``"query"``. Ignored for a bare encoder.
        mean, std: the input normalisation to record (default: the GlobalLocalMoCo's own
            :attr:`~fewshot_priors.ssl.moco.GlobalLocalMoCo.mean` / ``std``; for a bare
            encoder, none is recorded unless given, and the reader falls back to timm's
            ``pretrained_cfg``).

    Returns:
        The path written, as a string.
    """
    from safetensors.torch import save

    if encoder not in MOCO_ENCODERS:
        raise ValueError(f"`encoder` must be one of {tuple(MOCO_ENCODERS)}, got {encoder!r}")
    model = getattr(model, "module", model)
    spec = None
    if isinstance(model, PriorEncoderSource):  # a GlobalLocalMoCo: the encoder picked by `encoder`
        spec = model.prior_encoder_spec(encoder)  # type: ignore[call-arg]
    module = model if spec is None else spec.encoder
    name = backbone or (spec.architecture if spec is not None else None)
    if not name:
        raise ValueError("`backbone` (timm model name) is required when exporting a bare encoder")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    metadata = {"format": PRIOR_EXTRACTOR_FORMAT, "backbone": str(name)}
    for key, value in (("mean", mean), ("std", std)):
        value = value if value is not None else getattr(spec, key, None)
        if value is not None:
            metadata[key] = json.dumps([float(v) for v in value])
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write((Path(path), save(tensors, metadata=metadata)))
    return path


def load_prior_extractor(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`export_prior_extractor`: ``(state_dict, metadata)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable safetensors file, or not a prior-extractor export (naming it).
    """
    from .._tensorfile import read_tensor_file

    tensors, meta = read_tensor_file(path, "prior extractor")
    if meta.get("format") != PRIOR_EXTRACTOR_FORMAT:
        raise ValueError(f"{path} is not a prior extractor file (metadata format={meta.get('format')!r})")
    return tensors, meta
