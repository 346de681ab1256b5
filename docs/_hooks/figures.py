"""MkDocs hook: draw the Home and Concepts pages' figures at build time (Concepts': with the library).

The figures are added to the site as generated files (never written into ``docs/``),
so they always reflect the current code. Each figure is a function returning PNG
bytes; :func:`on_files` registers them under ``figures/``.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("MPLBACKEND", "Agg")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _toy_scene(size: int = 48, seed: int = 0):
    """A query and a support scene: one elliptical object on a textured background.

    Returns the query image (H, W, 3 floats), the query and support object masks
    (H, W bool) and a torch.Generator for the toy features.
    """
    import numpy as np
    import torch
    from skimage import data
    from skimage.draw import ellipse
    from skimage.transform import resize

    grass = resize(data.grass(), (size, size), anti_aliasing=True)
    brick = resize(data.brick(), (size, size), anti_aliasing=True)

    def mask(cy, cx, ry, rx):
        m = np.zeros((size, size), bool)
        rr, cc = ellipse(cy * size, cx * size, ry * size, rx * size, shape=m.shape)
        m[rr, cc] = True
        return m

    query_mask = mask(0.55, 0.45, 0.25, 0.32)
    support_mask = mask(0.4, 0.6, 0.3, 0.22)
    img = np.stack([0.35 * grass, 0.55 * grass + 0.2, 0.25 * grass], -1)
    obj = np.stack([0.75 * brick + 0.2, 0.45 * brick, 0.3 * brick], -1)
    img[query_mask] = obj[query_mask]
    return img.clip(0, 1), query_mask, support_mask, torch.Generator().manual_seed(seed)


def opposite_region_maps() -> bytes:
    """Toy version of Sec. 4.3: the guided map is high on the object, the prior map low.

    Per-pixel toy features (C = 32) are drawn around two prototypes, one for
    "background" and one for "object". The bridge and the support share that
    feature space. The prior features keep the background prototype but move the
    object to a new, unrelated direction: the paper's conjecture of what the
    contrastively trained prior extractor does. The two maps are then computed
    by :func:`fewshot_priors.prior_region_map` and :func:`fewshot_priors.guided_region_map`.
    """
    import matplotlib.pyplot as plt
    import torch

    from fewshot_priors import guided_region_map, prior_region_map

    img, qmask, smask, g = _toy_scene()
    c = 32
    background, obj, moved = torch.randn(3, c, 1, 1, generator=g)

    def features(mask, fg_proto):
        m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        noise = 0.6 * torch.randn(1, c, *mask.shape, generator=g)
        return background * (1 - m) + fg_proto * m + noise

    bridge = features(qmask, obj)  # supervised backbone, query
    prior = features(qmask, moved)  # prior extractor, query
    support = features(smask, obj)  # supervised backbone, support
    support_mask = torch.as_tensor(smask, dtype=torch.float32)[None, None]

    guided = guided_region_map(bridge, support, support_mask)[0, 0]
    prior_map = prior_region_map(bridge, prior)[0, 0]

    fig, axes = plt.subplots(1, 4, figsize=(11, 3))
    panels = [
        (img, "query image"),
        (qmask, "query ground truth"),
        (guided.numpy(), "guided region map\n(support -> query)"),
        (prior_map.numpy(), "prior region map\n(prior -> bridge)"),
    ]
    for ax, (im, title) in zip(axes, panels):
        ax.imshow(im, cmap=None if im.ndim == 3 else "viridis", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(
        "Toy features: object mean guided map "
        f"{guided[torch.as_tensor(qmask)].mean():.2f} vs background {guided[~torch.as_tensor(qmask)].mean():.2f}; "
        f"prior map {prior_map[torch.as_tensor(qmask)].mean():.2f} vs {prior_map[~torch.as_tensor(qmask)].mean():.2f}",
        fontsize=9,
    )
    return _png(fig)


def two_views_and_patches() -> bytes:
    """Global vs local positives: two augmented views of one image and matching superpixels.

    SLIC patches from :class:`fewshot_priors.ssl.superpixels.SuperpixelPatchSampler`; the two
    views from :class:`fewshot_priors.ssl.augment.TwoViewAugment`, which crops and flips the
    label map with the image so patch ``j`` is the same region in both views.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from skimage import data
    from skimage.segmentation import mark_boundaries
    from skimage.transform import resize

    from fewshot_priors.ssl.augment import TwoViewAugment
    from fewshot_priors.ssl.superpixels import SuperpixelPatchSampler

    img = (resize(data.chelsea(), (150, 200), anti_aliasing=True) * 255).astype(np.uint8)
    sampler = SuperpixelPatchSampler("slic", n_segments=40, seed=0)
    labels, counts = sampler(img)
    aug = TwoViewAugment(size=128, blur_p=0.0, grayscale_p=0.0, min_area=20)
    views = aug(torch.from_numpy(img).permute(2, 0, 1)[None], labels, seed=3)

    def show(v):
        return v[0].permute(1, 2, 0).numpy().clip(0, 1)

    a, b = views["labels_a"][0].numpy(), views["labels_b"][0].numpy()
    shared = sorted(set(np.unique(a)) & set(np.unique(b)) - {-1}, key=lambda j: -min((a == j).sum(), (b == j).sum()))
    picks = shared[:3]
    colours = [(1.0, 0.2, 0.2), (0.2, 0.5, 1.0), (1.0, 0.9, 0.1)]

    def highlight(rgb, lab):
        out = mark_boundaries(rgb, np.maximum(lab, 0), color=(1, 1, 1))
        for j, c in zip(picks, colours):
            m = lab == j
            out[m] = 0.45 * out[m] + 0.55 * np.array(c)
        return out

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    axes[0].imshow(mark_boundaries(img / 255.0, labels[0].numpy(), color=(1, 1, 1)))
    axes[0].set_title(f"image + {int(counts[0])} SLIC patches", fontsize=10)
    axes[1].imshow(highlight(show(views["view_a"]), a))
    axes[1].set_title("view A (global positive of view B)", fontsize=10)
    axes[2].imshow(highlight(show(views["view_b"]), b))
    axes[2].set_title("view B: same colour = same patch\n(local positives)", fontsize=10)
    for ax in axes:
        ax.axis("off")
    return _png(fig)


def model_diagram() -> bytes:
    """QGNet at a glance (paper Fig. 2): the two frozen encoders, the two region maps, the FEM decoder.

    Boxes and arrows only; the names are the library's (``create_backbone``, ``GuidedRegionMap``,
    ``PriorRegionMap``, ``masked_average_pool``, ``FEMDecoder``).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 4.6))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 46)
    ax.axis("off")
    colors = {"input": "#e3f2fd", "frozen": "#eeeeee", "ssl": "#fff3e0", "map": "#e8f5e9", "learned": "#fce4ec"}

    def box(x, y, w, h, text, kind):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.4", fc=colors[kind], ec="#555555", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
        return x, y, w, h

    def arrow(a, b, text=None, start="right", end="left", at=0.5):
        (ax0, ay0, aw, ah), (bx0, by0, bw, bh) = a, b
        p0 = {"right": (ax0 + aw + 0.4, ay0 + ah / 2), "top": (ax0 + aw / 2, ay0 + ah + 0.4),
              "bottom": (ax0 + aw / 2, ay0 - 0.4)}[start]
        p1 = {"left": (bx0 - 0.4, by0 + bh / 2), "bottom": (bx0 + bw / 2, by0 - 0.4),
              "top": (bx0 + bw / 2, by0 + bh + 0.4)}[end]
        ax.annotate("", xy=p1, xytext=p0, arrowprops={"arrowstyle": "->", "color": "#333333", "lw": 1})
        if text:
            x, y = p0[0] + at * (p1[0] - p0[0]), p0[1] + at * (p1[1] - p0[1])
            ax.text(x, y + 0.6, text, ha="center", va="bottom", fontsize=7, color="#333333",
                    bbox={"fc": "white", "ec": "none", "pad": 0.5})

    support = box(1, 36, 13, 7, "support image\n+ its mask", "input")
    query = box(1, 18, 13, 7, "query image", "input")
    backbone = box(22, 27, 17, 7, "frozen supervised\nbackbone (ImageNet)", "frozen")
    prior_ex = box(22, 4, 17, 7, "frozen prior extractor\n(GlobalLocalMoCo)", "ssl")
    proto = box(49, 38, 17, 5.5, "prototype\n(masked average pool)", "map")
    guided = box(49, 27, 17, 6.5, "guided region map\n(high on the class)", "map")
    prior = box(49, 13, 17, 6.5, "prior region map\n(low on objects)", "map")
    fem = box(76, 22, 15, 11, "FEM decoder\n(trained)", "learned")
    pred = box(93.5, 25, 5, 5, "mask", "input")
    arrow(support, backbone, start="right")
    arrow(query, backbone, start="right")
    arrow(query, prior_ex, start="bottom", end="left")
    arrow(backbone, proto, "support mid", at=0.45)
    arrow(backbone, guided, "high")
    arrow(backbone, prior, "query high (bridge)", at=0.55)
    arrow(prior_ex, prior, "query prior features", at=0.45)
    for src in (proto, guided, prior):
        arrow(src, fem)
    arrow(fem, pred)
    ax.text(1, 0.5, "Grey and orange: frozen; green: training-free maps and prototype; pink: the only trained part. "
            "The query's mid features also enter the decoder.", fontsize=7.5, color="#444444")
    return _png(fig)


FIGURES = {
    "figures/model.png": model_diagram,
    "figures/opposite_region_maps.png": opposite_region_maps,
    "figures/two_views_and_patches.png": two_views_and_patches,
}


def on_files(files, config):
    """Add every figure of :data:`FIGURES` to the site as a generated file."""
    from mkdocs.structure.files import File

    for uri, draw in FIGURES.items():
        files.append(File.generated(config, uri, content=draw()))
    return files
