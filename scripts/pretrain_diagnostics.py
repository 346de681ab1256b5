"""Does the prior extractor learn? Pretraining runs with collapse diagnostics, and their figure.

Runs GlobalLocalMoCo pretraining in several queue settings on a folder of photos, with
``diag_every`` (embedding std / alignment / uniformity of each batch) and a kNN probe
on a labelled FSS-layout folder, then draws ``plot_pretrain_diagnostics``. The numbers
in docs/how-to/pretrain.md ("Is it learning?") come from::

    python scripts/pretrain_diagnostics.py --images PHOTOS --probe-root /path/to/fss_layout \\
        --out pd_runs --steps 40

(``--images``: a folder of the 126 unique COCO128-seg photos, shrunk to 160 px on the long
side so a CPU step is cheap; ``--probe-root``: the same photos with their masks in the
folder layout, see docs/how-to/real-images.md; ``--plot-only`` redraws the figure from
existing runs.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: label -> overrides of the ``pretrain`` section
VARIANTS = {
    "bigq": {"queue_size": 2048, "local_queue_size": 4096},  # the demo's queues, longer than the data
    "smallq": {"queue_size": 64, "local_queue_size": 1024},  # shorter than one epoch of keys
    "bigq_empty": {"queue_size": 2048, "local_queue_size": 4096, "queue_init": "empty"},
    "smallq_bn": {"queue_size": 64, "local_queue_size": 1024, "queue_init": "empty", "head_norm": "bn"},
    "smallq_lr": {"queue_size": 64, "local_queue_size": 1024, "queue_init": "empty", "lr": 0.0075},
}

COMMON = {
    "backbone": "resnet18", "size": 64, "batch_size": 8, "epochs": 3, "dim": 64, "mlp_hidden": 256, "lr": 0.06,
    "moco_momentum": 0.99, "n_segments": 24, "max_patches": 24, "log_every": 2, "diag_every": 2,
    "probe_every": 10, "probe_size": 64, "num_workers": 1,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", help="unlabelled photos (folder or .txt list)")
    ap.add_argument("--probe-root", help="labelled FSS-layout folder for the kNN probe")
    ap.add_argument("--out", required=True, help="folder of the runs and the figure")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--plot-only", action="store_true", help="only redraw the figure from existing runs")
    ap.add_argument("--figure", help="figure path (default <out>/pretrain_diagnostics.png)")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.plot_only:
        from fewshot_priors.engine.pretrain import pretrain

        for name in args.variants:
            section = {"images": args.images, "probe_root": args.probe_root, "cache_dir": str(out / "spcache"),
                       "build_cache": True, "max_steps": args.steps, **COMMON, **VARIANTS[name]}
            pretrain({"experiment": {"output_dir": str(out / name), "seed": 0}, "pretrain": section},
                     progress=False, tensorboard=False)
    from fewshot_priors.viz import plot_pretrain_diagnostics

    runs = {n: out / n / "scalars.csv" for n in args.variants if (out / n / "scalars.csv").is_file()}
    qs = {n: (VARIANTS[n]["queue_size"], VARIANTS[n]["local_queue_size"]) for n in runs}
    fig = plot_pretrain_diagnostics(runs, args.figure or out / "pretrain_diagnostics.png", dim=COMMON["dim"],
                                    queue_sizes=qs)
    print(json.dumps({"figure": str(fig), "runs": {k: str(v) for k, v in runs.items()}}))


if __name__ == "__main__":
    main()
