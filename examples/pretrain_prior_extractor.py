"""Pretrain QGNet's prior extractor (GlobalLocalMoCo) on a folder of unlabeled images.

The paper's recipe (SGD, lr 0.03 x batch / 256, cosine schedule, 224-px views) on one GPU or many::

    python examples/pretrain_prior_extractor.py --images data/VOC2012/JPEGImages \\
        --output runs/prior_r50 --backbone resnet50 --epochs 1000 --batch-size 256
    torchrun --nproc_per_node=8 examples/pretrain_prior_extractor.py --images ... (same flags)

A self-contained CPU smoke run on generated images (3 to 4 minutes on 2 CPU cores)::

    python examples/pretrain_prior_extractor.py --demo --output /tmp/prior_demo

The result, ``<output>/prior_extractor.safetensors``, plugs into
``QGNet(prior_weights=...)`` or ``create_backbone(<backbone>, weights=...)``.
Ablations: ``--superpixels felzenszwalb`` (Table 5), ``--global-only`` /
``--local-only`` (Table 6). ``--resume`` continues ``<output>/last`` exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def make_demo_images(folder: Path, n: int = 64, size: int = 96, seed: int = 0) -> Path:
    """Gradient backgrounds with a few flat shapes: enough structure for superpixels."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, size)[None, :, None]
        im = Image.fromarray((c0 * (1 - t) + c1 * t).repeat(size, 0).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = rng.integers(0, size - 16, 2)
            w, h = rng.integers(12, size // 2, 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
        im.save(folder / f"img_{i:03d}.jpg", quality=90)
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", help="folder of images, a .txt list of paths, or one image")
    ap.add_argument("--demo", action="store_true", help="generate 64 small images and run a tiny CPU pretraining")
    ap.add_argument("--output", default="runs/prior_extractor")
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--output-stride", type=int, default=None, help="dilate the encoder (timm output_stride, e.g. 8)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="default 0.03 * batch / 256")
    ap.add_argument("--queue-size", type=int, default=65536)
    ap.add_argument("--local-queue-size", type=int, default=65536)
    ap.add_argument("--max-patches", type=int, default=32)
    ap.add_argument("--superpixels", choices=["slic", "felzenszwalb"], default="slic")
    ap.add_argument("--n-segments", type=int, default=64)
    ap.add_argument("--cache-dir", default=None, help="superpixel cache (built first with --build-cache)")
    ap.add_argument("--build-cache", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="data-loader (and cache) worker processes")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--global-only", action="store_true")
    group.add_argument("--local-only", action="store_true")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from fewshot_priors.engine.pretrain import pretrain

    # the `pretrain` section of the config tree (fewshot_priors.config.DEFAULTS["pretrain"])
    section = dict(
        images=args.images,
        backbone=args.backbone,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        lr=args.lr,
        queue_size=args.queue_size,
        local_queue_size=args.local_queue_size,
        max_patches=args.max_patches,
        superpixel_method=args.superpixels,
        n_segments=args.n_segments,
        cache_dir=args.cache_dir,
        build_cache=args.build_cache,
        num_workers=args.workers,
        cache_workers=args.workers,
        global_weight=0.0 if args.local_only else 1.0,
        local_weight=0.0 if args.global_only else 1.0,
        amp=not args.no_amp,
    )
    if args.output_stride:
        section["backbone_kwargs"] = {"output_stride": args.output_stride}
    if args.demo:
        images = make_demo_images(Path(args.output) / "demo_images")
        # tiny settings that show learning within ~30 CPU steps (tests/test_pretrain.py): queues smaller
        # than one pass over the 64 images (no stale copies of the same image as negatives), fast EMA
        section.update(images=str(images), backbone="resnet10t", backbone_kwargs={"output_stride": 8}, size=48,
                   epochs=4, batch_size=8, queue_size=8, local_queue_size=64, moco_momentum=0.9,
                   lr=0.05, max_patches=16, n_segments=16, dim=32, mlp_hidden=64)
    if not section["images"]:
        ap.error("--images is required (or use --demo)")
    cfg = {"experiment": {"output_dir": args.output, "seed": args.seed}, "pretrain": section}
    result = pretrain(cfg, resume=args.resume, progress=not args.no_progress)
    if result["history"]:
        last = result["history"][-1]
        print(f"step {result['step']}/{result['total_steps']}: loss {last['loss']:.3f} "
              f"(global {last['loss_global']:.3f}, local {last['loss_local']:.3f}), "
              f"positive-pair accuracy global {last['acc_global']:.2f}, local {last['acc_local']:.2f}")
    if result["prior_extractor"]:
        print(f"prior extractor: {result['prior_extractor']}  (QGNet(prior_weights=...), backbone {result['backbone']!r})")
    return result


if __name__ == "__main__":
    main()
