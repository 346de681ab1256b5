"""Joint image + mask transforms for episodes (PFENet's training and test recipes).

A transform is called as ``transform(image, mask, rng)`` with

* ``image``: ``H, W, 3`` uint8 RGB array,
* ``mask``: ``H, W`` integer array with values 0 / 1 / 255 (255 = ignore),
* ``rng``: a :class:`numpy.random.Generator` (all randomness comes from it, so a
  seeded generator gives the same result on every machine and worker),

and returns ``(image, mask, valid_hw)``: a float32 ``3, S, S`` RGB tensor in ``[0, 1]``
(not normalised: each backbone normalises its input with its own mean/std, see
:func:`fewshot_priors.models.backbone.input_normalisation`), an int64 ``S, S`` mask and the
``(h, w)`` of the un-padded content.

The geometric ops run on the ``[0, 1]`` tensor with
:mod:`torchvision.transforms.v2.functional` (bilinear for the image, nearest for
the mask). The training transform pads and rotates in PFENet's padding colour, the
ImageNet mean (:data:`PFENET_PAD_COLOUR`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from .._validate import is_int
from ..constants import IGNORE_INDEX, IMAGENET_MEAN

__all__ = [
    "PFENET_PAD_COLOUR",
    "TestTransform",
    "TrainTransform",
    "build_transforms",
    "image_to_tensor",
]

#: PFENet's padding and rotation fill (its ``mean`` padding: the ImageNet mean, RGB in [0, 1]),
#: which a backbone with ImageNet statistics normalises to 0.
PFENET_PAD_COLOUR: tuple[float, float, float] = IMAGENET_MEAN


def _check_photo(image: object) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"`image` must be an H, W, 3 uint8 array, got "
            f"{getattr(image, 'shape', type(image).__name__)}"
        )


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``H, W, 3`` uint8 RGB array -> ``3, H, W`` float32 tensor in ``[0, 1]``."""
    _check_photo(image)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def _as_mask(mask: np.ndarray, image: np.ndarray) -> torch.Tensor:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"`mask` must be H, W matching the image {image.shape[:2]}, got {mask.shape}"
        )
    return torch.from_numpy(mask.astype(np.int64))[None]  # 1, H, W


def _bilinear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of a half-pixel bilinear resize along one axis.

    ``src = (dst + 0.5) * n_in / n_out - 0.5`` clamped at 0, as OpenCV's
    ``INTER_LINEAR`` and ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    src = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    src = src.clamp(min=0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).to(torch.float32)


def resize_bilinear(img: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``C, H, W`` float32 (or uint8) image to ``hw``, without antialiasing; float32 out.

    The same result as PFENet's ``cv2.resize(INTER_LINEAR)`` on float images (and
    as ``F.interpolate(..., mode="bilinear", align_corners=False)`` up to float
    rounding), but written as gathers and element-wise lerps so that it is
    bit-identical for any number of intra-op threads (``F.interpolate`` is not,
    and its ``antialias=True`` kernel blurs downscaled images, e.g. VOC's 500 px
    sides resized to 473).
    """
    # index_select, not advanced indexing: the same gathers (bit for bit), ~1.5x faster on CPU for the
    # column gather along the last axis (benchmarks/RESULTS.md, loader profile); the gathered rows become
    # float32 (a no-op for float32 input; a uint8 photo is converted only after the row gather)
    i0, i1, wy = _bilinear_taps(img.shape[-2], hw[0])
    rows = (img.index_select(1, i0).to(torch.float32) * (1.0 - wy)[None, :, None]
            + img.index_select(1, i1).to(torch.float32) * wy[None, :, None])
    j0, j1, wx = _bilinear_taps(img.shape[-1], hw[1])
    return rows.index_select(2, j0) * (1.0 - wx) + rows.index_select(2, j1) * wx


def _resize_photo(image: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """``H, W, 3`` uint8 RGB photo -> ``3, h, w`` float32 in ``[0, 1]`` resized bilinearly to ``hw``.

    The same as ``resize_bilinear(image_to_tensor(image), hw)`` up to float rounding (the division by
    255 comes last), but :func:`resize_bilinear` gathers the row taps from the uint8 array, so a large
    photo shrunk to the model's size is never converted to float whole: 3.4x faster for a 640 px COCO
    photo resized to 128 px (the folder datasets' training transform, ``resize_long``).
    """
    return resize_bilinear(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), hw).div_(255.0)


def _resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a ``1, H, W`` mask (as cv2 INTER_NEAREST)."""
    return TF.resize(mask, list(hw), interpolation=InterpolationMode.NEAREST)


def resize_label(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``H, W`` label map resized to ``hw`` exactly as the transforms resize masks (nearest)."""
    if tuple(hw) == tuple(label.shape):
        return np.asarray(label)
    return _resize_mask(torch.from_numpy(np.ascontiguousarray(label))[None], tuple(hw))[0].numpy()


def _resize_pair(img: torch.Tensor, mask: torch.Tensor, hw: tuple[int, int]):
    """Image bilinear (as cv2 INTER_LINEAR), mask nearest (as cv2 INTER_NEAREST)."""
    return resize_bilinear(img, hw), _resize_mask(mask, hw)


def _gaussian_blur(img: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (as ``TF.gaussian_blur``).

    Written as a fixed-order sum of shifted slices rather than a convolution so
    that the result is bit-identical for any number of intra-op threads (the
    DataLoader workers run single-threaded, the main process does not).
    """
    r = kernel // 2
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    w = (w / w.sum()).tolist()
    out = F.pad(img[None], [r, r, r, r], mode="reflect")[0]
    h, wd = img.shape[-2:]
    rows = sum(w[i] * out[:, :, i : i + wd] for i in range(kernel))
    return sum(w[i] * rows[:, i : i + h, :] for i in range(kernel))


class TrainTransform:
    """The PFENet training augmentation (its official code).

    In order: random scale, random rotation (``p=rotate_p``, image padded with
    the mean, mask with 255), Gaussian blur (``p=blur_p``), horizontal flip
    (``p=0.5``), then a ``size x size`` random crop (padded with mean / 255 when
    the image is smaller) that is re-drawn up to ``crop_retries`` times while
    less than ``keep_fg`` of the foreground survives; as in PFENet the last draw
    is used when none keeps enough.

    Args:
        size: output side ``S`` (473 or 321 in the paper).
        scale: range of the isotropic scale factor (0.9-1.1 PASCAL, 0.8-1.25 COCO).
        rotate: rotation range in degrees.
        rotate_p: probability of rotating.
        blur_kernel: Gaussian blur kernel size (sigma as OpenCV's default for it).
        blur_p: probability of blurring.
        hflip_p: probability of a horizontal flip.
        crop_retries: re-draws allowed to keep the foreground (31 as PFENet); when
            none keeps enough, the last draw is used (as PFENet).
        keep_fg: fraction of foreground pixels a crop must keep.
        resize_long: if set, the random scale is relative to the image resized so
            that its longer side is ``resize_long`` (the scale of
            :class:`TestTransform` at that size) instead of to the original image;
            ``None`` (PFENet, whose images are about the crop size) scales the original.
            Folder datasets of large images use ``resize_long=size``: without it a
            ``size`` crop of a much larger image sees a small window at a larger
            object scale than the test episodes, and often no foreground at all.

    Example:
        >>> import numpy as np
        >>> t = TrainTransform(size=64)
        >>> img, mask, hw = t(np.zeros((80, 100, 3), np.uint8), np.zeros((80, 100)),
        ...                   np.random.default_rng(0))
        >>> tuple(img.shape), tuple(mask.shape), hw
        ((3, 64, 64), (64, 64), (64, 64))
    """

    def __init__(
        self,
        size: int = 473,
        scale: tuple[float, float] = (0.9, 1.1),
        rotate: tuple[float, float] = (-10.0, 10.0),
        rotate_p: float = 0.5,
        blur_kernel: int = 5,
        blur_p: float = 0.5,
        hflip_p: float = 0.5,
        crop_retries: int = 31,
        keep_fg: float = 0.85,
        fill: Sequence[float] = PFENET_PAD_COLOUR,
        resize_long: int | None = None,
    ) -> None:
        if int(size) <= 0:
            raise ValueError(f"`size` must be a positive int, got {size}")
        if resize_long is not None and (not is_int(resize_long)
                                        or resize_long < 1):
            raise ValueError(f"`resize_long` must be a positive int or None, got {resize_long!r}")
        self.resize_long = resize_long
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"`scale` must be (low, high) with 0 < low <= high, got {scale}")
        if blur_kernel % 2 != 1:
            raise ValueError(f"`blur_kernel` must be odd, got {blur_kernel}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotate = (float(rotate[0]), float(rotate[1]))
        self.rotate_p = rotate_p
        self.blur_kernel = int(blur_kernel)
        self.blur_sigma = 0.3 * ((blur_kernel - 1) * 0.5 - 1) + 0.8  # OpenCV default
        self.blur_p = blur_p
        self.hflip_p = hflip_p
        self.crop_retries = int(crop_retries)
        self.keep_fg = float(keep_fg)
        self.fill = [float(v) for v in fill]
        if len(self.fill) != 3:
            raise ValueError(f"`fill` must be an RGB colour in [0, 1] (three numbers), got {fill!r}")

    def __repr__(self) -> str:
        extra = "" if self.resize_long is None else f", resize_long={self.resize_long}"
        return f"TrainTransform(size={self.size}, scale={self.scale}, rotate={self.rotate}{extra})"

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        _check_photo(image)
        m = _as_mask(mask, image)
        # scale
        s = rng.uniform(*self.scale)
        h, w = image.shape[:2]
        if self.resize_long is not None:
            s *= self.resize_long / max(h, w)
        new_hw = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        if self.resize_long is not None and new_hw != (h, w):  # a photo to the model's size: resize it as uint8
            img, m = _resize_photo(image, new_hw), _resize_mask(m, new_hw)
        else:  # PFENet's recipe, exactly: float first
            img = image_to_tensor(image)
            if new_hw != (h, w):
                img, m = _resize_pair(img, m, new_hw)
        # rotate (image fill: PFENet's padding colour; mask fill 255)
        if rng.random() < self.rotate_p:
            angle = float(rng.uniform(*self.rotate))
            img = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=self.fill)
            m = TF.rotate(m, angle, interpolation=InterpolationMode.NEAREST, fill=IGNORE_INDEX)
        # blur
        if rng.random() < self.blur_p:
            k = self.blur_kernel
            img = _gaussian_blur(img, k, self.blur_sigma)
        # flip
        if rng.random() < self.hflip_p:
            img, m = TF.horizontal_flip(img), TF.horizontal_flip(m)
        img, m = self._crop(img, m, rng)
        return img.contiguous(), m[0].contiguous(), (self.size, self.size)

    def _crop(self, img: torch.Tensor, m: torch.Tensor, rng: np.random.Generator):
        S = self.size
        h, w = img.shape[-2:]
        ph, pw = max(S - h, 0), max(S - w, 0)
        if ph or pw:  # centre padding, as PFENet
            top, left = ph // 2, pw // 2
            pad = [left, top, pw - left, ph - top]
            img = TF.pad(img, pad, fill=self.fill)
            m = TF.pad(m, pad, fill=IGNORE_INDEX)
            h, w = img.shape[-2:]
        total_fg = int((m == 1).sum())
        # PFENet's Crop: draw, then re-draw while < keep_fg of the foreground survives,
        # at most crop_retries times (its `crop_cnt <= 30` loop: 31); the LAST draw is used
        for _ in range(self.crop_retries + 1):
            y = int(rng.integers(0, h - S + 1))
            x = int(rng.integers(0, w - S + 1))
            kept = int((m[:, y : y + S, x : x + S] == 1).sum())
            if total_fg == 0 or kept >= self.keep_fg * total_fg:
                break
        return img[:, y : y + S, x : x + S], m[:, y : y + S, x : x + S]


class TestTransform:
    """The test transform of PFENet (its official code): longer side to ``size``, pad to a square.

    Exactly PFENet's validation ``Resize`` (``resized_val=True``): the longer side
    becomes ``size`` and the shorter ``int(side * (size * 1.0 / longer))``, then each
    side is floored to a multiple of ``multiple_of`` (8; 473 -> 472, so a 500 x 375
    VOC image becomes 472 x 352). The image is resized bilinearly (not antialiased,
    as cv2's ``INTER_LINEAR``), placed at the top-left of a ``size x size`` canvas
    padded with the raw pixel value ``pad_value`` (0-255; 0 = black),
    the mask (nearest) padded with 255. ``valid_hw`` is the resized size. Predictions
    are scored at the original label size with
    :func:`fewshot_priors.data.restore_prediction`. No randomness is used.

    Args:
        size: canvas side ``S`` (473).
        pad_value: raw pixel value of the image padding.
        multiple_of: floor both resized sides to a multiple of this (8 as PFENet; 1 keeps
            the exact aspect-preserving size).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        size: int = 473,
        pad_value: float = 0.0,
        multiple_of: int = 8,
    ) -> None:
        if int(size) <= 0:
            raise ValueError(f"`size` must be a positive int, got {size}")
        if not is_int(multiple_of) or multiple_of < 1:
            raise ValueError(f"`multiple_of` must be a positive int (8 as PFENet, 1 = off), got {multiple_of!r}")
        self.size = int(size)
        self.pad_value = float(pad_value)
        self.multiple_of = multiple_of

    def __repr__(self) -> str:
        return f"TestTransform(size={self.size}, multiple_of={self.multiple_of})"

    def resized_hw(self, h: int, w: int) -> tuple[int, int]:
        """The ``(h, w)`` an ``h x w`` image is resized to (PFENet's ``find_new_hw``)."""
        S, k = self.size, self.multiple_of
        # the same float expression as PFENet, int(side * (S * 1.0 / longer)); int(side * S / longer)
        # differs by one pixel for some sizes (105 x 231 -> 215 rows instead of 214)
        nh = S if h >= w else int(h * (S * 1.0 / w))
        nw = S if w >= h else int(w * (S * 1.0 / h))
        return tuple(max(1, v // k * k if v >= k else v) for v in (nh, nw))  # type: ignore[return-value]

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None):
        img = image_to_tensor(image)
        m = _as_mask(mask, image)
        h, w = img.shape[-2:]
        S = self.size
        nh, nw = self.resized_hw(h, w)
        if (nh, nw) != (h, w):
            img, m = _resize_pair(img, m, (nh, nw))
        canvas = torch.full((3, S, S), self.pad_value / 255.0, dtype=torch.float32)
        canvas[:, :nh, :nw] = img
        mcanvas = torch.full((S, S), IGNORE_INDEX, dtype=torch.int64)
        mcanvas[:nh, :nw] = m[0]
        return canvas, mcanvas, (nh, nw)


def build_transforms(
    size: int, dataset: str = "pascal"
) -> tuple[TrainTransform, TestTransform]:
    """The paper's (train, test) transforms for ``dataset`` ``"pascal"`` or ``"coco"``."""
    scales = {"pascal": (0.9, 1.1), "coco": (0.8, 1.25)}
    if dataset not in scales:
        raise ValueError(f"`dataset` must be one of {sorted(scales)}, got {dataset!r}")
    return TrainTransform(size, scale=scales[dataset]), TestTransform(size)
