"""Labelled probe of a prior extractor during pretraining: global and local kNN accuracy.

A probe folder has the FSS-1000 / ``FolderFewShot`` layout: one sub-folder per class
holding ``<stem>.jpg`` images (any of :data:`~fewshot_priors.data.io.IMAGE_EXTENSIONS`) and
``<stem>.png`` binary masks (> 127 = the class), read as :class:`~fewshot_priors.data.FolderFewShot` pairs.
An image may appear in several class folders (COCO: several classes per image); it is
loaded once. Labels:

* image level: the class whose mask covers most of the image;
* superpixel level: the class of the majority of the superpixel's pixels, background
  (class 0) included. Where masks overlap, the smaller object wins.

Images are resized (squashed) to ``size x size``, segmented with the pretraining's own
superpixel sampler, and split by image into a kNN train and test part (seeded).
:func:`probe_encoder` embeds them with an encoder (global: mean of the last dense
feature map; local: the map averaged per superpixel, as the local loss does) and
returns the kNN accuracies and the majority-class baselines.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.folder import class_folders, image_mask_pairs
from ..data.io import read_binary_mask, read_image
from ..data.transforms import image_to_tensor
from ..ops.superpixel_pool import superpixel_pool
from .diagnostics import knn_accuracy
from .moco import dense_features
from .superpixels import SuperpixelPatchSampler, filter_segments

__all__ = ["ProbeSet", "load_probe_set", "probe_encoder"]

@dataclass
class ProbeSet:
    """A labelled probe (all tensors on the CPU).

    Attributes:
        images: ``N, 3, S, S`` float32 RGB images in ``[0, 1]``.
        superpixels: ``N, S, S`` int64 ids in ``0..P-1`` (``-1`` = dropped).
        image_labels: ``N`` int64 class ids (``1..C``; 0 never occurs at image level).
        patch_labels: ``N, P`` int64 class ids (``0`` = background, ``-1`` = no patch).
        train: ``N`` bool, the kNN training images (the rest are tested).
        class_names: ``class_names[i]`` is the folder of class ``i`` (``[0]`` = background).
    """

    images: torch.Tensor
    superpixels: torch.Tensor
    image_labels: torch.Tensor
    patch_labels: torch.Tensor
    train: torch.Tensor
    class_names: list[str]

    @property
    def max_patches(self) -> int:
        return int(self.patch_labels.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _scan(root: Path) -> tuple[list[str], dict[str, tuple[str, list[tuple[int, str]]]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"`probe_root` is not a folder: {root}")
    classes = [d.name for d in class_folders(root)]
    images: dict[str, tuple[str, list[tuple[int, str]]]] = {}
    for cid, name in enumerate(classes, start=1):
        for img, mask in image_mask_pairs(root / name):  # the folder dataset's pairs: <stem>.<image> + <stem>.png
            if not mask.is_file():
                continue
            entry = images.setdefault(img.stem, (str(img), []))
            entry[1].append((cid, str(mask)))
    if not images:
        raise FileNotFoundError(f"`probe_root` {root} holds no <class>/<stem>.jpg + <stem>.png pairs")
    return ["background", *classes], images


def load_probe_set(
    root: str | os.PathLike,
    *,
    size: int,
    sampler: SuperpixelPatchSampler,
    max_patches: int,
    train_fraction: float = 0.5,
    seed: int = 0,
    max_images: int | None = None,
) -> ProbeSet:
    """Read, resize, segment and split a labelled probe folder (see the module docstring).

    Args:
        root: folder of class folders with ``.jpg`` images and ``.png`` masks.
        size: side ``S`` the images are resized to.
        sampler: superpixel sampler (its ``min_area`` applies; at most ``max_patches``
            superpixels per image are kept, drawn with ``seed``).
        max_patches: ``P``.
        train_fraction: share of images in the kNN training part (both parts non-empty).
        seed: seed of the split and of the superpixel subsets.
        max_images: keep only this many images (seeded draw), for speed.
    """
    if not 0.0 < float(train_fraction) < 1.0:
        raise ValueError(f"`train_fraction` must be in (0, 1), got {train_fraction}")
    class_names, entries = _scan(Path(root))
    stems = sorted(entries)
    rng = np.random.default_rng(seed)
    if max_images is not None and len(stems) > int(max_images):
        stems = sorted(rng.choice(stems, size=int(max_images), replace=False).tolist())
    if len(stems) < 2:
        raise ValueError(f"`probe_root` {root} needs at least 2 labelled images, found {len(stems)}")
    imgs, sps, img_lab, patch_lab = [], [], [], []
    for stem in stems:
        path, masks = entries[stem]
        rgb = np.array(Image.fromarray(read_image(path)).resize((size, size), Image.BILINEAR))
        sem = np.zeros((size, size), dtype=np.int64)
        areas = []
        for cid, mpath in masks:
            m = np.asarray(Image.fromarray(read_binary_mask(mpath) == 1).resize((size, size), Image.NEAREST))
            areas.append((int(m.sum()), cid, m))
        areas.sort(key=lambda a: (-a[0], a[1]))  # largest first: smaller objects are painted on top
        for _, cid, m in areas:
            sem[m] = cid
        img_lab.append(areas[0][1] if areas else 0)
        sp, _ = filter_segments(sampler.segment(rgb), min_area=sampler.min_area, max_patches=max_patches, rng=rng)
        lab = np.full(max_patches, -1, dtype=np.int64)
        for j in range(max_patches):
            sel = sem[sp == j]
            if sel.size:
                lab[j] = int(np.bincount(sel).argmax())
        imgs.append(image_to_tensor(rgb))
        sps.append(torch.from_numpy(sp.astype(np.int64)))
        patch_lab.append(torch.from_numpy(lab))
    n = len(stems)
    n_train = min(n - 1, max(1, round(float(train_fraction) * n)))
    train = torch.zeros(n, dtype=torch.bool)
    train[torch.from_numpy(rng.permutation(n)[:n_train])] = True
    return ProbeSet(
        images=torch.stack(imgs),
        superpixels=torch.stack(sps),
        image_labels=torch.tensor(img_lab, dtype=torch.int64),
        patch_labels=torch.stack(patch_lab),
        train=train,
        class_names=class_names,
    )


def _majority_rate(train_labels: torch.Tensor, test_labels: torch.Tensor) -> float:
    top = int(torch.bincount(train_labels).argmax())
    return float((test_labels == top).float().mean())


@torch.no_grad()
def probe_encoder(
    encoder: torch.nn.Module, probe: ProbeSet, *, k: int = 20, batch_size: int = 32, pool_mode: str = "area",
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """kNN accuracies of ``encoder``'s features on ``probe``.

    ``normalize`` maps the probe's ``[0, 1]`` images to the encoder's input (e.g.
    :meth:`GlobalLocalMoCo.normalize <fewshot_priors.ssl.moco.GlobalLocalMoCo.normalize>`);
    default: the images as they are.

    The encoder runs in eval mode (its BatchNorm running statistics) and is put back
    in its previous mode afterwards.

    Returns:
        dict with ``knn_global`` and ``knn_local`` (accuracies on the test images / their
        superpixels), ``majority_global`` and ``majority_local`` (accuracy of always
        answering the most frequent training label: what a useless encoder can reach).
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    g, loc = [], []
    P = probe.max_patches
    try:
        for s in range(0, len(probe), batch_size):
            x = probe.images[s : s + batch_size].to(device)
            f = dense_features(encoder, x if normalize is None else normalize(x)).float()
            g.append(f.mean(dim=(2, 3)).cpu())
            pooled, _ = superpixel_pool(f, probe.superpixels[s : s + batch_size].to(device), P, pool_mode)
            loc.append(pooled.cpu())
    finally:
        encoder.train(was_training)
    zg, zl = torch.cat(g), torch.cat(loc)  # N, C and N, P, C
    tr, te = probe.train, ~probe.train
    out = {
        "knn_global": float(knn_accuracy(zg[tr], probe.image_labels[tr], zg[te], probe.image_labels[te], k=k)),
        "majority_global": _majority_rate(probe.image_labels[tr], probe.image_labels[te]),
    }
    vtr, vte = tr[:, None] & (probe.patch_labels >= 0), te[:, None] & (probe.patch_labels >= 0)
    if vtr.any() and vte.any():
        ytr, yte = probe.patch_labels[vtr], probe.patch_labels[vte]
        out["knn_local"] = float(knn_accuracy(zl[vtr], ytr, zl[vte], yte, k=k))
        out["majority_local"] = _majority_rate(ytr, yte)
    return out
