"""Unlabeled images -> two augmented views + superpixel label maps, for prior-extractor pretraining."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.io import read_image
from ..data.unlabeled import list_images
from .augment import TwoViewAugment
from .superpixels import SuperpixelCache, SuperpixelPatchSampler

__all__ = ["UnlabeledImages"]

log = logging.getLogger(__name__)


def _item_seed(*parts: Any) -> int:
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class UnlabeledImages(Dataset):
    """Two MoCo v2 views of each image with their superpixel label maps.

    Superpixels come from ``cache_dir`` (written by
    :func:`~fewshot_priors.ssl.superpixels.build_superpixel_cache` with the same sampler
    settings) when the image is there, else they are computed on the fly. Each
    item then gets the sampler's ``min_area`` filter and a random subset of at most
    ``max_patches`` patches (ids ``0..P-1``), and two augmented views.

    Indexing: ``ds[i]`` draws the randomness of item ``i`` from ``(seed, epoch, i)``
    (call :meth:`set_epoch`); ``ds[(i, item_seed)]`` uses ``item_seed`` directly
    (what the resumable pretraining loop does). The global RNGs are never used, so
    results do not depend on the data-loader worker.

    Args:
        images: folder, list file or sequence of image paths (see :func:`~fewshot_priors.data.unlabeled.list_images`).
        size: output side of the views.
        sampler: superpixel settings (default: SLIC with 64 segments).
        max_patches: ``P`` (must equal ``GlobalLocalMoCo.max_patches``); overrides
            the sampler's own ``max_patches``.
        cache_dir: superpixel cache folder (ignored with a warning if it was built
            with other sampler settings).
        augment: the two-view pipeline (default ``TwoViewAugment(size)``).
        seed: base seed.

    Items are dicts: ``view_a``, ``view_b`` (``3, S, S`` float), ``labels_a``,
    ``labels_b`` (``S, S`` int64, ``-1`` = ignored) and ``index``.
    """

    def __init__(
        self,
        images: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        size: int = 224,
        sampler: SuperpixelPatchSampler | None = None,
        max_patches: int = 32,
        cache_dir: str | os.PathLike | None = None,
        augment: TwoViewAugment | None = None,
        seed: int = 0,
    ) -> None:
        self.paths = list_images(images)
        self.sampler = sampler or SuperpixelPatchSampler("slic", n_segments=64)
        self.sampler.max_patches = int(max_patches)
        self.max_patches = int(max_patches)
        self.augment = augment or TwoViewAugment(size)
        self.seed = int(seed)
        self.epoch = 0
        self.cache: SuperpixelCache | None = None
        if cache_dir is not None and (Path(cache_dir) / "manifest.json").exists():
            cache = SuperpixelCache(cache_dir)
            if cache.config == self.sampler.config():
                self.cache = cache
            else:
                log.warning(
                    "superpixel cache %s was built with %s, not %s: computing superpixels on the fly",
                    cache_dir, cache.config, self.sampler.config(),
                )

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Change the randomness of integer-indexed items (one draw per epoch)."""
        self.epoch = int(epoch)

    def superpixels(self, index: int, image: np.ndarray | None = None) -> np.ndarray:
        """Raw ``int64 H, W`` superpixels of image ``index`` (cache first)."""
        path = self.paths[index]
        lab = self.cache.get(path) if self.cache is not None else None
        if lab is None:
            if image is None:
                image = read_image(path)
            lab = self.sampler.segment(image)
        return lab

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            seed = _item_seed(self.seed, self.epoch, index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        image = read_image(self.paths[index])
        raw = self.superpixels(index, image)
        if raw.shape != image.shape[:2]:
            raise ValueError(
                f"cached superpixels of {self.paths[index]} have shape {raw.shape}, image is {image.shape[:2]}; "
                "rebuild the cache"
            )
        labels, _ = self.sampler.filter(raw, rng=np.random.default_rng(seed))
        g = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        views = self.augment(x, torch.from_numpy(labels)[None], generator=g)
        item: dict[str, Any] = {k: v[0] for k, v in views.items()}
        item["index"] = index
        return item
