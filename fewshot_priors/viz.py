"""Figures: the paper's Fig. 5 panel layout and training loss curves (matplotlib).

The backend is left to matplotlib (it falls back to Agg on a headless machine), so
figures still show inline in notebooks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from ._scalars import read_scalars
from .constants import IGNORE_INDEX

__all__ = [
    "episode_figure",
    "overlay_mask",
    "plot_loss_curve",
    "plot_pretrain_diagnostics",
    "save_episode_figures",
    "to_rgb_array",
]


def to_rgb_array(image: torch.Tensor) -> np.ndarray:
    """``3, H, W`` RGB tensor in ``[0, 1]`` (as the datasets give) -> ``H, W, 3`` float array for ``imshow``."""
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"`image` must be a tensor of shape 3, H, W, got {getattr(image, 'shape', type(image).__name__)}")
    return image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def overlay_mask(rgb: np.ndarray, mask, color=(1.0, 0.1, 0.1), alpha: float = 0.5) -> np.ndarray:
    """Blend ``color`` over the foreground (``mask == 1``) of an ``H, W, 3`` image; 255 drawn grey."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    out = rgb.copy()
    fg = m == 1
    out[fg] = (1 - alpha) * out[fg] + alpha * np.asarray(color)
    out[m == IGNORE_INDEX] = 0.5 * out[m == IGNORE_INDEX] + 0.25
    return out


def _map(t) -> np.ndarray:
    t = t.detach().float().cpu() if isinstance(t, torch.Tensor) else torch.as_tensor(t).float()
    while t.dim() > 2:
        t = t[0]
    return t.numpy()


def _panels(row: Mapping) -> list[tuple[str, np.ndarray, str | None]]:
    q = to_rgb_array(row["query_image"])
    panels = [("query", q, None),
              ("support + mask", overlay_mask(to_rgb_array(row["support_image"]), row["support_mask"]), None)]
    if row.get("guided_map") is not None:
        panels.append(("guided region map", _map(row["guided_map"]), "viridis"))
    if row.get("prior_map") is not None:
        panels.append(("prior region map", _map(row["prior_map"]), "viridis"))
    panels.append(("prediction", overlay_mask(q, row["prediction"], color=(0.1, 0.4, 1.0)), None))
    panels.append(("ground truth", overlay_mask(q, row["ground_truth"], color=(0.1, 0.8, 0.2)), None))
    return panels


def episode_figure(rows: Sequence[Mapping] | Mapping, title: str | None = None):
    """Episodes drawn like the paper's Fig. 5, one row per episode.

    Panels: query, support with its mask, guided region map, prior region map,
    prediction, ground truth (map panels are skipped when not given).

    Args:
        rows: one dict (or a list of dicts) with keys ``query_image`` (``3, H, W``
            RGB in [0, 1]), ``support_image`` (``3, H', W'``, the first shot),
            ``support_mask`` (``H', W'``, 0/1/255), ``prediction`` (``H, W``),
            ``ground_truth`` (``H, W``, 0/1/255) and optionally ``guided_map`` /
            ``prior_map`` (``h, w`` or ``1, h, w`` maps in [0, 1]).
        title: optional figure title.

    Returns:
        The matplotlib figure.
    """
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    if not rows:
        raise ValueError("`rows` is empty: nothing to draw")
    all_panels = [_panels(r) for r in rows]
    ncols = max(len(p) for p in all_panels)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.4 * ncols, 2.5 * len(rows)), squeeze=False)
    for r, panels in enumerate(all_panels):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(panels):
                continue
            name, img, cmap = panels[c]
            ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            if r == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_episode_figures(rows: Sequence[Mapping] | Mapping, path: str | os.PathLike,
                         title: str | None = None) -> Path:
    """Draw :func:`episode_figure` and save it as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = episode_figure(rows, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curve(source, path: str | os.PathLike, tags: Sequence[str] = ("train/loss",),
                    val_tags: Sequence[str] = ("val/miou",)) -> Path:
    """Draw training loss (and validation mIoU on a second axis) against the step.

    Args:
        source: a ``scalars.csv`` path (:class:`~fewshot_priors.engine.logging.RunLogger`)
            or a dict ``tag -> [(step, value), ...]``.
        path: output PNG.
        tags: loss tags drawn on the left axis.
        val_tags: tags drawn on the right axis.
    """
    if isinstance(source, (str, os.PathLike)):
        source = read_scalars(source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    drawn = False
    for tag in tags:
        if source.get(tag):
            s, v = zip(*source[tag])
            ax.plot(s, v, label=tag)
            drawn = True
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    vals = [t for t in val_tags if source.get(t)]
    if vals:
        ax2 = ax.twinx()
        for tag in vals:
            s, v = zip(*source[tag])
            ax2.plot(s, v, "o--", color="tab:green", label=tag)
        ax2.set_ylabel("validation mIoU")
        ax2.legend(loc="upper right", fontsize=8)
    if drawn:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title("training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: panels of :func:`plot_pretrain_diagnostics`: (title, [(tag, line style)], reference line key)
_DIAG_PANELS = (
    ("InfoNCE loss (global, local)", (("pretrain/loss_global", "-"), ("pretrain/loss_local", "--")), "log_k"),
    ("InfoNCE top-1 (global, local)", (("pretrain/acc_global", "-"), ("pretrain/acc_local", "--")), None),
    ("queue share holding real keys", (("diag/queue_fill", "-"), ("diag/local_queue_fill", "--")), None),
    ("embedding std (global, local)", (("diag/std_global", "-"), ("diag/std_local", "--")), "std"),
    ("uniformity (global, local; 0 = collapse)", (("diag/unif_global", "-"), ("diag/unif_local", "--")), None),
    ("kNN probe accuracy (global, local)", (("probe/knn_global", "o-"), ("probe/knn_local", "s--")), "majority"),
)


def plot_pretrain_diagnostics(runs: Mapping[str, object], path: str | os.PathLike, *, dim: int | None = None,
                              queue_sizes: Mapping[str, tuple[int, int]] | None = None) -> Path:
    """Pretraining collapse diagnostics of one or more runs, one colour per run.

    Panels: global/local InfoNCE loss (dotted: ``log(1 + K)`` of each run when
    ``queue_sizes`` is given), InfoNCE top-1, queue fill, embedding std (dotted:
    ``1 / sqrt(dim)``, the value of embeddings spread uniformly on the sphere),
    uniformity, and the kNN probe (dotted: the majority-class baselines).

    Args:
        runs: label -> a run's ``scalars.csv`` path or ``tag -> [(step, value), ...]``
            (what ``read_scalars`` returns).
        path: output PNG.
        dim: embedding dimension (draws the ``1 / sqrt(dim)`` reference).
        queue_sizes: label -> ``(queue_size, local_queue_size)`` (draws ``log(1 + K)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: read_scalars(v) if isinstance(v, (str, os.PathLike)) else v for k, v in runs.items()}
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, tags, ref) in zip(axes.flat, _DIAG_PANELS):
        for i, (label, sc) in enumerate(data.items()):
            color = colors[i % len(colors)]
            for j, (tag, style) in enumerate(tags):
                if sc.get(tag):
                    s, v = zip(*sc[tag])
                    ax.plot(s, v, style, color=color, ms=3, label=label if j == 0 else None)
            if ref == "log_k" and queue_sizes and label in queue_sizes:
                for k in queue_sizes[label]:
                    ax.axhline(float(np.log1p(k)), color=color, ls=":", lw=1)
            if ref == "majority":
                for tag in ("probe/majority_global", "probe/majority_local"):
                    if sc.get(tag) and i == 0:
                        ax.axhline(sc[tag][0][1], color="grey", ls=":", lw=1)
        if ref == "std" and dim:
            ax.axhline(1 / np.sqrt(dim), color="grey", ls=":", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
