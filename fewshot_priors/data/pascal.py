"""PASCAL-5i few-shot episodes read from the standard VOC layout on disk."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validate import is_int
from .episodes import DatasetOptions, EpisodicDataset
from .index import Entry, ScanResult, scan_entries
from .io import DataLayoutError, read_label
from .registry import register_dataset

PASCAL_LAYOUT = """expected layout under root:
  VOC2012/JPEGImages/<id>.jpg
  VOC2012/SegmentationClassAug/<id>.png      (palette or grey PNG, 255 = boundary)
  VOC2012/ImageSets/Segmentation/train_aug.txt (or train.txt) and val.txt
  [dataset.json]                              (optional: num_classes, folds, class_names)"""

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def _resolve_voc_dir(root: Path) -> Path:
    for cand in (root / "VOC2012", root / "VOCdevkit" / "VOC2012", root):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise DataLayoutError(f"no PASCAL VOC data found under {root}\n{PASCAL_LAYOUT}")


def _read_list(path: Path) -> list[str]:
    """Image ids of a split list; lines may be ``id`` or ``JPEGImages/id.jpg label.png``."""
    names = []
    for line in path.read_text().splitlines():
        tok = line.strip().split()
        if tok:
            names.append(Path(tok[0]).stem)
    return list(dict.fromkeys(names))  # de-duplicate, keep order


def fold_test_classes(
    fold: int, num_classes: int = 20, num_folds: int = 4
) -> list[int]:
    """Test classes of a fold: contiguous blocks, fold i -> ``i*n+1 .. (i+1)*n``."""
    if num_classes % num_folds:
        raise ValueError(
            f"`num_classes` ({num_classes}) must be divisible by the number of folds "
            f"({num_folds}); pass `fold_classes` explicitly"
        )
    per = num_classes // num_folds
    return list(range(fold * per + 1, (fold + 1) * per + 1))


@dataclass(frozen=True)
class PascalOptions(DatasetOptions):
    """Options of :class:`PascalFewShot` (and of other datasets in the PASCAL layout).

    The fields of :class:`~fewshot_priors.data.DatasetOptions` (``min_pixels``, ``fold_classes``:
    class ids 1..N, ``query_sampling``, ``strict``, ``cache``), and:

    Args:
        num_classes: number of foreground classes (``None`` = from ``dataset.json``, else 20).
        num_folds: number of folds when the folds are derived from ``num_classes`` (4).
        use_split_list: use the ``ImageSets/Segmentation`` lists; ``False`` uses every
            label in ``SegmentationClassAug`` for both splits (classes still disjoint).
    """

    num_classes: int | None = None
    num_folds: int = 4
    use_split_list: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 1):
            raise ValueError(f"`num_classes` must be an int >= 1 or None, got {self.num_classes!r}")
        if not is_int(self.num_folds) or self.num_folds < 1:
            raise ValueError(f"`num_folds` must be an int >= 1, got {self.num_folds!r}")


@register_dataset("pascal")
class PascalFewShot(EpisodicDataset):
    """PASCAL-5i episodes (PFENet's protocol, docs/how-to/reproduce.md) from ``root`` on disk.

    The class -> images index is built once by scanning the labels (progress bar)
    and cached as ``.fewshot_index_<list>.json`` beside the data; an (image,
    class) pair is eligible if the class covers >= ``min_pixels`` pixels. Fold
    ``i`` tests classes ``5i+1 .. 5i+5`` and trains on the other 15. Training
    episodes go over the train-class pairs of the train list (reshuffled per
    :meth:`set_epoch`); validation episodes over the test classes of ``val.txt``
    form a fixed list determined by ``seed`` (5000 by default).

    Other datasets in this layout (such as the built-in synthetic one) can use
    fewer classes: ``PascalOptions(num_classes=...)`` / ``fold_classes`` override the
    folds, and a ``dataset.json`` in ``root`` with ``{"num_classes": N, "folds": [[...], ...]}``
    is read automatically.

    Takes the shared dataset signature (see :class:`~fewshot_priors.data.EpisodicDataset`)
    with ``root`` the folder containing ``VOC2012/`` (or the ``VOC2012`` folder itself),
    ``fold`` 0-3 for PASCAL-5i and ``options`` a :class:`PascalOptions`. The default
    training transform scales by 0.9-1.1.

    Example:
        >>> ds = PascalFewShot("/data/pascal", fold=0, split="val", shots=1)  # doctest: +SKIP
        >>> ep = ds[0]; ep["query_image"].shape, ep["support_images"].shape  # doctest: +SKIP
        (torch.Size([3, 473, 473]), torch.Size([1, 3, 473, 473]))
    """

    options_class = PascalOptions
    default_episodes = 5000
    train_scale = (0.9, 1.1)
    layout = PASCAL_LAYOUT

    def _index(self) -> tuple[list[Entry], ScanResult, list[int]]:
        root, opts = self.root, self.options
        self.voc_dir = voc = _resolve_voc_dir(root)
        self.meta = self._read_meta(root, voc)
        n = int(opts.num_classes if opts.num_classes is not None else self.meta.get("num_classes", 20))
        self.num_classes = n
        test_classes = self._test_classes(self.fold, n, opts.fold_classes, opts.num_folds)
        self.test_class_ids = test_classes
        self.train_class_ids = [c for c in range(1, n + 1) if c not in test_classes]
        self.class_names = dict(
            zip(range(1, n + 1), self.meta.get("class_names") or (VOC_CLASSES if n == 20 else
                [f"class_{c}" for c in range(1, n + 1)]))
        )

        label_dir = voc / "SegmentationClassAug"
        if not label_dir.is_dir():
            if (voc / "SegmentationClass").is_dir():
                warnings.warn(
                    f"{label_dir} not found; using {voc / 'SegmentationClass'} (VOC labels only)",
                    stacklevel=4,
                )
                label_dir = voc / "SegmentationClass"
            else:
                raise DataLayoutError(f"label folder {label_dir} not found\n{PASCAL_LAYOUT}")
        self.label_dir = label_dir
        names, list_name = self._split_names(voc, label_dir, self.split, opts.use_split_list)
        entries = [
            Entry(nm, voc / "JPEGImages" / f"{nm}.jpg", label_dir / f"{nm}.png") for nm in names
        ]
        scan = scan_entries(
            entries,
            lambda e: read_label(e.label),
            voc / f".fewshot_index_{label_dir.name}_{list_name}.json" if opts.cache else None,
            description=f"indexing PASCAL {list_name}",
            progress=self.progress,
        )
        return entries, scan, self.train_class_ids if self.split == "train" else test_classes

    def read_label(self, entry: Entry) -> np.ndarray:
        return read_label(entry.label)

    # ----------------------------------------------------------- helpers
    @staticmethod
    def _read_meta(root: Path, voc: Path) -> dict:
        for cand in (root / "dataset.json", voc / "dataset.json", voc.parent / "dataset.json"):
            if cand.is_file():
                try:
                    meta = json.loads(cand.read_text())
                except ValueError as err:
                    raise DataLayoutError(f"cannot parse {cand}: {err}") from err
                if not isinstance(meta, dict):
                    raise DataLayoutError(f"{cand} must hold a JSON object")
                return meta
        return {}

    def _test_classes(
        self, fold: int, n: int, fold_classes: Sequence[int] | None, num_folds: int
    ) -> list[int]:
        if fold_classes is not None:
            classes = [int(c) for c in fold_classes]
        else:
            folds = self.meta.get("folds")
            if folds is not None and (self.meta.get("num_classes", n) == n):
                if not 0 <= fold < len(folds):
                    raise ValueError(f"`fold` must be in 0..{len(folds) - 1}, got {fold}")
                classes = [int(c) for c in folds[fold]]
            else:
                if not isinstance(fold, int) or not 0 <= fold < num_folds:
                    raise ValueError(f"`fold` must be in 0..{num_folds - 1}, got {fold!r}")
                classes = fold_test_classes(fold, n, num_folds)
        bad = [c for c in classes if not 1 <= c <= n]
        if bad or not classes:
            raise ValueError(
                f"`fold_classes` must be a non-empty list of class ids in 1..{n}, got {classes}"
            )
        return sorted(set(classes))

    @staticmethod
    def _split_names(
        voc: Path, label_dir: Path, split: str, use_split_list: bool
    ) -> tuple[list[str], str]:
        if not use_split_list:
            return sorted(p.stem for p in label_dir.glob("*.png")), "all"
        lists = voc / "ImageSets" / "Segmentation"
        val_list = lists / "val.txt"
        if split == "val":
            if not val_list.is_file():
                raise DataLayoutError(f"split list {val_list} not found\n{PASCAL_LAYOUT}")
            return _read_list(val_list), "val"
        for name in ("train_aug.txt", "train.txt"):
            if (lists / name).is_file():
                names = _read_list(lists / name)
                if val_list.is_file():  # PFENet removes val images from the train list
                    val = set(_read_list(val_list))
                    names = [nm for nm in names if nm not in val]
                return names, Path(name).stem
        raise DataLayoutError(
            f"no train list (train_aug.txt or train.txt) in {lists}\n{PASCAL_LAYOUT}"
        )
