"""Few-shot episodes from a user's own data: one folder per class (FSS-1000 layout)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._validate import is_int
from .episodes import DatasetOptions, EpisodicDataset
from .index import Entry, ScanResult, scan_entries
from .io import IGNORE_INDEX, IMAGE_EXTENSIONS, DataLayoutError, read_binary_mask
from .registry import register_dataset

FOLDER_LAYOUT = """expected layout under root (FSS-1000 style):
  <class_name>/<image_id>.jpg     an image
  <class_name>/<image_id>.png     its mask: foreground = 1 (0/1 masks) or > 127 (0/255 masks),
                                  any PIL mode (grey, 1-bit, palette, RGB, LA/RGBA, 16-bit)
  ... one folder per class; image and mask share the file stem"""

_SPLIT_TAG = 99991  # separates the class-split stream from the episode streams


@dataclass(frozen=True)
class FolderOptions(DatasetOptions):
    """Options of :class:`FolderFewShot`: how the classes are split, which pairs are drawn, file names.

    ``query_sampling``, ``strict`` (also refuses ambiguous masks) and ``cache`` are those of
    :class:`~fewshot_priors.data.DatasetOptions`.

    Args:
        min_pixels: minimum foreground pixels of an eligible pair at the original
            resolution (default 1).
        fold_classes: the held-out classes: folder names, or class ids ``1..N``; not
            combinable with ``num_folds``, ``test_ratio``, ``min_class_images``.
        num_folds: number of seeded folds over the candidate classes (>= 2).
        test_ratio: share of the candidate classes held out per fold (default 0.2);
            not combinable with ``num_folds``.
        min_class_images: only classes with at least this many image/mask pairs
            are candidates of the seeded folds (the others always train).
        split_seed: seed of the class split (``None`` = the episode ``seed``); keep it fixed
            when the episode seed changes so that train and val see the same split.
        min_model_pixels: minimum foreground pixels of an eligible pair after the
            resize to ``image_size`` (default 1: the object must not vanish).
        image_ext: image file extension(s) to look for (default: every format the readers
            open, :data:`~fewshot_priors.data.io.IMAGE_EXTENSIONS`; a ``.png`` is an image
            only when its mask has another extension).
        mask_ext: mask file extension.
    """

    min_pixels: int = 1
    num_folds: int | None = None
    test_ratio: float | None = None
    min_class_images: int | None = None
    split_seed: int | None = None
    min_model_pixels: int = 1
    image_ext: str | tuple[str, ...] = IMAGE_EXTENSIONS
    mask_ext: str = ".png"

    _fold_classes_by_name: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fold_classes is None:
            _check_fold_args(self.test_ratio, self.num_folds, self.min_class_images)
        else:
            clash = [k for k in ("num_folds", "test_ratio", "min_class_images") if getattr(self, k) is not None]
            if clash:
                raise ValueError(
                    f"`fold_classes` names the held-out classes; `{clash[0]}` only shapes the seeded "
                    "folds and cannot be combined with it"
                )
        if self.split_seed is not None and (not is_int(self.split_seed) or self.split_seed < 0):
            raise ValueError(f"`split_seed` must be a non-negative int or None, got {self.split_seed!r}")
        if not is_int(self.min_model_pixels) or self.min_model_pixels < 1:
            raise ValueError(
                f"`min_model_pixels` must be a positive int (1 = must not vanish), got {self.min_model_pixels!r}"
            )
        if not isinstance(self.image_ext, str):
            object.__setattr__(self, "image_ext", tuple(self.image_ext))


@register_dataset("folder")
class FolderFewShot(EpisodicDataset):
    """Episodes over a folder of class folders with image/mask pairs (FSS-1000 layout).

    Class ids are ``1..N`` in sorted folder-name order; ``class_names[id]`` gives
    the folder. Classes are split at the class level (:class:`FolderOptions`), in
    this order of precedence:

    * ``fold_classes``: the held-out classes, as folder names or class ids ``1..N``;
    * ``num_folds``: a seeded permutation (``split_seed``) of the candidate classes
      cut into ``num_folds`` near-equal disjoint blocks; block ``fold`` is held out
      (cross-validation over classes: the folds partition the candidates);
    * otherwise ``test_ratio`` (default 0.2) of the candidates per block, block ``fold``.

    The candidates of the seeded folds are the classes with at least
    ``min_class_images`` image/mask pairs (default: every class); the other
    classes are always training classes.

    Masks are read by :func:`~fewshot_priors.data.io.read_binary_mask` (one rule
    for every format: 0/1 masks have foreground 1 and 255 = ignore, other masks
    foreground > 127; ambiguous masks are reported once at construction).

    A (image, class) pair is drawn (as query or support) when the class covers at
    least ``min_pixels`` pixels at the original resolution (the PASCAL/COCO rule)
    *and* at least ``min_model_pixels`` pixels after the nearest-neighbour resize
    of the test transform (longer side to the transform's size, ``image_size`` by
    default), i.e. at the size the model sees: thin or small objects that vanish there
    are left out (one warning lists them).

    Takes the shared dataset signature (see :class:`~fewshot_priors.data.EpisodicDataset`)
    with ``root`` the folder with one sub-folder per class, ``fold`` the block of the
    seeded class permutation held out, ``episodes`` (default: one per eligible pair for
    train, 1000 for val) and ``options`` a :class:`FolderOptions`. The default training
    transform resizes the longer side to ``image_size`` before the random scale
    (augmentation at the test scale). ``seed`` also splits the classes when
    ``options.split_seed`` is None.

    Example:
        A folder ``my_data/`` with ``cat/001.jpg``, ``cat/001.png``, ``dog/...``::

            from fewshot_priors.data import FolderFewShot, FolderOptions, collate_episodes
            opts = FolderOptions(fold_classes=("dog",))
            train = FolderFewShot("my_data", shots=1, split="train", options=opts)
            val = FolderFewShot("my_data", shots=5, split="val", options=opts)
            loader = torch.utils.data.DataLoader(val, batch_size=4,
                                                 collate_fn=collate_episodes)
    """

    options_class = FolderOptions
    default_episodes = 1000
    train_resize_long = True  # photos of any size: train at the test scale
    layout = FOLDER_LAYOUT

    def _index(self) -> tuple[list[Entry], ScanResult, list[int]]:
        root, opts, split = self.root, self.options, self.split
        self.mask_ext = opts.mask_ext
        class_dirs = class_folders(root)
        if not class_dirs:
            raise DataLayoutError(f"no class folders in {root}\n{FOLDER_LAYOUT}")
        self.class_names = {i + 1: p.name for i, p in enumerate(class_dirs)}

        pairs = {c: image_mask_pairs(root / d, opts.image_ext, opts.mask_ext) for c, d in self.class_names.items()}
        self.class_image_counts = {c: sum(m.is_file() for _, m in v) for c, v in pairs.items()}

        if opts.fold_classes is not None:
            test = self._resolve_classes(opts.fold_classes, "fold_classes")
        else:
            split_seed = self.seed if opts.split_seed is None else opts.split_seed
            cands = [c for c in self.class_names if self.class_image_counts[c] >= (opts.min_class_images or 0)]
            test = _seeded_fold(cands, self.fold, opts.num_folds, opts.test_ratio, split_seed, opts.min_class_images)
        self.test_class_ids = test
        self.train_class_ids = [c for c in self.class_names if c not in test]
        # a photo with several classes sits in each of their folders: the held-out ones are known by name
        self._novel_images = {img.stem for c in test for img, _ in pairs[c]}
        if not self.train_class_ids:
            raise ValueError(f"every class of {root} is held out; leave some classes for training")
        use = test if split == "val" else self.train_class_ids

        entries, self._entry_class = [], {}
        for c in use:
            for img, mask in pairs[c]:
                name_ = f"{self.class_names[c]}/{img.stem}"
                entries.append(Entry(name_, img, mask))
                self._entry_class[name_] = c
        if not entries:
            raise DataLayoutError(f"no image/mask pairs found under {root}\n{FOLDER_LAYOUT}")

        size = int(getattr(self.transform, "size", self.image_size))
        scan = scan_entries(
            entries,
            self.read_label,
            root / f".fewshot_index_{split}.json" if opts.cache else None,
            description="indexing class folders",
            extra_key=f"{opts.mask_ext}|{test}|strict={opts.strict}",
            progress=self.progress,
            model_size=size,
        )
        return entries, scan, use

    def _holds_novel(self, entry: Entry, scan: ScanResult, novel: set[int]) -> bool:
        """A mask holds one class only: a photo shows a held-out class when a held-out class
        folder holds the same photo (the same file stem)."""
        return Path(entry.image).stem in self._novel_images

    def read_label(self, entry: Entry) -> np.ndarray:
        """Binary mask -> class map: the entry's class id, 0 elsewhere, 255 ignored."""
        raw = read_binary_mask(entry.label, strict=self.strict)
        label = raw * np.uint8(self._entry_class[entry.name])
        label[raw == IGNORE_INDEX] = IGNORE_INDEX
        return label

    def _resolve_classes(self, classes: Sequence[str | int], name: str) -> list[int]:
        """Folder names or class ids ``1..N`` -> sorted class ids."""
        ids = {n: c for c, n in self.class_names.items()}
        out, unknown = set(), []
        for v in classes:
            if is_int(v):
                v = int(v)
                if str(v) in ids and ids[str(v)] != v:
                    raise ValueError(
                        f"`{name}` entry {v} is ambiguous: class id {v} is folder "
                        f"{self.class_names.get(v)!r} but a folder is named {str(v)!r}; "
                        f"quote folder names (e.g. ['{v}'])"
                    )
                if not 1 <= v <= len(self.class_names):
                    unknown.append(v)
                else:
                    out.add(v)
            elif isinstance(v, str) and v in ids:
                out.add(ids[v])
            else:
                unknown.append(v)
        if unknown:
            hints = [
                f"{u!r} -> {close}" for u in unknown if isinstance(u, str)
                for close in [difflib.get_close_matches(u, list(ids), n=3)] if close
            ]
            raise ValueError(
                f"`{name}` {unknown} are not class folders (names) or class ids 1..{len(ids)} of {self.root} "
                f"(found: {sorted(ids)[:10]}{'...' if len(ids) > 10 else ''})"
                + (f"; did you mean: {', '.join(hints)}" if hints else "")
            )
        if not out:
            raise ValueError(f"`{name}` must name at least one class")
        return sorted(out)


def class_folders(root: str | Path) -> list[Path]:
    """The class folders of a folder dataset: its sub-folders (not hidden), sorted by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def image_mask_pairs(
    folder: str | Path, image_ext: str | Sequence[str] = IMAGE_EXTENSIONS, mask_ext: str = ".png"
) -> list[tuple[Path, Path]]:
    """``(image, mask)`` candidates of a class folder, sorted by file name: every file with an
    ``image_ext`` extension (any case) and its ``<stem><mask_ext>``, which may not exist; a
    file that would be its own mask (both ``.png``) is left out."""
    exts = (image_ext,) if isinstance(image_ext, str) else tuple(image_ext)
    out = []
    for img in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in exts):
        mask = img.with_suffix(mask_ext)
        if mask != img:  # image and mask both .png: skip the mask itself
            out.append((img, mask))
    return out


def class_image_counts(root: str | Path) -> dict[str, int]:
    """``{class folder: number of image/mask pairs}`` of a folder dataset.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or none of its class folders holds an
            image with its mask (the message shows the expected layout and, when ``root`` is one
            level too high, the sub-folder to pass instead).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root` {root} is not a folder")
    counts = {d.name: sum(m.is_file() for _, m in image_mask_pairs(d)) for d in class_folders(root)}
    if not any(counts.values()):
        deeper = [d for d in class_folders(root)
                  if any(m.is_file() for sub in class_folders(d) for _, m in image_mask_pairs(sub))]
        hint = f"; its sub-folder {deeper[0]} is laid out so: pass that as the root" if deeper else ""
        raise FileNotFoundError(f"`root` {root}: none of its {len(counts)} sub-folders holds an image with its "
                                f"mask; expected <root>/<class>/<stem>.jpg with the mask <stem>.png{hint}")
    return counts


def list_unique_images(root: str | Path) -> list[str]:
    """Every image with a mask of the folder dataset once (the same photo may sit in several class
    folders; they are told apart by file stem, the first class folder wins), sorted by stem: e.g. an
    unlabelled pretraining set."""
    seen: dict[str, str] = {}
    for d in class_folders(root):
        for img, mask in image_mask_pairs(d):
            if mask.is_file():
                seen.setdefault(img.stem, str(img))
    return [seen[k] for k in sorted(seen)]


def _check_fold_args(test_ratio, num_folds, min_class_images) -> None:
    if test_ratio is not None and num_folds is not None:
        raise ValueError("`num_folds` and `test_ratio` both set: the seeded folds take one of them")
    if test_ratio is not None and (
        isinstance(test_ratio, bool) or not isinstance(test_ratio, (int, float)) or not 0 < test_ratio < 1
    ):
        raise ValueError(f"`test_ratio` must be a number in (0, 1), got {test_ratio!r}")
    if num_folds is not None and (not is_int(num_folds) or num_folds < 2):
        raise ValueError(f"`num_folds` must be an int >= 2, got {num_folds!r}")
    if min_class_images is not None and (not is_int(min_class_images) or min_class_images < 1):
        raise ValueError(f"`min_class_images` must be a positive int or None, got {min_class_images!r}")


def _seeded_fold(
    candidates: Sequence[int],
    fold: int,
    num_folds: int | None,
    test_ratio: float | None,
    split_seed: int,
    min_class_images: int | None,
) -> list[int]:
    """Held-out class ids: block ``fold`` of a seeded permutation of ``candidates``."""
    n = len(candidates)
    which = f"classes with >= {min_class_images} images" if min_class_images else "classes"
    if n < 2:
        raise ValueError(f"the seeded folds need at least 2 {which}, found {n}; lower `min_class_images`")
    perm = np.random.default_rng([split_seed, _SPLIT_TAG]).permutation(n)
    if num_folds is not None:
        if num_folds > n:
            raise ValueError(f"`num_folds` ({num_folds}) exceeds the {n} {which}")
        blocks = np.array_split(perm, num_folds)
    else:
        ratio = 0.2 if test_ratio is None else float(test_ratio)
        n_test = max(1, round(n * ratio))
        if n_test >= n:
            raise ValueError(f"`test_ratio` {ratio} leaves no training class among {n} {which}")
        blocks = [perm[i * n_test : (i + 1) * n_test] for i in range(n // n_test)]
    if not 0 <= fold < len(blocks):
        raise ValueError(
            f"`fold` must be in 0..{len(blocks) - 1} for {n} {which} and "
            + (f"num_folds={num_folds}" if num_folds is not None else f"test_ratio={test_ratio or 0.2}")
            + f", got {fold!r}"
        )
    return sorted(int(candidates[i]) for i in blocks[fold])
