"""Decoding image files into 8-bit RGB: the one place where a PIL mode becomes pixel values.

Every reader of photos (the datasets' :func:`~fewshot_priors.data.io.read_image`, the
superpixel cache, the pretraining images) goes through :func:`read_rgb8`, so a 16-bit PNG,
a float TIFF or a palette image with transparency is read the same everywhere: rescaled by
its bit depth, or refused with the file's name -- never clipped silently.

Rules per PIL mode:

* ``RGB``, ``L``, ``1``, ``CMYK``, ``YCbCr``, ``RGBX``: PIL's conversion to RGB.
* ``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, ``P`` (with or without transparency): the
  colour, through RGBA; the alpha channel is dropped.
* ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` (16-bit grey PNG / TIFF): ``value / 257``,
  i.e. 0..65535 onto 0..255.
* ``I`` (32-bit integers): a PNG (PIL's older way to hand back 16-bit PNGs) is 16-bit; any
  other file is refused (its value range is unknown).
* ``F`` (32-bit float): values in ``[0, 1]`` are scaled by 255; other values (or NaN / inf)
  are refused.
* anything else (``HSV``, ``LAB``, ...): PIL's conversion if it has one, else refused.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image

__all__ = ["DECODE_ERRORS", "IMAGE_FORMATS", "open_image", "read_rgb8", "to_rgb8"]

#: The raster formats an image or mask file may be in (PIL never gets to run an EPS / PDF
#: interpreter or another plugin on a hostile file).
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF", "PPM", "TGA")

#: What decoding a hostile or truncated file can raise inside PIL.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError,
    KeyError, OverflowError, MemoryError, Image.DecompressionBombError,
)

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA", "P")
_PLAIN = ("RGB", "L", "1", "CMYK", "YCbCr", "RGBX")


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` restricted to :data:`IMAGE_FORMATS` (the caller closes it)."""
    Image.init()  # registers every plugin (once): ``formats`` names only registered ones
    return Image.open(path, formats=[f for f in IMAGE_FORMATS if f in Image.OPEN])


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, dtype=np.uint8)[..., None], 3, axis=-1)


def to_rgb8(im: Image.Image) -> np.ndarray:
    """An opened image as an ``H, W, 3`` uint8 RGB array (rules: module docstring).

    Raises:
        ValueError: a mode whose values cannot be mapped onto 0..255 (the message says why).
    """
    mode = im.mode
    if mode in _PLAIN:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if mode in _WITH_ALPHA:
        return np.asarray(im.convert("RGBA").convert("RGB"), dtype=np.uint8).copy()
    if mode in _SIXTEEN_BIT or (mode == "I" and im.format == "PNG"):
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"a 16-bit image (mode {mode}) with values outside 0..65535")
        return _grey_to_rgb(np.rint(arr / 257.0))
    if mode == "I":
        raise ValueError("a 32-bit integer image (mode I) has no defined value range: "
                         "store photos as 8-bit or 16-bit images")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("a float image (mode F) with non-finite values")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"a float image (mode F) with values in [{arr.min():g}, {arr.max():g}]; "
                             "float photos must hold values in [0, 1]")
        return _grey_to_rgb(np.rint(arr * 255.0))
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ValueError as err:
        raise ValueError(f"images of mode {mode} cannot be converted to RGB ({err})") from err


def read_rgb8(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``H, W, 3`` uint8 RGB array (:func:`to_rgb8`).

    Raises:
        OSError / ValueError (one of :data:`DECODE_ERRORS`): the file is missing, is no image
            of :data:`IMAGE_FORMATS`, cannot be decoded, or has values that cannot be mapped.
    """
    with open_image(path) as im:
        return to_rgb8(im)
