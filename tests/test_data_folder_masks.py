"""One reading rule for binary masks of every storage format (read_binary_mask, FolderFewShot)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _data_fixtures import write_image
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from fewshot_priors.data import BadDataError, FolderFewShot, FolderOptions
from fewshot_priors.data.io import AmbiguousMaskWarning, read_binary_mask


def _encode(mask: np.ndarray, fmt: str) -> Image.Image:
    """A boolean ``H, W`` mask stored in one of the formats users have."""
    u = mask.astype(np.uint8)
    zeros = np.zeros_like(u)
    if fmt == "L255":
        return Image.fromarray(u * 255)
    if fmt == "L01":
        return Image.fromarray(u)
    if fmt == "1bit":
        return Image.fromarray(mask)  # mode "1"
    if fmt == "RGB_white":
        return Image.fromarray(np.stack([u * 255] * 3, -1))
    if fmt == "RGB_red":
        return Image.fromarray(np.stack([u * 255, zeros, zeros], -1))
    if fmt == "RGB_voc":  # a VOC class colour (128, 0, 0) on black
        return Image.fromarray(np.stack([u * 128, zeros, zeros], -1))
    if fmt == "RGBA_opaque":
        return Image.fromarray(np.stack([u * 255] * 3 + [zeros + 255], -1))
    if fmt == "LA":
        return Image.fromarray(np.stack([u * 255, zeros + 255], -1))
    if fmt == "LA_alpha":  # a cut-out: flat colour, the mask in the alpha channel
        return Image.fromarray(np.stack([zeros, u * 255], -1))
    if fmt == "RGBA_alpha":
        return Image.fromarray(np.stack([zeros + 30, zeros + 60, zeros + 200, u * 255], -1))
    if fmt == "P01":
        im = Image.fromarray(u, mode="P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        return im
    if fmt == "I16_01":
        return Image.fromarray(u.astype(np.uint16))
    if fmt == "I16_max":
        return Image.fromarray(u.astype(np.uint16) * 65535)
    raise AssertionError(fmt)


FORMATS = ["L255", "L01", "1bit", "RGB_white", "RGB_red", "RGB_voc", "RGBA_opaque", "LA", "LA_alpha",
           "RGBA_alpha", "P01", "I16_01", "I16_max"]
ALPHA_ONLY = {"LA_alpha", "RGBA_alpha"}  # a constant mask is indistinguishable from "no alpha mask"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mask=arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))),
    fmt=st.sampled_from(FORMATS),
)
def test_every_storage_format_gives_the_same_foreground(tmp_path, mask, fmt):
    if fmt in ALPHA_ONLY:
        assume(mask.size > 1)
        if mask.all() or not mask.any():
            mask = mask.copy()
            mask.flat[0] = not mask.flat[0]
    path = tmp_path / f"{fmt}.png"
    _encode(mask, fmt).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean binary mask is never ambiguous
        out = read_binary_mask(path)
    assert out.shape == mask.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out == 1, mask)
    assert not (out == 255).any()


def _square(h=20, w=30):
    m = np.zeros((h, w), bool)
    m[3:12, 5:20] = True
    return m


def test_stray_values_in_a_01_mask_keep_the_foreground(tmp_path):
    m = _square().astype(np.uint8)
    m[15:17, 25:27] = 2  # a 2x2 patch of 2s: the old reader read the whole mask as > 127 -> empty
    Image.fromarray(m).save(tmp_path / "m.png")
    with pytest.warns(AmbiguousMaskWarning, match=r"0/1 mask .* 4 pixel\(s\) of other values \[2\].*ignore"):
        out = read_binary_mask(tmp_path / "m.png")
    assert int((out == 1).sum()) == int(_square().sum())
    assert int((out == 255).sum()) == 4
    with pytest.raises(BadDataError, match="m.png"):
        read_binary_mask(tmp_path / "m.png", strict=True)


def test_low_valued_mask_is_not_silently_empty(tmp_path):
    Image.fromarray(_square().astype(np.uint8) * 2).save(tmp_path / "m.png")  # a 0/2 mask
    with pytest.warns(AmbiguousMaskWarning, match="no value > 127"):
        out = read_binary_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(out == 1, _square())


def test_anti_aliased_0_255_mask_with_a_few_ones_stays_a_0_255_mask(tmp_path):
    m = _square().astype(np.uint8) * 255
    m[12, 5:8] = 1  # edge values of an anti-aliased mask
    m[12, 8:12] = 100
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_binary_mask(tmp_path / "m.png")
    np.testing.assert_array_equal(out == 1, _square())
    assert not (out == 255).any()


def test_01_mask_with_ignore_is_kept(tmp_path):
    m = _square().astype(np.uint8)
    m[0, :] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    out = read_binary_mask(tmp_path / "m.png")
    assert (out[0] == 255).all() and int((out == 1).sum()) == int(_square().sum())


def _folder(root, fmt, n=3, stray=False):
    rng = np.random.default_rng(0)
    for c in ("ant", "bee"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            write_image(root / c / f"{i}.jpg", rng, hw=(20, 30))
            m = _square()
            im = _encode(m, fmt)
            if stray:
                a = np.asarray(im).copy()
                a[15:17, 25:27] = 2
                im = Image.fromarray(a)
            im.save(root / c / f"{i}.png")
    return root


@pytest.mark.parametrize("fmt", ["RGB_white", "1bit", "LA", "L01", "P01"])
def test_folder_dataset_reads_rgb_1bit_la_masks(tmp_path, fmt):
    # RGB, 1-bit and LA masks were refused as "not in the VOC colour map"
    root = _folder(tmp_path / "fss", fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        te = FolderFewShot(root, split="val", episodes=2, image_size=30, progress=False,
                           options=FolderOptions(fold_classes=["bee"]))
    assert int(te[0]["query_mask_orig"].eq(1).sum()) == int(_square().sum())


def test_folder_dataset_reports_stray_values_once_and_keeps_foreground(tmp_path):
    root = _folder(tmp_path / "fss", "L01", stray=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        te = FolderFewShot(root, split="val", episodes=3, image_size=30, progress=False,
                           options=FolderOptions(fold_classes=["bee"], cache=False))
        ep = te[0]
        te[1]
    ambiguous = [w for w in caught if issubclass(w.category, AmbiguousMaskWarning)]
    assert len(ambiguous) == 1 and "3 mask(s) are ambiguous" in str(ambiguous[0].message)
    assert int(ep["query_mask_orig"].eq(1).sum()) == int(_square().sum())
    with pytest.raises(BadDataError, match="other values"):
        FolderFewShot(root, split="val", progress=False,
                      options=FolderOptions(fold_classes=["bee"], strict=True, cache=False))
