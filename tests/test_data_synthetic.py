"""The generated demo dataset: deterministic, real PASCAL layout, usable through the loader."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fewshot_priors.data import PascalFewShot, generate_synthetic_dataset
from fewshot_priors.data.io import read_image, read_label

SMALL = dict(num_classes=4, images_per_class=6, image_size=64, min_pixels=600, progress=False)


def _digest(root):
    h = hashlib.sha1()
    for p in sorted((root / "VOC2012").rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_from_seed(tmp_path):
    a = generate_synthetic_dataset(tmp_path / "a", seed=1, **SMALL)
    b = generate_synthetic_dataset(tmp_path / "b", seed=1, **SMALL)
    c = generate_synthetic_dataset(tmp_path / "c", seed=2, **SMALL)
    assert _digest(a) == _digest(b) != _digest(c)


def test_layout_labels_and_folds(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "d", seed=0, **SMALL)
    voc = root / "VOC2012"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["num_classes"] == 4 and meta["folds"] == [[1], [2], [3], [4]]
    train = (voc / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) + len(val) == 24 and not set(train) & set(val)
    primaries = []
    for name in train + val:
        img, lab = read_image(voc / "JPEGImages" / f"{name}.jpg"), read_label(
            voc / "SegmentationClassAug" / f"{name}.png"
        )
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3, 4, 255}
        assert (lab == 255).any()  # boundary ring
        counts = {c: int((lab == c).sum()) for c in range(1, 5)}
        primaries.append(max(counts, key=counts.get))
        assert max(counts.values()) >= 600
    # each class is the primary object of images_per_class images (up to occlusion ties)
    assert sorted(set(primaries)) == [1, 2, 3, 4]
    # objects are visibly textured/coloured differently from the background
    lab = read_label(voc / "SegmentationClassAug" / f"{train[0]}.png")
    assert lab.dtype == np.uint8


def test_loader_reads_folds_from_dataset_json(tmp_path):
    root = generate_synthetic_dataset(
        tmp_path / "e", num_classes=8, images_per_class=8, image_size=96, progress=False
    )
    tr = PascalFewShot(root, fold=1, split="train", image_size=64)
    va = PascalFewShot(root, fold=1, split="val", shots=1, episodes=6, image_size=64)
    assert va.test_class_ids == [3, 4] and tr.class_ids == [1, 2, 5, 6, 7, 8]
    assert va.class_names[1] == "red_brick"
    ep = va[0]
    assert ep["class_id"] in (3, 4) and ep["query_image"].shape == (3, 64, 64)
    assert int((ep["support_masks"] == 1).sum()) > 0


def test_reuses_existing_and_regenerates_on_change(tmp_path):
    root = generate_synthetic_dataset(tmp_path / "f", **SMALL)
    marker = root / "VOC2012" / "JPEGImages" / "syn_00000.jpg"
    mtime = marker.stat().st_mtime_ns
    generate_synthetic_dataset(tmp_path / "f", **SMALL)
    assert marker.stat().st_mtime_ns == mtime  # reused
    generate_synthetic_dataset(tmp_path / "f", **{**SMALL, "images_per_class": 3})
    assert len(list((root / "VOC2012" / "JPEGImages").glob("*.jpg"))) == 12


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_synthetic_dataset(tmp_path, num_classes=13)
    with pytest.raises(ValueError, match="divisible"):
        generate_synthetic_dataset(tmp_path, num_classes=6)
    with pytest.raises(ValueError, match="min_pixels"):
        generate_synthetic_dataset(tmp_path, image_size=64)  # 2048 px > a quarter of 64x64
