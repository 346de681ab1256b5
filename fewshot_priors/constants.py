"""Constants shared by the whole package, defined once (bottom layer: imports nothing).

* :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`: the per-channel RGB statistics images
  are normalised with (torchvision / timm convention, images in ``[0, 1]``).
* :data:`IGNORE_INDEX`: the mask label of pixels excluded from losses and metrics
  (PASCAL VOC's object boundaries, COCO's crowd regions, padding).
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]

#: Per-channel RGB mean of ImageNet (images scaled to ``[0, 1]``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Mask label excluded from every loss and metric.
IGNORE_INDEX: int = 255
