"""Superpixel patches for the local contrastive loss (paper Sec. 4.1.2, Table 5).

:class:`SuperpixelPatchSampler` segments images into superpixels with SLIC
(``fast-slic`` AVX2 / ``fast-slic`` / ``skimage`` backends) or Felzenszwalb's
graph segmentation (``skimage``), returns contiguous integer label maps and can
filter tiny segments and cap the number of patches per image (seeded).

:func:`build_superpixel_cache` precomputes the label maps of a list of images
once (compressed ``.npz`` per image plus a ``manifest.json``), with a progress
bar and worker processes, so pretraining never waits on superpixels;
:class:`SuperpixelCache` reads them back.

Label map convention used throughout the package: ``int64`` with ids
``0..n-1`` (contiguous) and ``-1`` = ignored pixel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write

log = logging.getLogger(__name__)

METHODS = ("slic", "felzenszwalb")
BACKENDS = {"slic": ("fast-slic-avx2", "fast-slic", "skimage"), "felzenszwalb": ("skimage",)}
CACHE_FORMAT = "fewshot_priors.superpixel_cache"
IGNORE = -1

_warned_missing_fast_slic = False


def _fast_slic_available(avx2: bool) -> bool:
    try:
        if avx2:
            from fast_slic.avx2 import SlicAvx2  # noqa: F401

            flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
            return "avx2" in flags
        from fast_slic import Slic  # noqa: F401

        return True
    except Exception:  # ImportError or an illegal-instruction style failure
        return False


def available_backends(method: str = "slic") -> list[str]:
    """Backends usable for ``method`` on this machine, fastest first."""
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    out = []
    for b in BACKENDS[method]:
        if b == "fast-slic-avx2" and not _fast_slic_available(True):
            continue
        if b == "fast-slic" and not _fast_slic_available(False):
            continue
        out.append(b)
    return out


def relabel_contiguous(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the non-negative ids of ``labels`` to ``0..n-1`` (order of first id), keep ``-1``.

    Returns:
        ``(int64 labels, n)``.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)
    valid = labels >= 0
    if not valid.any():
        return np.full(labels.shape, IGNORE, dtype=np.int64), 0
    uniq, inv = np.unique(labels[valid], return_inverse=True)
    out = np.full(labels.shape, IGNORE, dtype=np.int64)
    out[valid] = inv.reshape(-1)
    return out, int(uniq.size)


def filter_segments(
    labels: np.ndarray,
    *,
    min_area: int = 0,
    max_patches: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, int]:
    """Drop segments smaller than ``min_area`` pixels and keep at most ``max_patches``.

    Dropped pixels become ``-1``. When more than ``max_patches`` segments survive,
    a random subset (drawn with ``rng``; a fresh ``default_rng(0)`` if ``None``)
    is kept. The result is relabelled to contiguous ids.

    Args:
        labels: ``H, W`` integer label map (``-1`` = ignored).
        min_area: minimum segment area in pixels (0 disables).
        max_patches: cap on the number of segments (``None`` disables).
        rng: numpy generator for the random subset.

    Returns:
        ``(int64 labels H, W, number of segments)``.
    """
    labels, n = relabel_contiguous(labels)
    if n == 0:
        return labels, 0
    keep = np.ones(n, dtype=bool)
    if min_area > 0:
        areas = np.bincount(labels[labels >= 0], minlength=n)
        keep &= areas >= min_area
    if max_patches is not None:
        if max_patches < 1:
            raise ValueError(f"`max_patches` must be >= 1 or None, got {max_patches}")
        idx = np.flatnonzero(keep)
        if idx.size > max_patches:
            rng = rng if rng is not None else np.random.default_rng(0)
            chosen = rng.choice(idx, size=max_patches, replace=False)
            keep = np.zeros(n, dtype=bool)
            keep[chosen] = True
    if keep.all():
        return labels, n
    lut = np.full(n, IGNORE, dtype=np.int64)
    lut[keep] = np.arange(int(keep.sum()))
    out = np.where(labels >= 0, lut[np.clip(labels, 0, None)], IGNORE)
    return out.astype(np.int64), int(keep.sum())


#: Float images may exceed [0, 1] by this much (rounding in resizing / colour ops); it is clamped.
UNIT_RANGE_TOL = 1e-3


def _check_unit_range(arr: np.ndarray) -> None:
    """Float images must be finite and within [0, 1] (up to :data:`UNIT_RANGE_TOL`).

    The values are on the host already (segmentation runs on numpy), so this check is
    always on: clamping a 0-255 or NaN image would silently give a wrong segmentation.
    """
    if arr.size == 0:
        return
    if not np.isfinite(arr).all():
        raise ValueError("`images` holds NaN or inf values; float images must be finite, in [0, 1]")
    lo, hi = float(arr.min()), float(arr.max())
    if hi > 1 + UNIT_RANGE_TOL:
        raise ValueError(
            f"float `images` must be in [0, 1], got values up to {hi:.4g}; "
            "for 0-255 pixels divide by 255 (or pass uint8)"
        )
    if lo < -UNIT_RANGE_TOL:
        raise ValueError(
            f"float `images` must be in [0, 1], got values down to {lo:.4g}; "
            "undo the mean/std normalisation first (or pass uint8 RGB)"
        )


def _to_uint8_batch(images: Any) -> np.ndarray:
    """Images -> numpy uint8 ``B, H, W, 3`` (C-contiguous)."""
    if isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4 or t.shape[1] != 3:
            raise ValueError(f"`images` tensor must have shape B, 3, H, W (or 3, H, W), got {tuple(images.shape)}")
        if t.dtype == torch.uint8:
            arr = t.permute(0, 2, 3, 1).numpy()
        elif t.is_floating_point():
            _check_unit_range(t.float().numpy())
            arr = (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        else:
            raise TypeError(f"`images` tensor must be uint8 or float in [0, 1], got dtype {t.dtype}")
        return np.ascontiguousarray(arr)
    if isinstance(images, np.ndarray):
        arr = images
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"`images` array must have shape H, W, 3 or B, H, W, 3, got {images.shape}")
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating):
                _check_unit_range(arr)
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            else:
                raise TypeError(f"`images` array must be uint8 (or float in [0, 1]), got dtype {arr.dtype}")
        return np.ascontiguousarray(arr)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("`images` is an empty list; pass at least one image")
        return np.concatenate([_to_uint8_batch(np.asarray(im)) for im in images])
    raise TypeError(f"`images` must be a numpy array or torch tensor, got {type(images).__name__}")


class SuperpixelPatchSampler:
    """Superpixel segmentation of image batches into patches for the local loss.

    Args:
        method: ``"slic"`` (paper's best, Table 5) or ``"felzenszwalb"``.
        backend: ``"auto"`` (fastest available; the choice is stored in
            :attr:`backend` and logged) or one of ``"fast-slic-avx2"``,
            ``"fast-slic"``, ``"skimage"``. If fast-slic was requested but is not
            installed, falls back to ``skimage`` with a one-time warning.
        n_segments: SLIC: approximate number of superpixels.
        compactness: SLIC: colour vs. space trade-off (``m`` in Eq. 4).
        scale: Felzenszwalb: higher means larger segments.
        sigma: Felzenszwalb / skimage SLIC: Gaussian pre-smoothing width.
        min_size: Felzenszwalb: minimum component size (pixels).
        min_area: segments smaller than this many pixels are set to ``-1``.
        max_patches: keep at most this many segments per image (random subset).
        seed: seed of the generator used for the random patch subset.
        num_threads: fast-slic threads (``-1`` = all cores). The default 1 is nearly as
            fast on one image (23 vs 21 ms at 473 x 473) and does not fight torch's own
            OpenMP pool, which on a busy machine slowed pretraining steps tens of times.

    Tiny and hostile images: an image with fewer pixels than ``n_segments`` gets at
    most one segment per pixel with every backend (fast-slic itself would kill the
    process with SIGFPE, so it is asked for ``min(n_segments, H * W)``); an image with
    no pixel gives an empty label map and 0 segments. Float images must be finite
    and in ``[0, 1]``: 0-255 floats, normalised images and NaN raise ``ValueError``.

    Example:
        >>> sampler = SuperpixelPatchSampler("slic", n_segments=64)
        >>> labels, counts = sampler(images)   # B,H,W int64, B int64
    """

    def __init__(
        self,
        method: str = "slic",
        backend: str = "auto",
        *,
        n_segments: int = 64,
        compactness: float = 10.0,
        scale: float = 100.0,
        sigma: float = 0.8,
        min_size: int = 50,
        min_area: int = 0,
        max_patches: int | None = None,
        seed: int = 0,
        num_threads: int = 1,
    ) -> None:
        global _warned_missing_fast_slic
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        allowed = ("auto", *BACKENDS[method])
        if backend not in allowed:
            raise ValueError(f"`backend` for method {method!r} must be one of {allowed}, got {backend!r}")
        if n_segments < 1:
            raise ValueError(f"`n_segments` must be >= 1, got {n_segments}")
        if max_patches is not None and max_patches < 1:
            raise ValueError(f"`max_patches` must be >= 1 or None, got {max_patches}")
        avail = available_backends(method)
        if backend == "auto":
            chosen = avail[0]
            if method == "slic" and not chosen.startswith("fast-slic") and not _warned_missing_fast_slic:
                warnings.warn(
                    "fast-slic is not installed; SLIC falls back to the slower skimage backend "
                    "(install with `pip install --no-build-isolation fast-slic`)",
                    stacklevel=2,
                )
                _warned_missing_fast_slic = True
        elif backend not in avail:
            chosen = "skimage"
            if not _warned_missing_fast_slic:
                warnings.warn(f"superpixel backend {backend!r} unavailable; falling back to skimage", stacklevel=2)
                _warned_missing_fast_slic = True
        else:
            chosen = backend
        self.method = method
        #: the backend actually used (resolved from ``"auto"``).
        self.backend = chosen
        self.n_segments = int(n_segments)
        self.compactness = float(compactness)
        self.scale = float(scale)
        self.sigma = float(sigma)
        self.min_size = int(min_size)
        self.min_area = int(min_area)
        self.max_patches = max_patches
        self.seed = int(seed)
        self.num_threads = int(num_threads)
        self.rng = np.random.default_rng(seed)
        log.info("SuperpixelPatchSampler: method=%s backend=%s", method, chosen)

    def __repr__(self) -> str:
        return (
            f"SuperpixelPatchSampler(method={self.method!r}, backend={self.backend!r}, "
            f"n_segments={self.n_segments}, max_patches={self.max_patches})"
        )

    def config(self) -> dict[str, Any]:
        """The parameters that determine the raw label maps (used as cache key)."""
        return {
            "method": self.method,
            "backend": self.backend,
            "n_segments": self.n_segments,
            "compactness": self.compactness,
            "scale": self.scale,
            "sigma": self.sigma,
            "min_size": self.min_size,
        }

    # -- single image --------------------------------------------------------------
    def segment(self, image: np.ndarray) -> np.ndarray:
        """Raw superpixels of one ``H, W, 3`` uint8 image -> contiguous ``int64 H, W``.

        Tiny images are fine with every backend: an image with no pixel gives an empty
        label map (0 segments), and fast-slic, which kills the process (SIGFPE) when
        asked for more superpixels than the image has pixels, is asked for at most
        ``H * W`` (so a 1 x 1 to 7 x 7 image with the default 64 segments gets one
        segment per pixel at most, like skimage).
        """
        img = np.ascontiguousarray(image)
        if img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"`image` must have shape H, W, 3, got {img.shape}")
        if img.dtype != np.uint8:
            raise TypeError(f"`image` must be uint8 RGB, got dtype {img.dtype}")
        if img.shape[0] == 0 or img.shape[1] == 0:
            return np.full(img.shape[:2], IGNORE, dtype=np.int64)
        if self.method == "felzenszwalb":
            from skimage.segmentation import felzenszwalb

            lab = felzenszwalb(img, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        elif self.backend == "skimage":
            from skimage.segmentation import slic

            lab = slic(
                img,
                n_segments=self.n_segments,
                compactness=self.compactness,
                sigma=self.sigma,
                start_label=0,
                channel_axis=-1,
            )
        else:
            if self.backend == "fast-slic-avx2":
                from fast_slic.avx2 import SlicAvx2 as _Slic
            else:
                from fast_slic import Slic as _Slic
            # a fresh object per image: a fast-slic object warm-starts from the clusters of
            # its previous image, which would make results depend on the processing order
            # fast-slic divides by zero (SIGFPE, the whole process dies) for more components than pixels
            components = min(self.n_segments, img.shape[0] * img.shape[1])
            slic = _Slic(num_components=components, compactness=self.compactness, num_threads=self.num_threads)
            lab = slic.iterate(img)
        return relabel_contiguous(lab)[0]

    # -- batch ---------------------------------------------------------------------
    def __call__(
        self, images: Any, *, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment a batch.

        Args:
            images: numpy uint8 ``H, W, 3`` / ``B, H, W, 3`` or torch ``B, 3, H, W``
                (uint8, or float in [0, 1]). Float images outside ``[0, 1]`` (beyond a
                1e-3 tolerance, e.g. 0-255 floats or mean/std-normalised images) or
                holding NaN / inf raise ``ValueError``; they are never clamped silently.
            rng: generator for the random ``max_patches`` subset (default: the
                sampler's own generator seeded with ``seed``).

        Returns:
            ``(labels, counts)``: ``int64 B, H, W`` with ids ``0..n_b-1`` and ``-1``
            for filtered pixels, and ``int64 B`` segment counts ``n_b``.
        """
        batch = _to_uint8_batch(images)
        rng = rng if rng is not None else self.rng
        maps, counts = [], []
        for img in batch:
            lab, n = self.filter(self.segment(img), rng=rng)
            maps.append(lab)
            counts.append(n)
        return torch.from_numpy(np.stack(maps)), torch.tensor(counts, dtype=torch.int64)

    def filter(self, labels: np.ndarray, *, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """Apply this sampler's ``min_area`` / ``max_patches`` to a raw label map."""
        return filter_segments(
            labels, min_area=self.min_area, max_patches=self.max_patches, rng=rng if rng is not None else self.rng
        )


# ------------------------------------------------------------------------------- cache
def _cache_name(path: str) -> str:
    stem = Path(path).stem
    digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]
    return f"{stem}_{digest}.npz"


def _load_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image as the datasets read it (:func:`fewshot_priors._images.read_rgb8`: by bit depth)."""
    from .._images import DECODE_ERRORS, read_rgb8

    try:
        return read_rgb8(path)
    except DECODE_ERRORS as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


_worker_sampler: SuperpixelPatchSampler | None = None


def _init_worker(sampler: SuperpixelPatchSampler) -> None:
    global _worker_sampler
    _worker_sampler = sampler
    _worker_sampler.num_threads = 1
    torch.set_num_threads(1)


def _cache_one(args: tuple[str, str]) -> dict[str, Any]:
    assert _worker_sampler is not None
    return _cache_with(_worker_sampler, *args)


def _cache_with(sampler: SuperpixelPatchSampler, path: str, out: str) -> dict[str, Any]:
    lab = sampler.segment(_load_rgb(path))
    n = int(lab.max()) + 1 if lab.size else 0
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.int32
    np.savez_compressed(out, labels=lab.astype(dtype))
    return {"height": int(lab.shape[0]), "width": int(lab.shape[1]), "num_segments": n}


def build_superpixel_cache(
    image_paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    sampler: SuperpixelPatchSampler | None = None,
    *,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Precompute raw superpixel label maps for ``image_paths`` into ``cache_dir``.

    Each image gets a compressed ``<stem>_<hash>.npz`` (``uint16`` labels); a
    ``manifest.json`` records the sampler config and, per image, its path,
    label file, size and segment count. Existing up-to-date entries are reused
    unless ``overwrite``. ``min_area``/``max_patches`` are *not* applied here (they
    are applied per sample at training time, so the random subset can change
    every epoch).

    Args:
        image_paths: images to segment.
        cache_dir: output folder (created).
        sampler: the segmentation settings (default: SLIC, 64 segments).
        workers: worker processes (0 = in this process).
        progress: show a tqdm progress bar.
        overwrite: recompute everything.

    Returns:
        Path of the manifest.
    """
    from .._progress import progress_bar

    sampler = sampler or SuperpixelPatchSampler()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.json"
    old: dict[str, Any] = {}
    if manifest_path.exists() and not overwrite:
        prev = json.loads(manifest_path.read_text())
        if prev.get("config") == sampler.config():
            old = {it["image"]: it for it in prev.get("items", [])}
    paths = [os.path.abspath(p) for p in image_paths]
    items: dict[str, dict[str, Any]] = {}
    todo = []
    for p in paths:
        it = old.get(p)
        if it is not None and (cache_dir / it["labels"]).exists():
            items[p] = it
        else:
            todo.append((p, str(cache_dir / _cache_name(p))))
    t0 = time.perf_counter()
    bar = progress_bar(total=len(todo), desc="superpixels", disable=not progress or not todo)
    if workers and workers > 0 and len(todo) > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(sampler,)) as ex:
            for (p, out), meta in zip(todo, ex.map(_cache_one, todo, chunksize=4)):
                items[p] = {"image": p, "labels": Path(out).name, **meta}
                bar.update()
    else:
        for p, out in todo:
            items[p] = {"image": p, "labels": Path(out).name, **_cache_with(sampler, p, out)}
            bar.update()
    bar.close()
    manifest = {
        "format": CACHE_FORMAT,
        "version": 1,
        "config": sampler.config(),
        "seconds": round(time.perf_counter() - t0, 3),
        "items": [items[p] for p in paths],
    }
    atomic_write((manifest_path, json.dumps(manifest, indent=1).encode()))
    return manifest_path


class SuperpixelCache:
    """Read access to a folder written by :func:`build_superpixel_cache`.

    Args:
        cache_dir: the cache folder (containing ``manifest.json``).
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.root = Path(cache_dir)
        path = self.root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"`cache_dir` has no manifest.json: {self.root}")
        self.manifest = json.loads(path.read_text())
        if self.manifest.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a superpixel cache manifest (format={self.manifest.get('format')!r})")
        self.config = self.manifest["config"]
        self._items = {it["image"]: it for it in self.manifest["items"]}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, image_path: object) -> bool:
        return isinstance(image_path, (str, os.PathLike)) and os.path.abspath(image_path) in self._items

    def get(self, image_path: str | os.PathLike) -> np.ndarray | None:
        """The cached ``int64 H, W`` label map of ``image_path``, or ``None`` if absent."""
        it = self._items.get(os.path.abspath(image_path))
        if it is None:
            return None
        with np.load(self.root / it["labels"]) as z:
            return z["labels"].astype(np.int64)
