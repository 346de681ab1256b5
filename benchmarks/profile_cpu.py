"""Where the CPU time goes in the train loader and in ``pretrain()`` (cProfile, small sizes).

Not a test: run it by hand and paste the tables into ``benchmarks/RESULTS.md``::

    OMP_NUM_THREADS=1 python3 benchmarks/profile_cpu.py loader --episodes 16
    OMP_NUM_THREADS=1 python3 benchmarks/profile_cpu.py pretrain --steps 4
    OMP_NUM_THREADS=1 python3 benchmarks/profile_cpu.py workers --episodes 32
    OMP_NUM_THREADS=1 python3 benchmarks/profile_cpu.py step --steps 2

``loader``: cProfile of ``PascalFewShot`` train episodes (synthetic data in the PASCAL
layout, the paper's 473 train transform) and their collation, in the main process;
the time is split into stages by the cumulative time of the functions that own them.
``pretrain``: cProfile of a tiny ``pretrain()`` run (``resnet10t``, 320 px images, 96 px views, batch 4,
``num_workers=0``, the old ``PretrainConfig`` default): data (superpixels, two-view augment),
model forward / backward. ``workers``: wall time of the train loader at 0, 1, 2, ...
workers (up to the machine's cores). ``step``: torch.profiler of the real-images preset's training
step (``test_bench_real_images.py``'s model, 224 px, stride 16, batch 8), the plain model beside the
library's (channels_last, the prior sharing the backbone's features): the operators by self CPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch

# stage -> (file fragment, function name) pairs whose cumulative time is the stage's time
LOADER_STAGES = {
    "read image (PIL decode)": [("data/io.py", "read_image")],
    "read label (PNG decode + palette)": [("data/io.py", "read_label")],
    "train transform (scale/rotate/blur/crop, torch)": [("data/transforms.py", "__call__")],
    "binary masks of the class": [("data/episodes.py", "_binary")],
    "collate": [("data/episodes.py", "collate_episodes")],
    "episode total (__getitem__)": [("data/episodes.py", "__getitem__")],
}
PRETRAIN_STAGES = {
    "superpixels: segment (SLIC)": [("superpixels.py", "segment")],
    "superpixels: filter / relabel": [("superpixels.py", "filter")],
    "image read": [("data/io.py", "read_image")],
    "two-view augment": [("augment.py", "__call__")],
    "dataset item total (__getitem__)": [("data/unlabeled.py", "__getitem__")],
    "model forward (GlobalLocalMoCo)": [("ssl/moco.py", "forward")],
    "patch pooling (superpixel_pool)": [("ops/superpixel_pool.py", "superpixel_pool")],
    "backward": [("torch/_tensor.py", "backward")],
    "optimizer step": [("torch/optim/sgd.py", "step")],
}


def _stage_table(stats: pstats.Stats, stages: dict, total: float) -> list[str]:
    rows = ["| stage | cumulative s | share of wall |", "|---|---:|---:|"]
    for name, keys in stages.items():
        cum = 0.0
        for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
            if any(filename.replace("\\", "/").endswith(f) and func == fn for f, fn in keys):
                cum = max(cum, ct)  # the outermost call holds the nested ones (no double count)
        rows.append(f"| {name} | {cum:.2f} | {cum / total:.0%} |")
    return rows


def _top(stats: pstats.Stats, n: int = 12) -> list[str]:
    items = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    rows = ["| function (self time) | self s | calls |", "|---|---:|---:|"]
    for (filename, line, func), (_cc, nc, tt, _ct, _callers) in items:
        short = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        rows.append(f"| `{short}:{line} {func}` | {tt:.2f} | {nc} |")
    return rows


def _synthetic_root(tmp: Path) -> Path:
    from fewshot_priors.data import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp / "syn", num_classes=8, images_per_class=6, image_size=400, progress=False)


def _train_set(root: Path, shots: int = 1):
    from fewshot_priors import data

    return data.PascalFewShot(
        root, fold=0, split="train", shots=shots, transform=data.TrainTransform(473, scale=(0.9, 1.1)), image_size=473
    )


def profile_loader(episodes: int) -> None:
    from fewshot_priors.data import collate_episodes

    with tempfile.TemporaryDirectory() as tmp:
        ds = _train_set(_synthetic_root(Path(tmp)))
        ds[0]  # warm-up (lazy imports, label scan)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        batch = []
        for i in range(episodes):
            batch.append(ds[i % len(ds)])
            if len(batch) == 4:
                collate_episodes(batch)
                batch = []
        prof.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    print(f"### train loader, main process: {episodes} 1-shot episodes at 473, {wall:.2f} s "
          f"({episodes / wall:.2f} episodes/s, torch threads {torch.get_num_threads()})\n")  # fmt: skip
    print("\n".join(_stage_table(stats, LOADER_STAGES, wall)))
    print()
    print("\n".join(_top(stats)))


def profile_workers(episodes: int) -> None:
    from fewshot_priors.data import collate_episodes

    with tempfile.TemporaryDirectory() as tmp:
        ds = _train_set(_synthetic_root(Path(tmp)))
        print(f"### train loader wall time, {episodes} 1-shot episodes, batch 4, {os.cpu_count()} cores\n")
        print("| num_workers | s | episodes/s |\n|---:|---:|---:|")
        for workers in range(0, min(os.cpu_count() or 1, 8) + 1):
            loader = torch.utils.data.DataLoader(
                ds, batch_size=4, shuffle=True, num_workers=workers, collate_fn=collate_episodes,
                generator=torch.Generator().manual_seed(0), drop_last=True,
            )  # fmt: skip
            t0 = time.perf_counter()
            seen = 0
            while seen < episodes:
                for b in loader:
                    seen += b["query_image"].shape[0] if "query_image" in b else 4
                    if seen >= episodes:
                        break
            wall = time.perf_counter() - t0
            print(f"| {workers} | {wall:.2f} | {seen / wall:.2f} |")


def profile_pretrain(steps: int) -> None:
    from fewshot_priors.engine.pretrain import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        from fewshot_priors.data import generate_synthetic_dataset

        root = generate_synthetic_dataset(Path(tmp) / "syn", num_classes=4, images_per_class=6, image_size=320, progress=False)
        images = sorted(str(p) for p in Path(root).rglob("*.jpg"))
        section = dict(
            images=images, backbone="resnet10t", size=96, batch_size=4, max_steps=steps, epochs=100,
            queue_size=16, local_queue_size=64, max_patches=8, n_segments=32, num_workers=0, log_every=1,
        )  # fmt: skip

        def tree(out: str, **over) -> dict:
            return {"experiment": {"output_dir": str(Path(tmp) / out), "seed": 0, "device": "cpu"},
                    "pretrain": dict(section, **over)}

        pretrain(tree("warm", max_steps=1), progress=False, tensorboard=False)  # warm-up: imports, timm
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        pretrain(tree("run"), progress=False, tensorboard=False)
        prof.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    print(f"### pretrain(): {steps} steps, resnet10t, 320 px images, 96 px views, batch 4, num_workers=0, {wall:.2f} s\n")
    print("\n".join(_stage_table(stats, PRETRAIN_STAGES, wall)))
    print()
    print("\n".join(_top(stats)))


def profile_step(steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from fewshot_priors.data import collate_episodes
    from test_bench_real_images import BATCH, SIZE, STRIDE, real_images_episodes, real_images_model

    batch = collate_episodes(real_images_episodes(BATCH, BATCH))
    for name, fast in (("plain", False), ("library", True)):
        model = real_images_model(fast).train()
        opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            loss = model(batch["query_image"], batch["support_images"], batch["support_masks"],
                         query_mask=batch["query_mask"])["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # warm-up
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        wall = (time.perf_counter() - t0) / steps
        print(f"### real-images training step, {name}: Lite0, {SIZE} px, stride {STRIDE}, batch {BATCH}, "
              f"{wall:.2f} s per step (profiled), torch threads {torch.get_num_threads()}\n")
        rows = ["| operator | self CPU s per step | share |", "|---|---:|---:|"]
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:10]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in events:
            rows.append(f"| `{e.key}` | {e.self_cpu_time_total / 1e6 / steps:.3f} | {e.self_cpu_time_total / total:.0%} |")
        print("\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["loader", "workers", "pretrain", "step"])
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    if args.what == "loader":
        profile_loader(args.episodes)
    elif args.what == "workers":
        profile_workers(args.episodes)
    elif args.what == "step":
        profile_step(args.steps)
    else:
        profile_pretrain(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
