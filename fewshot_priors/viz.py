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
    "loss_curve_figure",
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


#: colours of the prediction and ground-truth overlays in :func:`episode_figure`
PREDICTION_COLOR = (0.1, 0.4, 1.0)
GROUND_TRUTH_COLOR = (0.1, 0.8, 0.2)

#: the caption under :func:`episode_figure` when it draws region maps
FIG5_CAPTION = ("Region maps are min-max normalised per image (their min and max above each); the guided map is "
                "high on the support's class, the prior map low on objects (paper Sec. 4.3). Prediction: blue, "
                "ground truth: green, each outlined.")


def _panels(row: Mapping) -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """``(title, kind, image, mask)`` per panel; kind ``"rgb"``, ``"support"`` (drawn with the
    mask's outline over the unchanged photo), ``"map"`` (a [0, 1] map with a colour bar) or
    ``"prediction"`` / ``"ground truth"`` (a tinted, outlined mask over the query)."""
    q = to_rgb_array(row["query_image"])
    shots = row.get("shots")
    support = "support + mask" if not shots or int(shots) <= 1 else f"support (1 of {int(shots)}) + mask"
    panels = [("query", "rgb", q, None),
              (support, "support", to_rgb_array(row["support_image"]), _map(row["support_mask"]))]
    if row.get("guided_map") is not None:
        panels.append(("guided region map", "map", _map(row["guided_map"]), None))
    if row.get("prior_map") is not None:
        panels.append(("prior region map", "map", _map(row["prior_map"]), None))
    panels.append(("prediction", "prediction", q, _map(row["prediction"])))
    panels.append(("ground truth", "ground truth", q, _map(row["ground_truth"])))
    return panels


#: colour of the support mask's outline in :func:`episode_figure`
SUPPORT_OUTLINE = "#ffd700"


def _outline(ax, mask: np.ndarray, color) -> None:
    """The foreground's outline in ``color`` with a white halo, visible on any object colour."""
    from matplotlib import patheffects

    fg = (mask == 1).astype(float)
    if fg.any() and not fg.all():
        cs = ax.contour(fg, levels=[0.5], colors=[color], linewidths=1.5)
        cs.set(path_effects=[patheffects.withStroke(linewidth=3, foreground="white")])


def _draw_support(ax, rgb: np.ndarray, mask: np.ndarray) -> None:
    """The support photo in its own colours, the mask's foreground outlined (and ignore hatched)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.imshow(rgb)
    handles = []
    _outline(ax, mask, SUPPORT_OUTLINE)
    handles.append(Line2D([], [], color=SUPPORT_OUTLINE, lw=1.5, label="support mask"))
    ignore = mask == IGNORE_INDEX
    if ignore.any():
        ax.contourf(ignore.astype(float), levels=[0.5, 1.5], colors="none", hatches=["////"])
        handles.append(Patch(facecolor="none", edgecolor="grey", hatch="////", label="ignore (255)"))
    ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.7, borderpad=0.3, handlelength=1.2)


def _draw_overlay(ax, rgb: np.ndarray, mask: np.ndarray, label: str) -> None:
    """A prediction or the ground truth: tinted and outlined over the query, with its colour key."""
    from matplotlib.patches import Patch

    color = PREDICTION_COLOR if label == "prediction" else GROUND_TRUTH_COLOR
    ax.imshow(overlay_mask(rgb, mask, color=color))
    _outline(ax, mask, color)
    ax.legend(handles=[Patch(facecolor=color, edgecolor="white", label=label)], loc="lower left", fontsize=8,
              framealpha=0.7, borderpad=0.3, handlelength=1.2)


def episode_figure(rows: Sequence[Mapping] | Mapping, title: str | None = None):
    """Episodes drawn like the paper's Fig. 5, one row per episode.

    Panels: query, the support photo with its mask outlined (its colours unchanged),
    guided region map, prior region map (each with a colour bar over [0, 1] and its
    min and max in the title; the prior map is low on objects), prediction (blue) and
    ground truth (green), each tinted and outlined over the query with a colour key;
    map panels are skipped when not given, and a caption (:data:`FIG5_CAPTION`) says
    how to read them. With ``shots`` > 1 the support panel says which shot it shows
    ("1 of K").

    Args:
        rows: one dict (or a list of dicts) with keys ``query_image`` (``3, H, W``
            RGB in [0, 1]), ``support_image`` (``3, H', W'``, the first shot),
            ``support_mask`` (``H', W'``, 0/1/255), ``prediction`` (``H, W``),
            ``ground_truth`` (``H, W``, 0/1/255) and optionally ``guided_map`` /
            ``prior_map`` (``h, w`` or ``1, h, w`` maps in [0, 1]) and ``shots``
            (the episode's K).
        title: optional figure title.

    Returns:
        The matplotlib figure.
    """
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    if not rows:
        raise ValueError("`rows` is empty: nothing to draw")
    all_panels = [_panels(r) for r in rows]
    ncols = max(len(p) for p in all_panels)
    has_maps = any(kind == "map" for panels in all_panels for _, kind, _, _ in panels)
    caption = 0.7 if has_maps else 0.0  # inches under the panels for the caption
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.7 * ncols, 2.9 * len(rows) + caption), squeeze=False)
    for r, panels in enumerate(all_panels):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(panels):
                continue
            name, kind, img, mask = panels[c]
            if kind == "map":
                im = ax.imshow(img, cmap="viridis", vmin=0, vmax=1)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, ticks=[0, 0.5, 1]).ax.tick_params(labelsize=8)
                finite = img[np.isfinite(img)]
                rng = f"min {finite.min():.2f}, max {finite.max():.2f}" if finite.size else "all NaN"
                ax.set_title(f"{name}\n{rng}" if r == 0 else rng, fontsize=11 if r else 12)
                continue
            if kind == "support":
                _draw_support(ax, img, mask)
            elif kind in ("prediction", "ground truth"):
                _draw_overlay(ax, img, mask, kind)
            else:
                ax.imshow(img)
            if r == 0:
                ax.set_title(name, fontsize=12)
    if title:
        fig.suptitle(title, fontsize=13)
    if has_maps:
        fig.text(0.01, 0.01, FIG5_CAPTION, fontsize=11, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, caption / fig.get_figheight(), 1, 1))
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


#: legend labels of the logged tags (a tag not listed is shown as it is logged)
TAG_LABELS = {
    "train/loss": "training loss (main + aux)",
    "val/miou": "validation mIoU",
    "train/fg_pred": "predicted (training batches)",
    "train/fg_true": "labels (training batches)",
    "val/fg_pred": "predicted (validation)",
    "val/fg_true": "labels (validation)",
    "pretrain/loss": "total (global + local)",
    "pretrain/loss_global": "global InfoNCE",
    "pretrain/loss_local": "local (superpixel) InfoNCE",
}

#: the foreground-share series drawn under a training loss curve when they were logged (engine.train)
FG_TAGS = (("train/fg_pred", {"color": "tab:red"}), ("train/fg_true", {"color": "tab:red", "ls": ":"}),
           ("val/fg_pred", {"color": "tab:purple", "ls": "--"}), ("val/fg_true", {"color": "tab:purple", "ls": ":"}))

#: the caption of a pretraining loss curve
PRETRAIN_NOTE = ("The InfoNCE loss first rises while the momentum queues fill with real keys (more, harder "
                 "negatives than a partly empty queue), then falls as the encoder learns: expected.")


def _draw_series(ax, source: Mapping, tags: Sequence[str], **style) -> int:
    """Draw each tag's ``(step, value)`` points (with markers when few, so one point shows); points drawn."""
    drawn = 0
    for tag in tags:
        if source.get(tag):
            s, v = zip(*source[tag])
            ax.plot(s, v, marker="o" if len(s) <= 20 else None, ms=4, label=TAG_LABELS.get(tag, tag), **style)
            drawn += len(s)
    return drawn


def loss_curve_figure(source, tags: Sequence[str] = ("train/loss",), val_tags: Sequence[str] = ("val/miou",), *,
                      title: str | None = None, ylabel: str | None = None, note: str | None = None):
    """The figure of :func:`plot_loss_curve` (arguments as there); never an empty frame.

    Returns:
        The matplotlib figure: the step axis starts at 0, a series of few points is drawn
        with markers, and a run that logged fewer than 3 points (or none) says so on the plot.
        When the foreground shares of :data:`FG_TAGS` were logged, a second panel shows the
        predicted share against the labels' (a prediction at 0 is the background plateau).
    """
    pretraining = bool(tags) and all(t.startswith("pretrain/") for t in tags)
    if title is None:
        title = "GlobalLocalMoCo pretraining loss" if pretraining else "QGNet training loss"
    if ylabel is None:
        ylabel = "InfoNCE loss" if pretraining else "cross-entropy loss (main + aux)"
    if note is None and pretraining:
        note = PRETRAIN_NOTE
    if isinstance(source, (str, os.PathLike)):
        source = read_scalars(source)
    fg = [(t, style) for t, style in FG_TAGS if source.get(t)]
    fig, axes = plt.subplots(2 if fg else 1, 1, figsize=(6, (3.8 if note else 3.5) + (2.4 if fg else 0)),
                             sharex=True, squeeze=False, height_ratios=[3, 2] if fg else [1])
    ax = axes[0][0]
    drawn = _draw_series(ax, source, tags)
    if fg:
        axf = axes[1][0]
        for tag, style in fg:
            _draw_series(axf, source, [tag], **style)
        axf.set_ylabel("foreground share")
        axf.set_title("share of pixels called foreground: predicted vs labels", fontsize=9)
        axf.legend(loc="upper right", fontsize=7, ncol=2)
        axf.set_xlabel("training step")
    else:
        ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    vals = [t for t in val_tags if source.get(t)]
    if vals:
        ax2 = ax.twinx()
        _draw_series(ax2, source, vals, ls="--", color="tab:green")
        ax2.set_ylabel("validation mIoU")
        ax2.legend(loc="upper right", fontsize=8)
    if drawn:
        ax.legend(loc="upper left", fontsize=8)
    if drawn < 3:
        what = "nothing was logged" if not drawn else f"only {drawn} point(s) logged"
        ax.text(0.5, 0.5, f"{what}: the run was shorter than its log_every steps",
                transform=ax.transAxes, ha="center", va="center", fontsize=8, color="grey", wrap=True)
    ax.set_xlim(left=0, right=max([1] + [s for t in (*tags, *vals) for s, _ in source.get(t) or ()]) * 1.05)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="dimgrey", wrap=True)
    fig.tight_layout(rect=(0, 0.08 if note else 0, 1, 1))
    return fig


def plot_loss_curve(source, path: str | os.PathLike, tags: Sequence[str] = ("train/loss",),
                    val_tags: Sequence[str] = ("val/miou",), *, title: str | None = None,
                    ylabel: str | None = None, note: str | None = None) -> Path:
    """Draw training loss (and validation mIoU on a second axis) against the step, as a PNG.

    Args:
        source: a ``scalars.csv`` path (:class:`~fewshot_priors.engine.logging.RunLogger`)
            or a dict ``tag -> [(step, value), ...]``.
        path: output PNG.
        tags: loss tags drawn on the left axis (labelled with :data:`TAG_LABELS`).
        val_tags: tags drawn on the right axis (only those that were logged).
        title: the plot's title (default: "GlobalLocalMoCo pretraining loss" for
            ``pretrain/`` tags, else "QGNet training loss").
        ylabel: the loss axis' label (default: "InfoNCE loss" for ``pretrain/`` tags,
            else "cross-entropy loss (main + aux)").
        note: a caption under the plot (default: :data:`PRETRAIN_NOTE` for ``pretrain/`` tags).

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = loss_curve_figure(source, tags, val_tags, title=title, ylabel=ylabel, note=note)
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
