"""The ``fewshot-priors`` command line.

Subcommands::

    fewshot-priors demo --output demo_output [--quick]
    fewshot-priors real-images --root my_folder_dataset --output real_images_output [--seeds 0 1 2] [--quick]
    fewshot-priors configs
    fewshot-priors train --config pascal/resnet50_473_fold0 [--set train.lr=0.01 data.root=/data/VOCdevkit]
                         [--resume | --overwrite]
    fewshot-priors eval --config ... --checkpoint runs/x/best --shots 1 --episodes 5000 --seed 321 --output results.json
    fewshot-priors visualize --config ... --checkpoint ... --output fig5.png [--episodes 4]
    fewshot-priors pretrain --images DIR [--config ...] [--set pretrain.queue_size=16384 ...]
    fewshot-priors convert PFENet.pth --kind pfenet|qgnet|pfenet-backbone --output converted/x [--config ...]

Every command that runs something takes ``--set section.key=value`` (any key of
:data:`fewshot_priors.config.DEFAULTS`); its flags are shortcuts for config keys.
This module only parses: arguments -> one config tree -> one call.

``python -m fewshot_priors.cli`` works the same. Multi-GPU: run ``train`` / ``eval``
under ``torchrun --nproc_per_node N -m fewshot_priors.cli ...``.

Errors. Invalid arguments exit with status 2 and an argparse message. Errors of the
user's input found later (:data:`USER_ERRORS`: bad config values, missing or corrupt
data and checkpoints, a run folder that already holds a run, unwritable output
paths, a non-finite loss) are printed as one ``error: ...`` line on stderr, also
with status 2; set ``FEWSHOT_PRIORS_TRACEBACK=1`` to see the traceback instead.
Output paths are checked before the work starts; if writing results still fails
afterwards, the results are printed to stdout first so nothing computed is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["USER_ERRORS", "build_parser", "main"]

#: Exceptions that describe a problem with the user's input or files (reported as
#: ``error: <message>`` with exit status 2). ValueError covers ConfigError and
#: BadDataError; OSError covers FileNotFoundError (DataLayoutError), FileExistsError
#: (RunFolderError), NotADirectoryError, IsADirectoryError and PermissionError;
#: CheckpointError is added in :func:`main`; FloatingPointError is a non-finite loss.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = "positive integer" if low == 1 else f"integer >= {low}"
    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Fail before any work if ``path`` cannot be written as a file (a folder, or under a file)."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{flag} {p} is a folder; give a file name, e.g. {p / 'results.json'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{flag} {p}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"{flag} {p}: the folder {parent} is not writable")
            break
    return p


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required,
                   help="shipped config name (see `fewshot-priors configs`, e.g. pascal/resnet50_473_fold0) "
                        "or a YAML file")
    _add_set_arg(p)


def _add_set_arg(p: argparse.ArgumentParser, example: str = "train.lr=0.01 data.shots=5 data.root=/data/VOCdevkit"):
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="SECTION.KEY=VALUE",
                   help=f"override config values (any key of `fewshot-priors configs`' files), e.g. --set {example}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshot-priors",
        description="Few-shot segmentation with self-supervised query priors (QGNet).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Start with `fewshot-priors demo --output demo_output` (the whole pipeline on a generated dataset).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole paper pipeline on a generated dataset (< 10 min on 2 CPU cores)",
                       description="Generate a small PASCAL-layout dataset, pretrain the prior extractor "
                                   "(global + local MoCo), train QGNet, evaluate 1-shot and 5-shot on held-out "
                                   "classes against baselines, and write metrics.json + figures.")
    p.add_argument("--output", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--quick", action="store_true", help="tiny preset (about a minute; a smoke test of the pipeline: its numbers are meaningless)")
    p.add_argument("--ablation", action="store_true",
                   help="also train QGNet with a random-init prior extractor and without the prior region map, "
                        "and score the Table-7 recall of the region maps (3x training; ablation.md)")
    p.add_argument("--seed", type=int, help="seed of everything (experiment.seed; default 321)")
    p.add_argument("--device", help="cpu, cuda or auto (experiment.device; default auto)")
    _add_set_arg(p, "train.epochs=6 eval.episodes=100 (config demo/full, or demo/quick with --quick)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("real-images", help="cross-validate QGNet and baselines on your own folder dataset",
                       description="On a folder dataset (<class>/<stem>.jpg + <stem>.png masks): pretrain the prior "
                                   "extractor on all images without labels (once per seed, shared by the folds), "
                                   "split the classes with >= --min-images images into --num-folds seeded folds, "
                                   "hold each out in turn, train QGNet (pretrained prior, random-init prior, "
                                   "no prior) on the other classes, evaluate 1-shot and 5-shot against the "
                                   "guided-map and all-foreground baselines, and write metrics.json, results.md "
                                   "(mean, std, min-max over seeds) and Fig. 5 panels.")
    p.add_argument("--root", required=True, help="folder dataset root (one sub-folder per class)")
    p.add_argument("--output", default="real_images_output", help="output folder (default: real_images_output)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default: 0 1 2)")
    p.add_argument("--folds", type=int, nargs="+", help="run only these folds (default: all)")
    p.add_argument("--num-folds", type=int, default=4, help="class folds (default 4)")
    p.add_argument("--min-images", type=int, default=5,
                   help="classes with fewer images are never held out (default 5)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the class-to-fold split (default 0)")
    p.add_argument("--quick", action="store_true", help="tiny preset (a minute or two; numbers are meaningless)")
    p.add_argument("--image-size", type=int, help="input size: data.image_size, pretrain.size and model.bins "
                                                 "(feature-size fractions) (default: the preset's)")
    p.add_argument("--train-epochs", type=int, help="QGNet training epochs: train.epochs (default: the preset's)")
    p.add_argument("--pretrain-epochs", type=int, help="prior-extractor pretraining epochs: pretrain.epochs "
                                                      "(default: the preset's)")
    p.add_argument("--episodes", type=int, help="test episodes per fold and K: eval.episodes (default: the preset's)")
    p.add_argument("--fg-weight", type=float, help="foreground weight of the CE loss: model.fg_weight "
                                                  "(default: the preset's)")
    p.add_argument("--backbone-weights", help="local checkpoint of the frozen backbone (e.g. ImageNet resnet18 "
                                             "weights): model.weights; default: the seed's self-supervised encoder")
    p.add_argument("--models", nargs="+", choices=["qgnet", "qgnet_random_prior", "qgnet_without_prior"],
                   default=["qgnet", "qgnet_random_prior", "qgnet_without_prior"], help="models to train (all)")
    p.add_argument("--device", help="cpu, cuda or auto (experiment.device; default auto)")
    _add_set_arg(p, "train.lr=0.02 pretrain.epochs=5 (config real_images/full, or real_images/quick with --quick)")
    p.add_argument("--no-progress", action="store_true", help="hide progress lines")

    sub.add_parser("configs", help="list the shipped configs (the paper's table rows and the demo)")

    p = sub.add_parser("train", help="train QGNet from a config",
                       description="Episodic training (SGD, poly LR, the paper's augmentation) with TensorBoard + "
                                   "CSV logs, periodic validation and best/last checkpoints in experiment.output_dir.")
    _add_config_args(p)
    p.add_argument("--output-dir", help="run folder (default: experiment.output_dir from the config)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                      help="resume exactly from CHECKPOINT (default: <output-dir>/last)")
    mode.add_argument("--overwrite", action="store_true",
                      help="the run folder holds a previous run: delete its checkpoints and logs and start afresh "
                           "(without --resume or --overwrite such a folder is refused)")
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many optimisation steps (>= 1)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("eval", help="evaluate a checkpoint on the held-out classes",
                       description="Fixed-seed few-shot evaluation scored at the original label resolution; "
                                   "writes mIoU, FB-IoU, per-class IoU, the seed and the episode count.")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `train` (stem or .safetensors)")
    p.add_argument("--shots", type=_positive_int, help="K (default: eval.shots, else data.shots of the config)")
    p.add_argument("--episodes", type=_positive_int,
                   help="number of test episodes (default: eval.episodes, else data.test_episodes)")
    p.add_argument("--seed", type=int, help="episode seed (default: eval.seed = 321)")
    p.add_argument("--num-workers", type=_nonnegative_int, help="data loader workers (default: data.num_workers)")
    p.add_argument("--output", help="write the results as JSON to this file (checked before the evaluation)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("visualize", help="draw Fig. 5-style panels for test episodes",
                       description="Query, support with mask, guided region map, prior region map, prediction "
                                   "and ground truth for a few test episodes.")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `train`")
    p.add_argument("--output", default="fig5.png", help="output PNG (default fig5.png)")
    p.add_argument("--episodes", type=_positive_int, default=4, help="number of episodes (rows), default 4")
    p.add_argument("--shots", type=_positive_int, help="K (default: eval.shots, else data.shots)")
    p.add_argument("--seed", type=int, help="episode seed (default: eval.seed)")

    p = sub.add_parser("pretrain", help="self-supervised prior-extractor pretraining (global + local MoCo)",
                       description="Pretrain GlobalLocalMoCo (global + superpixel-local InfoNCE) on unlabelled "
                                   "images and export the encoder as <output-dir>/prior_extractor.safetensors "
                                   "(pass it to training as model.prior_weights).")
    p.add_argument("--config", help="config whose pretrain and experiment sections are used (shipped name or "
                                    "YAML file; default: the defaults)")
    p.add_argument("--images", help="image folder, .txt list of paths, or a glob-free path list file "
                                    "(pretrain.images; required unless the config sets it)")
    p.add_argument("--output-dir", help="run folder (experiment.output_dir; default runs/pretrain without --config)")
    p.add_argument("--backbone", help="timm encoder name (pretrain.backbone, default resnet50)")
    p.add_argument("--epochs", type=_positive_int, help="pretrain.epochs (default 200; paper: 1000 PASCAL, 200 COCO)")
    p.add_argument("--batch-size", type=_positive_int,
                   help="global batch size, pretrain.batch_size (default 256; lr = 0.03 x batch / 256)")
    p.add_argument("--size", type=_positive_int, help="crop size of the two views, pretrain.size (default 224)")
    p.add_argument("--superpixels", choices=["slic", "felzenszwalb"],
                   help="patch method, pretrain.superpixel_method (default slic)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="resume exactly from <output-dir>/last")
    mode.add_argument("--overwrite", action="store_true",
                      help="the run folder holds a previous run: delete its checkpoints and logs and start afresh")
    p.add_argument("--diag-every", type=_nonnegative_int, metavar="N",
                   help="log collapse diagnostics (embedding std, alignment, uniformity) every N steps "
                        "(pretrain.diag_every; 0 = off)")
    p.add_argument("--probe-root", metavar="DIR",
                   help="labelled class folders (<class>/<stem>.jpg + .png masks): log global and local kNN "
                        "accuracy of the encoder before, during (--set pretrain.probe_every=N) and after pretraining")
    _add_set_arg(p, "pretrain.queue_size=16384 pretrain.local_weight=0 experiment.seed=0 (a bare FIELD=VALUE "
                    "is read as pretrain.FIELD, deprecated)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = sub.add_parser("convert", help="convert an official PFENet / QGNet checkpoint (or PFENet's backbone file)",
                       description="Rename an official PFENet or QGNet checkpoint (torch .pth with 'state_dict', "
                                   "keys 'module.*') or PFENet's backbone initialisation file (resnet50_v2.pth) "
                                   "to this library's names and write <output>.safetensors/.json (a checkpoint for "
                                   "`eval --checkpoint`) plus <output>.yaml (the config to evaluate it with).")
    p.add_argument("source", help="the official .pth file")
    p.add_argument("--kind", required=True, choices=["pfenet", "qgnet", "pfenet-backbone"],
                   help="pfenet: PFENet (QGNet without prior); qgnet: the official QGNet; "
                        "pfenet-backbone: PFENet's initmodel/resnet50_v2.pth-style backbone file")
    p.add_argument("--output", required=True, help="output stem, e.g. converted/pfenet_r50_fold0")
    p.add_argument("--bins", nargs="+", type=float, metavar="B",
                   help="PFENet's ppm_scales of the checkpoint (values <= 1 are fractions of the feature size, "
                        "as in PFENet); default: model.bins of the config")
    _add_config_args(p, required=False)
    return parser


# --------------------------------------------------------------------------- commands


def _cmd_configs(args) -> int:
    from fewshot_priors.config import available_configs

    for name in available_configs():
        print(name)
    return 0


def _dotted(overrides) -> dict:
    """``--set`` items -> ``{"section.key": value}`` (parsed, deprecated keys moved, unknown keys refused)."""
    from fewshot_priors.config import parse_overrides

    return {f"{sec}.{k}": v for sec, kv in parse_overrides(overrides).items() for k, v in kv.items()}


def _cmd_demo(args) -> int:
    from fewshot_priors.demo import run_demo

    metrics = run_demo(args.output, quick=args.quick, ablation=args.ablation or None, seed=args.seed,
                       device=args.device, progress=not args.no_progress, overrides=args.overrides)
    print(json.dumps(metrics.get("summary", metrics), indent=2))
    if metrics.get("note"):
        print(f"note: {metrics['note']}")
    return 0


def _cmd_real_images(args) -> int:
    from fewshot_priors.config import fraction_bins
    from fewshot_priors.real_images import run_real_images

    flags = {
        ("data.image_size", "pretrain.size"): args.image_size,
        ("train.epochs",): args.train_epochs,
        ("pretrain.epochs",): args.pretrain_epochs,
        ("eval.episodes",): args.episodes,
        ("model.fg_weight",): args.fg_weight,
        ("model.weights",): args.backbone_weights,
    }
    over = {key: value for keys, value in flags.items() if value is not None for key in keys}
    if args.image_size is not None:
        over["model.bins"] = fraction_bins(args.image_size)
    over.update(_dotted(args.overrides))
    metrics = run_real_images(args.root, args.output, seeds=args.seeds, folds=args.folds, num_folds=args.num_folds,
                              min_images=args.min_images, fold_seed=args.fold_seed, quick=args.quick,
                              overrides=over, variants=args.models, device=args.device,
                              progress=not args.no_progress)
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    return 0 if metrics["summary"] else 1


def _load_model_for_eval(cfg, checkpoint):
    from fewshot_priors.engine.build import build_model
    from fewshot_priors.engine.checkpoint import load_checkpoint
    from fewshot_priors.engine.runtime import Runtime

    # the weights come from the checkpoint: do not try to download / read backbone files
    device = Runtime.from_config(cfg).device  # experiment.device (cuda:<local_rank> under DDP)
    model = build_model(cfg, pretrained=False, weights=None, prior_weights=None)
    load_checkpoint(checkpoint, model=model)
    return model.to(device)


def _cmd_train(args) -> int:
    from fewshot_priors.config import load_config
    from fewshot_priors.distributed import cleanup_distributed, init_distributed
    from fewshot_priors.engine.build import build_dataset, build_model
    from fewshot_priors.engine.evaluate import evaluate
    from fewshot_priors.engine.rundir import check_run_dir
    from fewshot_priors.engine.runtime import Runtime, seed_everything
    from fewshot_priors.engine.train import train

    cfg = load_config(args.config, args.overrides)
    if args.output_dir:
        cfg["experiment"]["output_dir"] = args.output_dir
    # before the datasets are scanned: an existing run folder, or a file in the way, fails now
    check_run_dir(cfg["experiment"]["output_dir"], resume=bool(args.resume), overwrite=args.overwrite)
    info = init_distributed()
    try:
        rt = Runtime.from_config(cfg, dist=info)  # experiment.device (cuda:<local_rank> under DDP), seed
        seed_everything(rt.seed)
        model = build_model(cfg).to(rt.device)
        ddp = rt.wrap_ddp(model)
        train_set = build_dataset(cfg, "train", progress=not args.no_progress)
        val_set = build_dataset(cfg, "val", episodes=cfg["data"]["val_episodes"], seed=cfg["eval"]["seed"],
                                progress=not args.no_progress)

        def val_fn(m):
            return evaluate(m, val_set, seed=cfg["eval"]["seed"], batch_size=cfg["eval"]["batch_size"],
                            num_workers=cfg["data"]["num_workers"], progress=not args.no_progress, desc="val",
                            dist=info)

        res = train(cfg, model=model, train_set=train_set, val_fn=val_fn, resume=args.resume,
                    overwrite=args.overwrite, max_steps=args.max_steps, progress=not args.no_progress, dist=info,
                    ddp_model=ddp)
        if info.is_main:
            print(f"finished at step {res['step']}; best val mIoU {res['best_miou']:.4f}; "
                  f"checkpoints in {res['output_dir']}")
    finally:
        cleanup_distributed()
    return 0


def _cmd_eval(args) -> int:
    from fewshot_priors.config import load_config, resolve_shots
    from fewshot_priors.distributed import cleanup_distributed, init_distributed
    from fewshot_priors.engine.build import build_dataset
    from fewshot_priors.engine.evaluate import evaluate, format_results, results_json, write_results

    overrides = list(args.overrides)
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    cfg = load_config(args.config, overrides)
    if args.output:
        _check_output_file(args.output, "--output")
    info = init_distributed()
    try:
        shots = resolve_shots(cfg, "eval", args.shots)
        episodes = args.episodes if args.episodes is not None else (
            cfg["eval"]["episodes"] if cfg["eval"]["episodes"] is not None else cfg["data"]["test_episodes"])
        seed = cfg["eval"]["seed"] if args.seed is None else args.seed
        model = _load_model_for_eval(cfg, args.checkpoint)
        dataset = build_dataset(cfg, "val", shots=shots, episodes=episodes, seed=seed,
                                progress=not args.no_progress)
        res = evaluate(model, dataset, seed=seed, batch_size=cfg["eval"]["batch_size"],
                       num_workers=cfg["data"]["num_workers"], progress=not args.no_progress, dist=info)
        res["shots"] = shots
        if info.is_main:
            print(format_results(res, f"{args.config} {shots}-shot"))
            if args.output:
                extra = {"config": str(args.config), "checkpoint": str(args.checkpoint)}
                try:
                    write_results(res, args.output, **extra)
                except OSError as exc:
                    print(results_json(res, **extra))  # the evaluation is not lost
                    raise OSError(f"could not write {args.output} ({exc}); the results are printed above "
                                  "as JSON") from exc
                print(f"wrote {args.output}")
    finally:
        cleanup_distributed()
    return 0


def _cmd_visualize(args) -> int:
    import torch

    from fewshot_priors.config import load_config, resolve_shots
    from fewshot_priors.engine.build import build_dataset
    from fewshot_priors.report import episode_rows
    from fewshot_priors.viz import save_episode_figures

    cfg = load_config(args.config, args.overrides)
    _check_output_file(args.output, "--output")
    shots = resolve_shots(cfg, "eval", args.shots)
    seed = cfg["eval"]["seed"] if args.seed is None else args.seed
    model = _load_model_for_eval(cfg, args.checkpoint)
    dataset = build_dataset(cfg, "val", shots=shots, episodes=args.episodes, seed=seed)
    with torch.no_grad():
        rows = episode_rows(model, dataset, range(min(args.episodes, len(dataset))))
    path = save_episode_figures(rows, args.output, title=f"{args.config}, {shots}-shot")
    print(f"wrote {path}")
    return 0


#: Former PretrainConfig fields that are not ``pretrain`` keys: where a bare ``--set FIELD=VALUE`` goes.
_PRETRAIN_MOVED = {"output_dir": "experiment.output_dir", "seed": "experiment.seed", "device": "experiment.device"}


def _pretrain_overrides(items) -> tuple[list[str], dict]:
    """Split ``--set`` items: ``section.key=value`` stays; a bare ``FIELD=VALUE`` (the former pretrain
    syntax, deprecated) becomes ``pretrain.FIELD=VALUE`` (``tensorboard`` a call argument)."""
    import warnings

    from fewshot_priors.config import ConfigError

    out, call = [], {}
    for text in items:
        key, sep, value = text.partition("=")
        if not sep or "." in key:
            out.append(text)
            continue
        key = key.strip()
        new = _PRETRAIN_MOVED.get(key, f"pretrain.{key}")
        warnings.warn(f"--set {key}={value} is deprecated: write --set {new}={value}" if key != "tensorboard" else
                      "--set tensorboard=... is deprecated: use --no-tensorboard", DeprecationWarning, stacklevel=2)
        if key == "tensorboard":
            import yaml

            flag = yaml.safe_load(value)
            if not isinstance(flag, bool):
                raise ConfigError(f"tensorboard must be true or false, got {value!r}")
            call["tensorboard"] = flag
        elif key in ("resume", "overwrite", "progress"):
            raise ConfigError(f"--set {key}=... is not a config key: use the --{key} flag")
        else:
            out.append(f"{new}={value}")
    return out, call


def _cmd_pretrain(args) -> int:
    from fewshot_priors.config import ConfigError, load_config
    from fewshot_priors.engine.pretrain import pretrain

    overrides, call = _pretrain_overrides(args.overrides)
    flags = {"pretrain.images": args.images, "experiment.output_dir": args.output_dir,
             "pretrain.backbone": args.backbone, "pretrain.epochs": args.epochs, "pretrain.batch_size": args.batch_size,
             "pretrain.size": args.size, "pretrain.superpixel_method": args.superpixels,
             "pretrain.diag_every": args.diag_every, "pretrain.probe_root": args.probe_root}
    over = {k: v for k, v in flags.items() if v is not None}
    over.update(_dotted(overrides))
    if args.config is None and "experiment.output_dir" not in over:
        over["experiment.output_dir"] = "runs/pretrain"
    cfg = load_config(args.config, over)
    if cfg["pretrain"]["images"] is None:
        raise ConfigError("pretrain.images is not set: pass --images (a folder, a .txt list of paths)")
    res = pretrain(cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.no_progress,
                       tensorboard=call.get("tensorboard", not args.no_tensorboard))
    if res.get("prior_extractor"):
        print(f"prior extractor written to {res['prior_extractor']} (use it as model.prior_weights)")
    return 0


def _cmd_convert(args) -> int:
    from fewshot_priors.engine.convert import write_converted_checkpoint

    # keys the name table cannot map, a checkpoint of another kind: ValueError, reported by main()
    out = write_converted_checkpoint(args.source, args.output, kind=args.kind, config=args.config,
                                     overrides=args.overrides, bins=args.bins)
    for what, path in out.items():
        print(f"wrote {what}: {path}")
    return 0


_COMMANDS = {
    "configs": _cmd_configs,
    "demo": _cmd_demo,
    "real-images": _cmd_real_images,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "visualize": _cmd_visualize,
    "pretrain": _cmd_pretrain,
    "convert": _cmd_convert,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot-priors`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 1
    from fewshot_priors.engine.checkpoint import CheckpointError

    try:
        return _COMMANDS[args.command](args)
    except (*USER_ERRORS, CheckpointError) as exc:
        if os.environ.get("FEWSHOT_PRIORS_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a `train` or `pretrain` run continues from its last checkpoint with --resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
