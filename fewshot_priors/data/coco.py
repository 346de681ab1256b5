"""COCO-20i few-shot episodes from COCO 2014 (instance json or pre-converted PNG masks)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .episodes import DatasetOptions, EpisodicDataset
from .index import Entry, ScanResult, scan_entries
from .io import IGNORE_INDEX, BadDataError, DataLayoutError, read_label
from .registry import register_dataset

COCO_LAYOUT = """expected layout under root:
  train2014/<name>.jpg, val2014/<name>.jpg
  annotation_format="json": annotations/instances_train2014.json, annotations/instances_val2014.json
  annotation_format="png":  annotations/train2014/<name>.png, annotations/val2014/<name>.png
                            (class ids 1..80 in sorted COCO category order, 0 = background,
                             255 = ignore)"""

SPLIT_STYLES = ("interleaved", "contiguous")
CROWD_MODES = ("ignore", "include", "background")


def coco_fold_classes(
    fold: int, split_style: str = "interleaved", num_classes: int = 80, num_folds: int = 4
) -> list[int]:
    """Test classes (contiguous ids 1..num_classes) of a COCO-20i fold.

    ``"interleaved"`` (default; PFENet's ``use_split_coco``): fold i tests
    ``i+1, i+5, i+9, ...``. ``"contiguous"``: fold i tests the i-th block of
    ``num_classes / num_folds`` classes (``20i+1 .. 20i+20`` for COCO).
    """
    if split_style not in SPLIT_STYLES:
        raise ValueError(f"`split_style` must be one of {SPLIT_STYLES}, got {split_style!r}")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"`fold` must be in 0..{num_folds - 1}, got {fold!r}")
    if split_style == "interleaved":
        return list(range(fold + 1, num_classes + 1, num_folds))
    per = num_classes // num_folds
    return list(range(fold * per + 1, (fold + 1) * per + 1))


@dataclass(frozen=True)
class CocoOptions(DatasetOptions):
    """Options of :class:`CocoFewShot`.

    The fields of :class:`~fewshot_priors.data.DatasetOptions` (``min_pixels``, ``fold_classes``:
    contiguous class ids, ``query_sampling``, ``strict``, ``cache``), and:

    Args:
        split_style: ``"interleaved"`` (PFENet's ``use_split_coco``) or ``"contiguous"`` fold
            classes, see :func:`coco_fold_classes`.
        annotation_format: ``"json"`` (instance annotations, needs pycocotools) or ``"png"``.
        crowd: ``"ignore"`` (crowd regions are 255), ``"include"`` (painted as their class)
            or ``"background"`` (dropped).
    """

    split_style: str = "interleaved"
    annotation_format: str = "json"
    crowd: str = "ignore"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split_style not in SPLIT_STYLES:
            raise ValueError(f"`split_style` must be one of {SPLIT_STYLES}, got {self.split_style!r}")
        if self.annotation_format not in ("json", "png"):
            raise ValueError(f"`annotation_format` must be 'json' or 'png', got {self.annotation_format!r}")
        if self.crowd not in CROWD_MODES:
            raise ValueError(f"`crowd` must be one of {CROWD_MODES}, got {self.crowd!r}")


@register_dataset("coco")
class CocoFewShot(EpisodicDataset):
    """COCO-20i episodes (PFENet's protocol, docs/how-to/reproduce.md).

    ``annotation_format="json"`` reads ``instances_{train,val}2014.json`` with
    pycocotools and rasterises the instances into a class map per image: the 80
    categories get contiguous ids 1..80 in increasing COCO category id order;
    instances are painted largest first so that smaller objects stay visible;
    crowd regions (``iscrowd=1``) become 255 = ignore by default (``crowd="include"``
    paints them as their class, ``"background"`` drops them). ``"png"`` reads
    pre-converted masks holding those contiguous ids.

    Train episodes use ``train2014`` with the fold's 60 train classes, val
    episodes ``val2014`` with its 20 held-out classes (20000 episodes by default).
    The index is cached beside the annotations (see :class:`PascalFewShot`).

    Takes the shared dataset signature (see :class:`~fewshot_priors.data.EpisodicDataset`)
    with ``root`` the folder with ``train2014/``, ``val2014/`` and ``annotations/``,
    ``fold`` 0-3 and ``options`` a :class:`CocoOptions`. The default training transform
    scales by 0.8-1.25.

    Example:
        >>> ds = CocoFewShot("/data/coco", fold=0, split="val", shots=1)  # doctest: +SKIP
    """

    options_class = CocoOptions
    default_episodes = 20000
    train_scale = (0.8, 1.25)
    layout = COCO_LAYOUT

    def _index(self) -> tuple[list[Entry], ScanResult, list[int]]:
        root, opts, split, fold = self.root, self.options, self.split, self.fold
        if opts.fold_classes is None:
            coco_fold_classes(fold, opts.split_style)  # validates `fold` before the annotations are read
        self.crowd = crowd = opts.crowd
        self.annotation_format = opts.annotation_format
        image_dir = root / f"{split}2014"
        if not image_dir.is_dir():
            raise DataLayoutError(f"image folder {image_dir} not found\n{COCO_LAYOUT}")

        if opts.annotation_format == "json":
            ann_file = root / "annotations" / f"instances_{split}2014.json"
            if not ann_file.is_file():
                raise DataLayoutError(f"annotation file {ann_file} not found\n{COCO_LAYOUT}")
            entries, n_classes = self._load_json(ann_file, image_dir)
            st = ann_file.stat()
            extra = f"{ann_file.name}:{st.st_size}:{st.st_mtime_ns}|crowd={crowd}"
            cache_file = ann_file.parent / f".fewshot_index_{split}2014_{crowd}.json"
        else:
            mask_dir = root / "annotations" / f"{split}2014"
            if not mask_dir.is_dir():
                raise DataLayoutError(f"mask folder {mask_dir} not found\n{COCO_LAYOUT}")
            self._anns, self.category_ids = {}, []
            masks = sorted(mask_dir.glob("*.png"))
            entries = [Entry(p.stem, image_dir / f"{p.stem}.jpg", p) for p in masks]
            n_classes, extra = 80, "png"
            cache_file = mask_dir.parent / f".fewshot_index_{split}2014_png.json"
        self.num_classes = n_classes
        if opts.fold_classes is not None:
            test = sorted({int(c) for c in opts.fold_classes})
            if not test or any(not 1 <= c <= n_classes for c in test):
                raise ValueError(
                    f"`fold_classes` must be class ids in 1..{n_classes}, got {list(opts.fold_classes)}"
                )
        else:
            test = coco_fold_classes(fold, opts.split_style, n_classes)
        self.split_style = opts.split_style
        self.test_class_ids = test
        self.train_class_ids = [c for c in range(1, n_classes + 1) if c not in test]

        scan = scan_entries(
            entries,
            self.read_label,
            cache_file if opts.cache else None,
            description=f"indexing COCO {split}2014",
            extra_key=extra,
            progress=self.progress,
        )
        return entries, scan, self.train_class_ids if split == "train" else test

    def _load_json(self, ann_file: Path, image_dir: Path) -> tuple[list[Entry], int]:
        self._labels = labels = CocoInstanceLabels(ann_file, crowd=self.crowd)
        self.category_ids = labels.category_ids
        entries = [Entry(name, image_dir / file_name, iid) for name, file_name, iid in labels.images]
        return entries, len(labels.category_ids)

    def read_label(self, entry: Entry) -> np.ndarray:
        if self.annotation_format == "png":
            return read_label(entry.label)
        return self._labels.read(entry.label)


class CocoInstanceLabels:
    """The class maps of COCO images rasterised from an instance-annotation JSON file.

    The 80 categories get contiguous ids 1..80 in increasing COCO category id order;
    instances are painted largest first so that smaller objects stay visible (crowd regions
    first); crowd regions (``iscrowd=1``) are 255 with ``crowd="ignore"``, their class with
    ``"include"``, background with ``"background"``. Needs pycocotools.

    Args:
        ann_file: ``annotations/instances_<split>2014.json``.
        crowd: one of :data:`CROWD_MODES`.

    Attributes:
        category_ids: the COCO category ids, sorted (class id ``i`` is ``category_ids[i - 1]``).
        images: ``(name, file name, image id)`` per image, sorted by file name.

    Raises:
        DataLayoutError: a missing or unparsable file.
        ImportError: pycocotools is not installed.
    """

    def __init__(self, ann_file: str | Path, *, crowd: str = "ignore") -> None:
        try:
            from pycocotools import mask as _  # noqa: F401
        except ImportError as err:  # pragma: no cover - optional dependency
            raise ImportError(
                "CocoFewShot(annotation_format='json') needs pycocotools: "
                "pip install 'fewshot_priors[coco]'"
            ) from err
        if crowd not in CROWD_MODES:
            raise ValueError(f"`crowd` must be one of {CROWD_MODES}, got {crowd!r}")
        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise DataLayoutError(f"annotation file {ann_file} not found\n{COCO_LAYOUT}")
        try:
            data = json.loads(ann_file.read_text())
            cats = sorted(int(c["id"]) for c in data["categories"])
            images = data["images"]
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataLayoutError(f"cannot parse COCO annotations {ann_file}: {err}") from err
        self.crowd = crowd
        self.category_ids = cats
        contiguous = {cid: i + 1 for i, cid in enumerate(cats)}
        per_image: dict[int, list[tuple[int, object, int, float]]] = {}
        for a in anns:
            cid = contiguous.get(int(a["category_id"]))
            if cid is None:
                continue
            per_image.setdefault(int(a["image_id"]), []).append(
                (cid, a["segmentation"], int(a.get("iscrowd", 0)), float(a.get("area", 0.0)))
            )
        self._anns: dict[int, tuple[int, int, list]] = {}
        self.images: list[tuple[str, str, int]] = []
        for im in sorted(images, key=lambda d: d["file_name"]):
            iid = int(im["id"])
            # painting order: crowd first (so instances stay on top), then largest first
            objs = sorted(per_image.get(iid, []), key=lambda o: (-o[2], -o[3]))
            self._anns[iid] = (int(im["height"]), int(im["width"]), objs)
            self.images.append((Path(im["file_name"]).stem, im["file_name"], iid))

    def __len__(self) -> int:
        return len(self.images)

    def read(self, image_id: int) -> np.ndarray:
        """The ``H, W`` uint8 class map of image ``image_id``.

        Raises:
            BadDataError: a segmentation that cannot be decoded or has another size.
        """
        from pycocotools import mask as mask_utils

        h, w, objs = self._anns[image_id]
        label = np.zeros((h, w), dtype=np.uint8)
        for cid, seg, crowd, _ in objs:
            if crowd and self.crowd == "background":
                continue
            try:
                if isinstance(seg, list):  # polygons
                    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
                elif isinstance(seg.get("counts"), list):  # uncompressed RLE
                    rle = mask_utils.frPyObjects(seg, h, w)
                else:  # compressed RLE
                    rle = seg
                with warnings.catch_warnings():  # numpy-2 copy= notice inside pycocotools
                    warnings.simplefilter("ignore", DeprecationWarning)
                    m = mask_utils.decode(rle).astype(bool)
            except (TypeError, ValueError, AttributeError, KeyError) as err:
                raise BadDataError(f"bad segmentation in COCO image id {image_id}: {err}") from err
            if m.shape != (h, w):
                raise BadDataError(
                    f"segmentation of COCO image id {image_id} is {m.shape}, expected {(h, w)}"
                )
            label[m] = IGNORE_INDEX if (crowd and self.crowd == "ignore") else cid
        return label
