"""The class -> images index: scan the labels once, cache the result as JSON.

For every image the scan records its size and the number of pixels of each
class present, so the eligibility threshold (the ``>= 2048``-pixel rule) is
applied after loading and can be changed without a re-scan. Pairs that cannot be
used (missing/unreadable file, image and label of different size) are recorded
with the reason. The cache is keyed on the file list (names, sizes and
modification times), so it is rebuilt automatically when the data change.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._io import atomic_write
from .._progress import progress_bar
from .io import IGNORE_INDEX, AmbiguousMaskWarning, BadDataError, image_size

CACHE_VERSION = 2


@dataclass(frozen=True)
class Entry:
    """One image of a dataset: its id, image file and label source.

    ``label`` is a path for on-disk label maps, or any hashable key that the
    dataset's label reader understands (e.g. a COCO image id).
    """

    name: str
    image: Path
    label: object


@dataclass
class ScanResult:
    """Per-image class pixel counts and the pairs that were rejected.

    ``model_counts`` (when the scan was given ``model_size``) holds the class pixel
    counts after the test transform's nearest-neighbour resize (longer side to
    ``model_size``): what the model sees. ``notes`` holds the
    :class:`~fewshot_priors.data.io.AmbiguousMaskWarning` messages of the labels.
    """

    counts: dict[str, dict[int, int]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    model_counts: dict[str, dict[int, int]] | None = None
    model_size: int | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _fingerprint(entries: Sequence[Entry], extra: str) -> str:
    h = hashlib.sha1()
    h.update(f"v{CACHE_VERSION}|{extra}".encode())
    for e in entries:
        parts = [e.name]
        for p in (e.image, e.label):
            if isinstance(p, Path):
                try:
                    st = p.stat()
                    parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
                except OSError:
                    parts.append(f"{p.name}:missing")
            else:
                parts.append(repr(p))
        h.update("|".join(parts).encode())
        h.update(b"\n")
    return h.hexdigest()


def _default_cache_dir() -> Path:
    base = os.environ.get("FEWSHOT_PRIORS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fewshot_priors"
    )
    return Path(base)


def _write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write((path, json.dumps(payload).encode()))


def scan_entries(
    entries: Sequence[Entry],
    read_label: Callable[[Entry], np.ndarray],
    cache_file: str | Path | None,
    *,
    description: str = "indexing labels",
    extra_key: str = "",
    check_images: bool = True,
    progress: bool = True,
    model_size: int | None = None,
) -> ScanResult:
    """Scan label maps once (with a progress bar) or load the cached scan.

    Args:
        entries: the images to index.
        read_label: returns the ``H, W`` class-id label of an entry.
        cache_file: JSON file for the cache; if its folder is not writable the
            cache goes to ``$FEWSHOT_PRIORS_CACHE`` (default
            ``~/.cache/fewshot_priors``). ``None`` disables caching.
        description: progress bar text.
        extra_key: anything else the result depends on (e.g. a label convention).
        check_images: read each image header and compare its size with the label.
        progress: show the progress bar of the scan.
        model_size: also count the class pixels of each label resized as the
            :class:`~fewshot_priors.data.transforms.TestTransform` of this size
            does (longer side to ``model_size``, nearest neighbour).

    Returns:
        A :class:`ScanResult`; ``counts[name][class_id]`` = foreground pixels.
    """
    key = _fingerprint(entries, f"{extra_key}|model_size={model_size}")
    candidates: list[Path] = []
    if cache_file is not None:
        cache_file = Path(cache_file)
        digest = hashlib.sha1(str(cache_file.resolve()).encode()).hexdigest()[:16]
        candidates = [cache_file, _default_cache_dir() / f"{digest}_{cache_file.name}"]
        for c in candidates:
            cached = _load_cache(c, key)
            if cached is not None:
                return cached

    result = ScanResult()
    resized_hw = None
    if model_size is not None:
        from .transforms import TestTransform, resize_label

        resized_hw = TestTransform(int(model_size)).resized_hw
        result.model_counts, result.model_size = {}, int(model_size)
    for e in progress_bar(entries, desc=description, unit="img", leave=False, mininterval=1.0, disable=not progress):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", AmbiguousMaskWarning)
                label = read_label(e)
            for w in caught:
                if issubclass(w.category, AmbiguousMaskWarning):
                    result.notes[e.name] = str(w.message)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if check_images:
                if not e.image.is_file():
                    raise BadDataError(f"image file missing: {e.image}")
                hw = image_size(e.image)
                if hw != tuple(label.shape[:2]):
                    raise BadDataError(
                        f"image {e.image} is {hw[0]}x{hw[1]} but its label "
                        f"{e.label} is {label.shape[0]}x{label.shape[1]}"
                    )
        except BadDataError as err:
            result.bad[e.name] = str(err)
            continue
        hist = np.bincount(np.asarray(label, dtype=np.uint8).ravel(), minlength=256)
        hist[[0, IGNORE_INDEX]] = 0
        result.counts[e.name] = {int(i): int(hist[i]) for i in np.flatnonzero(hist)}
        result.sizes[e.name] = (int(label.shape[0]), int(label.shape[1]))
        if resized_hw is not None:
            small = resize_label(np.asarray(label, dtype=np.uint8), resized_hw(*label.shape[:2]))
            hist = np.bincount(small.ravel(), minlength=256)
            result.model_counts[e.name] = {c: int(hist[c]) for c in result.counts[e.name]}

    if candidates:
        payload = {
            "version": CACHE_VERSION,
            "key": key,
            "counts": result.counts,
            "sizes": result.sizes,
            "bad": result.bad,
            "model_counts": result.model_counts,
            "model_size": result.model_size,
            "notes": result.notes,
        }
        for c in candidates:
            try:
                _write_json_atomic(c, payload)
                break
            except OSError:
                continue
        else:
            warnings.warn(f"could not write the index cache to {candidates}", stacklevel=2)
    return result


def _load_cache(path: Path, key: str) -> ScanResult | None:
    try:
        with open(path) as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("key") != key:
        return None
    try:
        return ScanResult(
            counts={
                n: {int(k): int(v) for k, v in d.items()} for n, d in payload["counts"].items()
            },
            sizes={n: (int(s[0]), int(s[1])) for n, s in payload["sizes"].items()},
            bad=dict(payload["bad"]),
            model_counts=None if payload["model_counts"] is None else {
                n: {int(k): int(v) for k, v in d.items()} for n, d in payload["model_counts"].items()
            },
            model_size=None if payload["model_size"] is None else int(payload["model_size"]),
            notes=dict(payload["notes"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None
