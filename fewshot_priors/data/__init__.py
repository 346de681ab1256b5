"""Episodic few-shot segmentation datasets, transforms and the synthetic demo data.

* :class:`PascalFewShot`, :class:`CocoFewShot`, :class:`FolderFewShot` - K-shot
  episodes (see :mod:`fewshot_priors.data.episodes` for the episode format),
* :func:`collate_episodes` - ``collate_fn`` for a DataLoader,
* :func:`restore_prediction` - map a test prediction back to the original label size,
* :class:`TrainTransform`, :class:`TestTransform`, :func:`build_transforms`,
* :func:`generate_synthetic_dataset` - the built-in demo dataset (PASCAL layout).
"""

from .episodes import EpisodicDataset, collate_episodes, restore_prediction
from .coco import CocoFewShot, coco_fold_classes
from .folder import FolderFewShot
from .io import BadDataError, DataLayoutError
from .pascal import PascalFewShot
from .synthetic import generate_synthetic_dataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, TestTransform, TrainTransform, build_transforms

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BadDataError",
    "DataLayoutError",
    "CocoFewShot",
    "EpisodicDataset",
    "FolderFewShot",
    "PascalFewShot",
    "TestTransform",
    "TrainTransform",
    "build_transforms",
    "coco_fold_classes",
    "collate_episodes",
    "generate_synthetic_dataset",
    "restore_prediction",
]
