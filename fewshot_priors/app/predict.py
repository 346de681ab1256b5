"""``fewshot-priors predict``: a trained model + K annotated supports + query images -> mask PNGs.

For every query image (files, or every image of a folder) it writes into the output folder:

* ``<stem>_mask.png``: the predicted mask at the query's original size, grey 0 / 255,
* ``<stem>_overlay.png``: the query with the mask blended in red,
* with ``maps=True``, ``<stem>_guided.png`` and ``<stem>_prior.png``: the guided and prior
  region maps at the query's size, in the viridis colour map (no prior map for a model without prior),
* ``predictions.json``: the model, the supports, the support check (with ``eval.support_check`` and
  two or more supports: how the model and its guided map did on the supports, and which answered)
  and per query its files and foreground share.

The work is :class:`~fewshot_priors.engine.predict.Predictor`'s; this module finds the files,
checks them before the model is loaded, and writes the images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["query_files", "run_predict"]


def query_files(queries: Sequence[str | os.PathLike]) -> list[Path]:
    """The query images: each file as given, each folder's images (sorted, not recursive). In a
    folder, ``<stem>.png`` beside an image ``<stem>.jpg`` (or any other extension) is that image's
    mask, as in a folder dataset, and is not a query.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without images.
    """
    from fewshot_priors.data.io import IMAGE_EXTENSIONS

    files: list[Path] = []
    for q in queries:
        p = Path(q)
        if p.is_dir():
            images = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
            photos = {f.stem for f in images if f.suffix.lower() != ".png"}
            found = sorted(f for f in images if not (f.suffix.lower() == ".png" and f.stem in photos))
            if not found:
                raise FileNotFoundError(f"--query folder {p} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"--query {p} does not exist")
    return files


def _output_stems(files: Sequence[Path]) -> list[str]:
    """One output name per query: its stem, suffixed ``_2``, ``_3``, ... when two queries share one."""
    seen: dict[str, int] = {}
    stems = []
    for f in files:
        n = seen[f.stem] = seen.get(f.stem, 0) + 1
        stems.append(f.stem if n == 1 else f"{f.stem}_{n}")
    return stems


def _map_image(values: np.ndarray) -> Image.Image:
    """A ``[0, 1]`` map in the viridis colour map."""
    from matplotlib import colormaps

    rgba = colormaps["viridis"](np.clip(values, 0.0, 1.0))
    return Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))


def _write_one(out: Path, stem: str, rgb: np.ndarray, pred: Any, maps: bool) -> dict[str, str]:
    """Write the PNGs of one query; return ``{kind: file name}``."""
    from fewshot_priors.viz import overlay_mask

    files = {"mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png"}
    Image.fromarray(pred.mask * np.uint8(255)).save(out / files["mask"])
    blended = overlay_mask(rgb.astype(np.float32) / 255.0, pred.mask)
    Image.fromarray((blended * 255).round().clip(0, 255).astype(np.uint8)).save(out / files["overlay"])
    if maps:
        for kind in ("guided", "prior"):
            values = getattr(pred, f"{kind}_map")
            if values is not None:
                files[kind] = f"{stem}_{kind}.png"
                _map_image(values).save(out / files[kind])
    return files


def run_predict(model: str | os.PathLike, supports: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
                queries: Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
                class_id: int | None = None, config: str | os.PathLike | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = (), image_size: int | None = None,
                device: str | None = None, maps: bool = False, progress: bool = True) -> dict:
    """Segment every query with the model at ``model`` and write the files above into ``output_dir``.

    Args:
        model: a run folder, a ``save_pretrained`` folder or a checkpoint
            (:func:`~fewshot_priors.engine.predict.load_trained_model`).
        supports: ``(image, mask)`` file pairs, one per shot.
        queries: image files and folders of images.
        output_dir: created if needed; files of the same names are replaced.
        class_id: the class of the support masks when they are label maps (palette PNGs).
        config, overrides: the config of a checkpoint or run folder, and overrides of it.
        image_size: the model's input size (default: the config's ``data.image_size``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (default: the config's ``experiment.device``).
        maps: also write the guided and prior region maps.
        progress: show a progress bar over the queries.

    Returns:
        What ``predictions.json`` holds.
    """
    from fewshot_priors._progress import progress_bar
    from fewshot_priors.data.io import rgb_image
    from fewshot_priors.engine.predict import Predictor

    files = query_files(queries)
    if not supports:
        raise ValueError("give at least one --support IMAGE MASK")
    for image, mask in supports:
        for what, p in (("image", image), ("mask", mask)):
            if not Path(p).is_file():
                raise FileNotFoundError(f"--support {what} {p} does not exist")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_trained(model, config=config, overrides=overrides, image_size=image_size,
                                       device=device)
    shots = [(str(i), str(m)) for i, m in supports]
    preds = predictor.predict(files, shots, class_id=class_id)
    rows, check = [], None
    for path, stem, pred in progress_bar(zip(files, _output_stems(files), preds), total=len(files),
                                         desc="predict", disable=not progress):
        rgb = rgb_image(path)  # read again for the overlay (the predictor keeps no copy)
        written = _write_one(out, stem, rgb, pred, maps)
        rows.append({"query": str(path), "height": rgb.shape[0], "width": rgb.shape[1],
                     "foreground": float(pred.mask.mean()), **written})
        check = pred.support_check  # the same for every query: it depends on the supports only
    summary = {"model": str(model), "supports": [{"image": i, "mask": m} for i, m in shots],
               "class_id": class_id, "image_size": predictor.image_size, "support_check": check, "queries": rows}
    (out / "predictions.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
