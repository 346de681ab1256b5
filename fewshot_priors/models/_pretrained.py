"""The ``save_pretrained`` folder format and :class:`PretrainedMixin` (no model imports).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fewshot_priors._io import atomic_write
from fewshot_priors._version import __version__
from fewshot_priors.models.weights import _fmt_keys

__all__ = ["CONFIG_NAME", "FORMATS", "HUB_VERSION", "WEIGHTS_NAME", "PretrainedMixin", "read_pretrained",
           "write_pretrained"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Version of the folder layout; a newer one is refused with a message to upgrade.
HUB_VERSION = 1
QGNET_FORMAT = "fewshot_priors.qgnet"
BACKBONE_FORMAT = "fewshot_priors.frozen_backbone"
FORMATS = (QGNET_FORMAT, BACKBONE_FORMAT)

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- save
def write_pretrained(folder: str | os.PathLike, fmt: str, config: Mapping[str, Any], model: nn.Module) -> Path:
    """Write ``folder/model.safetensors`` (``model``'s state dict) then ``folder/config.json``."""
    from safetensors.torch import save as st_save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    doc = {"format": fmt, "version": HUB_VERSION, "fewshot_priors_version": __version__, "model": dict(config)}
    # both temp files first, then the renames (weights, config last): a folder with a config is complete
    atomic_write((folder / WEIGHTS_NAME, st_save(tensors, metadata={"format": fmt})),
                 (folder / CONFIG_NAME, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()))
    return folder


# --------------------------------------------------------------------------- load
def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(
            f"{repo_id!r} is not a local folder, and loading it from the Hugging Face Hub needs "
            "huggingface_hub: `pip install huggingface_hub` (or `pip install 'fewshot_priors[hub]'`)"
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
    from .._tensorfile import read_tensor_file

    file = folder / WEIGHTS_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS_NAME}: not a complete save_pretrained folder")
    return read_tensor_file(file, "model weights")[0]


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


def read_pretrained(
    folder_or_repo_id: str | os.PathLike, revision: str | None = None
) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """``(folder, config.json content, state dict)`` of a local folder or a Hub repo id."""
    folder = _resolve(folder_or_repo_id, revision)
    config = _read_config(folder)
    return folder, config, _read_weights(folder)


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for an ``nn.Module`` subclass.

    A subclass sets :attr:`PRETRAINED_FORMAT` and implements ``_pretrained_config()``
    (the settings that rebuild it, a JSON-able dict) and the classmethod
    ``_from_pretrained_config(config, overrides)`` (a fresh, randomly initialised
    instance; the weights are loaded afterwards).
    """

    PRETRAINED_FORMAT: ClassVar[str]

    def _pretrained_config(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _from_pretrained_config(cls, config: dict[str, Any], overrides: Mapping[str, Any]):  # pragma: no cover
        raise NotImplementedError

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/config.json`` + ``folder/model.safetensors`` (see
        :func:`fewshot_priors.models.hub.save_pretrained`)."""
        return write_pretrained(folder, self.PRETRAINED_FORMAT, self._pretrained_config(), self)  # type: ignore[arg-type]

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike, *, revision: str | None = None, **overrides: Any):
        """An instance from a :meth:`save_pretrained` folder or a Hugging Face Hub repo id
        (see :func:`fewshot_priors.models.hub.from_pretrained` for the arguments and errors)."""
        folder, config, state = read_pretrained(folder_or_repo_id, revision)
        if config["format"] != cls.PRETRAINED_FORMAT:
            kind = {v: k for k, v in _FORMAT_CLASSES.items()}.get(config["format"], config["format"])
            raise TypeError(f"{str(folder_or_repo_id)!r} holds a {kind}, not a {cls.__name__}")
        return cls._load_pretrained(folder, config, state, overrides)

    @classmethod
    def _load_pretrained(cls, folder: Path, config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                         overrides: Mapping[str, Any]):
        try:
            with torch.random.fork_rng(devices=[]):  # the init the weights replace leaves the global RNG alone
                model = cls._from_pretrained_config(dict(config["model"]), dict(overrides))
        except (ValueError, TypeError) as err:  # a hand-edited config.json: name the file and the key
            raise ValueError(f"{str(folder / CONFIG_NAME)!r}: {err}") from None
        _load_state(model, state, folder / WEIGHTS_NAME)
        return model.eval()


#: Class name of each format (for error messages only).
_FORMAT_CLASSES = {"QGNet": QGNET_FORMAT, "FrozenBackbone": BACKBONE_FORMAT}
