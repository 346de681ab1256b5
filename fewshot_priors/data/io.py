"""Reading images and label maps from disk, with errors that name the file.

Label maps are returned as ``H, W`` integer arrays of dataset class ids, with
``0`` = background and ``255`` = ignore (boundary). Palette PNGs (the VOC
``SegmentationClassAug`` format) and grey PNGs store the class id directly;
colour-coded RGB labels in the VOC colour map are converted back to ids.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .._images import DECODE_ERRORS, open_image, to_rgb8
from ..constants import IGNORE_INDEX

#: The image file extensions the readers open (lower case): the one list of the package (the
#: folder datasets' default ``image_ext``, the unlabelled pretraining images, the probe folders).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout (the message shows it)."""


class BadDataError(ValueError):
    """An image/label pair cannot be used (unreadable, size mismatch, ...)."""


class AmbiguousMaskWarning(UserWarning):
    """A binary mask was read with a fallback rule (see :func:`read_binary_mask`)."""


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map.

    Returns:
        ``n, 3`` uint8 array; row ``i`` is the colour of class id ``i``
        (``255`` is the cream-white boundary colour ``(224, 224, 192)``).
    """
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_VOC_PALETTE = voc_palette()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an ``H, W, 3`` uint8 RGB array.

    Every PIL mode is mapped by its bit depth (16-bit images onto 0..255, float images in
    [0, 1] times 255) or refused: see :mod:`fewshot_priors._images`.

    Raises:
        BadDataError: the file is missing, cannot be decoded, or holds values that cannot be
            mapped onto 0..255 (the path and the mode are named).
    """
    try:
        with open_image(path) as im:
            return to_rgb8(im)
    except DECODE_ERRORS as err:
        raise BadDataError(f"cannot read image {path}: {err}") from err


def rgb_image(image: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """An image given as a file, a PIL image or an array, as an ``H, W, 3`` uint8 RGB array.

    Files and PIL images follow the rules of :func:`read_image`; arrays are ``H, W, 3`` or
    ``H, W`` (grey), uint8 0..255 or float in ``[0, 1]``.

    Example:
        >>> rgb_image(np.zeros((4, 5), dtype=np.uint8)).shape
        (4, 5, 3)

    Raises:
        BadDataError: an unreadable file or image.
        ValueError / TypeError: an array of another shape, dtype or value range.
    """
    if isinstance(image, Image.Image):
        try:
            return to_rgb8(image)
        except DECODE_ERRORS as err:
            raise BadDataError(f"cannot convert the {image.mode} image: {err}") from err
    if isinstance(image, str | os.PathLike):
        return read_image(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"`image` must be a path, a PIL image or a numpy array, got {type(image).__name__}")
    arr = image[..., None].repeat(3, axis=-1) if image.ndim == 2 else image
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"an image array must be H, W, 3 (RGB) or H, W (grey), got shape {image.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr.size and (arr.min() < 0.0 or arr.max() > 1.0)):
            raise ValueError("a float image array must hold finite values in [0, 1] (uint8 arrays hold 0..255)")
        return np.rint(arr * 255.0).astype(np.uint8)
    raise TypeError(f"an image array must be uint8 (0..255) or float ([0, 1]), got dtype {arr.dtype}")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (cheap, no full decode)."""
    try:
        with open_image(path) as im:
            w, h = im.size
    except DECODE_ERRORS as err:
        raise BadDataError(f"cannot read image {path}: {err}") from err
    return h, w


def read_label(path: str | Path) -> np.ndarray:
    """Read a segmentation label map as an ``H, W`` uint8 array of class ids.

    Palette ("P") and grey ("L") PNGs give the stored index directly; RGB
    labels are mapped through the VOC colour map (unknown colours are an error).

    Raises:
        BadDataError: the file is missing, unreadable or has unknown colours.
    """
    try:
        with open_image(path) as im:
            return _label_ids(im, path)
    except BadDataError:
        raise
    except DECODE_ERRORS as err:
        raise BadDataError(f"cannot read label {path}: {err}") from err


def _label_ids(im: Image.Image, path: str | Path) -> np.ndarray:
    """The class ids of an opened label image (rules: :func:`read_label`)."""
    mode = im.mode
    if mode in ("P", "L"):
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("PA", "LA", "La"):  # the index / grey channel holds the ids; alpha is not a label
        return np.asarray(im, dtype=np.uint8)[..., 0].copy()
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadDataError(f"label {path} has non-finite values (mode {mode}); store class ids")
        if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
            raise BadDataError(
                f"label {path} has values outside 0..255 (mode {mode}); "
                "store class ids 0..254 and 255 = ignore"
            )
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.rint(arr)):
            raise BadDataError(f"label {path} has fractional values (mode {mode}); "
                               "store whole class ids 0..254 and 255 = ignore")
        return arr.astype(np.uint8)
    if mode == "1":
        raise BadDataError(f"label {path} is a 1-bit image: a label map holds class ids; "
                           "store it as a palette or grey PNG")
    return _rgb_to_ids(to_rgb8(im), path)


def _rgb_to_ids(rgb: np.ndarray, path: str | Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pal = _VOC_PALETTE.astype(np.int64)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(v): i for i, v in enumerate(pal_code)}
    uniq, inv = np.unique(code, return_inverse=True)
    ids = np.empty(len(uniq), dtype=np.uint8)
    for k, v in enumerate(uniq.tolist()):
        if v not in lookup:
            r, g, b = (v >> 16) & 255, (v >> 8) & 255, v & 255
            raise BadDataError(
                f"label {path} is an RGB image with colour {(r, g, b)} that is not in the VOC "
                "colour map; store labels as palette or grey PNGs holding class ids"
            )
        ids[k] = lookup[v]
    return ids[inv].reshape(code.shape)


#: Share of pixels that must be 0 / 1 (or 255) for a mask with a few other values to be
#: read as a 0/1 mask (its other values become ignore, with a warning).
BINARY01_MIN_SHARE = 0.99
#: A mask holding both 1 and 255 is a 0/1 mask (255 = ignore) when it has at least this many
#: 1s per 255; fewer 1s are the edge values of an anti-aliased 0/255 mask.
ONES_MIN_RATIO = 0.1


def _single_channel(im: Image.Image) -> np.ndarray:
    """One value per pixel of a mask image of any PIL mode (see :func:`read_binary_mask`)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)  # 0 / 255
    if mode in ("P", "L"):  # palette masks: the stored index, as read_label
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(im)
        if arr.dtype.kind == "f":
            if not np.isfinite(arr).all():
                raise ValueError(f"non-finite values (mode {mode})")
            if arr.size and arr.max() <= 1.0 and arr.min() >= 0.0 and not np.isin(arr, (0.0, 1.0)).all():
                arr = arr * 255.0  # a soft mask in [0, 1]: threshold at 0.5 below
            arr = np.rint(arr)
        arr = arr.astype(np.int64)
        if arr.size and arr.min() < 0:
            raise ValueError(f"negative values (mode {mode}); a mask holds 0 / 1 (or 0 / 255), 255 = ignore")
        if arr.size and arr.max() > 255:  # a 16-bit mask (0 / 65535, anti-aliased): onto 0..255
            if arr.max() > 65535:
                raise ValueError(f"values up to {arr.max()} (mode {mode}), beyond 16 bits")
            arr = np.rint(arr / 257.0).astype(np.int64)
        return arr
    if mode in ("LA", "La", "PA"):
        im = im.convert("LA")
        arr = np.asarray(im, dtype=np.uint8)
        colour, alpha = arr[..., 0], arr[..., 1]
    else:
        arr = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        colour, alpha = arr[..., :3].max(axis=-1), arr[..., 3]
    if colour.size and colour.min() == colour.max() and alpha.min() != alpha.max():
        return alpha.copy()  # a cut-out: the colour is flat, the mask is the alpha channel
    return colour.copy()


def _report_ambiguous(msg: str, strict: bool) -> None:
    """An ambiguous mask: :class:`BadDataError` with ``strict``, else an :class:`AmbiguousMaskWarning`."""
    if strict:
        raise BadDataError(msg)
    warnings.warn(msg, AmbiguousMaskWarning, stacklevel=3)


def read_binary_mask(path: str | Path, *, strict: bool = False) -> np.ndarray:
    """Read a binary mask of any storage format as an ``H, W`` uint8 array of 0 / 1 / 255.

    One rule for every format:

    1. One value per pixel: 1-bit images give 0/255; grey and palette images their
       stored value (palette index, as for VOC labels); 16-bit / 32-bit / float images
       their value (float masks in [0, 1] are scaled by 255); colour images the
       largest of R, G, B (a red or white object on black is foreground); an image
       with an alpha channel whose colour is flat is read from its alpha (a cut-out).
    2. Values only in {0, 1, 255} with some 1 (and at least one 1 per ten 255s, else
       the 1s are edge values of an anti-aliased 0/255 mask): a 0/1 mask, 255 = ignore.
    3. The same with at least 99 % of the pixels in {0, 1, 255} (a 0/1 mask with
       stray values): 0/1 mask; the other values become ignore (255), with an
       :class:`AmbiguousMaskWarning`.
    4. Otherwise foreground where the value is > 127 (0/255 masks, anti-aliased grey
       masks, colour masks). If that leaves no foreground although non-zero values
       exist (e.g. a 0/2 mask or a dark colour), every non-zero value is foreground,
       with an :class:`AmbiguousMaskWarning`.

    Args:
        path: mask file.
        strict: raise :class:`BadDataError` instead of warning in cases 3 and 4.

    Returns:
        ``H, W`` uint8 mask: 0 background, 1 foreground, 255 ignore.

    Raises:
        BadDataError: unreadable file, or an ambiguous mask with ``strict=True``.
    """
    try:
        with open_image(path) as im:
            v = _single_channel(im)
    except DECODE_ERRORS as err:
        raise BadDataError(f"cannot read mask {path}: {err}") from err
    return _binary_from_values(v, f"mask {path}", strict)


def _binary_from_values(v: np.ndarray, what: str, strict: bool) -> np.ndarray:
    """Rules 2-4 of :func:`read_binary_mask` on one value per pixel; ``what`` names the mask."""
    out = np.zeros(v.shape, dtype=np.uint8)
    is0, is1, is255 = v == 0, v == 1, v == IGNORE_INDEX
    n_binary = int(is0.sum() + is1.sum() + is255.sum())
    n1, n255 = int(is1.sum()), int(is255.sum())
    # 1 is the foreground value unless it is a trace next to many 255s (an anti-aliased 0/255 mask)
    has1 = n1 > 0 and n1 >= ONES_MIN_RATIO * n255
    if has1 and n_binary == v.size:
        out[is1] = 1
        out[is255] = IGNORE_INDEX
        return out
    if has1 and n_binary >= BINARY01_MIN_SHARE * v.size:
        stray = ~(is0 | is1 | is255)
        values = np.unique(v[stray]).tolist()
        msg = (
            f"{what} is a 0/1 mask ({n_binary / v.size:.2%} of its pixels are 0/1/255) with "
            f"{int(stray.sum())} pixel(s) of other values {values[:5]}{'...' if len(values) > 5 else ''}: "
            "they are treated as ignore (255)"
        )
        _report_ambiguous(msg, strict)
        out[is1] = 1
        out[is255 | stray] = IGNORE_INDEX
        return out
    fg = v > 127
    if not fg.any() and (v > 0).any():
        values = np.unique(v[v > 0]).tolist()
        msg = (
            f"{what} has no value > 127 but non-zero values {values[:5]}"
            f"{'...' if len(values) > 5 else ''} (not a 0/1 or 0/255 mask): every non-zero pixel "
            "is read as foreground"
        )
        _report_ambiguous(msg, strict)
        fg = v > 0
    out[fg] = 1
    return out


def _array_values(arr: np.ndarray) -> np.ndarray:
    """One value per pixel of a mask given as an ``H, W`` array (bool, integers, floats in [0, 1])."""
    if arr.ndim != 2:
        raise ValueError(f"a mask array must be H, W, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError("a mask array has non-finite values")
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0 and not np.isin(arr, (0.0, 1.0)).all():
            arr = arr * 255.0  # a soft mask in [0, 1]: threshold at 0.5
        arr = np.rint(arr)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"a mask array must hold numbers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"a mask array must hold values in 0..255, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def _class_mask(label: np.ndarray, class_id: int, what: str) -> np.ndarray:
    """``label == class_id`` as a 0/1 mask with the label's 255 kept as ignore."""
    out = (label == class_id).astype(np.uint8)
    if not out.any():
        present = [int(c) for c in np.unique(label) if c not in (0, IGNORE_INDEX)]
        raise BadDataError(f"{what} has no pixel of class id {class_id}; the class ids in it: {present}")
    out[label == IGNORE_INDEX] = IGNORE_INDEX
    return out


def binary_mask(mask: str | os.PathLike | Image.Image | np.ndarray, *, class_id: int | None = None,
                strict: bool = False) -> np.ndarray:
    """A foreground mask of any form as an ``H, W`` uint8 array of 0 / 1 / 255 (255 = ignore).

    Without ``class_id`` the rules of :func:`read_binary_mask` apply (0/1 and 0/255
    masks, anti-aliased, colour or cut-out masks), to a file, a PIL image or an ``H, W``
    array (bool, integers 0..255, floats in [0, 1]). A palette image holding other values
    than 0, 1 and 255 is a label map (e.g. a VOC ``SegmentationClass`` PNG): it needs
    ``class_id``, and the error lists the ids it holds. With ``class_id`` the mask is
    ``label == class_id`` (a label file read as :func:`read_label`), its 255 kept as ignore.

    Example:
        >>> binary_mask(np.array([[0, 255], [255, 0]], dtype=np.uint8)).tolist()
        [[0, 1], [1, 0]]
        >>> binary_mask(np.array([[0, 15], [255, 3]], dtype=np.uint8), class_id=15).tolist()
        [[0, 1], [255, 0]]

    Raises:
        BadDataError: an unreadable file, a label map without ``class_id``, a ``class_id``
            absent from the mask, or an ambiguous mask with ``strict=True``.
        ValueError / TypeError: an array of another shape or value range.
    """
    if class_id is not None and (isinstance(class_id, bool) or not isinstance(class_id, int | np.integer)
                                 or not 0 < int(class_id) < IGNORE_INDEX):
        raise ValueError(f"`class_id` must be an int in 1..254, got {class_id!r}")
    if isinstance(mask, np.ndarray):
        v = _array_values(mask)
        if class_id is not None:
            return _class_mask(v, int(class_id), "the mask array")
        return _binary_from_values(v, "the mask array", strict)
    if isinstance(mask, Image.Image):
        return _binary_mask_of_image(mask, class_id, "the mask image", strict)
    if not isinstance(mask, str | os.PathLike):
        raise TypeError(f"`mask` must be a path, a PIL image or a numpy array, got {type(mask).__name__}")
    try:
        with open_image(mask) as im:
            return _binary_mask_of_image(im, class_id, f"mask {mask}", strict)
    except BadDataError:
        raise
    except DECODE_ERRORS as err:
        raise BadDataError(f"cannot read mask {mask}: {err}") from err


def _binary_mask_of_image(im: Image.Image, class_id: int | None, what: str, strict: bool) -> np.ndarray:
    if class_id is not None:
        return _class_mask(_label_ids(im, what), int(class_id), what)
    v = _single_channel(im)
    if im.mode == "P":  # a palette image holds indices: class ids unless they are 0 / 1 / 255
        ids = sorted(int(c) for c in np.unique(v) if c not in (0, 1, IGNORE_INDEX))
        if ids:
            raise BadDataError(f"{what} is a palette label map holding class ids {ids[:10]}"
                               f"{'...' if len(ids) > 10 else ''}: give the class to segment (class_id, "
                               "--class-id)")
    return _binary_from_values(v, what, strict)


def write_palette_png(path: str | Path, label: np.ndarray) -> None:
    """Write an ``H, W`` uint8 label map as a VOC palette PNG."""
    im = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    im.putpalette(_VOC_PALETTE.flatten().tolist())
    im.save(path)
