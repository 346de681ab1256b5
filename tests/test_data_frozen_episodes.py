"""The episodes of the config path are those of 0.1.0 (recorded with it, before the 0.2.0 dataset signature).

``tests/data/episodes_0.1.0.json`` holds, per (dataset, split, seed): the number of episodes,
the classes, a SHA-1 of every episode's (query, class, supports) for epochs 0 and 1 (train)
or 0 (val), and a SHA-1 of the masks of the first three items (the transforms' geometry;
the image values are left out so that moving the normalisation does not touch it). It was
written by ``python tests/test_data_frozen_episodes.py --record`` on 0.1.0 (commit aa9bc58);
the same run on this version compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewshot_priors.config import load_config
from fewshot_priors.data import generate_synthetic_dataset
from fewshot_priors.engine.build import build_dataset

FROZEN = Path(__file__).parent / "data" / "episodes_0.1.0.json"


def _coco128() -> Path | None:
    env = os.environ.get("FEWSHOT_PRIORS_REAL_DATA")
    here = Path(__file__).resolve()
    candidates = [Path(env)] if env else [p / "shared" / "data" / "coco128_seg" for p in here.parents[1:4]]
    for c in candidates:
        if (c / "fss_layout").is_dir():
            return c / "fss_layout"
    return None


def make_synthetic(root: Path) -> Path:
    return generate_synthetic_dataset(root, num_classes=4, images_per_class=12, image_size=64, seed=0,
                                      num_folds=2, min_pixels=200, progress=False)


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ["ant", "bee", "cat", "dog", "eel", "fox"]:
        (root / c).mkdir(parents=True)
        for i in range(6):
            h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i:03d}.jpg")
            m = np.zeros((h, w), np.uint8)
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            m[y : y + h // 2, x : x + w // 2] = 255
            Image.fromarray(m).save(root / c / f"{i:03d}.png")
    return root


#: name -> (data kind, config overrides); ROOT is replaced by the dataset folder
CASES: dict[str, tuple[str, list[str]]] = {
    "synthetic": ("synthetic", ["data.image_size=64", "data.min_pixels=200", "data.fold=1",
                                "data.test_episodes=50", "experiment.seed=3"]),
    "synthetic_2shot": ("synthetic", ["data.image_size=48", "data.min_pixels=100", "data.fold=0", "data.shots=2",
                                      "data.test_episodes=30"]),
    "folder_seeded": ("folder", ["data.dataset=folder", "data.image_size=32", "data.min_pixels=10",
                                 "data.num_folds=3", "data.fold=1", "data.test_episodes=40"]),
    "folder_names": ("folder", ["data.dataset=folder", "data.image_size=40", "data.min_pixels=10",
                                "data.fold_classes=[bee, fox]", "data.test_episodes=40", "data.shots=2"]),
    "coco128": ("coco128", ["data.dataset=folder", "data.image_size=64", "data.min_pixels=2048",
                            "data.num_folds=4", "data.min_class_images=4", "data.fold=2", "data.test_episodes=60",
                            "data.split_seed=0", "experiment.seed=0"]),
}

_MASK_KEYS = ("query_mask", "support_masks", "query_mask_orig", "query_valid_hw", "class_id",
              "query_name", "support_names")


def summarize(cfg: dict) -> dict:
    out = {}
    for split in ("train", "val"):
        for seed in (None, 7):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = build_dataset(cfg, split, seed=seed, progress=False, cache=False)
            rec = {"len": len(ds), "class_ids": list(ds.class_ids), "test_class_ids": list(ds.test_class_ids)}
            for epoch in (0, 1) if split == "train" else (0,):
                eps = [[int(q), int(c), [int(s) for s in sup]]
                       for q, c, sup in (ds.episode(i, epoch) for i in range(len(ds)))]
                rec[f"episodes_epoch{epoch}"] = hashlib.sha1(json.dumps(eps).encode()).hexdigest()
            h = hashlib.sha1()
            for i in range(min(3, len(ds))):
                item = ds[i]
                for k in _MASK_KEYS:
                    if k in item:
                        v = item[k]
                        h.update(k.encode())
                        h.update(v.numpy().tobytes() if hasattr(v, "numpy") else repr(v).encode())
            rec["masks"] = h.hexdigest()
            out[f"{split}/seed={seed}"] = rec
    return out


def build_cfg(name: str, roots: dict[str, Path]) -> dict:
    kind, overrides = CASES[name]
    return load_config(None, [f"data.root={roots[kind]}", *overrides])


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("frozen")
    return {"synthetic": make_synthetic(base / "syn"), "folder": make_folder(base / "fol"), "coco128": _coco128()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_episodes_are_those_of_0_1_0(name, roots):
    if roots[CASES[name][0]] is None:
        pytest.skip("shared/data/coco128_seg is absent")
    frozen = json.loads(FROZEN.read_text())[name]
    assert summarize(build_cfg(name, roots)) == frozen


if __name__ == "__main__" and "--record" in sys.argv:  # run on the old code to write FROZEN
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        r = {"synthetic": make_synthetic(t / "syn"), "folder": make_folder(t / "fol"), "coco128": _coco128()}
        FROZEN.parent.mkdir(exist_ok=True)
        FROZEN.write_text(json.dumps({n: summarize(build_cfg(n, r)) for n in sorted(CASES) if r[CASES[n][0]]},
                                     indent=1, sort_keys=True) + "\n")
    print("wrote", FROZEN)
