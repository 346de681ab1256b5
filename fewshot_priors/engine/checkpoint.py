"""Safe, atomic, resumable checkpoints: ``<stem>.safetensors`` + ``<stem>.json``.

A checkpoint is two files side by side:

* ``<stem>.safetensors`` holds every tensor: the model state (``model/<name>``),
  the optimizer state tensors (``optim/state/<param>/<key>``), the caller's extra
  tensors (``extra/<name>``) and any tensor found inside the JSON-able parts
  (``json/...``).
* ``<stem>.json`` (the *sidecar*) holds everything else: the caller's ``meta``
  (config, step/epoch/episode position, ...), non-tensor optimizer state and
  param groups, the scheduler state, the RNG state, and the SHA-256 and byte size
  of the ``.safetensors`` file it belongs to.

Writing is atomic per file: each file is written to a temporary file in the same
directory (``.<file name>.<writer pid>-<random>.tmp``), flushed and ``fsync``-ed,
given the permissions of an ordinary new file (``0o666`` minus the umask), then
moved into place with ``os.replace`` (tensors first, sidecar last). A crash while
writing leaves the previous checkpoint intact (and temporary files, which
:func:`clean_stale_temp_files` removes when the next run starts in that folder).
Both temporary files are complete before the first rename, so a crash between
the two renames (new tensors, old sidecar) is completed by
:func:`clean_stale_temp_files`, and is detected by the hash check if anything
loads the checkpoint before that. Loading never unpickles anything: tensors come
from safetensors, the rest from JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .._io import atomic_write

__all__ = [
    "CheckpointError",
    "capture_rng_state",
    "checkpoint_paths",
    "clean_stale_temp_files",
    "load_checkpoint",
    "read_checkpoint_meta",
    "restore_rng_state",
    "save_checkpoint",
]

FORMAT = "fewshot_priors.checkpoint"
VERSION = 1
_TENSOR_TAG = "__tensor__"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not fit the model."""


# --------------------------------------------------------------------------- paths


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(tensors_path, sidecar_path)`` for a checkpoint path.

    ``path`` may be the stem (``runs/last``) or either file
    (``runs/last.safetensors`` / ``runs/last.json``).
    """
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


# --------------------------------------------------------------------------- JSON <-> tensors


def _encode(obj: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of ``obj``; tensors go to ``tensors`` and leave a tag behind."""
    if isinstance(obj, torch.Tensor):
        name = f"json/{where}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR_TAG: name}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj  # json writes inf/nan as Infinity/NaN and reads them back
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"cannot save key {k!r} at {where!r}: keys must be str or int")
            out[str(k)] = _encode(v, f"{where}/{k}", tensors)
        return out
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]
    raise CheckpointError(
        f"cannot save a {type(obj).__name__} at {where!r} in the JSON sidecar: "
        "only tensors, numbers, strings, None, lists and dicts are supported"
    )


def _decode(obj: Any, tensors: Mapping[str, torch.Tensor], file: Path) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_TAG}:
            name = obj[_TENSOR_TAG]
            if name not in tensors:
                raise CheckpointError(f"{file}: sidecar refers to tensor {name!r} missing from the tensor file")
            return tensors[name]
        return {k: _decode(v, tensors, file) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors, file) for v in obj]
    return obj


# --------------------------------------------------------------------------- RNG


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict:
    """Snapshot every global RNG (Python ``random``, NumPy, torch CPU, CUDA if present).

    Returns:
        A JSON-serialisable dict accepted by :func:`restore_rng_state`.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping) -> None:
    """Restore the global RNGs from :func:`capture_rng_state` output.

    Raises:
        CheckpointError: if ``state`` is not a valid RNG snapshot.
    """
    try:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
        torch.set_rng_state(_unb64(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            cuda = [_unb64(s) for s in state["cuda"]]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"invalid RNG state: {exc}") from exc


# --------------------------------------------------------------------------- atomic IO

_atomic_write = atomic_write  # the shared writer (fewshot_priors._io)


#: Temporary files of :func:`_atomic_write`: ``.<name>.<pid>-<random>.tmp`` (``<pid>-`` absent in
#: files written by earlier versions). Group 1: the target name, group 2: the writer's pid.
_TEMP_RE = re.compile(r"^\.(.+\.(?:safetensors|json))\.(?:(\d+)-)?[A-Za-z0-9_]+\.tmp$")
#: A temporary file without a recorded writer is stale once it is this old (a live writer
#: keeps touching its file; a checkpoint write takes seconds).
_TEMP_STALE_AFTER_S = 600.0


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:  # pragma: no cover - platform without signal 0: assume alive (keep the file)
        return True
    return True


def _complete_pending_sidecar(temp: Path, target: Path) -> bool:
    """Move a fsync-ed temp sidecar into place if the tensors it describes already are.

    That is the state a writer killed between its two renames leaves: new tensors,
    the old sidecar, and the new sidecar as a temp file.
    """
    try:
        sidecar = json.loads(temp.read_text(encoding="utf-8"))
        tensors = temp.parent / sidecar["tensors_file"]
        if sidecar.get("format") != FORMAT or tensors.stat().st_size != sidecar["bytes"]:
            return False
        if hashlib.sha256(tensors.read_bytes()).hexdigest() != sidecar["sha256"]:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    os.replace(temp, target)
    return True


def clean_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Finish or remove the checkpoint writes left in ``directory`` by killed writers.

    Only files named like :func:`save_checkpoint`'s temporaries
    (``.<name>.safetensors.<pid>-<random>.tmp`` / ``.<name>.json.<pid>-<random>.tmp``)
    are considered, in ``directory`` itself (not below). One is stale when the
    process that wrote it no longer exists on this machine, or, for files without a
    recorded writer, when it was last modified more than 10 minutes ago; files of a
    live writer (this process included) are kept. A stale sidecar whose tensors are
    already in place (the writer died between its two renames) is moved into place;
    every other stale temp file is deleted.

    Returns:
        The temp files removed or moved into place.
    """
    directory = Path(directory)
    handled: list[Path] = []
    if not directory.is_dir():
        return handled
    now = time.time()
    for entry in sorted(directory.iterdir()):
        m = _TEMP_RE.match(entry.name)
        if m is None or not entry.is_file() or entry.is_symlink():
            continue
        pid = m.group(2)
        if pid is not None:
            stale = not _pid_alive(int(pid))
        else:
            try:
                stale = now - entry.stat().st_mtime > _TEMP_STALE_AFTER_S
            except FileNotFoundError:
                continue
        if not stale:
            continue
        target = directory / m.group(1)
        if target.suffix == ".json" and _complete_pending_sidecar(entry, target):
            handled.append(entry)
            continue
        try:
            entry.unlink()
            handled.append(entry)
        except FileNotFoundError:
            pass
    return handled


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- save / load


def _optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The sidecar entry of ``optimizer``'s state; its tensors go to ``tensors`` (``optim/...``)."""
    sd = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        scalars[str(idx)] = {}
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/state/{idx}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[str(idx)][key] = _encode(value, f"optim/state/{idx}/{key}", tensors)
    return {
        "class": type(optimizer).__name__,
        "state": scalars,
        "param_groups": _encode(sd["param_groups"], "optim/param_groups", tensors),
    }


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra_tensors: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
    rng_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Args:
        path: checkpoint stem (``runs/exp/last``) or either file name; the parent
            directory is created.
        model: the model (DDP / compiled wrappers are unwrapped).
        optimizer: optional optimizer; its state is split into tensors and JSON.
        scheduler: optional LR scheduler (anything with ``state_dict()``).
        extra_tensors: optional ``name -> tensor`` (e.g. MoCo queues).
        meta: optional JSON-able dict (config, step, epoch, episode position...).
            Tensors inside it are stored in the tensor file.
        rng_state: optional :func:`capture_rng_state` snapshot.

    Returns:
        Path of the ``.safetensors`` file.

    Raises:
        CheckpointError: if something cannot be serialised.
    """
    tensors_path, sidecar_path = checkpoint_paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}

    for name, value in _unwrap(model).state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"model state entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[f"model/{name}"] = value.detach().cpu().contiguous().clone()

    sidecar: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }
    if optimizer is not None:
        sidecar["optimizer"] = _optimizer_state(optimizer, tensors)
    if scheduler is not None:
        sidecar["scheduler"] = {
            "class": type(scheduler).__name__,
            "state": _encode(scheduler.state_dict(), "scheduler", tensors),
        }
    if extra_tensors:
        for name, value in extra_tensors.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"extra_tensors[{name!r}] must be a tensor, got {type(value).__name__}")
            tensors[f"extra/{name}"] = value.detach().cpu().contiguous().clone()
    sidecar["meta"] = _encode(dict(meta or {}), "meta", tensors)
    if rng_state is not None:
        sidecar["rng_state"] = _encode(dict(rng_state), "rng", tensors)

    try:
        blob = st_save(tensors, metadata={"format": FORMAT})
    except (SafetensorError, ValueError, RuntimeError) as exc:  # pragma: no cover - defensive
        raise CheckpointError(f"{tensors_path}: cannot serialise tensors: {exc}") from exc
    sidecar["tensors_file"] = tensors_path.name
    sidecar["sha256"] = hashlib.sha256(blob).hexdigest()
    sidecar["bytes"] = len(blob)
    text = json.dumps(sidecar, indent=1, allow_nan=True).encode("utf-8")

    _atomic_write((tensors_path, blob), (sidecar_path, text))
    _fsync_dir(tensors_path.parent)
    return tensors_path


def _read_sidecar(sidecar_path: Path) -> dict:
    """The parsed sidecar, its format and version checked (the tensors are not read)."""
    if not sidecar_path.is_file():
        raise CheckpointError(
            f"{sidecar_path}: checkpoint sidecar not found (a checkpoint is <stem>.safetensors + <stem>.json)"
        )
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{sidecar_path}: corrupt checkpoint sidecar (not valid JSON: {exc})") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar_path}: not a fewshot_priors checkpoint sidecar")
    if sidecar.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{sidecar_path}: checkpoint format version {sidecar.get('version')} is newer than this "
            f"library supports ({VERSION}); upgrade fewshot_priors"
        )
    return sidecar


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The ``meta`` of checkpoint ``path`` from its JSON sidecar alone: cheap (no tensor file read,
    no hash), for checks before expensive work; :func:`load_checkpoint` verifies the whole.

    Raises:
        CheckpointError: a missing or corrupt sidecar, or one of another format or a newer version.
    """
    meta = _read_sidecar(checkpoint_paths(path)[1]).get("meta", {})
    return dict(meta) if isinstance(meta, dict) else {}


def _read_verified(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], Path]:
    tensors_path, sidecar_path = checkpoint_paths(path)
    sidecar = _read_sidecar(sidecar_path)
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path}: checkpoint tensor file not found")
    blob = tensors_path.read_bytes()
    if len(blob) != sidecar.get("bytes"):
        raise CheckpointError(
            f"{tensors_path}: size {len(blob)} bytes does not match the {sidecar.get('bytes')} bytes recorded "
            "in the sidecar (truncated or partially written checkpoint)"
        )
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sidecar.get("sha256"):
        raise CheckpointError(
            f"{tensors_path}: SHA-256 {digest[:12]}... does not match the sidecar's "
            f"{str(sidecar.get('sha256'))[:12]}... (corrupt file, or tensors and sidecar from different saves; "
            "if a save was killed, starting or resuming the run in this folder completes it: "
            "clean_stale_temp_files)"
        )
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{tensors_path}: corrupt safetensors file: {exc}") from exc
    return sidecar, tensors, tensors_path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_checkpoint`.

    The tensor file's size and SHA-256 are checked against the sidecar before
    anything is loaded. Nothing is unpickled.

    Args:
        path: checkpoint stem or either of its two files.
        model: if given, its state is loaded (``strict`` as in ``load_state_dict``).
        optimizer: if given, its state is restored (the checkpoint must hold one).
        scheduler: if given, its state is restored (the checkpoint must hold one).
        strict: passed to ``model.load_state_dict``.
        map_location: device for the returned tensors.

    Returns:
        dict with ``meta`` (the saved meta, tensors restored), ``extra_tensors``,
        ``model_state`` (name -> tensor), ``rng_state`` (or None) and ``path``.

    Raises:
        CheckpointError: missing, truncated or corrupt files, or a checkpoint that
            does not fit ``model`` / ``optimizer`` / ``scheduler``. The message names
            the file.
    """
    sidecar, tensors, tensors_path = _read_verified(path)
    tensors = {k: v.to(map_location) for k, v in tensors.items()}
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    extra = {k[len("extra/"):]: v for k, v in tensors.items() if k.startswith("extra/")}

    if model is not None:
        try:
            result = _unwrap(model).load_state_dict(model_state, strict=strict)
        except RuntimeError as exc:
            raise CheckpointError(f"{tensors_path}: model state does not fit the model: {exc}") from exc
        del result

    if optimizer is not None:
        if "optimizer" not in sidecar:
            raise CheckpointError(f"{tensors_path}: checkpoint holds no optimizer state")
        osd = sidecar["optimizer"]
        if osd.get("class") != type(optimizer).__name__:
            raise CheckpointError(
                f"{tensors_path}: optimizer state is for {osd.get('class')}, not {type(optimizer).__name__}"
            )
        state: dict[int, dict[str, Any]] = {}
        for idx, scalars in osd["state"].items():
            state[int(idx)] = {k: _decode(v, tensors, tensors_path) for k, v in scalars.items()}
        for name, value in tensors.items():
            if name.startswith("optim/state/"):
                _, _, idx, key = name.split("/", 3)
                state.setdefault(int(idx), {})[key] = value
        groups = _decode(osd["param_groups"], tensors, tensors_path)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{tensors_path}: optimizer state does not fit the optimizer: {exc}") from exc

    if scheduler is not None:
        if "scheduler" not in sidecar:
            raise CheckpointError(f"{tensors_path}: checkpoint holds no scheduler state")
        scheduler.load_state_dict(_decode(sidecar["scheduler"]["state"], tensors, tensors_path))

    rng = sidecar.get("rng_state")
    return {
        "meta": _decode(sidecar.get("meta", {}), tensors, tensors_path),
        "extra_tensors": extra,
        "model_state": model_state,
        "rng_state": _decode(rng, tensors, tensors_path) if rng is not None else None,
        "path": tensors_path,
    }

