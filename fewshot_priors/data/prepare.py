"""Build the benchmark layouts from the official downloads: ``fewshot-priors prepare``.

:func:`prepare_pascal` turns PASCAL VOC 2012 and SBD, as they unpack, into the layout
:class:`~fewshot_priors.data.PascalFewShot` reads (``SegmentationClassAug`` + the standard
``train_aug.txt`` / ``val.txt``). :func:`prepare_coco` rasterises COCO's instance JSON
once into the ``annotation_format="png"`` layout of :class:`~fewshot_priors.data.CocoFewShot`.

Both are idempotent and resumable: every label file is written atomically (a temporary
file, then a rename), a label that exists is kept, so an interrupted run continues where
it stopped and a finished one does nothing again.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .._io import atomic_write
from .._progress import progress_bar
from ..constants import IGNORE_INDEX
from .io import BadDataError, DataLayoutError, read_label

__all__ = ["SBD_LAYOUT", "VOC_LAYOUT", "prepare_coco", "prepare_pascal", "read_sbd_label", "write_label_png"]

VOC_LAYOUT = """expected the VOC 2012 download (VOCtrainval_11-May-2012.tar) as it unpacks:
  [VOCdevkit/]VOC2012/JPEGImages/<id>.jpg
  [VOCdevkit/]VOC2012/SegmentationClass/<id>.png
  [VOCdevkit/]VOC2012/ImageSets/Segmentation/train.txt, val.txt"""

SBD_LAYOUT = """expected the SBD download (benchmark.tgz) as it unpacks:
  [benchmark_RELEASE/]dataset/cls/<id>.mat   (GTcls.Segmentation: class ids 0..20)
  [benchmark_RELEASE/]dataset/train.txt, val.txt"""

#: Foreground classes of PASCAL VOC.
VOC_NUM_CLASSES = 20


def _find_dir(root: Path, candidates: Iterable[str], required: Sequence[str], what: str, layout: str) -> Path:
    """The first of ``root / c`` holding every ``required`` path; else an error naming what is missing."""
    if not root.is_dir():
        raise DataLayoutError(f"{what} folder {root} does not exist\n{layout}")
    tried = [root / c for c in candidates]
    for cand in tried:
        if all((cand / r).exists() for r in required):
            return cand
    best = max(tried, key=lambda c: sum((c / r).exists() for r in required))
    missing = [str(best / r) for r in required if not (best / r).exists()]
    raise DataLayoutError(f"{what} folder {root}: missing {', '.join(missing)}\n{layout}")


def _read_ids(path: Path) -> list[str]:
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise DataLayoutError(f"split list {path} is empty")
    return ids


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write an ``H, W`` uint8 label map as a grey PNG, atomically (temporary file, then rename)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(label, dtype=np.uint8), mode="L").save(buf, format="PNG")
    atomic_write((Path(path), buf.getvalue()))


def read_sbd_label(path: str | os.PathLike) -> np.ndarray:
    """The class map of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``) as uint8.

    Raises:
        BadDataError: an unreadable or corrupt file, no ``GTcls.Segmentation``, or class ids
            outside 0..20 (the file is named).
    """
    from scipy.io import loadmat

    try:
        seg = loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"].Segmentation
        seg = np.asarray(seg)
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, KeyError, ... on corrupt files
        raise BadDataError(f"cannot read SBD label {path} ({type(err).__name__}: {err}); "
                           "expected a MATLAB file with the struct GTcls.Segmentation") from err
    if seg.ndim != 2 or seg.dtype.kind not in "iu":
        raise BadDataError(f"SBD label {path}: GTcls.Segmentation must be an H, W integer map, "
                           f"got {seg.dtype} of shape {seg.shape}")
    bad = sorted(int(v) for v in np.unique(seg) if v > VOC_NUM_CLASSES and v != IGNORE_INDEX)
    if bad or (seg.size and seg.min() < 0):
        raise BadDataError(f"SBD label {path} holds class ids {bad or int(seg.min())} outside 0..20")
    return seg.astype(np.uint8)


def _pascal_label(vid: str, voc: Path, sbd: Path) -> np.ndarray:
    """VOC's own label (with its 255 boundaries) where VOC has one, else SBD's."""
    voc_png = voc / "SegmentationClass" / f"{vid}.png"
    return read_label(voc_png) if voc_png.is_file() else read_sbd_label(sbd / "cls" / f"{vid}.mat")


def _link_images(voc: Path, out_voc: Path) -> None:
    """``out_voc/JPEGImages`` -> the download's ``JPEGImages`` (a symbolic link), unless it is a
    folder already (the download's own, a link made before, or a copy of the images)."""
    link = out_voc / "JPEGImages"
    if link.is_dir():
        return
    if link.exists() or link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a folder of images (a file or a broken link); "
                              "remove it or choose another --output-dir")
    link.symlink_to((voc / "JPEGImages").resolve(), target_is_directory=True)


def prepare_pascal(voc: str | os.PathLike, sbd: str | os.PathLike, output_dir: str | os.PathLike, *,
                   progress: bool = True) -> dict:
    """Write PASCAL-5i's ``SegmentationClassAug`` and split lists from VOC 2012 and SBD.

    Writes, under ``output_dir/VOC2012/`` (the folder :class:`~fewshot_priors.data.PascalFewShot`
    reads with ``root=output_dir``):

    * ``SegmentationClassAug/<id>.png``: grey PNG, 0 background, 1..20, 255 boundary, for every
      image of VOC train/val and SBD train/val; VOC's own label where it has one (with its 255
      boundaries), SBD's (no boundary) elsewhere;
    * ``ImageSets/Segmentation/train_aug.txt``: SBD train + SBD val + VOC train, minus VOC val
      (10582 ids on the real data), sorted; ``val.txt``: VOC val (1449 ids);
    * ``JPEGImages``: a symbolic link to the download's (nothing is copied). With ``output_dir``
      the folder holding the VOC download's ``VOC2012`` the files go beside the download's.

    Args:
        voc: the VOC 2012 folder (``VOC2012``, ``VOCdevkit`` or the folder holding it).
        sbd: the SBD folder (``dataset``, ``benchmark_RELEASE`` or the folder holding it).
        output_dir: where to write (created).
        progress: show a progress bar over the labels.

    Returns:
        ``{"root", "labels", "written", "kept", "train_aug", "val"}``: the ``data.root``
        to use, the label count, how many were written now / already there, the list sizes.

    Raises:
        DataLayoutError: a missing folder, file or split list (named), or images missing from
            ``JPEGImages``.
        BadDataError: a corrupt SBD ``.mat`` or VOC label (named).
    """
    voc_dir = _find_dir(Path(voc), ("", "VOC2012", "VOCdevkit/VOC2012"),
                        ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation/train.txt",
                         "ImageSets/Segmentation/val.txt"), "VOC 2012", VOC_LAYOUT)
    sbd_dir = _find_dir(Path(sbd), ("", "dataset", "benchmark_RELEASE/dataset"),
                        ("cls", "train.txt", "val.txt"), "SBD", SBD_LAYOUT)
    train_aug, val = _pascal_lists(voc_dir, sbd_dir)
    every = sorted(set(train_aug) | set(val))
    out_voc = Path(output_dir) / "VOC2012"
    written = _write_labels(every, out_voc / "SegmentationClassAug", lambda vid: _pascal_label(vid, voc_dir, sbd_dir),
                            "SegmentationClassAug", progress)
    _link_images(voc_dir, out_voc)
    out_lists = out_voc / "ImageSets" / "Segmentation"
    out_lists.mkdir(parents=True, exist_ok=True)
    atomic_write((out_lists / "train_aug.txt", "".join(f"{i}\n" for i in train_aug).encode()),
                 (out_lists / "val.txt", "".join(f"{i}\n" for i in val).encode()))
    return {"root": str(Path(output_dir)), "labels": len(every), "written": written, "kept": len(every) - written,
            "train_aug": len(train_aug), "val": len(val)}


def _pascal_lists(voc_dir: Path, sbd_dir: Path) -> tuple[list[str], list[str]]:
    """``(train_aug ids, val ids)``: SBD train + val + VOC train minus VOC val (sorted), and VOC val;
    every image of both must be in VOC's ``JPEGImages``."""
    lists = voc_dir / "ImageSets" / "Segmentation"
    voc_train, val = _read_ids(lists / "train.txt"), _read_ids(lists / "val.txt")
    sbd_ids = _read_ids(sbd_dir / "train.txt") + _read_ids(sbd_dir / "val.txt")
    train_aug = sorted(set(sbd_ids + voc_train) - set(val))
    missing = sorted(i for i in set(train_aug) | set(val) if not (voc_dir / "JPEGImages" / f"{i}.jpg").is_file())
    if missing:
        raise DataLayoutError(f"{len(missing)} image(s) of the split lists are missing from "
                              f"{voc_dir / 'JPEGImages'}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return train_aug, val


def _write_labels(names: Sequence[str], folder: Path, read: Callable[[str], np.ndarray], desc: str,
                  progress: bool) -> int:
    """Write ``folder/<name>.png`` = ``read(name)`` for each name whose file is not there yet; the count."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for name in progress_bar(names, desc=desc, disable=not progress):
        target = folder / f"{name}.png"
        if not target.is_file():
            write_label_png(target, read(name))
            written += 1
    return written


def prepare_coco(root: str | os.PathLike, *, splits: Sequence[str] = ("train", "val"), crowd: str = "ignore",
                 progress: bool = True) -> dict:
    """Rasterise COCO 2014's instance annotations once into ``annotations/<split>2014/<name>.png``.

    The PNGs hold what :class:`~fewshot_priors.data.CocoFewShot` rasterises from the JSON
    (contiguous class ids 1..80 in COCO category order, 0 background, crowd regions by
    ``crowd``), so ``data.annotation_format=png`` reads the same labels without pycocotools
    and without rasterising every image every epoch.

    Args:
        root: the COCO root (``train2014/``, ``val2014/``, ``annotations/instances_*2014.json``).
        splits: which of ``"train"`` / ``"val"`` to convert.
        crowd: ``"ignore"`` (255), ``"include"`` or ``"background"``, as ``CocoOptions.crowd``.
        progress: show a progress bar.

    Returns:
        ``{split: {"labels", "written", "kept"}}``.
    """
    bad = [s for s in splits if s not in ("train", "val")]
    if bad:
        raise ValueError(f"`splits` must hold 'train' / 'val', got {bad[0]!r}")
    return {split: _coco_split(Path(root), split, crowd, progress) for split in splits}


def _coco_split(root: Path, split: str, crowd: str, progress: bool) -> dict:
    from .coco import CocoInstanceLabels

    labels = CocoInstanceLabels(root / "annotations" / f"instances_{split}2014.json", crowd=crowd)
    ids = {name: image_id for name, _, image_id in labels.images}
    written = _write_labels(list(ids), root / "annotations" / f"{split}2014", lambda name: labels.read(ids[name]),
                            f"{split}2014 masks", progress)
    return {"labels": len(ids), "written": written, "kept": len(ids) - written}
