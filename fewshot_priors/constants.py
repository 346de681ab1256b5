"""Constants shared by the whole package, defined once (bottom layer: imports nothing).

* :data:`IMAGENET_MEAN`: the per-channel RGB mean of ImageNet (images in ``[0, 1]``), PFENet's
  padding colour. Input normalisation is not a constant: each backbone takes its own mean/std
  from its weights (see :func:`fewshot_priors.models.backbone.input_normalisation`).
* :data:`IGNORE_INDEX`: the mask label of pixels excluded from losses and metrics
  (PASCAL VOC's object boundaries, COCO's crowd regions, padding).
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN"]

#: Per-channel RGB mean of ImageNet (images scaled to ``[0, 1]``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Mask label excluded from every loss and metric.
IGNORE_INDEX: int = 255
