"""Train / test transforms: shapes, padding values, foreground-preserving crop, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from fewshot_priors.data.transforms import (
    PFENET_PAD_COLOUR,
    TestTransform,
    TrainTransform,
    _gaussian_blur,
    build_transforms,
    image_to_tensor,
)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_image_to_tensor_is_unit_range_rgb_not_normalised():
    """The transforms give RGB in [0, 1]: normalisation belongs to each backbone."""
    img = _img(5, 7)
    ref = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    assert torch.equal(image_to_tensor(img), ref)
    for t in (TrainTransform(size=16), TestTransform(size=16)):
        out, _, _ = t(img, np.zeros((5, 7), np.int64), np.random.default_rng(0))
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_padding_is_pfenets_colour_in_train_and_black_in_test():
    """PFENet pads training crops (and fills rotations) with the ImageNet mean colour, test
    images with black (raw pixel 0)."""
    img = _img(4, 4)
    out, m, _ = TrainTransform(size=12, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=0.0)(
        img, np.ones((4, 4), np.int64), np.random.default_rng(0))
    corner = out[:, 0, 0]
    torch.testing.assert_close(corner, torch.tensor(PFENET_PAD_COLOUR))
    assert int(m[0, 0]) == 255
    out, m, hw = TestTransform(size=12, multiple_of=1)(_img(4, 2), np.ones((4, 2), np.int64))
    assert hw == (12, 6) and float(out[:, :, 6:].abs().max()) == 0.0 and bool((m[:, 6:] == 255).all())


@pytest.mark.parametrize("src, dst", [((375, 500), (354, 473)), ((40, 100), (20, 50)), ((17, 23), (40, 31))])
def test_resize_is_plain_bilinear_and_thread_invariant(src, dst):
    """PFENet resizes float images with cv2 INTER_LINEAR: half-pixel bilinear, no
    antialiasing. torchvision's antialiased kernel blurs a 500 -> 473 downscale."""
    from fewshot_priors.data.transforms import resize_bilinear

    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, *src, generator=g)
    ours = resize_bilinear(img, dst)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = F.interpolate(img[None].double(), size=dst, mode="bilinear", align_corners=False)[0]
        one = resize_bilinear(img, dst)
        torch.set_num_threads(2)
        two = resize_bilinear(img, dst)
    finally:
        torch.set_num_threads(threads)
    assert ours.shape == (3, *dst)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=0)
    assert torch.equal(one, two)
    if dst[0] < src[0]:  # the antialiased kernel is measurably different when downscaling
        aa = F.interpolate(img[None], size=dst, mode="bilinear", align_corners=False, antialias=True)[0]
        assert (aa - ours).abs().max() > 1e-2


def test_test_transform_longer_side_and_padding():
    t = TestTransform(size=50, multiple_of=1)
    mask = np.zeros((40, 100), np.int64)
    mask[10:20, 30:60] = 1
    mask[0, :] = 255
    img, m, hw = t(_img(40, 100), mask)
    assert img.shape == (3, 50, 50) and m.shape == (50, 50) and hw == (20, 50)
    assert (m[20:] == 255).all()  # label padded with 255
    assert torch.equal(img[:, 20:, :], torch.zeros(3, 30, 50))  # image padded with raw 0 (black)
    assert set(torch.unique(m[:20]).tolist()) == {0, 1, 255}
    assert int((m == 1).sum()) == 5 * 15  # 10x30 object halved


@pytest.mark.parametrize("hw, S", [((105, 231), 473), ((231, 189), 473), ((37, 407), 473), ((375, 500), 473)])
def test_test_resize_size_is_pfenets_expression(hw, S):
    """PFENet's test_Resize: ratio = S * 1.0 / longer; shorter side = int(shorter * ratio)."""
    h, w = hw
    ratio = S * 1.0 / max(h, w)
    expected = (S, int(w * ratio)) if h >= w else (int(h * ratio), S)
    _, _, valid = TestTransform(S, multiple_of=1)(_img(h, w), np.zeros((h, w), np.int64))
    assert tuple(valid) == expected
    # PFENet's Resize (resized_val=True) then floors both sides to a multiple of 8
    img, m, valid8 = TestTransform(S)(_img(h, w), np.zeros((h, w), np.int64))
    assert tuple(valid8) == tuple(v // 8 * 8 for v in expected)
    assert img.shape == (3, S, S) and (m[valid8[0]:] == 255).all() and (m[:, valid8[1]:] == 255).all()


def test_test_transform_voc_size_is_pfenets():
    """A 375 x 500 VOC image at 473: PFENet's val Resize gives 352 x 472 (not 354 x 473)."""
    _, m, valid = TestTransform(473)(_img(375, 500), np.zeros((375, 500), np.int64))
    assert tuple(valid) == (352, 472)
    assert (m[:352, :472] == 0).all() and (m[352:] == 255).all() and (m[:, 472:] == 255).all()
    with pytest.raises(ValueError, match="multiple_of"):
        TestTransform(473, multiple_of=0)


def test_train_transform_output_and_determinism():
    t = TrainTransform(size=48)
    mask = np.zeros((60, 80), np.int64)
    mask[20:40, 30:50] = 1
    a = t(_img(60, 80), mask, np.random.default_rng(3))
    b = t(_img(60, 80), mask, np.random.default_rng(3))
    c = t(_img(60, 80), mask, np.random.default_rng(4))
    assert a[0].shape == (3, 48, 48) and a[1].shape == (48, 48) and a[1].dtype == torch.int64
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert set(torch.unique(a[1]).tolist()) <= {0, 1, 255}


def test_small_image_is_padded_with_mean_and_255():
    t = TrainTransform(size=64, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=0.0)
    img, m, _ = t(_img(20, 30), np.ones((20, 30), np.int64), np.random.default_rng(0))
    assert int((m == 1).sum()) == 600 and int((m == 255).sum()) == 64 * 64 - 600
    pad = torch.tensor(PFENET_PAD_COLOUR).view(3, 1).expand(3, 64 * 64 - 600)
    assert torch.equal(img[:, m == 255], pad)  # PFENet's mean colour


def test_rotation_fills_mask_with_255():
    t = TrainTransform(size=40, scale=(1.0, 1.0), rotate=(10.0, 10.0), rotate_p=1.0,
                       blur_p=0.0, hflip_p=0.0)
    _, m, _ = t(_img(40, 40), np.zeros((40, 40), np.int64), np.random.default_rng(0))
    assert m[0, 0] == 255 and m[20, 20] == 0


def test_crop_keeps_foreground():
    # a small object in a large image: one random 64 crop keeps it with p ~ 0.2,
    # 31 draws (deterministic seeds here) find a crop that keeps >= 85 % of it
    mask = np.zeros((160, 160), np.int64)
    mask[40:60, 40:60] = 1
    t = TrainTransform(size=64, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=0.0)
    plain = TrainTransform(size=64, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=0.0,
                           crop_retries=0)
    kept, kept_plain = [], []
    for s in range(20):
        kept.append(int((t(_img(160, 160), mask, np.random.default_rng(s))[1] == 1).sum()))
        once = plain(_img(160, 160), mask, np.random.default_rng(s))[1]
        kept_plain.append(int((once == 1).sum()))
    assert min(kept) >= 0.85 * 400
    assert sum(k < 0.85 * 400 for k in kept_plain) > 10  # a single draw usually loses it


def test_crop_uses_the_last_draw_when_none_keeps_enough():
    """PFENet's Crop re-draws up to 31 times and keeps the LAST crop even if it lost
    the object (it does not pick the best one)."""
    mask = np.zeros((160, 160), np.int64)
    mask[10:150, 10:150] = 1  # larger than the crop: no 64 crop keeps 85 %
    img = _img(160, 160)
    t = TrainTransform(size=64, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=0.0)
    assert t.crop_retries == 31
    out, m, _ = t(img, mask, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    rng.uniform(1.0, 1.0), rng.random(), rng.random(), rng.random()  # scale, rotate, blur, flip
    draws = [(int(rng.integers(0, 97)), int(rng.integers(0, 97))) for _ in range(32)]
    y, x = draws[-1]
    assert torch.equal(out, image_to_tensor(img)[:, y : y + 64, x : x + 64])
    assert torch.equal(m, torch.from_numpy(mask)[y : y + 64, x : x + 64])


def test_blur_matches_torchvision():
    x = torch.randn(3, 17, 23)
    assert torch.allclose(_gaussian_blur(x, 5, 1.1), TF.gaussian_blur(x, [5, 5], [1.1, 1.1]),
                          atol=1e-5)


def test_hflip_applies_to_image_and_mask_together():
    t = TrainTransform(size=10, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=1.0)
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, :3] = 255
    mask = np.zeros((10, 10), np.int64)
    mask[:, :3] = 1
    x, m, _ = t(img, mask, np.random.default_rng(0))
    assert (m[:, 7:] == 1).all() and (m[:, :7] == 0).all()
    assert (x[:, :, 7:] == 1).all() and (x[:, :, :7] == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        TrainTransform(size=0)
    with pytest.raises(ValueError, match="blur_kernel"):
        TrainTransform(blur_kernel=4)
    with pytest.raises(ValueError, match="mask"):
        TestTransform(8)(_img(5, 5), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="image"):
        TestTransform(8)(np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="dataset"):
        build_transforms(32, "ade")
    tr, te = build_transforms(32, "coco")
    assert tr.scale == (0.8, 1.25) and te.size == 32


def test_resize_bilinear_is_the_plain_two_pass_lerp():
    """index_select gathers: bit-identical to the two-pass lerp written with advanced indexing."""
    from fewshot_priors.data.transforms import _bilinear_taps, resize_bilinear

    img = torch.rand(3, 37, 53, generator=torch.Generator().manual_seed(4))
    for dst in [(50, 41), (20, 70), (37, 53)]:
        i0, i1, wy = _bilinear_taps(37, dst[0])
        rows = img[:, i0, :] * (1.0 - wy)[None, :, None] + img[:, i1, :] * wy[None, :, None]
        j0, j1, wx = _bilinear_taps(53, dst[1])
        plain = rows[:, :, j0] * (1.0 - wx) + rows[:, :, j1] * wx
        assert torch.equal(resize_bilinear(img, dst), plain)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(20, 700), w=st.integers(20, 700), size=st.integers(16, 96))
def test_train_transform_resize_long_sees_the_whole_photo_at_the_test_scale(h, w, size):
    """resize_long: the longer side becomes `size` (no random scale here), so the crop holds the whole
    photo, and a mask covering the left half keeps about half of the valid pixels."""
    img = np.zeros((h, w, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[:, : w // 2] = 1
    t = TrainTransform(size=size, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, hflip_p=0.0, resize_long=size)
    x, m, hw = t(img, mask, np.random.default_rng(0))
    assert tuple(x.shape) == (3, size, size) and hw == (size, size)
    valid = m != 255
    nh, nw = round(h * size / max(h, w)), round(w * size / max(h, w))
    assert int(valid.sum()) == max(1, nh) * max(1, nw)  # the whole resized photo, the rest padding
    if min(nh, nw) >= 8:
        assert float((m[valid] == 1).float().mean()) == pytest.approx(0.5, abs=1.5 / nw + 0.01)
    # without it (PFENet), a photo much larger than the crop is cropped, not resized
    if min(h, w) > size:
        _, m0, _ = TrainTransform(size=size, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0,
                                  hflip_p=0.0)(img, mask, np.random.default_rng(0))
        assert bool((m0 != 255).all())


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), oh=st.integers(1, 60), ow=st.integers(1, 60),
       seed=st.integers(0, 2**16))
def test_the_uint8_photo_resize_equals_the_float_one(h, w, oh, ow, seed):
    """The folder datasets' fast path (rows gathered from the uint8 photo, / 255 last) gives the float
    path's image up to float rounding, for any sizes, up or down."""
    from fewshot_priors.data.transforms import _resize_photo, resize_bilinear

    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fast, ref = _resize_photo(img, (oh, ow)), resize_bilinear(image_to_tensor(img), (oh, ow))
    assert fast.shape == ref.shape == (3, oh, ow) and fast.dtype == torch.float32
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=0)
