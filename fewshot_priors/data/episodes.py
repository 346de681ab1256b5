"""Episode sampling shared by every few-shot dataset, batching and scoring helpers.

An episode (one dataset item) is a dict:

* ``query_image``: float32 ``3, H, W`` RGB in ``[0, 1]`` (each backbone normalises it),
* ``query_mask``: int64 ``H, W`` with 0 / 1 / 255,
* ``support_images``: float32 ``K, 3, H, W``; ``support_masks``: int64 ``K, H, W``,
* ``class_id``: int (dataset class id), ``query_name``: str, ``support_names``: list[str],
* ``"val"`` split only: ``query_mask_orig`` (int64 ``H0, W0``, the binary label at the
  ORIGINAL resolution, 255 kept) and ``query_valid_hw`` (int64 ``[h, w]``, the
  un-padded content of the ``H, W`` canvas).

Every random choice of episode ``i`` comes from
``numpy.random.default_rng([seed, epoch, i])`` (the query order from a seeded
permutation), so the same seed gives the same episodes on any machine and with
any number of DataLoader workers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._validate import is_int
from .index import Entry, ScanResult
from .io import IGNORE_INDEX, AmbiguousMaskWarning, BadDataError, DataLayoutError, read_image

_ORDER_TAG = 104729  # separates the query-order stream from the per-episode streams
_MAX_READ_RETRIES = 5
_LISTED = 8  # classes named in a warning; the rest are counted


#: How query (image, class) pairs are drawn: ``"pairs"`` uniformly over the eligible
#: pairs (each class >= min_pixels in the query); ``"images"`` as PFENet's SemData:
#: one item per image with >= 1 eligible class, the episode's class drawn uniformly
#: among the fold classes *present* in the image (any size; supports stay eligible).
QUERY_SAMPLING = ("pairs", "images")




#: The split names, the same at every level (config, :func:`~fewshot_priors.data.create_dataset`,
#: the constructors, ``dataset.split``): ``"train"`` = the training classes (reshuffled per
#: :meth:`EpisodicDataset.set_epoch`), ``"val"`` = the held-out classes (a fixed episode list,
#: scored at the original label resolution).
SPLITS = ("train", "val")


def check_split(split: Any) -> str:
    """``split`` if it is one of :data:`SPLITS`.

    Raises:
        ValueError: naming ``split`` and the accepted names.
    """
    if split not in SPLITS:
        hint = " (0.2.0 calls the held-out split 'val' everywhere)" if split == "test" else ""
        raise ValueError(f"`split` must be 'train' or 'val', got {split!r}{hint}")
    return split


def check_episode_args(*, shots: Any, episodes: Any, seed: Any) -> None:
    """Validate the episode arguments of the shared signature (before any file is read).

    Raises:
        TypeError / ValueError: naming the argument and the expected form.
    """
    if not is_int(shots) or shots < 1:
        raise ValueError(f"`shots` must be a positive int, got {shots!r}")
    if episodes is not None and (not is_int(episodes) or episodes < 1):
        raise ValueError(f"`episodes` must be a positive int or None, got {episodes!r}")
    if not is_int(seed):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"`seed` must be >= 0, got {seed}")


@dataclass(frozen=True)
class DatasetOptions:
    """Options every dataset has; each registered dataset extends it with its own fields
    (:class:`~fewshot_priors.data.PascalOptions`, :class:`~fewshot_priors.data.CocoOptions`,
    :class:`~fewshot_priors.data.FolderOptions`) and names that class in ``options_class``.

    Values are checked when the object is made, so a bad option fails before any file is read.

    Args:
        min_pixels: a (image, class) pair is eligible when the class covers at least this
            many pixels at the original resolution (2048 = 2 x 32 x 32 in the benchmarks).
        fold_classes: the held-out classes explicitly (class ids; folders: also folder
            names); ``None`` = the classes of fold ``fold``.
        val_class_ratio: the share of the training classes (those with enough images for an
            episode) that the ``train`` split holds back as validation classes, seeded by the
            dataset's seed: it trains on the others and names them in ``val_class_ids``, for a
            validation set that never sees a test class (:func:`~fewshot_priors.engine.validation_set`).
            ``0`` (default): every training class trains. Ignored by the ``val`` split.
        query_sampling: ``"pairs"`` (uniform over eligible (image, class) pairs, the
            ``min_pixels`` rule applies to the query too) or ``"images"`` (PFENet's
            ``SemData``: uniform over images with an eligible class, the class drawn among
            the fold classes present in the image, small ones included; ``episodes=None``
            then means one per image).
        strict: raise on unusable image/label pairs (folders: also ambiguous masks)
            instead of skipping them with a warning.
        cache: write/read the index cache (``.fewshot_index_*.json`` beside the data, or
            the user cache folder when that is read-only).
        exclude_novel_images: ``"train"`` split only: drop every training image that contains
            a pixel of a held-out class (BAM's filter; folder datasets: every photo that a
            held-out class's folder also holds). ``False`` (PFENet's protocol, the default)
            keeps them, with the held-out classes' pixels as background.
    """

    min_pixels: int = 2048
    fold_classes: tuple[int | str, ...] | None = None
    val_class_ratio: float = 0.0
    query_sampling: str = "pairs"
    strict: bool = False
    cache: bool = True
    exclude_novel_images: bool = False

    #: ``fold_classes`` may hold class names (folder names) as well as ids
    _fold_classes_by_name: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not is_int(self.min_pixels) or self.min_pixels < 1:
            raise ValueError(f"`min_pixels` must be a positive int (2048 in the benchmarks), got {self.min_pixels!r}")
        r = self.val_class_ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1:
            raise ValueError(f"`val_class_ratio` must be a number in [0, 1), got {r!r}")
        if self.query_sampling not in QUERY_SAMPLING:
            raise ValueError(f"`query_sampling` must be one of {QUERY_SAMPLING}, got {self.query_sampling!r}")
        fc = self.fold_classes
        if fc is not None:
            if self._fold_classes_by_name:
                ok, want = (lambda v: is_int(v) or isinstance(v, str)), "class folder names (or class ids 1..N)"
            else:
                ok, want = is_int, "class ids"
            if isinstance(fc, str | bytes):
                raise TypeError(f"`fold_classes` must be a list of {want}, not one string: {fc!r}")
            if not isinstance(fc, Sequence) or not fc or not all(map(ok, fc)):
                raise ValueError(f"`fold_classes` must be a non-empty list of {want}, got {fc!r}")
            object.__setattr__(self, "fold_classes", tuple(fc))
        for name in ("strict", "cache", "exclude_novel_images"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}")


class EpisodicDataset(Dataset):
    """Base class of every registered dataset: K-shot episodes over an index of (image, class) pairs.

    **The shared dataset signature.** Every registered dataset
    (:class:`~fewshot_priors.data.PascalFewShot`, :class:`~fewshot_priors.data.CocoFewShot`,
    :class:`~fewshot_priors.data.FolderFewShot`, and yours, see
    :func:`~fewshot_priors.data.register_dataset`) is built with this constructor::

        Dataset(root, *, split="train", fold=0, shots=1, episodes=None, seed=321,
                transform=None, image_size=473, options=None, progress=True)

    The arguments mean the same for every dataset; what differs between datasets is
    in ``options``, one typed object per dataset (``options_class``: a subclass of
    :class:`DatasetOptions`; ``None`` = its defaults). The config's ``data`` keys map
    onto both (see :func:`~fewshot_priors.data.create_dataset`).

    A subclass sets the class attributes below and implements :meth:`_index` (list
    the images, scan their labels, choose the classes of the split) and :meth:`read_label`.

    Args:
        root: the dataset folder (the only positional argument).
        split: ``"train"`` (training classes, reshuffled per :meth:`set_epoch`) or
            ``"val"`` (held-out classes, a fixed episode list, adds the
            original-resolution label); see :data:`SPLITS`.
        fold: which block of held-out classes (ignored when ``options.fold_classes`` is set).
        shots: K support images per episode.
        episodes: number of episodes; ``None`` = one per eligible pair (image with
            ``query_sampling="images"``) for train, ``default_episodes`` for val.
        seed: seed of all episode and augmentation randomness.
        transform: ``transform(image, mask, rng) -> (image, mask, valid_hw)`` (see
            :mod:`fewshot_priors.data.transforms`); ``None`` =
            :meth:`default_transform` ``(split, image_size)``.
        image_size: the model's input size: size of the default transform (and of the
            folder datasets' ``min_model_pixels`` rule).
        options: the dataset's options object (``None`` = ``options_class()``).
        progress: show a progress bar while the labels are scanned (first use only).
    """

    #: the dataset's options (a DatasetOptions subclass); read by create_dataset and check_data_keys
    options_class: type[DatasetOptions] = DatasetOptions
    #: episodes of the val split when ``episodes`` is None
    default_episodes: int = 1000
    #: scale range of the default training augmentation
    train_scale: tuple[float, float] = (0.9, 1.1)
    #: default of ``data.train_resize_long``: True (photos of any size) trains at the test scale
    train_resize_long: bool = False
    #: the expected layout, shown by the errors about ``root``
    layout: str = ""
    #: set by register_dataset
    dataset_name: str | None = None

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        fold: int = 0,
        shots: int = 1,
        episodes: int | None = None,
        seed: int = 321,
        transform: Callable | None = None,
        image_size: int = 473,
        options: DatasetOptions | None = None,
        progress: bool = True,
    ) -> None:
        cls = type(self)
        check_split(split)
        check_episode_args(shots=shots, episodes=episodes, seed=seed)
        if not is_int(fold) or fold < 0:
            raise ValueError(f"`fold` must be a non-negative int, got {fold!r}")
        if not is_int(image_size) or image_size < 1:
            raise ValueError(f"`image_size` must be a positive int, got {image_size!r}")
        if options is None:
            options = cls.options_class()
        elif not isinstance(options, cls.options_class):
            raise TypeError(
                f"{cls.__name__}: `options` must be a {cls.options_class.__name__} (or None), "
                f"got {type(options).__name__}"
            )
        root = Path(root)
        if not root.is_dir():
            raise DataLayoutError(f"dataset root {root} does not exist\n{cls.layout}".rstrip())
        self.root = root
        self.split = split
        self.fold = int(fold)
        self.shots = int(shots)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.options = options
        self.progress = progress
        self.min_pixels = int(options.min_pixels)
        self.strict = options.strict
        self.query_sampling = options.query_sampling
        self.transform = transform if transform is not None else cls.default_transform(split, image_size)
        self.epoch = 0
        self._empty_masks = 0  # episodes whose transformed support/query mask lost all foreground

        entries, scan, class_ids = self._index()
        self._build_episodes(entries, scan, class_ids, episodes)

    @classmethod
    def default_transform(
        cls,
        split: str,
        image_size: int,
        *,
        scale: Sequence[float] | None = None,
        resize_long: bool | None = None,
    ) -> Callable:
        """The dataset's transform of ``split`` (the one place transforms are chosen).

        ``"train"``: :class:`~fewshot_priors.data.transforms.TrainTransform` (scale range
        ``scale``, default ``train_scale``; with ``resize_long`` (default
        ``train_resize_long``) the longer side is resized to ``image_size`` first);
        ``"val"``: :class:`~fewshot_priors.data.transforms.TestTransform`.
        """
        from .transforms import TestTransform, TrainTransform

        if check_split(split) == "val":
            return TestTransform(image_size)
        scale = cls.train_scale if scale is None else (float(scale[0]), float(scale[1]))
        long = cls.train_resize_long if resize_long is None else bool(resize_long)
        return TrainTransform(image_size, scale=scale, resize_long=image_size if long else None)

    def _index(self) -> tuple[Sequence[Entry], ScanResult, Sequence[int]]:
        """The images of this split, their scan (see :func:`~fewshot_priors.data.index.scan_entries`)
        and the classes episodes are drawn from (the fold's train or held-out classes)."""
        raise NotImplementedError

    def _build_episodes(
        self, entries: Sequence[Entry], scan: ScanResult, class_ids: Sequence[int], episodes: int | None
    ) -> None:
        shots, query_sampling = self.shots, self.query_sampling
        if episodes is None and self.split == "val":
            episodes = self.default_episodes
        self.min_model_pixels = int(getattr(self.options, "min_model_pixels", 1))
        self._report_bad(scan.bad)
        self.entries = self._without_novel([e for e in entries if e.name in scan.counts], scan)
        self.fold_class_ids = [int(c) for c in class_ids]
        self._report_notes({e.name: scan.notes[e.name] for e in self.entries if e.name in scan.notes})

        images: dict[int, list[int]] = {c: [] for c in self.fold_class_ids}
        vanished: list[tuple[str, int, int, int]] = []  # (image, class, px at original size, px at model size)
        for idx, e in enumerate(self.entries):
            for c, n in scan.counts[e.name].items():
                if c in images and n >= self.min_pixels:
                    n_model = n if scan.model_counts is None else scan.model_counts[e.name].get(c, 0)
                    if n_model >= self.min_model_pixels:
                        images[c].append(idx)
                    else:
                        vanished.append((e.name, c, n, n_model))
        if vanished:
            self._report_vanished(vanished, scan.model_size)
        too_few = {c: len(v) for c, v in images.items() if len(v) < shots + 1}
        usable = [c for c in self.fold_class_ids if c not in too_few]
        if not usable:
            raise ValueError(
                f"no class of this split has the {shots + 1} eligible images a {shots}-shot "
                f"episode needs (class id -> eligible images with >= {self.min_pixels} px: "
                f"{too_few}); check the data, `min_pixels` or `shots`"
            )
        if too_few:
            listed = [f"{self._class_name(c)} ({n})" for c, n in sorted(too_few.items(), key=lambda cn: cn[1])]
            more = f" and {len(listed) - _LISTED} more" if len(listed) > _LISTED else ""
            warnings.warn(
                f"{type(self).__name__}: {len(too_few)} of {len(self.fold_class_ids)} classes have fewer than "
                f"{shots + 1} eligible images (>= {self.min_pixels} foreground px) and are left out of the "
                f"episodes; class (eligible images): {', '.join(listed[:_LISTED])}{more}",
                stacklevel=3,
            )
        usable, self.val_class_ids = self._hold_out_validation(usable)
        self.class_ids = usable
        self.class_images = {c: np.asarray(images[c], dtype=np.int64) for c in usable}
        self.pairs = sorted((i, c) for c in usable for i in images[c])
        if query_sampling == "images":  # PFENet: one item per image, its class drawn per episode
            def visible(name: str, c: int) -> bool:  # present at the model's size, when it is known
                return scan.model_counts is None or scan.model_counts[name].get(c, 0) >= self.min_model_pixels

            present = {
                i: tuple(sorted(
                    c for c, n in scan.counts[self.entries[i].name].items()
                    if c in images and n > 0 and visible(self.entries[i].name, c)
                ))
                for i in sorted({i for i, _ in self.pairs})
            }
            self._queries: list = sorted(present.items())
        else:
            self._queries = self.pairs
        self._length = episodes if episodes is not None else len(self._queries)
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _without_novel(self, entries: list[Entry], scan: ScanResult) -> list[Entry]:
        """``entries`` less the training images holding a held-out class (``exclude_novel_images``);
        ``excluded_novel_images`` counts them."""
        self.excluded_novel_images = 0
        if self.split != "train" or not getattr(self.options, "exclude_novel_images", False):
            return entries
        novel = getattr(self, "test_class_ids", None)
        if novel is None:
            raise ValueError(f"exclude_novel_images: {type(self).__name__} does not name its held-out classes "
                             "(set `test_class_ids` in its _index)")
        novel = {int(c) for c in novel}
        kept = [e for e in entries if not self._holds_novel(e, scan, novel)]
        self.excluded_novel_images = len(entries) - len(kept)
        return kept

    def _holds_novel(self, entry: Entry, scan: ScanResult, novel: set[int]) -> bool:
        """Whether ``entry``'s image shows a held-out class (``novel``): a pixel of it in its label."""
        return any(n > 0 and c in novel for c, n in scan.counts[entry.name].items())

    # ------------------------------------------------------------------ API
    def read_label(self, entry: Entry) -> np.ndarray:
        """``H, W`` array of dataset class ids (0 background, 255 ignore)."""
        raise NotImplementedError

    def read_image(self, entry: Entry) -> np.ndarray:
        """``H, W, 3`` uint8 RGB image of an entry."""
        return read_image(entry.image)

    def set_epoch(self, epoch: int) -> None:
        """Select the episode order of a training epoch (no effect on the val split).

        With ``persistent_workers=True`` the workers keep their own copy of the
        dataset; index it with ``(epoch, i)`` tuples instead (e.g. from a sampler).
        """
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def episode(self, index: int, epoch: int | None = None, shots: int | None = None) -> tuple[int, int, list[int]]:
        """The ``(query entry index, class id, support entry indices)`` of an episode
        (``shots``: its K, default ``self.shots``; see :meth:`__getitem__`)."""
        qi, c, supports, _ = self._sample(int(index), self._epoch_of(epoch), self._shots_of(shots))
        return qi, c, supports

    def _sample(self, index: int, epoch: int, shots: int):
        rng = np.random.default_rng([self.seed, epoch, index])
        qi, c = self._query_pair(index, epoch)
        if self.query_sampling == "images":  # c holds the image's classes
            c = int(c[rng.integers(len(c))])
        pool = self.class_images[c]
        pool = pool[pool != qi]
        if shots <= len(pool):
            supports = rng.choice(pool, size=shots, replace=False).tolist()
        else:  # more shots than the class has other images: each once, then again in the same order
            supports = np.resize(rng.permutation(pool), shots).tolist()
        return qi, c, supports, rng

    def _shots_of(self, shots: int | None) -> int:
        if shots is None:
            return self.shots
        if not is_int(shots) or shots < self.shots:
            raise ValueError(f"an item's `shots` must be an int >= the dataset's shots={self.shots}, got {shots!r}")
        return int(shots)

    def __getitem__(self, index: int | tuple[int, int] | tuple[int, int, int]) -> dict[str, Any]:
        """The episode ``index`` as a dict of tensors (see :func:`collate_episodes`).

        ``index`` may be ``(epoch, index)`` (that epoch's episode, see :meth:`set_epoch`) or
        ``(epoch, index, shots)``: the same episode with ``shots`` >= ``self.shots`` supports,
        as a training step that draws its K asks for (``train.max_shots``). A class with
        fewer other images than ``shots`` repeats them, each copy augmented anew; the first
        ``self.shots`` supports never repeat.
        """
        epoch = shots = None
        if isinstance(index, tuple):
            epoch, index, *rest = index
            shots = rest[0] if rest else None
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"episode index {index} out of range for {len(self)} episodes")
        epoch, shots = self._epoch_of(epoch), self._shots_of(shots)
        last_err: BadDataError | None = None
        for attempt in range(_MAX_READ_RETRIES):
            i = (index + attempt * 7919) % len(self)
            try:
                return self._make_episode(i, epoch, shots)
            except BadDataError as err:
                if self.strict:
                    raise
                warnings.warn(f"skipping episode {i}: {err}", stacklevel=2)
                last_err = err
        raise BadDataError(
            f"{_MAX_READ_RETRIES} episodes in a row could not be read; last error: {last_err}"
        )

    # ------------------------------------------------------------ internals
    def _epoch_of(self, epoch: int | None) -> int:
        if self.split == "val":
            return 0
        return self.epoch if epoch is None else int(epoch)

    def _query_pair(self, index: int, epoch: int) -> tuple[int, int]:
        n = len(self._queries)
        cycle, j = divmod(index, n)
        key = (epoch, cycle)
        perm = self._perm_cache.get(key)
        if perm is None:
            if len(self._perm_cache) > 8:
                self._perm_cache.clear()
            perm = np.random.default_rng([self.seed, epoch, _ORDER_TAG, cycle]).permutation(n)
            self._perm_cache[key] = perm
        return self._queries[int(perm[j])]

    def _binary(self, entry: Entry, c: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.read_image(entry)
        with warnings.catch_warnings():  # already reported once, at construction
            warnings.simplefilter("ignore", AmbiguousMaskWarning)
            label = self.read_label(entry)
        if label.shape != image.shape[:2]:
            raise BadDataError(
                f"image {entry.image} is {image.shape[0]}x{image.shape[1]} but its label "
                f"{entry.label} is {label.shape[0]}x{label.shape[1]}"
            )
        mask = np.zeros(label.shape, dtype=np.int64)
        mask[label == c] = 1
        mask[label == IGNORE_INDEX] = IGNORE_INDEX
        return image, mask

    def _make_episode(self, index: int, epoch: int, shots: int) -> dict[str, Any]:
        qi, c, support_idx, rng = self._sample(index, epoch, shots)
        q_entry = self.entries[qi]
        q_img, q_mask = self._binary(q_entry, c)
        qx, qy, q_hw = self.transform(q_img, q_mask, rng)
        empty = [("query", q_entry.name)] if not bool((qy == 1).any()) else []
        s_imgs, s_masks = [], []
        for si in support_idx:
            img, mask = self._binary(self.entries[si], c)
            sx, sy, _ = self.transform(img, mask, rng)
            s_imgs.append(sx)
            s_masks.append(sy)
            if not bool((sy == 1).any()):
                empty.append(("support", self.entries[si].name))
        if empty:
            self._warn_empty(empty, c)
        item: dict[str, Any] = {
            "query_image": qx,
            "query_mask": qy,
            "support_images": torch.stack(s_imgs),
            "support_masks": torch.stack(s_masks),
            "class_id": int(c),
            "query_name": q_entry.name,
            "support_names": [self.entries[si].name for si in support_idx],
        }
        if self.split == "val":
            item["query_mask_orig"] = torch.from_numpy(q_mask)
            item["query_valid_hw"] = torch.tensor([int(q_hw[0]), int(q_hw[1])], dtype=torch.int64)
        return item

    def _hold_out_validation(self, usable: list[int]) -> tuple[list[int], list[int]]:
        """``(training classes, validation classes)``: the ``train`` split holds back a seeded
        ``val_class_ratio`` share of its usable classes (at least one, never all)."""
        ratio = float(getattr(self.options, "val_class_ratio", 0.0))
        if self.split != "train" or ratio == 0:
            return usable, []
        if len(usable) < 2:
            raise ValueError(f"`val_class_ratio`={ratio} needs at least 2 training classes with enough images "
                             f"for an episode, this split has {len(usable)}")
        n_val = min(len(usable) - 1, max(1, round(ratio * len(usable))))
        perm = np.random.default_rng([self.seed, 7919]).permutation(len(usable))
        val = sorted(usable[int(i)] for i in perm[:n_val])
        return [c for c in usable if c not in val], val

    def _class_name(self, c: int) -> str:
        return str(getattr(self, "class_names", {}).get(c, c))

    def _report_vanished(self, vanished: Sequence[tuple[str, int, int, int]], model_size: int | None) -> None:
        """One warning for the pairs left out because the object vanishes at the model's size."""
        listing = ", ".join(
            f"{name} (class {self._class_name(c)!r}: {n} px -> {m} px)" for name, c, n, m in vanished[:5]
        )
        more = "" if len(vanished) <= 5 else f", ... and {len(vanished) - 5} more"
        warnings.warn(
            f"{type(self).__name__}: {len(vanished)} (image, class) pair(s) have >= {self.min_pixels} "
            f"foreground px at the original resolution but fewer than {self.min_model_pixels} after the "
            f"resize of the longer side to {model_size} px (the size the model sees); they are not drawn "
            f"as query or support: {listing}{more}",
            stacklevel=4,
        )

    def _warn_empty(self, empty: Sequence[tuple[str, str]], c: int) -> None:
        """Warn (once per dataset object, i.e. once per worker) about masks the transform emptied."""
        self._empty_masks += 1
        if self._empty_masks > 1:
            return
        what = "; ".join(f"the {role} mask of {name}" for role, name in empty)
        verb = "has" if len(empty) == 1 else "have"
        warnings.warn(
            f"{type(self).__name__}: class {self._class_name(c)!r}: {what} {verb} 0 foreground pixels after "
            f"{self.transform!r} (the random crop/rotation left the object out, or it is too small at this "
            "size); the episode is used as drawn, as in PFENet. Shown once per dataset; "
            "`empty_mask_episodes` counts them.",
            stacklevel=4,
        )

    @property
    def empty_mask_episodes(self) -> int:
        """Episodes made so far (in this process) with a support or query mask emptied by the transform."""
        return self._empty_masks

    def _report_notes(self, notes: Mapping[str, str]) -> None:
        """One warning for the masks read with a fallback rule (ambiguous masks)."""
        if not notes:
            return
        listing = "\n  ".join(list(notes.values())[:5])
        more = "" if len(notes) <= 5 else f"\n  ... and {len(notes) - 5} more"
        warnings.warn(
            f"{type(self).__name__}: {len(notes)} mask(s) are ambiguous and were read with a fallback "
            f"rule (strict=True refuses them):\n  {listing}{more}",
            AmbiguousMaskWarning,
            stacklevel=4,
        )

    def _report_bad(self, bad: Mapping[str, str]) -> None:
        if not bad:
            return
        listing = "\n  ".join(list(bad.values())[:10])
        more = "" if len(bad) <= 10 else f"\n  ... and {len(bad) - 10} more"
        msg = f"{len(bad)} image/label pair(s) cannot be used:\n  {listing}{more}"
        if self.strict:
            raise BadDataError(msg)
        warnings.warn(f"{type(self).__name__}: skipping {msg}", stacklevel=4)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, shots={self.shots}, "
            f"classes={self.class_ids}, images={len(self.entries)}, episodes={len(self)}, "
            f"seed={self.seed})"
        )


_LIST_KEYS = ("query_mask_orig", "query_name", "support_names")


def collate_episodes(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch episodes for a DataLoader (``collate_fn=collate_episodes``).

    Tensors are stacked (``query_image`` -> ``B, 3, H, W``, ``support_images`` ->
    ``B, K, 3, H, W``, ``query_valid_hw`` -> ``B, 2``), ``class_id`` becomes an
    int64 ``B`` tensor, and ``query_mask_orig`` (different sizes), ``query_name``
    and ``support_names`` stay lists.
    """
    if len(batch) == 0:
        raise ValueError("`batch` must contain at least one episode")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in _LIST_KEYS:
            out[key] = list(values)
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int | np.integer):
            out[key] = torch.tensor([int(v) for v in values], dtype=torch.int64)
        else:
            out[key] = list(values)
    return out


def _hw(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (h, w), got {value!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"`{name}` must be positive, got {(h, w)}")
    return h, w


def _restore_one(x: torch.Tensor, valid_hw: Any, orig_hw: Any) -> torch.Tensor:
    h, w = _hw(valid_hw, "valid_hw")
    H0, W0 = _hw(orig_hw, "orig_hw")
    floating = x.is_floating_point()
    if floating and x.dim() != 3:
        raise ValueError(
            f"floating point `logits_or_pred` must be logits C, H, W (B, C, H, W batched), "
            f"got shape {tuple(x.shape)}"
        )
    if not floating and x.dim() != 2:
        raise ValueError(
            f"integer `logits_or_pred` must be a label map H, W (B, H, W batched), "
            f"got shape {tuple(x.shape)}"
        )
    Hc, Wc = x.shape[-2:]
    if h > Hc or w > Wc:
        raise ValueError(f"`valid_hw` {(h, w)} exceeds the prediction size {(Hc, Wc)}")
    y = x[None] if floating else x.to(torch.float32)[None, None]
    if Hc == Wc:
        # square canvas, content at the top-left (TestTransform): PFENet's scoring,
        # i.e. resize the whole S x S canvas to L x L (L = the longer original side)
        # and crop the original H0 x W0 from its top-left corner
        side = max(H0, W0)
        size, crop = (side, side), (H0, W0)
    else:  # any other canvas: crop the content and resize it to the original size
        y = y[..., :h, :w]
        size, crop = (H0, W0), (H0, W0)
    if floating:
        logits = F.interpolate(y, size=size, mode="bilinear", align_corners=True)[0]
        logits = logits[:, : crop[0], : crop[1]]
        if logits.shape[0] == 1:
            return (logits[0] > 0).long()
        return logits.argmax(0)
    pred = F.interpolate(y, size=size, mode="nearest")[0, 0, : crop[0], : crop[1]]
    return pred.long()


def restore_prediction(
    logits_or_pred: torch.Tensor,
    valid_hw: Any,
    orig_hw: Any,
) -> torch.Tensor | list[torch.Tensor]:
    """Map a prediction on the padded test canvas back to the original label size.

    For a square canvas (:class:`~fewshot_priors.data.TestTransform`: content at
    the top-left) this is PFENet's scoring protocol exactly (``ori_resize``): the
    whole ``S x S`` canvas is resized to ``L x L`` with ``L = max(H0, W0)`` and the
    top-left ``H0 x W0`` is kept (so, as in PFENet, the multiple-of-8 flooring of
    the content is not undone: up to a few pixels of misalignment at the far
    edges are part of the published protocol). Any other canvas is cropped to its
    un-padded ``[:h, :w]`` region and resized to ``orig_hw``.
    Logits are resized bilinearly (``align_corners=True``, as PFENet) and then
    argmax-ed (one channel: ``> 0``); label maps are resized with nearest
    neighbour, which is coarser: pass logits to reproduce published numbers.

    Args:
        logits_or_pred: float logits ``C, H, W`` or an integer/bool label map
            ``H, W``; batched ``B, C, H, W`` / ``B, H, W`` when ``orig_hw`` is a list.
        valid_hw: ``[h, w]`` (``query_valid_hw``), or ``B, 2`` batched.
        orig_hw: ``(H0, W0)`` (e.g. ``query_mask_orig.shape``), or a list of them.

    Returns:
        int64 ``H0, W0`` prediction, or a list of them when batched.

    Example:
        >>> pred = restore_prediction(logits[0], batch["query_valid_hw"][0],
        ...                           batch["query_mask_orig"][0].shape)  # doctest: +SKIP
    """
    if not isinstance(logits_or_pred, torch.Tensor):
        raise TypeError(
            f"`logits_or_pred` must be a torch.Tensor, got {type(logits_or_pred).__name__}"
        )
    x = logits_or_pred.detach()
    if x.dtype == torch.bool:
        x = x.long()
    batched = isinstance(orig_hw, list | tuple) and len(orig_hw) > 0 and not isinstance(
        orig_hw[0], int | np.integer
    )
    if isinstance(orig_hw, torch.Tensor) and orig_hw.dim() == 2:
        batched, orig_hw = True, orig_hw.tolist()
    if not batched:
        return _restore_one(x, valid_hw, orig_hw)
    if x.shape[0] != len(orig_hw) or len(valid_hw) != len(orig_hw):
        raise ValueError(
            f"batch size mismatch: `logits_or_pred` has {x.shape[0]}, `valid_hw` has "
            f"{len(valid_hw)} and `orig_hw` has {len(orig_hw)} entries"
        )
    return [_restore_one(x[b], valid_hw[b], orig_hw[b]) for b in range(len(orig_hw))]
