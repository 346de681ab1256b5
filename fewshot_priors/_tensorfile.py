"""Reading a weights file: the one reader of every weights format (``.safetensors``, ``.pth``).

:func:`read_tensor_file` is used by everything that reads weights from a file: backbone and
prior weights (``models.weights``), ``save_pretrained`` folders (``models._pretrained``, also
for Hub downloads), the prior-extractor export (``ssl.export``) and the official-checkpoint
converter. Whatever the file holds -- random bytes, a truncated or edited safetensors file, a
pickle renamed to ``.safetensors``, a pickle that would run code -- the result is the tensors,
or a ``ValueError`` / ``FileNotFoundError`` naming the file and what it is. Nothing is ever
unpickled beyond ``torch.load(weights_only=True)``, which runs no code.

The format is recognised from the file's first bytes (a safetensors header, a zip archive or
a pickle), so a renamed file is read as what it is -- except that a pickle is never loaded
from a ``.safetensors`` name: that name promises a file that needs no unpickling at all.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["read_tensor_file", "sniff_format"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def sniff_format(head: bytes, size: int) -> str:
    """``"safetensors"``, ``"torch"`` (zip archive or pickle) or ``"unknown"`` from a file's first bytes."""
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(_MAX_HEADER, size - 8) and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(_ZIP_MAGIC) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "torch"
    return "unknown"


def _read_safetensors(p: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    data = p.read_bytes()
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("its header is not a JSON mapping")
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("its __metadata__ is not a mapping")
        tensors = load(data)
    except Exception as err:  # SafetensorError, JSON / dtype / shape errors of a hostile header
        raise ValueError(f"{what} file {str(p)!r} is not a readable safetensors file ({type(err).__name__}: "
                         f"{err}); it is truncated or corrupted: download or export it again") from None
    return tensors, {str(k): str(v) for k, v in meta.items()}


def _read_torch(p: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors (also a pickle that would run code), corrupt archives
        raise ValueError(
            f"could not read {what} from {str(p)!r} with torch.load(weights_only=True), which loads "
            f"tensors only and never runs code: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "Expected a .pth/.pt/.bin state dict or a .safetensors file."
        ) from None
    for _ in range(3):  # unwrap {"state_dict": ...} / {"model": ...} (possibly nested)
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} file {str(p)!r} does not hold a state dict (got {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def read_tensor_file(path: str | os.PathLike, what: str = "backbone weights") -> tuple[
        dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file into ``(tensors, safetensors metadata)`` (``{}`` for a ``.pth``).

    Args:
        path: a ``.safetensors`` file, or a ``torch.save`` file (``.pth``/``.pt``/``.bin``;
            ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped).
        what: names the file in errors ("backbone weights", "prior weights", ...).

    Raises:
        FileNotFoundError: no such file (or a folder).
        ValueError: anything else -- not a weights file, truncated, corrupt, no tensors --
            naming the file.
    """
    p = Path(path)
    if p.is_dir():
        raise FileNotFoundError(f"{what} file {str(p)!r} is a folder, not a weights file (a save_pretrained "
                                "folder loads with QGNet.from_pretrained)")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {str(p)!r}")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise FileNotFoundError(f"cannot read {what} file {str(p)!r}: {err}") from None
    if size == 0:
        raise ValueError(f"{what} file {str(p)!r} is empty (0 bytes): download or export it again")
    kind = sniff_format(head, size)
    if kind == "unknown":
        kind = "safetensors" if p.suffix == ".safetensors" else "torch"
    if kind == "safetensors":
        tensors, meta = _read_safetensors(p, what)
    elif p.suffix == ".safetensors":
        raise ValueError(f"{what} file {str(p)!r} is named .safetensors but holds a PyTorch pickle / zip "
                         "archive (torch.save): it is not loaded under that name. If you trust it, rename it "
                         "to .pth (it is then read with torch.load(weights_only=True)), or convert it")
    else:
        tensors, meta = _read_torch(p, what), {}
    if not tensors:
        raise ValueError(f"{what} file {str(p)!r} holds no tensors")
    return tensors, meta
