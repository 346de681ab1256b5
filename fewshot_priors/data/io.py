"""Reading images and label maps from disk, with errors that name the file.

Label maps are returned as ``H, W`` integer arrays of dataset class ids, with
``0`` = background and ``255`` = ignore (boundary). Palette PNGs (the VOC
``SegmentationClassAug`` format) and grey PNGs store the class id directly;
colour-coded RGB labels in the VOC colour map are converted back to ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataLayoutError(FileNotFoundError):
    """A dataset folder does not have the expected layout (the message shows it)."""


class BadDataError(ValueError):
    """An image/label pair cannot be used (unreadable, size mismatch, ...)."""


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

    Raises:
        BadDataError: the file is missing or cannot be decoded (the path is named).
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as err:
        raise BadDataError(f"cannot read image {path}: {err}") from err


def image_size(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image from its header (cheap, no full decode)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, SyntaxError) as err:
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
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if mode in ("I", "I;16", "I;16B", "F"):
                arr = np.asarray(im)
                if arr.max(initial=0) > 255 or arr.min(initial=0) < 0:
                    raise BadDataError(
                        f"label {path} has values outside 0..255 (mode {mode}); "
                        "store class ids 0..254 and 255 = ignore"
                    )
                return arr.astype(np.uint8)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except BadDataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise BadDataError(f"cannot read label {path}: {err}") from err
    return _rgb_to_ids(rgb, path)


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


def write_palette_png(path: str | Path, label: np.ndarray) -> None:
    """Write an ``H, W`` uint8 label map as a VOC palette PNG."""
    im = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    im.putpalette(_VOC_PALETTE.flatten().tolist())
    im.save(path)
