"""Self-supervised pretraining of the prior extractor (paper Sec. 4.1): everything it needs.

* :mod:`~fewshot_priors.ssl.superpixels`: :class:`SuperpixelPatchSampler` (SLIC /
  Felzenszwalb patches) and the on-disk :class:`SuperpixelCache`;
* :mod:`~fewshot_priors.ssl.augment`: :class:`TwoViewAugment`, two views whose
  superpixel ids name the same patch;
* :mod:`~fewshot_priors.ssl.moco`: :class:`GlobalLocalMoCo` (global + local InfoNCE),
  ``create_encoder``, ``dense_features``;
* :mod:`~fewshot_priors.ssl.queue`: :class:`MemoryQueue`, MoCo's dictionary of negatives;
* :mod:`~fewshot_priors.ssl.export`: :func:`export_prior_extractor` /
  :func:`load_prior_extractor`, the file QGNet's ``prior_weights`` reads;
* :mod:`~fewshot_priors.ssl.diagnostics`: collapse diagnostics (``embedding_std``,
  ``alignment``, ``uniformity``, ``knn_accuracy``).

The training loop is :func:`fewshot_priors.engine.pretrain.pretrain`. Names are imported
lazily, so ``import fewshot_priors.ssl`` loads neither timm nor scikit-image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewshot_priors._lazy import lazy_exports

_LAZY = {
    "SuperpixelPatchSampler": "fewshot_priors.ssl.superpixels",
    "SuperpixelCache": "fewshot_priors.ssl.superpixels",
    "available_backends": "fewshot_priors.ssl.superpixels",
    "build_superpixel_cache": "fewshot_priors.ssl.superpixels",
    "TwoViewAugment": "fewshot_priors.ssl.augment",
    "GlobalLocalMoCo": "fewshot_priors.ssl.moco",
    "create_encoder": "fewshot_priors.ssl.moco",
    "dense_features": "fewshot_priors.ssl.moco",
    "MemoryQueue": "fewshot_priors.ssl.queue",
    "export_prior_extractor": "fewshot_priors.ssl.export",
    "load_prior_extractor": "fewshot_priors.ssl.export",
    "alignment": "fewshot_priors.ssl.diagnostics",
    "embedding_std": "fewshot_priors.ssl.diagnostics",
    "knn_accuracy": "fewshot_priors.ssl.diagnostics",
    "uniformity": "fewshot_priors.ssl.diagnostics",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from .augment import TwoViewAugment
    from .diagnostics import alignment, embedding_std, knn_accuracy, uniformity
    from .export import export_prior_extractor, load_prior_extractor
    from .moco import GlobalLocalMoCo, create_encoder, dense_features
    from .queue import MemoryQueue
    from .superpixels import (
        SuperpixelCache,
        SuperpixelPatchSampler,
        available_backends,
        build_superpixel_cache,
    )
