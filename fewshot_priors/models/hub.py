"""Share trained models with their configuration: ``save_pretrained`` / ``from_pretrained``.

A pretrained folder (the convention of timm and Hugging Face models) holds::

    config.json        {"format": "fewshot_priors.qgnet" | "fewshot_priors.frozen_backbone",
                        "version": 1, "fewshot_priors_version": "...", "model": {...}}
    model.safetensors  the model's state dict

For a :class:`~fewshot_priors.models.qgnet.QGNet`, ``"model"`` is the config ``model``
section that rebuilds the architecture (:attr:`QGNet.config`, fed to
:func:`~fewshot_priors.models.create_qgnet`); for the prior extractor (a
:class:`~fewshot_priors.models.backbone.FrozenBackbone`) it is the
:func:`~fewshot_priors.models.backbone.create_backbone` arguments. Weight files named in
the config (``weights`` / ``prior_weights``, ``pretrained``) are provenance only: the
weights come from ``model.safetensors`` and those files are never read again.

Both files are written atomically (a temporary file moved into place with
``os.replace``; the weights first, ``config.json`` last), so a folder with a
``config.json`` is complete. :func:`from_pretrained` accepts a local folder, or a
Hugging Face Hub repo id (``"owner/name"``, when no such folder exists), downloaded
with ``huggingface_hub.snapshot_download`` (an optional dependency).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fewshot_priors.models.backbone import FrozenBackbone, create_backbone
from fewshot_priors.models.weights import _fmt_keys

__all__ = ["CONFIG_NAME", "FORMATS", "HUB_VERSION", "WEIGHTS_NAME", "from_pretrained", "save_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Version of the folder layout; a newer one is refused with a message to upgrade.
HUB_VERSION = 1
QGNET_FORMAT = "fewshot_priors.qgnet"
BACKBONE_FORMAT = "fewshot_priors.frozen_backbone"
FORMATS = (QGNET_FORMAT, BACKBONE_FORMAT)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- save
def _describe(model: nn.Module) -> tuple[str, dict[str, Any]]:
    from fewshot_priors.models.qgnet import QGNet

    if isinstance(model, QGNet):
        if model.config is None:
            raise ValueError(
                "this QGNet has a part a config cannot name (a custom guided_map / prior_map / decoder or "
                "an arbitrary prior-extractor module), so it cannot be saved with save_pretrained; save "
                "its state_dict() and rebuild it in code, or use the default parts"
            )
        return QGNET_FORMAT, dict(model.config)
    if isinstance(model, FrozenBackbone):
        return BACKBONE_FORMAT, {"backbone": model.name, "output_stride": model.output_stride,
                                 "frozen": model.frozen}
    raise TypeError(f"`model` must be a QGNet or a FrozenBackbone (prior extractor), got {type(model).__name__}")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    from safetensors.torch import save as st_save

    from fewshot_priors import __version__

    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    fmt, cfg = _describe(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = {"format": fmt, "version": HUB_VERSION, "fewshot_priors_version": __version__, "model": cfg}
    _atomic_write(folder / WEIGHTS_NAME, st_save(tensors, metadata={"format": fmt}))
    _atomic_write(folder / CONFIG_NAME, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return folder


# --------------------------------------------------------------------------- load
def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(
            f"{repo_id!r} is not a local folder, and loading it from the Hugging Face Hub needs "
            "huggingface_hub: `pip install huggingface_hub`"
        ) from err
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as err:  # offline, unknown repo, no access, ...: one clear message
        raise OSError(
            f"{repo_id!r} is not a local folder and could not be downloaded from the Hugging Face Hub "
            f"({type(err).__name__}: {err}); check the path or repo id and the network (with "
            "HF_HUB_OFFLINE=1 only the local cache is used), or pass a folder written by save_pretrained"
        ) from err


def _resolve(folder_or_repo_id: str | os.PathLike, revision: str | None) -> Path:
    path = Path(folder_or_repo_id)
    if path.is_dir():
        return path
    name = str(folder_or_repo_id)
    if path.exists():
        raise NotADirectoryError(f"{name!r} is a file, not a folder written by save_pretrained")
    if isinstance(folder_or_repo_id, str) and _REPO_ID.match(name):
        return _download(name, revision)
    raise FileNotFoundError(f"no folder {name!r} (and it is not a Hugging Face Hub repo id `owner/name`)")


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CONFIG_NAME}: not a folder written by save_pretrained")
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(file)!r} is not valid JSON ({err}); the file is corrupted") from None
    if not isinstance(config, Mapping) or config.get("format") not in FORMATS:
        got = config.get("format") if isinstance(config, Mapping) else type(config).__name__
        raise ValueError(f"{str(file)!r}: `format` must be one of {FORMATS}, got {got!r}")
    version = config.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{str(file)!r}: `version` must be a positive int, got {version!r}")
    if version > HUB_VERSION:
        raise ValueError(f"{str(file)!r} has version {version}, newer than this fewshot_priors reads "
                         f"({HUB_VERSION}); upgrade fewshot_priors")
    if not isinstance(config.get("model"), Mapping):
        raise ValueError(f"{str(file)!r}: `model` must be a mapping of model settings")  # noqa: TRY004  (bad file content)
    return dict(config)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS_NAME}: not a complete save_pretrained folder")
    try:
        return st_load(file.read_bytes())
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise ValueError(f"{str(file)!r} is not a readable safetensors file ({err}); the file is corrupted") from None


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"missing keys: {_fmt_keys(missing)}"] if missing else []
        parts += [f"unexpected keys: {_fmt_keys(unexpected)}"] if unexpected else []
        raise ValueError(f"{str(file)!r} does not match the model of its config.json: " + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"{str(file)!r} does not match the model of its config.json: {err}") from None


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
    folder = _resolve(folder_or_repo_id, revision)
    config = _read_config(folder)
    state = _read_weights(folder)
    cfg = dict(config["model"])
    with torch.random.fork_rng(devices=[]):
        if config["format"] == QGNET_FORMAT:
            from fewshot_priors.models.factory import create_qgnet

            # the weights come from model.safetensors: never re-read weight files or download timm weights
            cfg.update(weights=None, prior_weights=None, pretrained=False)
            model = create_qgnet(cfg, **overrides)
        else:
            cfg.update(overrides)
            unknown = sorted(set(cfg) - {"backbone", "output_stride", "frozen"})
            if unknown:
                raise ValueError(f"unknown backbone setting(s) {unknown} (valid: backbone, output_stride, frozen)")
            model = create_backbone(cfg["backbone"], output_stride=int(cfg.get("output_stride", 8)),
                                    frozen=bool(cfg.get("frozen", True)))
    _load_state(model, state, folder / WEIGHTS_NAME)
    return model.eval()
