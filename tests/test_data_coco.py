"""CocoFewShot on a tiny COCO 2014 layout: json with polygons, compressed and uncompressed RLE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _data_fixtures import write_image
from pycocotools import mask as mask_utils

from fewshot_priors.data import CocoFewShot, CocoOptions, DataLayoutError, coco_fold_classes
from fewshot_priors.data.io import write_palette_png

H, W = 60, 80
CATS = [1, 5, 90]  # non-contiguous COCO ids -> contiguous 1, 2, 3


def _rect(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _compressed(m):
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _uncompressed(m):
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": [int(c) for c in counts]}


def _write_coco(root, split, images):
    """images: {name: [(coco_cat, kind, mask, iscrowd), ...]}."""
    (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    js = {"images": [], "annotations": [], "categories": [{"id": c, "name": f"c{c}"} for c in CATS]}
    aid = 1
    for iid, (name, objs) in enumerate(images.items(), start=1):
        write_image(root / f"{split}2014" / f"{name}.jpg", rng, hw=(H, W))
        js["images"].append({"id": iid, "file_name": f"{name}.jpg", "height": H, "width": W})
        for cat, kind, m, crowd in objs:
            if kind == "poly":
                ys, xs = np.nonzero(m)
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                seg = [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1),
                        float(x0), float(y1)]]
            elif kind == "rle":
                seg = _compressed(m)
            else:
                seg = _uncompressed(m)
            js["annotations"].append({"id": aid, "image_id": iid, "category_id": cat,
                                      "segmentation": seg, "iscrowd": crowd,
                                      "area": float(m.sum()), "bbox": [0, 0, 1, 1]})
            aid += 1
    (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(js))


def _spec():
    big = _rect(5, 55, 5, 60)  # 2750 px
    mid = _rect(10, 50, 20, 75)  # 2200 px
    small = _rect(20, 30, 30, 40)  # 100 px
    return {
        "a": [(1, "poly", big, 0), (5, "rle", small, 0)],  # small cat-5 drawn on top
        "b": [(1, "rle", big, 0)],
        "c": [(1, "urle", mid, 0), (90, "rle", _rect(0, 60, 60, 80), 1)],  # crowd -> 255
        "d": [(5, "rle", big, 0)],
        "e": [(5, "urle", mid, 0)],
        "f": [(5, "poly", mid, 0), (90, "rle", big, 0)],  # cat 90 (id 3) largest, under 5
        "g": [(90, "rle", big, 0)],
        "h": [(90, "urle", mid, 0)],
    }


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    spec = _spec()
    _write_coco(root, "train", spec)
    _write_coco(root, "val", spec)
    return root


def test_fold_conventions():
    assert coco_fold_classes(0)[:3] == [1, 5, 9] and len(coco_fold_classes(3)) == 20
    assert coco_fold_classes(1, "contiguous") == list(range(21, 41))
    all_test = sorted(c for f in range(4) for c in coco_fold_classes(f))
    assert all_test == list(range(1, 81))
    with pytest.raises(ValueError, match="split_style"):
        coco_fold_classes(0, "random")


def test_rasterised_labels_order_crowd_and_eligibility(coco_root):
    ds = CocoFewShot(coco_root, split="val", episodes=20, image_size=64,
                     options=CocoOptions(fold_classes=[2]))
    assert ds.num_classes == 3 and ds.category_ids == CATS
    by = {e.name: e for e in ds.entries}
    lab_a = ds.read_label(by["a"])
    assert (lab_a[20:30, 30:40] == 2).all()  # small object painted on top of the large one
    assert int((lab_a == 1).sum()) > 2500
    lab_c = ds.read_label(by["c"])
    # crowd region ignored, except where a (non-crowd) instance lies on top of it
    assert (lab_c[:, 75:] == 255).all() and (lab_c[:10, 60:] == 255).all()
    assert (lab_c[10:50, 60:75] == 1).all()
    assert int((lab_c == 1).sum()) == 40 * 55  # uncompressed RLE is exact
    lab_f = ds.read_label(by["f"])
    assert int((lab_f == 2).sum()) >= 2200 and int((lab_f == 3).sum()) > 0
    # class 2 (COCO id 5): a has only 100 px -> not eligible
    assert {ds.entries[i].name for i in ds.class_images[2]} == {"d", "e", "f"}
    inc = CocoFewShot(coco_root, split="val", episodes=2,
                      options=CocoOptions(fold_classes=[2], crowd="include"))
    assert (inc.read_label(by["c"])[:, 75:] == 3).all()
    bg = CocoFewShot(coco_root, split="val", episodes=2,
                     options=CocoOptions(fold_classes=[2], crowd="background"))
    assert (bg.read_label(by["c"])[:, 75:] == 0).all()


def test_episodes_binary_masks_and_defaults(coco_root):
    va = CocoFewShot(coco_root, split="val", shots=1, image_size=64, options=CocoOptions(fold_classes=[2, 3]))
    assert len(va) == 20000 and va.class_ids == [2, 3]
    with pytest.warns(UserWarning, match=r"class \(eligible images\): 3 \(2\)"):  # f's class-3 object is mostly hidden
        CocoFewShot(coco_root, split="val", shots=2, options=CocoOptions(fold_classes=[2, 3]))
    tr = CocoFewShot(coco_root, split="train", shots=1, image_size=64,
                     options=CocoOptions(fold_classes=[2, 3]))
    assert tr.class_ids == [1] and len(tr) == 3  # a, b, c eligible for class 1
    ep = va[0]
    assert ep["query_name"] not in ep["support_names"]
    assert set(torch.unique(ep["query_mask_orig"]).tolist()) <= {0, 1, 255}
    assert ep["query_mask_orig"].shape == (H, W)
    assert tr.transform.scale == (0.8, 1.25)


def test_png_annotations(coco_root):
    ds = CocoFewShot(coco_root, split="val", episodes=4, options=CocoOptions(fold_classes=[2]))
    mask_dir = coco_root / "annotations" / "val2014"
    mask_dir.mkdir()
    for e in ds.entries:
        write_palette_png(mask_dir / f"{e.name}.png", ds.read_label(e))
    png = CocoFewShot(coco_root, split="val", episodes=4, image_size=64,
                      options=CocoOptions(annotation_format="png", fold_classes=[2]))
    assert {k: list(v) for k, v in png.class_images.items()} == {
        k: list(v) for k, v in ds.class_images.items()
    }
    assert torch.equal(png[1]["query_mask_orig"], ds[1]["query_mask_orig"])


def test_missing_layout(tmp_path):
    (tmp_path / "val2014").mkdir()
    with pytest.raises(DataLayoutError, match="instances_val2014.json"):
        CocoFewShot(tmp_path, split="val")
    with pytest.raises(DataLayoutError, match="train2014"):
        CocoFewShot(tmp_path, split="train")
    with pytest.raises(ValueError, match="annotation_format"):
        CocoFewShot(tmp_path, split="val", options=CocoOptions(annotation_format="xml"))


def test_prepare_coco_writes_what_the_json_reader_rasterises(coco_root, capsys):
    """`prepare coco`: the PNG layout holds the JSON reader's labels, so both formats give the same episodes."""
    from fewshot_priors.app.cli import main
    from fewshot_priors.data.io import read_label
    from fewshot_priors.data.prepare import prepare_coco

    res = prepare_coco(coco_root, splits=["val"], progress=False)
    assert res == {"val": {"labels": 8, "written": 8, "kept": 0}}
    from_json = CocoFewShot(coco_root, split="val", episodes=6, image_size=64, options=CocoOptions(fold_classes=[2]))
    from_png = CocoFewShot(coco_root, split="val", episodes=6, image_size=64,
                           options=CocoOptions(fold_classes=[2], annotation_format="png"))
    for e in from_json.entries:
        np.testing.assert_array_equal(read_label(coco_root / "annotations" / "val2014" / f"{e.name}.png"),
                                      from_json.read_label(e))
    assert [e.name for e in from_png.entries] == [e.name for e in from_json.entries]
    for i in range(6):
        a, b = from_json[i], from_png[i]
        assert a["query_name"] == b["query_name"] and torch.equal(a["query_mask_orig"], b["query_mask_orig"])
    assert main(["prepare", "coco", "--root", str(coco_root), "--no-progress"]) == 0  # val kept, train written
    out = capsys.readouterr().out
    assert "train2014: 8 masks (8 written, 0 already there)" in out and "val2014: 8 masks (0 written, 8" in out
    assert main(["prepare", "coco", "--root", str(coco_root / "nope"), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: annotation file")
