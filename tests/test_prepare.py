"""``fewshot-priors prepare pascal``: SegmentationClassAug and the split lists from VOC 2012 + SBD,
on small fixtures in the downloads' own layouts (SBD's ``GTcls`` MATLAB struct written with scipy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fewshot_priors.app.cli import main
from fewshot_priors.data import PascalFewShot, PascalOptions
from fewshot_priors.data.io import BadDataError, DataLayoutError, read_label, write_palette_png
from fewshot_priors.data.prepare import prepare_pascal

H, W = 48, 64
VOC_TRAIN, VOC_VAL = ["2007_000001", "2007_000002"], ["2007_000003", "2007_000004"]
SBD_TRAIN, SBD_VAL = ["2007_000002", "2007_000003", "2008_000005", "2008_000006"], ["2008_000007", "2007_000004"]
#: the standard train_aug: SBD train + SBD val + VOC train, minus VOC val
TRAIN_AUG = ["2007_000001", "2007_000002", "2008_000005", "2008_000006", "2008_000007"]
EVERY = sorted(set(TRAIN_AUG) | set(VOC_VAL))


def _label(i: int, boundary: bool) -> np.ndarray:
    """Class 1 (fold 0's first test class) and class 6 (a train class) in every label, one more per image."""
    label = np.zeros((H, W), dtype=np.uint8)
    label[: H // 2, : W // 2] = 1
    label[H // 2:, W // 2:] = 6
    label[: H // 4, W // 2:] = 7 + i % 10
    if boundary:  # VOC draws 255 along object outlines
        label[H // 2, :] = 255
    return label


def write_downloads(root: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """VOCdevkit/VOC2012 and benchmark_RELEASE/dataset as they unpack; returns the expected labels."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    sbd = root / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    rng = np.random.default_rng(0)
    expected = {}
    for i, vid in enumerate(sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{vid}.jpg")
        if vid in VOC_TRAIN + VOC_VAL:  # VOC's palette label, with boundaries: it wins over SBD's
            expected[vid] = _label(i, boundary=True)
            write_palette_png(voc / "SegmentationClass" / f"{vid}.png", expected[vid])
        if vid in SBD_TRAIN + SBD_VAL:
            seg = _label(i, boundary=False)
            expected.setdefault(vid, seg)
            gtcls = {"Segmentation": seg, "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8)}
            savemat(sbd / "cls" / f"{vid}.mat", {"GTcls": gtcls})
    for path, ids in ((voc / "ImageSets/Segmentation/train.txt", VOC_TRAIN),
                      (voc / "ImageSets/Segmentation/val.txt", VOC_VAL),
                      (sbd / "train.txt", SBD_TRAIN), (sbd / "val.txt", SBD_VAL)):
        path.write_text("".join(f"{i}\n" for i in ids))
    return root / "VOCdevkit", root / "benchmark_RELEASE", expected


@pytest.fixture
def downloads(tmp_path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    return write_downloads(tmp_path / "downloads")


@pytest.mark.filterwarnings("ignore:PascalFewShot. classes with fewer")  # the fixture's few images per class
def test_prepare_pascal_writes_the_standard_layout(downloads, tmp_path):
    voc, sbd, expected = downloads
    out = tmp_path / "pascal"
    res = prepare_pascal(voc, sbd, out, progress=False)
    assert res == {"root": str(out), "labels": len(EVERY), "written": len(EVERY), "kept": 0,
                   "train_aug": len(TRAIN_AUG), "val": len(VOC_VAL)}
    lists = out / "VOC2012" / "ImageSets" / "Segmentation"
    assert lists.joinpath("train_aug.txt").read_text().split() == TRAIN_AUG
    assert lists.joinpath("val.txt").read_text().split() == VOC_VAL
    labels = out / "VOC2012" / "SegmentationClassAug"
    assert sorted(p.stem for p in labels.glob("*.png")) == EVERY
    for vid in EVERY:
        assert Image.open(labels / f"{vid}.png").mode == "L"
        np.testing.assert_array_equal(read_label(labels / f"{vid}.png"), expected[vid], err_msg=vid)
    assert (read_label(labels / "2007_000002.png") == 255).any()  # in both: VOC's label, boundaries kept
    assert not (read_label(labels / "2008_000005.png") == 255).any()  # SBD only: no boundary
    assert (out / "VOC2012" / "JPEGImages" / "2008_000007.jpg").is_file()  # linked, not copied
    assert (out / "VOC2012" / "JPEGImages").is_symlink()

    # PascalFewShot reads the result as it is: train = train_aug, val = VOC val
    opts = PascalOptions(min_pixels=10, cache=False)
    train = PascalFewShot(out, split="train", fold=0, options=opts, progress=False)
    val = PascalFewShot(out, split="val", fold=0, episodes=4, options=opts, progress=False)
    assert sorted(e.name for e in train.entries) == TRAIN_AUG
    assert sorted(e.name for e in val.entries) == VOC_VAL and val.class_ids == [1]


def test_prepare_is_idempotent_and_resumable(downloads, tmp_path):
    voc, sbd, _ = downloads
    out = tmp_path / "pascal"
    prepare_pascal(voc, sbd, out, progress=False)
    labels = out / "VOC2012" / "SegmentationClassAug"
    stamps = {p.name: p.stat().st_mtime_ns for p in labels.iterdir()}
    again = prepare_pascal(voc, sbd, out, progress=False)
    assert (again["written"], again["kept"]) == (0, len(EVERY))
    assert {p.name: p.stat().st_mtime_ns for p in labels.iterdir()} == stamps
    for vid in ("2007_000001", "2008_000006"):  # an interrupted run: these were never written
        (labels / f"{vid}.png").unlink()
    resumed = prepare_pascal(voc, sbd, out, progress=False)
    assert (resumed["written"], resumed["kept"]) == (2, len(EVERY) - 2)
    assert sorted(p.stem for p in labels.iterdir()) == EVERY  # no temporary file left behind
    # into the VOC download itself: the files go beside its own, JPEGImages stays a folder
    res = prepare_pascal(voc, sbd, voc, progress=False)
    assert res["root"] == str(voc) and (voc / "VOC2012" / "SegmentationClassAug").is_dir()
    assert not (voc / "VOC2012" / "JPEGImages").is_symlink()
    assert (voc / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == VOC_VAL


def test_prepare_names_a_missing_folder_or_a_corrupt_mat(downloads, tmp_path):
    voc, sbd, _ = downloads
    out = tmp_path / "pascal"
    seg = voc / "VOC2012" / "SegmentationClass"
    seg.rename(seg.with_name("elsewhere"))
    with pytest.raises(DataLayoutError, match=r"VOC 2012 folder .*missing .*VOC2012/SegmentationClass\b"):
        prepare_pascal(voc, sbd, out, progress=False)
    seg.with_name("elsewhere").rename(seg)
    with pytest.raises(DataLayoutError, match="SBD folder .* does not exist"):
        prepare_pascal(voc, tmp_path / "nope", out, progress=False)
    (sbd / "dataset" / "val.txt").unlink()
    with pytest.raises(DataLayoutError, match=r"missing .*dataset/val.txt"):
        prepare_pascal(voc, sbd, out, progress=False)
    (sbd / "dataset" / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    mat = sbd / "dataset" / "cls" / "2008_000006.mat"
    mat.write_bytes(mat.read_bytes()[:100])  # truncated
    with pytest.raises(BadDataError, match=r"cannot read SBD label .*2008_000006\.mat"):
        prepare_pascal(voc, sbd, out, progress=False)
    savemat(mat, {"GTinst": {"Segmentation": np.zeros((H, W), np.uint8)}})  # another struct
    with pytest.raises(BadDataError, match="2008_000006.mat.*GTcls.Segmentation"):
        prepare_pascal(voc, sbd, out, progress=False)
    savemat(mat, {"GTcls": {"Segmentation": np.full((H, W), 30, np.uint8)}})
    with pytest.raises(BadDataError, match=r"2008_000006.mat holds class ids \[30\] outside 0..20"):
        prepare_pascal(voc, sbd, out, progress=False)
    (voc / "VOC2012" / "JPEGImages" / "2008_000005.jpg").unlink()
    with pytest.raises(DataLayoutError, match="1 image.* missing from .*JPEGImages: 2008_000005"):
        prepare_pascal(voc, sbd, out, progress=False)


def test_prepare_command(downloads, tmp_path, capsys):
    voc, sbd, _ = downloads
    out = tmp_path / "pascal"
    assert main(["prepare", "pascal", "--voc", str(voc), "--sbd", str(sbd), "--output-dir", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert f"{len(EVERY)} labels" in text and f"train_aug.txt {len(TRAIN_AUG)} ids" in text and f"data.root={out}" in text
    assert main(["prepare", "pascal", "--voc", str(tmp_path / "none"), "--sbd", str(sbd), "--output-dir", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: VOC 2012 folder") and "Traceback" not in err
