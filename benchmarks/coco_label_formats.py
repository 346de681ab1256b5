"""COCO-20i training episodes per second: labels rasterised from the instance JSON vs. the PNGs of
``fewshot-priors prepare coco``.

Builds a COCO 2014 layout from a folder dataset of real photos (``<class>/<stem>.jpg`` + 0/255
``.png`` masks, e.g. shared/data/coco128_seg/fss_layout): each mask's connected components
become polygon instances (as most of COCO's are), then times ``CocoFewShot`` training episodes
(``num_workers=0``, one thread) with ``annotation_format="json"`` and, after ``prepare_coco``,
``"png"``::

    python benchmarks/coco_label_formats.py --data ../shared/data/coco128_seg/fss_layout --episodes 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import measure


def write_coco(src: Path, root: Path) -> int:
    """``root/train2014`` + ``annotations/instances_train2014.json`` from the folder dataset ``src``."""
    (root / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    js = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    ids: dict[str, int] = {}
    for ci, c in enumerate(classes):
        for mask_path in sorted((src / c).glob("*.png")):
            stem = mask_path.stem
            if stem not in ids:
                ids[stem] = len(ids) + 1
                (root / "train2014" / f"{stem}.jpg").symlink_to((src / c / f"{stem}.jpg").resolve())
                w, h = Image.open(mask_path).size
                js["images"].append({"id": ids[stem], "file_name": f"{stem}.jpg", "height": h, "width": w})
            mask = np.asarray(Image.open(mask_path)) > 127
            for region in measure.regionprops(measure.label(mask)):
                contour = max(measure.find_contours(np.pad(region.image, 1), 0.5), key=len)
                ys, xs = contour[:, 0] + region.bbox[0] - 1, contour[:, 1] + region.bbox[1] - 1
                poly = np.stack([xs, ys], 1).ravel().tolist()
                if len(poly) >= 6:
                    js["annotations"].append({"id": len(js["annotations"]) + 1, "image_id": ids[stem],
                                              "category_id": ci + 1, "segmentation": [poly], "iscrowd": 0,
                                              "area": float(region.area), "bbox": list(region.bbox)})
    (root / "annotations" / "instances_train2014.json").write_text(json.dumps(js))
    return len(ids)


def episodes_per_second(root: Path, fmt: str, episodes: int) -> float:
    from fewshot_priors.data import CocoFewShot, CocoOptions

    classes = len(json.loads((root / "annotations" / "instances_train2014.json").read_text())["categories"])
    ds = CocoFewShot(root, split="train", episodes=episodes, image_size=473, progress=False,
                     options=CocoOptions(annotation_format=fmt, fold_classes=[classes], min_pixels=2048, cache=False))
    ds[0]  # warm-up
    start = time.perf_counter()
    for i in range(episodes):
        ds[i]
    return episodes / (time.perf_counter() - start)


def main() -> None:
    from fewshot_priors.data.prepare import prepare_coco

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="folder dataset of photos with 0/255 masks")
    ap.add_argument("--episodes", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        n = write_coco(args.data, root)
        json_rate = episodes_per_second(root, "json", args.episodes)
        prepare_coco(root, splits=["train"], progress=False)
        png_rate = episodes_per_second(root, "png", args.episodes)
    print(f"{n} images, {args.episodes} training episodes, 473 px, 1-shot, num_workers=0, 1 thread")
    print(f"annotation_format=json: {json_rate:.2f} episodes/s")
    print(f"annotation_format=png:  {png_rate:.2f} episodes/s ({png_rate / json_rate:.2f}x)")


if __name__ == "__main__":
    main()
