"""Constants shared by the whole package, defined once (bottom layer: imports nothing).

* :data:`IMAGENET_MEAN`: the per-channel RGB mean of ImageNet (images in ``[0, 1]``), PFENet's
  padding colour. Input normalisation is not a constant: each backbone takes its own mean/std
  from its weights (see :func:`fewshot_priors.models.backbone.input_normalisation`).
* :data:`IGNORE_INDEX`: the mask label of pixels excluded from losses and metrics
  (PASCAL VOC's object boundaries, COCO's crowd regions, padding).
* :data:`DEFAULT_MAX_CHUNK_BYTES`: the memory budget of one similarity tile of the
  region-map ops, the one default of every ``max_chunk_bytes`` (ops, modules, QGNet, config).
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "IGNORE_INDEX", "IMAGENET_MEAN"]

#: Per-channel RGB mean of ImageNet (images scaled to ``[0, 1]``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Mask label excluded from every loss and metric.
IGNORE_INDEX: int = 255
#: Default cap on the bytes of temporaries one tile of the similarity matrix may use (256 MiB).
DEFAULT_MAX_CHUNK_BYTES: int = 256 * 2**20
