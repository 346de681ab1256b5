"""Constants shared by the whole package, defined once (bottom layer: imports nothing).

* :data:`IMAGENET_MEAN`: the per-channel RGB mean of ImageNet (images in ``[0, 1]``), PFENet's
  padding colour. Input normalisation is not a constant: each backbone takes its own mean/std
  from its weights (see :func:`fewshot_priors.models.backbone.input_normalisation`).
* :data:`IGNORE_INDEX`: the mask label of pixels excluded from losses and metrics
  (PASCAL VOC's object boundaries, COCO's crowd regions, padding).
* :data:`DEFAULT_MAX_CHUNK_BYTES`: the memory budget of one similarity tile of the
  region-map ops, the one default of every ``max_chunk_bytes`` (ops, modules, QGNet, config).
* :data:`OPTIMIZERS` and :data:`VAL_SPLITS`: the values of ``train.optimizer`` and
  ``train.val_split``, read by the config schema and by :mod:`fewshot_priors.engine`.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_CHUNK_BYTES", "IGNORE_INDEX", "IMAGENET_MEAN", "OPTIMIZERS", "VAL_SPLITS"]

#: Per-channel RGB mean of ImageNet (images scaled to ``[0, 1]``).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Mask label excluded from every loss and metric.
IGNORE_INDEX: int = 255
#: Default cap on the bytes of temporaries one tile of the similarity matrix may use (256 MiB).
DEFAULT_MAX_CHUNK_BYTES: int = 256 * 2**20
#: ``train.optimizer``: SGD with momentum (PFENet's recipe) or AdamW.
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
#: ``train.val_split``: what validates a training run (see ``engine.build_validation_set``): the held-out
#: test classes (the PFENet lineage's protocol) or classes held back from the training classes.
VAL_SPLITS: tuple[str, ...] = ("test", "train_classes")
