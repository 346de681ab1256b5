"""Figures: Fig. 5 panels, overlays, loss curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot_priors.data.transforms import image_to_tensor
from fewshot_priors.engine.logging import RunLogger, read_scalars
from fewshot_priors.viz import (
    episode_figure,
    overlay_mask,
    plot_loss_curve,
    save_episode_figures,
    to_rgb_array,
)


def test_to_rgb_array_shows_the_datasets_images():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    back = to_rgb_array(image_to_tensor(rgb))
    np.testing.assert_allclose(back, rgb / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="3, H, W"):
        to_rgb_array(torch.zeros(4, 5, 5))


def test_overlay_touches_foreground_and_ignore_only():
    rgb = np.zeros((4, 4, 3))
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[0, 0], mask[1, 1] = 1, 255
    out = overlay_mask(rgb, mask, color=(1.0, 0.0, 0.0), alpha=0.5)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.0, 0.0])
    np.testing.assert_allclose(out[1, 1], [0.25, 0.25, 0.25])
    assert np.all(out[2:] == 0)


def _row(with_maps=True):
    g = torch.Generator().manual_seed(0)
    row = {"query_image": torch.randn(3, 16, 16, generator=g), "support_image": torch.randn(3, 16, 16, generator=g),
           "support_mask": torch.randint(0, 2, (16, 16), generator=g),
           "prediction": torch.randint(0, 2, (16, 16), generator=g),
           "ground_truth": torch.randint(0, 2, (16, 16), generator=g)}
    if with_maps:
        row["guided_map"] = torch.rand(1, 4, 4, generator=g)
        row["prior_map"] = torch.rand(4, 4, generator=g)
    return row


def test_fig5_layout(tmp_path):
    import matplotlib.pyplot as plt

    fig = episode_figure([_row(), _row()])
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes[:6]]
    assert titles == ["query", "support + mask", "guided region map", "prior region map", "prediction",
                      "ground truth"]
    assert len(fig.axes) == 12 + 4  # 2 rows x 6 panels + a colour bar per map panel
    plt.close(fig)
    fig = episode_figure(_row(with_maps=False))
    assert [ax.get_title() for ax in fig.axes] == ["query", "support + mask", "prediction", "ground truth"]
    plt.close(fig)
    path = save_episode_figures([_row()], tmp_path / "f" / "fig5.png", title="t")
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="empty"):
        episode_figure([])


def test_loss_curve_from_run_log(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    for s in range(1, 6):
        log.log(s, {"train/loss": 1.0 / s})
    log.log(5, {"val/miou": 0.4})
    log.close()
    sc = read_scalars(tmp_path / "scalars.csv")
    assert sc["train/loss"] == [(s, 1.0 / s) for s in range(1, 6)] and sc["val/miou"] == [(5, 0.4)]
    path = plot_loss_curve(tmp_path / "scalars.csv", tmp_path / "curve.png")
    assert path.stat().st_size > 1000


def test_pretrain_diagnostics_figure_draws_every_panel(tmp_path):
    import matplotlib.pyplot as plt

    from fewshot_priors.viz import plot_pretrain_diagnostics

    log = RunLogger(tmp_path / "run", tensorboard=False)
    log.log(0, {"probe/knn_global": 0.3, "probe/knn_local": 0.6, "probe/majority_global": 0.35,
                "probe/majority_local": 0.65})
    for s in (2, 4):
        log.log(s, {"pretrain/loss_global": 4.0 + s, "pretrain/loss_local": 5.0, "pretrain/acc_global": 0.5,
                    "pretrain/acc_local": 0.4, "diag/queue_fill": s / 4, "diag/local_queue_fill": 1.0,
                    "diag/std_global": 0.05, "diag/std_local": 0.04, "diag/unif_global": -1.0,
                    "diag/unif_local": -0.5})
    log.close()
    seen = []
    orig = plt.Axes.plot

    def spy(self, *a, **k):
        seen.append(id(self))
        return orig(self, *a, **k)

    plt.Axes.plot = spy
    try:
        path = plot_pretrain_diagnostics({"a": tmp_path / "run" / "scalars.csv"}, tmp_path / "d.png", dim=64,
                                         queue_sizes={"a": (64, 1024)})
    finally:
        plt.Axes.plot = orig
    assert path.stat().st_size > 1000
    assert len(set(seen)) == 6  # every panel got a curve from the log


def _panel_axes(fig, ncols=6):
    """The panel axes (not the colour bars) of an episode figure, row-major."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def test_fig5_support_panel_keeps_the_photos_colours_and_outlines_the_mask():
    """The support object must not be tinted: the photo is drawn as is, the mask as an
    outline with a legend (and the 255 ignore region hatched)."""
    import matplotlib.pyplot as plt

    row = _row()
    row["support_mask"] = torch.zeros(16, 16, dtype=torch.long)
    row["support_mask"][4:12, 4:12] = 1
    row["support_mask"][0] = 255
    fig = episode_figure(row)
    ax = _panel_axes(fig)[1]
    np.testing.assert_allclose(ax.images[0].get_array(), to_rgb_array(row["support_image"]))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["support mask", "ignore (255)"]
    assert len(ax.collections) >= 2  # the outline and the hatched ignore region
    plt.close(fig)


def test_fig5_maps_have_colour_bars_over_0_1_and_show_their_range():
    """A K-shot guided map peaking at 0.56 must not look like one reaching 1."""
    import matplotlib.pyplot as plt

    row = _row()
    row["guided_map"] = torch.linspace(0, 0.56, 16).view(1, 4, 4)
    fig = episode_figure(row)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2
    guided = _panel_axes(fig)[2]
    assert guided.images[0].get_clim() == (0, 1)
    assert guided.get_title() == "guided region map\nmin 0.00, max 0.56"
    plt.close(fig)


def test_fig5_says_how_to_read_it():
    """A colour key on the prediction and ground-truth panels, and a caption explaining the maps."""
    import matplotlib.pyplot as plt

    from fewshot_priors.viz import FIG5_CAPTION

    row = _row()
    row["prediction"] = torch.zeros(16, 16, dtype=torch.long)
    row["prediction"][2:9, 3:10] = 1
    fig = episode_figure(row)
    pred, truth = _panel_axes(fig)[4:6]
    assert [t.get_text() for t in pred.get_legend().get_texts()] == ["prediction"]
    assert [t.get_text() for t in truth.get_legend().get_texts()] == ["ground truth"]
    assert pred.collections, "the prediction is outlined (visible on an object of its own colour)"
    assert FIG5_CAPTION in [t.get_text() for t in fig.texts] and "low on objects" in FIG5_CAPTION
    plt.close(fig)
    fig = episode_figure(_row(with_maps=False))
    assert not fig.texts  # no maps, nothing to explain
    plt.close(fig)


def test_fig5_k_shot_support_panel_says_which_shot():
    import matplotlib.pyplot as plt

    fig = episode_figure({**_row(), "shots": 5})
    assert _panel_axes(fig)[1].get_title() == "support (1 of 5) + mask"
    plt.close(fig)
    fig = episode_figure({**_row(), "shots": 1})
    assert _panel_axes(fig)[1].get_title() == "support + mask"
    plt.close(fig)


def test_loss_curves_say_what_they_show(tmp_path):
    import matplotlib.pyplot as plt

    seen = {}
    real_savefig = plt.Figure.savefig

    def spy(fig, *a, **k):
        ax = fig.axes[0]
        seen[str(a[0])] = (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
        return real_savefig(fig, *a, **k)

    plt.Figure.savefig = spy
    try:
        plot_loss_curve({"train/loss": [(1, 2.0), (2, 1.0)]}, tmp_path / "a.png")
        plot_loss_curve({"pretrain/loss": [(1, 9.0)], "pretrain/loss_global": [(1, 4.0)]}, tmp_path / "b.png",
                        tags=("pretrain/loss", "pretrain/loss_global"), val_tags=())
        plot_loss_curve({"train/loss": [(1, 2.0)]}, tmp_path / "c.png", title="mine", ylabel="L")
    finally:
        plt.Figure.savefig = real_savefig
    assert seen[str(tmp_path / "a.png")] == ("QGNet training loss", "training step", "cross-entropy loss (main + aux)")
    assert seen[str(tmp_path / "b.png")] == ("GlobalLocalMoCo pretraining loss", "training step", "InfoNCE loss")
    assert seen[str(tmp_path / "c.png")][0::2] == ("mine", "L")


def _drawn_points(ax):
    return [(line.get_xdata(), line.get_marker()) for line in ax.get_lines()]


def test_a_curve_with_one_logged_point_is_not_an_empty_frame():
    """`demo --quick` logs one point per tag: it shows as a marker on an axis from 0, with a note."""
    import matplotlib.pyplot as plt

    from fewshot_priors.viz import PRETRAIN_NOTE, loss_curve_figure

    fig = loss_curve_figure({"train/loss": [(4, 0.7)]})
    ax = fig.axes[0]
    (xs, marker), = _drawn_points(ax)
    assert list(xs) == [4] and marker not in (None, "None", "", " ")  # a line of one point draws nothing
    left, right = ax.get_xlim()
    assert left == 0 and right > 4
    texts = [t.get_text() for t in ax.texts]
    assert any("only 1 point(s) logged" in t for t in texts)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["training loss (main + aux)"]  # not the raw tag
    plt.close(fig)
    fig = loss_curve_figure({}, tags=("pretrain/loss",), val_tags=())
    assert any("nothing was logged" in t.get_text() for t in fig.axes[0].texts)
    assert PRETRAIN_NOTE in [t.get_text() for t in fig.texts]  # the pretraining curve says why it may rise
    plt.close(fig)
    fig = loss_curve_figure({"train/loss": [(s, 1.0 / s) for s in range(1, 60)]})
    (xs, marker), = _drawn_points(fig.axes[0])
    assert len(xs) == 59 and marker in (None, "None", "") and not fig.axes[0].texts  # a long run: a plain line
    plt.close(fig)


def test_the_loss_curve_gets_a_foreground_share_panel_when_the_shares_were_logged(tmp_path):
    from fewshot_priors.viz import loss_curve_figure

    plain = {"train/loss": [(1, 1.0), (2, 0.9), (3, 0.8)]}
    shares = {**plain, "train/fg_pred": [(1, 0.0), (2, 0.1), (3, 0.2)], "train/fg_true": [(1, 0.2), (2, 0.2), (3, 0.2)]}
    assert len(loss_curve_figure(plain).axes) == 1
    fig = loss_curve_figure(shares)
    panel = fig.axes[1]
    assert panel.get_ylabel() == "foreground share"
    assert [t.get_text() for t in panel.get_legend().get_texts()] == ["predicted (training batches)",
                                                                      "labels (training batches)"]
