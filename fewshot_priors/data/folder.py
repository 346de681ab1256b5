"""Few-shot episodes from a user's own data: one folder per class (FSS-1000 layout)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .episodes import EpisodicDataset, check_episode_args
from .index import Entry, scan_entries
from .io import IGNORE_INDEX, DataLayoutError, read_label

FOLDER_LAYOUT = """expected layout under root (FSS-1000 style):
  <class_name>/<image_id>.jpg     an image
  <class_name>/<image_id>.png     its mask: foreground = 1 (0/1 masks) or > 127 (0/255 masks)
  ... one folder per class; image and mask share the file stem"""


class FolderFewShot(EpisodicDataset):
    """Episodes over a folder of class folders with image/mask pairs (FSS-1000 layout).

    Classes are split at the class level: ``test_classes`` names the test
    classes explicitly, otherwise a ``test_ratio`` share of the (sorted) class
    folders is drawn with ``seed``. Masks are binary: a mask whose values are
    0/1 (optionally 255 = ignore) has foreground 1; any other mask (FSS-1000's
    0/255 masks, anti-aliased grey masks) has foreground where > 127. Class ids are
    ``1..N`` in sorted folder-name order; ``class_names[id]`` gives the folder.

    Args:
        root: folder with one sub-folder per class.
        shots: K.
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias).
        test_classes: folder names of the test classes; default: drawn by ``test_ratio``.
        test_ratio: share of classes held out for testing when ``test_classes`` is None.
        fold: with ``test_classes=None``, which disjoint block of the seeded class
            permutation is held out (cross-validation over classes; default 0).
        seed: seed of the class split, the episodes and the augmentation.
        image_ext: image file extension(s) to look for.
        mask_ext: mask file extension.
        episodes: number of episodes (default: one per eligible image for train,
            1000 for test).
        transform: see :class:`PascalFewShot`; default train / test transform at ``image_size``.
        image_size: size of the default transforms.
        min_pixels: minimum foreground pixels of an eligible image (default 1).
        strict: raise on unusable pairs instead of skipping them.
        cache: write/read the index cache (``.fewshot_index.json`` in ``root``).
        query_sampling: ``"pairs"`` or ``"images"`` (PFENet's sampling), see
            :class:`~fewshot_priors.data.EpisodicDataset`.
        progress: show a progress bar while the labels are scanned (first use only).

    Example:
        A folder ``my_data/`` with ``cat/001.jpg``, ``cat/001.png``, ``dog/...``::

            from fewshot_priors.data import FolderFewShot, collate_episodes
            train = FolderFewShot("my_data", shots=1, split="train", test_classes=["dog"])
            test = FolderFewShot("my_data", shots=5, split="test", test_classes=["dog"])
            loader = torch.utils.data.DataLoader(test, batch_size=4,
                                                 collate_fn=collate_episodes)
    """

    def __init__(
        self,
        root: str | Path,
        shots: int = 1,
        split: str = "train",
        test_classes: Sequence[str] | None = None,
        test_ratio: float = 0.2,
        fold: int | None = None,
        seed: int = 321,
        image_ext: str | Sequence[str] = (".jpg", ".jpeg", ".png"),
        mask_ext: str = ".png",
        episodes: int | None = None,
        transform: Callable | None = None,
        image_size: int = 473,
        min_pixels: int = 1,
        strict: bool = False,
        cache: bool = True,
        query_sampling: str = "pairs",
        progress: bool = True,
    ) -> None:
        root = Path(root)
        split = {"val": "test"}.get(split, split)
        if split not in ("train", "test"):
            raise ValueError(f"`split` must be 'train' or 'test', got {split!r}")
        check_episode_args(
            shots=shots, episodes=episodes, seed=seed, min_pixels=min_pixels, query_sampling=query_sampling
        )
        if not root.is_dir():
            raise DataLayoutError(f"dataset root {root} does not exist\n{FOLDER_LAYOUT}")
        exts = (image_ext,) if isinstance(image_ext, str) else tuple(image_ext)
        self.root = root
        self.mask_ext = mask_ext
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataLayoutError(f"no class folders in {root}\n{FOLDER_LAYOUT}")
        self.class_names = {i + 1: p.name for i, p in enumerate(class_dirs)}
        ids = {p.name: i + 1 for i, p in enumerate(class_dirs)}
        if test_classes is not None:
            unknown = [c for c in test_classes if c not in ids]
            if unknown:
                raise ValueError(
                    f"`test_classes` {unknown} are not class folders of {root} "
                    f"(found: {sorted(ids)[:10]}{'...' if len(ids) > 10 else ''})"
                )
            test = sorted(ids[c] for c in test_classes)
        else:
            if not 0 < test_ratio < 1:
                raise ValueError(f"`test_ratio` must be in (0, 1), got {test_ratio}")
            n_test = max(1, int(round(len(class_dirs) * test_ratio)))
            if n_test >= len(class_dirs):
                raise ValueError(
                    f"`test_ratio` {test_ratio} leaves no training class among {len(class_dirs)}"
                )
            perm = np.random.default_rng([seed, 99991]).permutation(len(class_dirs))
            f = 0 if fold is None else fold
            n_folds = len(class_dirs) // n_test
            if not isinstance(f, int) or not 0 <= f < n_folds:
                raise ValueError(
                    f"`fold` must be in 0..{n_folds - 1} for {len(class_dirs)} classes and "
                    f"test_ratio={test_ratio}, got {fold!r}"
                )
            test = sorted(int(i) + 1 for i in perm[f * n_test : (f + 1) * n_test])
        self.test_class_ids = test
        self.train_class_ids = [c for c in self.class_names if c not in test]
        use = test if split == "test" else self.train_class_ids

        entries, self._entry_class = [], {}
        for c in use:
            d = class_dirs[c - 1]
            for img in sorted(p for p in d.iterdir() if p.suffix.lower() in exts):
                mask = img.with_suffix(mask_ext)
                if mask == img:  # image and mask both .png: skip the mask itself
                    continue
                name = f"{d.name}/{img.stem}"
                entries.append(Entry(name, img, mask))
                self._entry_class[name] = c
        if not entries:
            raise DataLayoutError(f"no image/mask pairs found under {root}\n{FOLDER_LAYOUT}")

        scan = scan_entries(
            entries,
            self.read_label,
            root / f".fewshot_index_{split}.json" if cache else None,
            description="indexing class folders",
            extra_key=f"{mask_ext}|{test}",
            progress=progress,
        )
        super().__init__(
            entries,
            scan,
            use,
            shots=shots,
            split=split,
            episodes=episodes,
            transform=transform,
            image_size=image_size,
            test_episodes=1000,
            seed=seed,
            min_pixels=min_pixels,
            strict=strict,
            query_sampling=query_sampling,
        )

    def read_label(self, entry: Entry) -> np.ndarray:
        """Binary mask -> class map: the entry's class id, 0 elsewhere, 255 ignored."""
        raw = read_label(entry.label)
        c = self._entry_class[entry.name]
        values = np.unique(raw)
        label = np.zeros(raw.shape, dtype=np.uint8)
        if 1 in values and set(values.tolist()) <= {0, 1, IGNORE_INDEX}:  # 0/1(/255) mask
            label[raw == 1] = c
            label[raw == IGNORE_INDEX] = IGNORE_INDEX
        else:
            label[raw > 127] = c
        return label
