"""Self-supervised pretraining of the prior extractor (paper Sec. 4.1): everything it needs.

* :mod:`~fewshot_priors.ssl.superpixels`: :class:`SuperpixelPatchSampler` (SLIC /
  Felzenszwalb patches) and the on-disk :class:`SuperpixelCache`;
* :mod:`~fewshot_priors.ssl.augment`: :class:`TwoViewAugment`, two views whose
  superpixel ids name the same patch;
* :mod:`~fewshot_priors.ssl.dataset`: :class:`UnlabeledImages`, two views of each
  unlabeled image with their superpixel label maps;
* :mod:`~fewshot_priors.ssl.moco`: :class:`GlobalLocalMoCo` (global + local InfoNCE),
  ``create_encoder``, ``dense_features``;
* :mod:`~fewshot_priors.ssl.factory`: :func:`create_moco`, :func:`create_patch_sampler`
  and :func:`create_unlabeled_dataset`, the ``pretrain`` config section as these parts;
* :mod:`~fewshot_priors.ssl.queue`: :class:`MemoryQueue`, MoCo's dictionary of negatives;
* :mod:`~fewshot_priors.ssl.export`: :func:`export_prior_extractor` /
  :func:`load_prior_extractor`, the file QGNet's ``prior_weights`` reads;
* :mod:`~fewshot_priors.ssl.diagnostics`: collapse diagnostics (``embedding_std``,
  ``alignment``, ``uniformity``, ``knn_accuracy``).

The package builds on :mod:`fewshot_priors.models` (the backbone's dilation, the weight
formats) and :mod:`fewshot_priors.data` (image lists and reading); neither imports it.
The training loop is :func:`fewshot_priors.engine.pretrain.pretrain`.
"""

from __future__ import annotations

from .augment import TwoViewAugment
from .dataset import UnlabeledImages
from .diagnostics import alignment, embedding_std, knn_accuracy, uniformity
from .export import export_prior_extractor, load_prior_extractor
from .factory import create_moco, create_patch_sampler, create_unlabeled_dataset
from .moco import GlobalLocalMoCo, create_encoder, dense_features
from .queue import MemoryQueue
from .superpixels import SuperpixelCache, SuperpixelPatchSampler, available_backends, build_superpixel_cache

__all__ = [
    "GlobalLocalMoCo",
    "MemoryQueue",
    "SuperpixelCache",
    "SuperpixelPatchSampler",
    "TwoViewAugment",
    "UnlabeledImages",
    "alignment",
    "available_backends",
    "build_superpixel_cache",
    "create_encoder",
    "create_moco",
    "create_patch_sampler",
    "create_unlabeled_dataset",
    "dense_features",
    "embedding_std",
    "export_prior_extractor",
    "knn_accuracy",
    "load_prior_extractor",
    "uniformity",
]
