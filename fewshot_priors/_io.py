"""Atomic file writes (bottom layer: standard library only).

Each file is written to ``.<name>.<writer pid>-<random>.tmp`` next to it, flushed and
``fsync``-ed, given the permissions of an ordinary new file (``0o666`` minus the umask),
then moved into place with ``os.replace``. Several files are written together: every
temporary file first, then the renames in order. Used by the checkpoints
(:mod:`fewshot_priors.engine.checkpoint`, which also cleans up the temporary files of
killed writers), ``save_pretrained``, the prior-extractor export, the dataset index cache
and the superpixel-cache manifest: the one atomic write of the package.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "umask", "write_temp"]


def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - no /proc: read by setting (not thread-safe, restored at once)
    os.umask(mask)  # pragma: no cover
    return mask  # pragma: no cover


def write_temp(path: Path, data: bytes) -> str:
    """Write ``data`` to a fsync-ed temp file next to ``path``; return its name.

    The file gets ``0o666 & ~umask`` like any file the user creates (``mkstemp``
    alone would leave it ``0o600``).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~umask())
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return tmp


def atomic_write(*items: tuple[Path, bytes]) -> None:
    """Write ``(path, data)`` pairs: every temp file first, then the renames in order.

    Before the first rename nothing visible has changed (temp files are removed on
    error). Once a rename has happened the rest are completed even on error, so the
    tensors and their sidecar never stay mismatched; if a rename still fails (or the
    process is killed between renames) the fsync-ed temp sidecar stays behind and
    :func:`fewshot_priors.engine.checkpoint.clean_stale_temp_files` completes the write later.
    """
    temps: list[tuple[str, Path]] = []
    renamed = 0
    try:
        for path, data in items:
            temps.append((write_temp(path, data), path))
        for tmp, path in temps:
            os.replace(tmp, path)
            renamed += 1
    except BaseException:
        for tmp, path in temps[renamed:]:
            try:
                if renamed:
                    os.replace(tmp, path)
                else:
                    os.unlink(tmp)
            except OSError:
                pass
        raise
