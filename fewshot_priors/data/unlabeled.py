"""Unlabeled images: the image list of a folder, a ``.txt`` file or a sequence of paths.

The two-view dataset of prior-extractor pretraining built on it is
:class:`fewshot_priors.ssl.dataset.UnlabeledImages`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .io import IMAGE_EXTENSIONS


def list_images(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Resolve ``source`` to a sorted list of image paths.

    Args:
        source: a folder (searched recursively for ``IMAGE_EXTENSIONS``), a text
            file with one path per line (relative paths are relative to the file),
            or a sequence of paths.

    Raises:
        FileNotFoundError: the folder/file does not exist or holds no image.
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            paths = sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())
        elif p.is_file() and p.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            paths = [str(q if (q := Path(ln)).is_absolute() else p.parent / q) for ln in lines]
        elif p.is_file():
            paths = [str(p)]
        else:
            raise FileNotFoundError(f"`images` folder or list file does not exist: {p}")
    else:
        paths = [os.fspath(q) for q in source]
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {source}")
    return paths
