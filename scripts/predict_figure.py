"""One figure from output folders of ``fewshot-priors predict --maps``: per query, the folder's
first support with its mask outlined, the query with the predicted mask, and the two region maps.

    python scripts/predict_figure.py predictions_dog predictions_pizza --output docs/images/predict_real.png --rows 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from fewshot_priors.data.io import binary_mask, read_image


def _rows(folder: Path, n: int) -> list[tuple[dict, np.ndarray, np.ndarray, dict]]:
    """``(support, its image, its 0/1/255 mask, query row)`` of the first ``n`` queries that are no support."""
    summary = json.loads((folder / "predictions.json").read_text())
    support = summary["supports"][0]
    image, mask = read_image(support["image"]), binary_mask(support["mask"], class_id=summary["class_id"])
    used = {s["image"] for s in summary["supports"]}
    return [(support, image, mask, r) for r in summary["queries"] if r["query"] not in used][:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="--output-dir folders of `fewshot-priors predict --maps`")
    ap.add_argument("--output", type=Path, required=True, help="the PNG to write")
    ap.add_argument("--rows", type=int, default=2, help="queries shown per folder")
    args = ap.parse_args()
    rows = [(folder, *row) for folder in args.folders for row in _rows(folder, args.rows)]
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 2.6 * len(rows)), squeeze=False)
    for ax_row, (folder, _, s_img, s_mask, row) in zip(axes, rows):
        k = len(json.loads((folder / "predictions.json").read_text())["supports"])
        panels = [("support + mask" if k == 1 else f"support (1 of {k}) + mask", s_img),
                  ("query + prediction", np.asarray(Image.open(folder / row["overlay"]))),
                  ("guided map", np.asarray(Image.open(folder / row["guided"]))),
                  ("prior map", np.asarray(Image.open(folder / row["prior"])) if "prior" in row else None)]
        for ax, (title, image) in zip(ax_row, panels):
            ax.axis("off")
            if image is not None:
                ax.imshow(image)
                ax.set_title(title, fontsize=9)
        ax_row[0].contour(s_mask == 1, levels=[0.5], colors="red", linewidths=1.2)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=72)
    Image.open(args.output).convert("RGB").quantize(256).save(args.output, optimize=True)  # a 256-colour PNG
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
