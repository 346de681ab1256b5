"""Folder datasets: class splits through config and CLI keys, eligibility at the model's size."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _data_fixtures import write_image
from PIL import Image

from fewshot_priors.config import DEFAULTS, ConfigError, load_config
from fewshot_priors.data import FolderFewShot, FolderOptions, TestTransform
from fewshot_priors.engine.build import build_dataset

ROOT = Path(__file__).resolve().parents[1]
REAL = Path("/work/shared/data/coco128_seg/fss_layout")
CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu"]
IMAGES = {"ant": 4, "bee": 4, "cat": 4, "dog": 4, "eel": 4, "fox": 2, "gnu": 2}


def _make(root: Path, hw=(40, 50)) -> Path:
    rng = np.random.default_rng(0)
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(IMAGES[c]):
            write_image(root / c / f"{i}.jpg", rng, hw=hw)
            m = np.zeros(hw, np.uint8)
            m[5 : 15 + 3 * i, 10 : 30 + ci] = 255
            Image.fromarray(m).save(root / c / f"{i}.png")
    return root


def _cfg(root, *overrides):
    return load_config(None, ["data.dataset=folder", f"data.root={root}", "data.image_size=32",
                              "data.min_pixels=1", "data.test_episodes=4", *overrides])


def test_fold_classes_by_name_and_id_through_config(tmp_path):
    # used to crash: FolderFewShot.__init__() got an unexpected keyword argument 'fold_classes'
    root = _make(tmp_path / "fss")
    by_name = build_dataset(_cfg(root, "data.fold_classes=[cat, eel]"), "val", progress=False)
    by_id = build_dataset(_cfg(root, "data.fold_classes=[3, 5]"), "val", progress=False)
    train = build_dataset(_cfg(root, "data.fold_classes=[cat, eel]"), "train", progress=False)
    assert by_name.test_class_ids == by_id.test_class_ids == [3, 5]
    assert by_name.class_ids == [3, 5] and not set(train.class_ids) & {3, 5}
    assert {by_name.entries[i].name.split("/")[0] for i, _ in by_name.pairs} == {"cat", "eel"}
    with pytest.raises(ValueError, match=r"'cta' -> \['cat'\]"):
        build_dataset(_cfg(root, "data.fold_classes=[cta]"), "val", progress=False)
    with pytest.raises(ValueError, match="class ids 1..7"):
        build_dataset(_cfg(root, "data.fold_classes=[9]"), "val", progress=False)


def test_keys_that_do_not_apply_are_refused_with_the_key_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data.num_classes does not apply to data.dataset='folder'"):
        _cfg(tmp_path, "data.num_classes=5")
    with pytest.raises(ConfigError, match=r"data.num_classes does not apply to data.dataset='coco'"):
        load_config(None, ["data.dataset=coco", "data.num_classes=5"])
    with pytest.raises(ConfigError, match="data.min_class_images does not apply"):
        load_config(None, ["data.dataset=pascal", "data.min_class_images=5"])
    with pytest.raises(ConfigError, match="data.fold_classes must be a non-empty list of class ids"):
        load_config(None, ["data.dataset=pascal", "data.fold_classes=[cat]"])
    with pytest.raises(ConfigError, match="num_folds and data.test_ratio"):
        _cfg(tmp_path, "data.num_folds=3", "data.test_ratio=0.3")
    with pytest.raises(ConfigError, match="cannot be combined"):
        _cfg(tmp_path, "data.fold_classes=[cat]", "data.min_class_images=3")
    with pytest.raises(ConfigError, match="data.test_ratio must be a number in"):
        _cfg(tmp_path, "data.test_ratio=1.5")
    # build_dataset checks a hand-made config too, before touching the disk
    cfg = load_config(None)
    cfg["data"]["num_classes"] = 5
    cfg["data"]["dataset"] = "coco"
    with pytest.raises(ConfigError, match="num_classes"):
        build_dataset(cfg, "val")


def test_seeded_folds_partition_the_classes_with_enough_images(tmp_path):
    root = _make(tmp_path / "fss")
    tests = []
    for fold in range(3):
        cfg = _cfg(root, "data.num_folds=3", "data.min_class_images=4", f"data.fold={fold}")
        te = build_dataset(cfg, "val", progress=False)
        tr = build_dataset(cfg, "train", progress=False)
        assert not set(te.test_class_ids) & set(tr.train_class_ids)
        assert {6, 7} <= set(tr.train_class_ids)  # fox, gnu: 2 images, always training classes
        tests.append(te.test_class_ids)
    assert sorted(c for t in tests for c in t) == [1, 2, 3, 4, 5]
    assert sorted(len(t) for t in tests) == [1, 2, 2]
    again = build_dataset(_cfg(root, "data.num_folds=3", "data.min_class_images=4", "data.fold=1"), "val",
                          progress=False)
    assert again.test_class_ids == tests[1]  # seeded
    with pytest.raises(ValueError, match=r"`fold` must be in 0..2"):
        build_dataset(_cfg(root, "data.num_folds=3", "data.fold=3"), "val", progress=False)


def test_class_split_does_not_follow_the_episode_seed(tmp_path):
    # the CLI builds val episodes with eval.seed: the held-out classes must stay those of training
    root = _make(tmp_path / "fss")
    cfg = _cfg(root, "data.num_folds=3", "experiment.seed=5")
    tr = build_dataset(cfg, "train", progress=False)
    held = [build_dataset(cfg, "val", seed=s, progress=False).test_class_ids for s in (0, 1, 2, 3)]
    assert all(h == held[0] for h in held) and held[0] == tr.test_class_ids
    split_seeds = {tuple(build_dataset(_cfg(root, "data.num_folds=3", f"data.split_seed={s}"), "val",
                                       progress=False).test_class_ids) for s in range(6)}
    assert len(split_seeds) > 1


def test_python_api_fold_classes_test_ratio_fold(tmp_path):
    root = _make(tmp_path / "fss")
    b = FolderFewShot(root, split="val", image_size=32, progress=False,
                      options=FolderOptions(fold_classes=["cat"]))
    assert b.test_class_ids == [3]
    c = FolderFewShot(root, split="val", fold=1, seed=4, image_size=32, progress=False,
                      options=FolderOptions(test_ratio=0.3))
    assert len(c.test_class_ids) == 2
    with pytest.raises(TypeError, match="test_classes"):  # 0.1.0's deprecated name is gone
        FolderOptions(test_classes=["cat"])
    with pytest.raises(ValueError, match="`num_folds` and `test_ratio` both set"):
        FolderOptions(num_folds=3, test_ratio=0.2)


def test_folder_names_that_look_like_ids_are_not_confused(tmp_path):
    root = tmp_path / "num"
    rng = np.random.default_rng(0)
    for name in ("1", "10", "2"):  # sorted: "1" -> id 1, "10" -> id 2, "2" -> id 3
        (root / name).mkdir(parents=True)
        for i in range(2):
            write_image(root / name / f"{i}.jpg", rng, hw=(20, 20))
            Image.fromarray(np.full((20, 20), 255, np.uint8)).save(root / name / f"{i}.png")
    assert FolderFewShot(root, split="val", progress=False,
                         options=FolderOptions(fold_classes=["2"])).test_class_ids == [3]
    with pytest.raises(ValueError, match="ambiguous"):
        FolderFewShot(root, split="val", progress=False, options=FolderOptions(fold_classes=[2]))


def test_documented_config_keys_exist():
    """Every ``data.KEY`` of the how-to page is a config key (``data.test_ratio`` was documented, missing)."""
    page = (ROOT / "docs" / "how-to" / "folder-dataset.md").read_text(encoding="utf-8")
    keys = set(re.findall(r"(?<![\w.])data\.([a-z_]+)", page))
    assert {"fold_classes", "num_folds", "min_class_images", "test_ratio", "split_seed",
            "min_model_pixels"} <= keys
    assert keys <= set(DEFAULTS["data"]), keys - set(DEFAULTS["data"])
    yaml_blocks = re.findall(r"data: \{([^}]*)\}", page)
    for block in yaml_blocks:
        for key in re.findall(r"([a-z_]+):", block):
            assert key in DEFAULTS["data"], key


def _thin_root(root: Path) -> Path:
    """Class 'wire' has one image whose object is a 1-px line that nearest resizing at 50 px skips."""
    rng = np.random.default_rng(1)
    for c in ("blob", "wire"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            write_image(root / c / f"{i}.jpg", rng, hw=(200, 200))
            m = np.zeros((200, 200), np.uint8)
            if c == "wire" and i == 0:
                m[:, 1] = 255  # 200 px at 200 px, column 1 is never sampled by the 4x nearest resize
            else:
                m[60:140, 50:150] = 255
            Image.fromarray(m).save(root / c / f"{i}.png")
    return root


def test_thin_object_that_vanishes_at_model_size_is_not_drawn(tmp_path):
    root = _thin_root(tmp_path / "thin")
    with pytest.warns(UserWarning) as record:
        te = FolderFewShot(root, split="val", image_size=50, episodes=20, progress=False,
                           options=FolderOptions(fold_classes=["wire"]))
    msgs = [str(w.message) for w in record]
    vanish = [m for m in msgs if "not drawn" in m]
    assert len(vanish) == 1, msgs
    assert "wire/0 (class 'wire': 200 px -> 0 px)" in vanish[0] and "to 50 px" in vanish[0]
    assert not any("0/255" in m for m in msgs)
    wire0 = next(i for i, e in enumerate(te.entries) if e.name == "wire/0")
    assert wire0 not in te.class_images[2].tolist()
    for i in range(len(te)):
        ep = te[i]
        assert ep["query_name"] != "wire/0" and "wire/0" not in ep["support_names"]
        assert int(ep["query_mask"].eq(1).sum()) > 0 and ep["support_masks"].eq(1).flatten(1).any(1).all()
    # at the original size the line survives and the pair is drawn
    full = FolderFewShot(root, split="val", image_size=200, episodes=2, progress=False,
                         options=FolderOptions(fold_classes=["wire"]))
    assert wire0 in full.class_images[2].tolist()


class _EmptyingTransform(TestTransform):
    """A transform that loses the foreground (as a random crop far off the object can)."""

    def __call__(self, image, mask, rng=None):
        x, y, hw = super().__call__(image, mask, rng)
        y[y == 1] = 0
        return x, y, hw


def test_empty_mask_after_transform_is_reported_once_with_what_happened(tmp_path):
    root = _thin_root(tmp_path / "thin")
    te = FolderFewShot(root, split="val", transform=_EmptyingTransform(50), episodes=5, progress=False,
                       options=FolderOptions(fold_classes=["blob"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(te)):
            te[i]
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1, msgs
    assert "class 'blob'" in msgs[0] and "0 foreground pixels after TestTransform(size=50" in msgs[0]
    assert "query mask of blob/" in msgs[0] and "0/255" not in msgs[0]
    assert te.empty_mask_episodes == 5


def test_folder_training_sees_the_test_scale(tmp_path):
    # 200 px images at image_size 50: training crops of the original scale held no object at all
    root = _thin_root(tmp_path / "thin")
    tr = FolderFewShot(root, split="train", image_size=50, progress=False,
                       options=FolderOptions(fold_classes=["wire"]))
    assert tr.transform.resize_long == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(tr)):
            ep = tr[i]
            assert ep["query_mask"].eq(1).any() and ep["support_masks"].eq(1).flatten(1).any(1).all()


@pytest.mark.skipif(not REAL.is_dir(), reason="real data /work/shared/data absent")
def test_real_coco128_seeded_folds_over_classes_with_5_images():
    size = 161
    held, counts = [], None
    for fold in range(4):
        cfg = load_config(None, ["data.dataset=folder", f"data.root={REAL}", "data.num_folds=4",
                                 "data.min_class_images=5", f"data.fold={fold}", f"data.image_size={size}",
                                 "data.min_pixels=1", "data.test_episodes=12"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # classes with one image are reported as unusable for training
            te = build_dataset(cfg, "val", progress=False)
        counts = te.class_image_counts
        names = {te.class_names[c] for c in te.test_class_ids}
        held.append(names)
        for i in range(len(te)):
            ep = te[i]
            for n in [ep["query_name"], *ep["support_names"]]:
                assert n.split("/")[0] in names
            assert ep["query_mask"].eq(1).any()
            assert ep["support_masks"].eq(1).flatten(1).any(1).all()
            q = ep["query_name"]
            with Image.open(REAL / f"{q}.jpg") as im_:
                w, h = im_.size
            assert tuple(ep["query_mask_orig"].shape) == (h, w)
            vh, vw = ep["query_valid_hw"].tolist()
            assert max(vh, vw) <= size and ep["query_image"].shape[-2:] == torch.Size([size, size])
    eligible = {te.class_names[c] for c, n in counts.items() if n >= 5}
    assert len(eligible) == 25
    assert set().union(*held) == eligible and sum(len(h) for h in held) == 25  # a partition
