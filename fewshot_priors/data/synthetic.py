"""The built-in demo dataset: textured shapes on photos, written in the PASCAL layout.

Nothing is downloaded: the textures and backgrounds are the photos that
scikit-image ships (brick, grass, gravel, coffee, astronaut, ...). A class is a
texture + colour identity (e.g. red-tinted brick, green grass, the stained
tissue of ``immunohistochemistry``); each image shows one large object of its
"primary" class on top of 0-2 smaller objects of other classes, composited onto
a crop of another photo. The files go through the real loader:

    root/VOC2012/JPEGImages/syn_00000.jpg
    root/VOC2012/SegmentationClassAug/syn_00000.png   (VOC palette, 255 border ring)
    root/VOC2012/ImageSets/Segmentation/{train,val}.txt
    root/dataset.json                                  (num_classes, folds, class_names)

so ``PascalFewShot(root, fold=f, split=s)`` (or ``data.dataset: pascal``) picks up the folds from ``dataset.json``
(like PASCAL-5i: 8 classes -> fold i tests classes ``2i+1, 2i+2``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw
from skimage.segmentation import find_boundaries

from .._progress import progress_bar
from .io import IGNORE_INDEX, write_palette_png

GENERATOR_VERSION = 1

# (class name, skimage image, tint applied to the grey texture or None for colour photos)
_CLASS_TEXTURES: tuple[tuple[str, str, tuple[float, float, float] | None], ...] = (
    ("red_brick", "brick", (1.0, 0.45, 0.3)),
    ("green_grass", "grass", (0.45, 1.0, 0.35)),
    ("blue_gravel", "gravel", (0.45, 0.6, 1.0)),
    ("tissue", "immunohistochemistry", None),
    ("yellow_coins", "coins", (1.0, 0.9, 0.3)),
    ("purple_moon", "moon", (0.8, 0.35, 0.95)),
    ("retina", "retina", None),
    ("cyan_cells", "cell", (0.3, 0.95, 0.95)),
    ("night_sky", "hubble_deep_field", None),
    ("orange_text", "text", (1.0, 0.6, 0.15)),
    ("white_brick", "brick", (1.0, 1.0, 1.0)),
    ("pink_gravel", "gravel", (1.0, 0.5, 0.75)),
)
_BACKGROUNDS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "page", "clock", "colorwheel")

MAX_CLASSES = len(_CLASS_TEXTURES)


def _load_rgb(name: str, tint: tuple[float, float, float] | None = None) -> np.ndarray:
    img = getattr(skdata, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float32) / 255.0
    if name == "retina":  # keep the textured fundus, drop the black frame
        h, w = img.shape[:2]
        img = img[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]
    if name == "hubble_deep_field":
        img = np.clip(img * 1.8 + 0.05, 0, 1)
    if tint is not None:
        grey = img.mean(axis=2, keepdims=True)
        grey = 0.25 + 0.75 * (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
        img = grey * np.asarray(tint, dtype=np.float32)
    return np.clip(img, 0.0, 1.0)


def _crop(src: np.ndarray, size: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Random ``size x size`` crop of ``src`` (resized by ``scale``), random flip/rot90."""
    h, w = src.shape[:2]
    side = int(min(h, w, max(8, round(size / scale))))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    patch = src[y : y + side, x : x + side]
    if side != size:
        patch = np.asarray(
            Image.fromarray((patch * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR),
            dtype=np.float32,
        ) / 255.0
    patch = np.rot90(patch, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch)


def _shape_mask(size: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A random filled shape (ellipse, polygon, star or rectangle) as an ``S, S`` bool mask."""
    margin = radius * 0.6
    cy, cx = rng.uniform(margin, size - margin, size=2)
    kind = rng.choice(["ellipse", "polygon", "star", "rectangle"])
    mask = np.zeros((size, size), dtype=bool)
    if kind == "ellipse":
        ry, rx = radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.6, 1.0)
        rr, cc = draw.ellipse(cy, cx, ry, rx, shape=mask.shape, rotation=rng.uniform(0, np.pi))
    else:
        if kind == "polygon":
            n = int(rng.integers(5, 9))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = radius * rng.uniform(0.65, 1.0, n)
        elif kind == "star":
            n = int(rng.integers(5, 8)) * 2
            ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, np.pi)
            rad = radius * np.where(np.arange(n) % 2 == 0, 1.0, rng.uniform(0.45, 0.6))
        else:
            a = np.arctan(rng.uniform(0.6, 1.0))  # aspect ratio of the rectangle
            ang = np.array([a, np.pi - a, np.pi + a, 2 * np.pi - a]) + rng.uniform(0, np.pi)
            rad = np.full(4, radius)
        rr, cc = draw.polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _compose(
    size: int,
    classes: list[int],
    textures: list[np.ndarray],
    backgrounds: list[np.ndarray],
    rng: np.random.Generator,
    min_pixels: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One image: background crop + objects (last = primary, drawn on top)."""
    bg = backgrounds[int(rng.integers(len(backgrounds)))]
    canvas = _crop(bg, size, rng, scale=rng.uniform(0.5, 1.0))
    canvas = canvas * rng.uniform(0.7, 1.1) + rng.uniform(-0.05, 0.05, size=3)
    label = np.zeros((size, size), dtype=np.uint8)
    # the primary object must pass the pixel rule: radius large enough for most shapes
    r_lo = max(0.2 * size, float(np.sqrt(1.3 * min_pixels / (0.6 * np.pi))))
    r_hi = max(0.34 * size, 1.25 * r_lo)
    for k, c in enumerate(classes):
        primary = k == len(classes) - 1
        for _ in range(20):
            radius = rng.uniform(r_lo, r_hi) if primary else size * rng.uniform(0.1, 0.22)
            mask = _shape_mask(size, radius, rng)
            if not primary or mask.sum() >= 1.3 * min_pixels:
                break
        tex = _crop(textures[c - 1], size, rng, scale=rng.uniform(0.7, 1.3))
        tex = tex * rng.uniform(0.85, 1.15)  # brightness jitter, identity stays
        alpha = ndimage.gaussian_filter(mask.astype(np.float32), 0.7)[..., None]
        canvas = canvas * (1 - alpha) + tex * alpha
        label[mask] = c
    # VOC-style ignore ring on the object boundaries
    label[find_boundaries(label, mode="thick")] = IGNORE_INDEX
    img = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    return img, label


def _folds(num_classes: int, num_folds: int) -> list[list[int]]:
    per = num_classes // num_folds
    return [list(range(f * per + 1, (f + 1) * per + 1)) for f in range(num_folds)]


def generate_synthetic_dataset(
    root: str | Path,
    num_classes: int = 8,
    images_per_class: int = 40,
    image_size: int = 160,
    seed: int = 0,
    val_fraction: float = 0.3,
    num_folds: int = 4,
    min_pixels: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Generate the demo dataset (deterministic from ``seed``) in the PASCAL layout.

    Each class gets ``images_per_class`` images in which it is the primary (large,
    on top, >= ``min_pixels`` px) object; ``val_fraction`` of them are listed in
    ``val.txt``, the rest in ``train.txt``. Classes are split into ``num_folds``
    contiguous folds written to ``dataset.json``. If ``root`` already holds a
    dataset generated with the same arguments it is reused.

    Args:
        root: output folder (created).
        num_classes: number of classes (2..12, divisible by ``num_folds``).
        images_per_class: images whose primary object is of each class.
        image_size: side of the square images.
        seed: seed of every random choice.
        val_fraction: fraction of each class's images in the val list.
        num_folds: number of class folds (4, as PASCAL-5i).
        min_pixels: minimum size of the primary object (the loader's 2048-px rule).
        overwrite: regenerate even if a matching dataset exists.
        progress: show a progress bar.

    Returns:
        ``root`` as a :class:`~pathlib.Path`; pass it to
        :class:`~fewshot_priors.data.PascalFewShot`.

    Example:
        >>> root = generate_synthetic_dataset("/tmp/fsp_demo")  # doctest: +SKIP
        >>> ds = PascalFewShot(root, fold=0, split="val", image_size=160)  # doctest: +SKIP
    """
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"`num_classes` must be in 2..{MAX_CLASSES}, got {num_classes}")
    if num_folds < 1 or num_classes % num_folds:
        raise ValueError(
            f"`num_classes` ({num_classes}) must be divisible by `num_folds` ({num_folds})"
        )
    if images_per_class < 2:
        raise ValueError(f"`images_per_class` must be >= 2, got {images_per_class}")
    if image_size < 48:
        raise ValueError(f"`image_size` must be >= 48, got {image_size}")
    if min_pixels > 0.25 * image_size**2:
        raise ValueError(
            f"`min_pixels` ({min_pixels}) is too large for {image_size}px images; "
            f"use image_size >= {int(np.ceil((min_pixels / 0.25) ** 0.5))} or lower min_pixels"
        )
    if not 0 < val_fraction < 1:
        raise ValueError(f"`val_fraction` must be in (0, 1), got {val_fraction}")
    root = Path(root)
    params = {
        "generator": "fewshot_priors.synthetic",
        "version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "num_folds": num_folds,
        "min_pixels": min_pixels,
    }
    meta_path = root / "dataset.json"
    voc = root / "VOC2012"
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = {}
        if not overwrite and old.get("params") == params and (voc / "ImageSets").is_dir():
            return root
        if old.get("params", {}).get("generator") == params["generator"] and voc.is_dir():
            shutil.rmtree(voc)  # our own previous output
    img_dir, lab_dir = voc / "JPEGImages", voc / "SegmentationClassAug"
    list_dir = voc / "ImageSets" / "Segmentation"
    for d in (img_dir, lab_dir, list_dir):
        d.mkdir(parents=True, exist_ok=True)

    textures = [_load_rgb(name, tint) for _, name, tint in _CLASS_TEXTURES[:num_classes]]
    backgrounds = [_load_rgb(name) for name in _BACKGROUNDS]
    order_rng = np.random.default_rng([seed, 0])
    train, val = [], []
    idx = 0
    total = num_classes * images_per_class
    bar = progress_bar(total=total, desc="generating synthetic dataset", disable=not progress, leave=False)
    for c in range(1, num_classes + 1):
        n_val = max(1, int(round(images_per_class * val_fraction)))
        is_val = np.zeros(images_per_class, dtype=bool)
        is_val[order_rng.permutation(images_per_class)[:n_val]] = True
        for j in range(images_per_class):
            rng = np.random.default_rng([seed, 1, idx])
            n_extra = int(rng.choice([0, 1, 2], p=[0.35, 0.4, 0.25]))
            others = [k for k in range(1, num_classes + 1) if k != c]
            extra = [int(k) for k in rng.choice(others, size=n_extra, replace=True)]
            for _ in range(50):  # redraw until the primary object passes the pixel rule
                img, label = _compose(
                    image_size, [*extra, c], textures, backgrounds, rng, min_pixels
                )
                if int((label == c).sum()) >= min_pixels:
                    break
            name = f"syn_{idx:05d}"
            Image.fromarray(img).save(img_dir / f"{name}.jpg", quality=92)
            write_palette_png(lab_dir / f"{name}.png", label)
            (val if is_val[j] else train).append(name)
            idx += 1
            bar.update()
    bar.close()
    (list_dir / "train.txt").write_text("\n".join(train) + "\n")
    (list_dir / "val.txt").write_text("\n".join(val) + "\n")
    meta = {
        "name": "fewshot_priors synthetic shapes",
        "num_classes": num_classes,
        "class_names": [n for n, _, _ in _CLASS_TEXTURES[:num_classes]],
        "folds": _folds(num_classes, num_folds),
        "image_size": image_size,
        "params": params,
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return root
