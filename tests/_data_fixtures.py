"""Writers of tiny datasets in the real on-disk formats, shared by the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fewshot_priors.data.io import write_palette_png

H, W = 64, 128  # 8192 px per image


def label_with_counts(counts: dict[int, int], ring: bool = True) -> np.ndarray:
    """``H, W`` label where class ``c`` covers exactly ``counts[c]`` pixels.

    Classes fill consecutive row-major runs; the last column is 255 (a boundary
    stand-in) when ``ring`` is set, so 255 pixels are present but never counted.
    """
    flat = np.zeros(H * (W - 1), dtype=np.uint8)
    pos = 0
    for c, n in counts.items():
        flat[pos : pos + n] = c
        pos += n
    assert pos <= flat.size
    label = np.zeros((H, W), dtype=np.uint8)
    label[:, : W - 1] = flat.reshape(H, W - 1)
    if ring:
        label[:, W - 1] = 255
    return label


def write_image(path: Path, rng: np.random.Generator, hw=(H, W)) -> None:
    img = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    Image.fromarray(img).save(path, quality=95)


def make_pascal(
    root: Path,
    train: dict[str, dict[int, int]],
    val: dict[str, dict[int, int]],
    seed: int = 0,
    train_list: str = "train_aug.txt",
    grey_labels: bool = False,
) -> Path:
    """Write a PASCAL layout: ``{name: {class_id: pixels}}`` per split."""
    voc = root / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, counts in {**train, **val}.items():
        write_image(voc / "JPEGImages" / f"{name}.jpg", rng)
        label = label_with_counts(counts)
        if grey_labels:
            Image.fromarray(label).save(voc / "SegmentationClassAug" / f"{name}.png")
        else:
            write_palette_png(voc / "SegmentationClassAug" / f"{name}.png", label)
    lists = voc / "ImageSets" / "Segmentation"
    # PFENet-style lines for train ("JPEGImages/x.jpg SegmentationClassAug/x.png"), plain for val
    (lists / train_list).write_text(
        "".join(f"JPEGImages/{n}.jpg SegmentationClassAug/{n}.png\n" for n in train)
    )
    (lists / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return root


# 4 classes; fold_classes=[1, 2] are the test classes, 3 and 4 train
TRAIN_SPEC = {
    "t0": {3: 2500, 4: 2100},
    "t1": {3: 3000},
    "t2": {3: 2048, 1: 2200},  # exactly 2048 -> eligible; class 1 is a test class
    "t3": {3: 2047, 4: 2300},  # 2047 -> NOT eligible for class 3
    "t4": {4: 2600},
    "t5": {3: 2200, 4: 500},  # 500 px of class 4 -> not eligible for 4
}
VAL_SPEC = {
    "v0": {1: 2500, 2: 2100},
    "v1": {1: 3000},
    "v2": {1: 2100, 3: 2500},
    "v3": {2: 2600, 1: 100},
    "v4": {2: 2900},
    "v5": {1: 2048},
}
