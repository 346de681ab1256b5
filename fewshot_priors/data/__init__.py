"""Episodic few-shot segmentation datasets, transforms and the synthetic demo data.

* :class:`PascalFewShot`, :class:`CocoFewShot`, :class:`FolderFewShot` - K-shot
  episodes (see :mod:`fewshot_priors.data.episodes` for the episode format), with their
  options :class:`PascalOptions`, :class:`CocoOptions`, :class:`FolderOptions`
  (each a :class:`DatasetOptions`),
* :func:`collate_episodes` - ``collate_fn`` for a DataLoader,
* :func:`restore_prediction` - map a test prediction back to the original label size,
* :class:`TrainTransform`, :class:`TestTransform`, :func:`build_transforms`,
* :func:`generate_synthetic_dataset` - the built-in demo dataset (PASCAL layout),
* :data:`DATASETS`, :func:`register_dataset`, :func:`available_datasets`,
  :func:`create_dataset` - the dataset registry (``data.dataset: NAME``) and the
  config -> dataset step (see :mod:`fewshot_priors.data.registry`).

Every registered dataset takes one small constructor signature, documented on
:class:`EpisodicDataset`: ``root, *, split, fold, shots, episodes, seed, transform,
image_size, options, progress``; the split names are :data:`SPLITS` (``"train"``, ``"val"``).
"""

from .coco import CocoFewShot, CocoOptions, coco_fold_classes
from .episodes import SPLITS, DatasetOptions, EpisodicDataset, collate_episodes, restore_prediction
from .folder import FolderFewShot, FolderOptions
from .io import BadDataError, DataLayoutError
from .pascal import PascalFewShot, PascalOptions
from .registry import DATASETS, available_datasets, create_dataset, register_dataset
from .synthetic import generate_synthetic_dataset
from .transforms import TestTransform, TrainTransform, build_transforms, image_to_tensor

__all__ = [
    "DATASETS",
    "SPLITS",
    "BadDataError",
    "CocoFewShot",
    "CocoOptions",
    "DataLayoutError",
    "DatasetOptions",
    "EpisodicDataset",
    "FolderFewShot",
    "FolderOptions",
    "PascalFewShot",
    "PascalOptions",
    "TestTransform",
    "TrainTransform",
    "available_datasets",
    "build_transforms",
    "coco_fold_classes",
    "collate_episodes",
    "create_dataset",
    "generate_synthetic_dataset",
    "register_dataset",
    "restore_prediction",
]
