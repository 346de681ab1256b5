"""FolderFewShot on a tiny FSS-1000-style folder tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data_fixtures import write_image
from PIL import Image

from fewshot_priors.data import DataLayoutError, FolderFewShot, FolderOptions

CLASSES = ["ant", "bee", "cat", "dog", "eel"]


def _make(root, n=4, mask_style="255"):
    rng = np.random.default_rng(0)
    for ci, c in enumerate(CLASSES):
        d = root / c
        d.mkdir(parents=True)
        for i in range(n):
            write_image(d / f"{i}.jpg", rng, hw=(40, 50))
            m = np.zeros((40, 50), np.uint8)
            m[5 : 15 + 5 * i, 10 : 30 + ci] = 255 if mask_style == "255" else 1
            if mask_style == "01ignore":
                m[0, :] = 255
            Image.fromarray(m).save(d / f"{i}.png")
    return root


def test_class_split_by_list_and_masks(tmp_path):
    root = _make(tmp_path / "fss")
    tr = FolderFewShot(root, split="train", image_size=32, options=FolderOptions(fold_classes=["cat", "eel"]))
    te = FolderFewShot(root, split="val", shots=2, image_size=32, options=FolderOptions(fold_classes=["cat", "eel"]))
    assert tr.class_ids == [1, 2, 4] and te.class_ids == [3, 5]
    assert te.class_names[3] == "cat" and len(te) == 1000 and len(tr) == 12
    ep = te[0]
    name = ep["query_name"]
    assert name.split("/")[0] in ("cat", "eel") and name not in ep["support_names"]
    c = CLASSES.index(name.split("/")[0])
    i = int(name.split("/")[1])
    assert int(ep["query_mask_orig"].sum()) == (10 + 5 * i) * (20 + c)  # 0/255 -> 1
    assert ep["support_images"].shape == (2, 3, 32, 32)


def test_ratio_split_is_seeded_and_disjoint(tmp_path):
    root = _make(tmp_path / "fss")
    a = FolderFewShot(root, split="val", seed=1, image_size=32, options=FolderOptions(test_ratio=0.4))
    b = FolderFewShot(root, split="val", seed=1, image_size=32, options=FolderOptions(test_ratio=0.4))
    tr = FolderFewShot(root, split="train", seed=1, image_size=32, options=FolderOptions(test_ratio=0.4))
    assert a.class_ids == b.class_ids and len(a.class_ids) == 2
    assert not set(a.class_ids) & set(tr.class_ids) and len(tr.class_ids) == 3
    seeds = {tuple(FolderFewShot(root, split="val", seed=s, options=FolderOptions(test_ratio=0.4)).class_ids)
             for s in range(6)}
    assert len(seeds) > 1
    folds = [FolderFewShot(root, split="val", fold=f, seed=1, options=FolderOptions(test_ratio=0.2)).class_ids
             for f in range(5)]
    assert sorted(c for f in folds for c in f) == [1, 2, 3, 4, 5]  # folds partition the classes
    with pytest.raises(ValueError, match="fold"):
        FolderFewShot(root, split="val", fold=5, options=FolderOptions(test_ratio=0.2))


def test_01_masks_with_ignore(tmp_path):
    root = _make(tmp_path / "fss", mask_style="01ignore")
    te = FolderFewShot(root, split="val", episodes=3, image_size=32, options=FolderOptions(fold_classes=["ant"]))
    m = te[0]["query_mask_orig"]
    assert (m[0] == 255).all() and set(torch.unique(m).tolist()) == {0, 1, 255}


def test_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist"):
        FolderFewShot(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="class folders"):
        FolderFewShot(tmp_path / "empty")
    root = _make(tmp_path / "fss")
    with pytest.raises(ValueError, match="zebra"):
        FolderFewShot(root, options=FolderOptions(fold_classes=["zebra"]))
    with pytest.raises(ValueError, match="test_ratio"):
        FolderFewShot(root, options=FolderOptions(test_ratio=1.5))
    (root / "ant" / "2.png").unlink()  # image without mask
    with pytest.warns(UserWarning, match="2.png"):
        FolderFewShot(root, split="val", shots=1, options=FolderOptions(fold_classes=["ant"]))


def test_item_shots_draws_more_supports_and_repeats_only_when_short(tmp_path):
    root = _make(tmp_path / "fss", n=4)  # 3 other images per class
    ds = FolderFewShot(root, split="train", image_size=32, options=FolderOptions(fold_classes=["eel"]))
    for k in (1, 3, 5):
        ep = ds[(0, 2, k)]
        names = ep["support_names"]
        assert ep["support_images"].shape == (k, 3, 32, 32) and ep["support_masks"].shape == (k, 32, 32)
        assert ep["query_name"] not in names and {n.split("/")[0] for n in names} == {ep["query_name"].split("/")[0]}
        assert len(set(names[:3])) == min(k, 3)  # the class's other images, each once, before any repeat
        assert len(set(names)) == min(k, 3)
        qi, c, sup = ds.episode(2, 0, k)
        assert [ds.entries[i].name for i in sup] == names and ds.entries[qi].name == ep["query_name"]
    assert ds[(0, 2)]["support_names"] == ds[(0, 2, 1)]["support_names"]  # K = dataset shots: unchanged
    two = FolderFewShot(root, split="train", shots=2, image_size=32, options=FolderOptions(fold_classes=["eel"]))
    for bad in (1, 0, 2.5):
        with pytest.raises(ValueError, match="shots"):
            two[(0, 0, bad)]
