"""The ``fewshot-priors`` command line.

Subcommands::

    fewshot-priors demo [--output-dir demo_output] [--quick]
    fewshot-priors real-images --root my_folder_dataset [--output-dir real_images_output] [--seeds 0 1 2]
    fewshot-priors configs
    fewshot-priors train --config pascal/resnet50_473_fold0 [--output-dir runs/x] [--resume | --overwrite]
                         [--set train.lr=0.01 --set data.root=/data/VOCdevkit]
    fewshot-priors eval --config ... --checkpoint runs/x/best [--shots 1] [--output results.json]
    fewshot-priors visualize --config ... --checkpoint runs/x/best [--output fig5.png] [--episodes 4]
    fewshot-priors pretrain --images DIR [--output-dir runs/pretrain] [--config ...]
    fewshot-priors convert PFENet.pth --kind pfenet|qgnet|pfenet-backbone --output converted/x.safetensors
    fewshot-priors prepare pascal --voc VOCdevkit --sbd benchmark_RELEASE --output-dir data/pascal
    fewshot-priors prepare coco --root data/coco
    fewshot-priors predict --model runs/x --support s.jpg s.png [--support ...] --query photos/ [--output-dir DIR]
    fewshot-priors export --model runs/x --format onnx|torchscript --output qgnet.onnx [--shots 1]

One convention for outputs: ``--output-dir DIR`` for a command that writes a folder
(``demo``, ``real-images``, ``train``, ``pretrain``, ``predict``, ``prepare pascal``), ``--output FILE``
for one that writes one file (``eval``'s JSON, ``visualize``'s PNG, ``convert``'s checkpoint, whose
``.json`` sidecar and ``.yaml`` config go beside it, ``export``'s ONNX / TorchScript file).

Every command that runs a model takes ``--device``, ``--no-progress`` (hides the
progress bars and lines only; status lines and results are still printed) and
``--set SECTION.KEY=VALUE`` (one override per ``--set``, repeatable; any key of
:data:`fewshot_priors.config.DEFAULTS`); its other flags are shortcuts for config keys.
This module only parses: arguments -> one config tree -> one call. It imports torch only
when a command runs, so ``--help`` is instant.

``python -m fewshot_priors`` (or ``python -m fewshot_priors.app.cli``) works the same.
Multi-GPU: run ``train`` / ``eval`` under ``torchrun --nproc_per_node N -m fewshot_priors ...``.

Errors. Invalid arguments exit with status 2 and an argparse message under the
subcommand's usage. Errors of the user's input found later (:data:`USER_ERRORS`: bad
config values, missing or corrupt data and checkpoints, a run folder that already holds
a run, unwritable output paths, a non-finite loss) are printed as one ``error: ...``
line on stderr, also with status 2; set ``FEWSHOT_PRIORS_TRACEBACK=1`` to see the
traceback instead. Output paths are checked before the work starts; if writing results
still fails afterwards, the results are printed to stdout first so nothing computed is lost.
An unknown command is refused with the closest known one. Warnings, and the library's
messages logged at level WARNING or above (``logging``, loggers under ``fewshot_priors``), are
printed as one ``warning: ...`` line each on stderr. When the reader of stdout goes away
(``fewshot-priors configs | head``) the command stops quietly with status 141, as a Unix
tool killed by SIGPIPE does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

__all__ = ["USER_ERRORS", "build_parser", "main"]

#: Exceptions that describe a problem with the user's input or files (reported as
#: ``error: <message>`` with exit status 2). ValueError covers ConfigError and
#: BadDataError; OSError covers FileNotFoundError (DataLayoutError), FileExistsError
#: (RunFolderError), NotADirectoryError, IsADirectoryError and PermissionError;
#: CheckpointError is added in :func:`main`; FloatingPointError is a non-finite loss.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)

#: The real-images study's presets and models (``fewshot_priors.app.real_images.PRESET_CONFIGS`` /
#: ``VARIANTS``, written out here so that parsing needs no torch; a test keeps them equal).
REAL_IMAGES_PRESETS = ("full", "long", "scratch", "quick")
REAL_IMAGES_VARIANTS = ("qgnet", "qgnet_imagenet_moco_prior", "qgnet_imagenet_prior", "qgnet_random_prior",
                        "qgnet_without_prior")
#: ``fewshot_priors.engine.protocols.PROTOCOLS`` (written out for the same reason; a test keeps them equal).
EVAL_PROTOCOLS = ("pfenet", "hsnet", "multi-seed")


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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default written one way, ``(default: X)``: argparse's own default when the flag
    has one, else the help text names the config key the flag stands for (``(default: the config's
    experiment.device)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("(default:" in text or default is None or default is False or default == []
                or default is argparse.SUPPRESS or not action.option_strings and action.nargs != "?"):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _config_default(key: str) -> str:
    return f"(default: the config's {key})"


def _add_subparser(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, formatter_class=_HelpFormatter, allow_abbrev=False, **kwargs)


def _add_config_arg(p: argparse.ArgumentParser, required: bool = True,
                    help: str = "shipped config name (see `fewshot-priors configs`, e.g. pascal/resnet50_473_fold0) "
                                "or a YAML file") -> None:
    p.add_argument("--config", required=required, help=help)


def _add_set_arg(p: argparse.ArgumentParser, example: str = "train.lr=0.01") -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=f"override one config value (any key `fewshot-priors configs --keys` lists; "
                        f"repeat for more), e.g. --set {example}")


def _add_run_args(p: argparse.ArgumentParser, example: str = "train.lr=0.01", progress: str = "progress bars") -> None:
    """The flags of every command that runs a model: --device, --no-progress, --set."""
    p.add_argument("--device", help=f"cpu, cuda, cuda:N or auto {_config_default('experiment.device')}")
    p.add_argument("--no-progress", action="store_true",
                   help=f"hide the {progress} (status lines and results are still printed)")
    _add_set_arg(p, example)


def build_parser() -> argparse.ArgumentParser:
    from fewshot_priors import __version__

    parser = argparse.ArgumentParser(
        prog="fewshot-priors",
        description="Few-shot segmentation with self-supervised query priors (QGNet).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Start with `fewshot-priors demo` (the whole pipeline on a generated dataset). "
               "Outputs: --output-dir DIR for a command that writes a folder, --output FILE for one file.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_demo_parser(sub)
    _add_real_images_parser(sub)
    _add_configs_parser(sub)
    _add_train_parser(sub)
    _add_eval_parser(sub)
    _add_visualize_parser(sub)
    _add_pretrain_parser(sub)
    _add_convert_parser(sub)
    _add_deployment_parsers(sub)
    return parser


def _add_demo_parser(sub) -> None:
    """The ``demo`` command's arguments."""
    p = _add_subparser(sub, "demo",
                       help="run the whole paper pipeline on a generated dataset (minutes on a CPU)",
                       description="Generate a small PASCAL-layout dataset, pretrain the prior extractor "
                                   "(global + local MoCo), train QGNet, evaluate 1-shot and 5-shot on held-out "
                                   "classes against baselines, and write metrics.json + figures. Config: demo/full "
                                   "(demo/quick with --quick).")
    p.add_argument("--output-dir", metavar="DIR", default="demo_output", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="tiny preset (30 s to 2 min on 2 CPU cores; a smoke test of the pipeline: its numbers are "
                        "meaningless)")
    p.add_argument("--ablation", action="store_true",
                   help="also train QGNet with a random-init prior extractor and without the prior region map, "
                        "and score the Table-7 recall of the region maps (3x training; see the documentation's page "
                        "'Pretrained vs random prior extractor (Table 7)') (default: the config's study.ablation)")
    p.add_argument("--seed", type=int, help=f"seed of everything {_config_default('experiment.seed')}")
    _add_run_args(p, "train.epochs=6")


def _add_real_images_parser(sub) -> None:
    """The ``real-images`` command's arguments."""
    p = _add_subparser(sub, "real-images", help="cross-validate QGNet and baselines on your own folder dataset",
                       description="On a folder dataset (<class>/<stem>.jpg + <stem>.png masks): pretrain the prior "
                                   "extractor on all images without labels (once per seed, shared by the folds), "
                                   "split the classes with >= --min-images images into --num-folds seeded folds, "
                                   "hold each out in turn, train QGNet with each variant of the prior extractor "
                                   "(GlobalLocalMoCo from scratch or from --prior-weights, --prior-weights alone, "
                                   "random init, none) on the other classes, evaluate 1-shot and 5-shot against "
                                   "the guided-map and all-foreground baselines, score the region maps "
                                   "(ROC AUC, AP, Table-7 recall), and write metrics.json, results.md (mean, std, "
                                   "min-max over seeds) and Fig. 5 panels. Config: real_images/<--preset>.")
    p.add_argument("--root", required=True, help="folder dataset root (one sub-folder per class)")
    p.add_argument("--output-dir", metavar="DIR", default="real_images_output", help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--folds", type=int, nargs="+", help="run only these folds (default: all)")
    p.add_argument("--num-folds", type=_positive_int, default=4, help="class folds")
    p.add_argument("--min-images", type=_positive_int, default=5, help="classes with fewer images are never held out")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the class-to-fold split")
    p.add_argument("--preset", choices=REAL_IMAGES_PRESETS, default="full",
                   help="full: the recipe with ImageNet weights (pass --backbone-weights / --prior-weights), the "
                        "ImageNet prior against no prior at 224 px, about 37 min for 3 seeds on 2 CPU cores; "
                        "long: the same with every "
                        "prior variant (hours on a CPU); scratch: no ImageNet weights (collapses on real photos); "
                        "quick: a minute or two, numbers meaningless")
    p.add_argument("--quick", action="store_true", help="the quick preset (= --preset quick)")
    p.add_argument("--image-size", type=_positive_int,
                   help="input size: data.image_size and pretrain.size (the FEM bins are fractions of the "
                        "feature size, so they follow) (default: the config's data.image_size)")
    p.add_argument("--train-epochs", type=_positive_int,
                   help=f"QGNet training epochs {_config_default('train.epochs')}")
    p.add_argument("--pretrain-epochs", type=_positive_int,
                   help=f"prior-extractor pretraining epochs {_config_default('pretrain.epochs')}")
    p.add_argument("--episodes", type=_positive_int,
                   help=f"test episodes per fold and K {_config_default('eval.episodes')}")
    p.add_argument("--fg-weight", type=float, help="a fixed foreground weight of the CE loss (model.fg_weight; it "
                   "replaces the weight the full / long presets set from the data, train.fg_balance)")
    p.add_argument("--backbone", help="timm name of the frozen supervised backbone (model.backbone) "
                                     "(default: the config's)")
    p.add_argument("--backbone-weights",
                   help="local weights file of the frozen supervised backbone, e.g. ImageNet (model.weights) "
                        "(default: the config's; null: the seed's self-supervised encoder)")
    p.add_argument("--prior-backbone", help="timm name of the prior extractor (pretrain.backbone) "
                                           "(default: the config's)")
    p.add_argument("--prior-weights",
                   help="initial weights of the prior extractor, e.g. ImageNet (pretrain.weights): the "
                        "qgnet_imagenet_prior and qgnet_imagenet_moco_prior variants run only with it")
    p.add_argument("--models", nargs="+", choices=REAL_IMAGES_VARIANTS,
                   help="models to train (default: the config's study.variants, without the ImageNet-prior "
                        "ones when there are no --prior-weights)")
    _add_run_args(p, "train.lr=0.02", progress="progress lines (one per unit, with the time left)")


def _add_configs_parser(sub) -> None:
    """The ``configs`` command's arguments."""
    p = _add_subparser(sub, "configs", help="list the shipped configs (the paper's table rows and the presets)",
                       description="List the shipped configs, one name per line, for --config: the paper's table "
                                   "rows (<dataset>/<backbone>_<size>_fold<k>), the demo presets (demo/full, "
                                   "demo/quick) and the real-images presets. An alias is listed with the config it "
                                   "names (`demo -> demo/full`).")
    p.add_argument("--keys", action="store_true",
                   help="list every config key instead: its default, what it does, its choices or range")


def _add_train_parser(sub) -> None:
    """The ``train`` command's arguments."""
    p = _add_subparser(sub, "train", help="train QGNet from a config",
                       description="Episodic training (SGD, poly LR, the paper's augmentation) with TensorBoard + "
                                   "CSV logs, periodic validation and best/last checkpoints in --output-dir.")
    _add_config_arg(p)
    p.add_argument("--output-dir", metavar="DIR", help=f"run folder {_config_default('experiment.output_dir')}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                      help="resume exactly from CHECKPOINT (without one: <output-dir>/last)")
    mode.add_argument("--overwrite", action="store_true",
                      help="the run folder holds a previous run: delete its checkpoints and logs and start afresh "
                           "(without --resume or --overwrite such a folder is refused)")
    p.add_argument("--max-steps", type=_positive_int, help="stop after this many optimisation steps "
                                                           f"{_config_default('train.max_steps')}")
    _add_run_args(p, "data.root=/data/VOCdevkit")


def _add_eval_parser(sub) -> None:
    """The ``eval`` command's arguments."""
    p = _add_subparser(sub, "eval", help="evaluate a checkpoint on the held-out classes",
                       description="Fixed-seed few-shot evaluation scored at the original label resolution; "
                                   "prints and (with --output) writes mIoU, FB-IoU, per-class IoU with the class "
                                   "names, the seed and the episode count.")
    _add_config_arg(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `train` or `convert` "
                                                       "(stem or .safetensors)")
    p.add_argument("--shots", type=_positive_int, help="K (default: the config's eval.shots, else data.shots)")
    p.add_argument("--episodes", type=_positive_int,
                   help="number of test episodes (default: the config's eval.episodes, else data.test_episodes)")
    p.add_argument("--seed", type=int, help=f"episode seed {_config_default('eval.seed')}")
    p.add_argument("--protocol", choices=EVAL_PROTOCOLS,
                   help="a published protocol instead of --episodes / --seed: pfenet (5000 PASCAL / 20000 COCO "
                        "episodes, seed 321), hsnet (1000 episodes, seed 0), multi-seed (1000 episodes x seeds "
                        "321-325, mean and std); every result records the protocol it matches (custom otherwise)")
    p.add_argument("--num-workers", type=_nonnegative_int, help=f"data loader workers "
                                                                 f"{_config_default('data.num_workers')}")
    p.add_argument("--output", metavar="FILE", help="also write the results as JSON to FILE (checked before the "
                                                    "evaluation)")
    _add_run_args(p, "data.root=/data/VOCdevkit")


def _add_visualize_parser(sub) -> None:
    """The ``visualize`` command's arguments."""
    p = _add_subparser(sub, "visualize", help="draw Fig. 5-style panels for test episodes",
                       description="Query, support with mask, guided region map, prior region map, prediction "
                                   "and ground truth for a few test episodes, as one PNG.")
    _add_config_arg(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `train` or `convert`")
    p.add_argument("--output", metavar="FILE", default="fig5.png", help="output PNG")
    p.add_argument("--episodes", type=_positive_int, default=4, help="number of episodes (rows)")
    p.add_argument("--shots", type=_positive_int, help="K (default: the config's eval.shots, else data.shots)")
    p.add_argument("--seed", type=int, help=f"episode seed {_config_default('eval.seed')}")
    _add_run_args(p, "data.root=/data/VOCdevkit")


def _add_pretrain_parser(sub) -> None:
    """The ``pretrain`` command's arguments."""
    p = _add_subparser(sub, "pretrain", help="self-supervised prior-extractor pretraining (global + local MoCo)",
                       description="Pretrain GlobalLocalMoCo (global + superpixel-local InfoNCE) on unlabelled "
                                   "images and export the encoder as <output-dir>/prior_extractor.safetensors "
                                   "(pass it to training as model.prior_weights).")
    _add_config_arg(p, required=False, help="config whose pretrain and experiment sections are used (shipped name "
                                            "or YAML file) (default: the package defaults)")
    p.add_argument("--images", help="image folder or .txt list of paths (required unless the config sets "
                                    "pretrain.images)")
    p.add_argument("--output-dir", metavar="DIR", help="run folder (default: the config's experiment.output_dir; runs/pretrain "
                                        "without --config)")
    p.add_argument("--backbone", help=f"timm encoder name {_config_default('pretrain.backbone')}")
    p.add_argument("--epochs", type=_positive_int, help=f"pretraining epochs (paper: 1000 PASCAL, 200 COCO) "
                                                        f"{_config_default('pretrain.epochs')}")
    p.add_argument("--batch-size", type=_positive_int,
                   help=f"global batch size; lr = 0.03 x batch / 256 {_config_default('pretrain.batch_size')}")
    p.add_argument("--size", type=_positive_int, help=f"crop size of the two views {_config_default('pretrain.size')}")
    p.add_argument("--superpixels", choices=["slic", "felzenszwalb"],
                   help=f"patch method {_config_default('pretrain.superpixel_method')}")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="resume exactly from <output-dir>/last")
    mode.add_argument("--overwrite", action="store_true",
                      help="the run folder holds a previous run: delete its checkpoints and logs and start afresh")
    p.add_argument("--diag-every", type=_nonnegative_int, metavar="N",
                   help="log collapse diagnostics (embedding std, alignment, uniformity) every N steps, 0 = off "
                        f"{_config_default('pretrain.diag_every')}")
    p.add_argument("--probe-root", metavar="DIR",
                   help="labelled class folders (<class>/<stem>.jpg + .png masks): log global and local kNN "
                        "accuracy of the encoder before, during (--set pretrain.probe_every=N) and after "
                        f"pretraining {_config_default('pretrain.probe_root')}")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    _add_run_args(p, "pretrain.queue_size=16384")


def _add_convert_parser(sub) -> None:
    """The ``convert`` command's arguments."""
    p = _add_subparser(sub, "convert",
                       help="convert an official PFENet / QGNet checkpoint (or PFENet's backbone file)",
                       description="Rename an official PFENet or QGNet checkpoint (torch .pth with 'state_dict', "
                                   "keys 'module.*') or PFENet's backbone initialisation file (resnet50_v2.pth) "
                                   "to this library's names and write --output X.safetensors with its X.json "
                                   "sidecar (a checkpoint for `eval --checkpoint`) and X.yaml (the config to "
                                   "evaluate it with).")
    p.add_argument("source", help="the official .pth file")
    p.add_argument("--kind", required=True, choices=["pfenet", "qgnet", "pfenet-backbone"],
                   help="pfenet: PFENet (QGNet without prior); qgnet: the official QGNet; "
                        "pfenet-backbone: PFENet's initmodel/resnet50_v2.pth-style backbone file")
    p.add_argument("--output", metavar="FILE", required=True,
                   help="the checkpoint to write, e.g. converted/pfenet_r50_fold0.safetensors (its .json and "
                        ".yaml are written beside it)")
    p.add_argument("--bins", type=float, action="append", metavar="B",
                   help="one of PFENet's ppm_scales of the checkpoint, largest first; repeat for each (values "
                        "<= 1 are fractions of the feature size, as in PFENet) (default: the config's model.bins)")
    _add_config_arg(p, required=False, help="base config for the data / train / eval sections (shipped name or "
                                            "YAML file) (default: the package defaults)")
    _add_set_arg(p, "data.fold=2")


def _add_model_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH",
                   help="the trained model: a `train` run folder (config.yaml + best / last checkpoint), a "
                        "save_pretrained folder (config.json + model.safetensors) or a checkpoint "
                        "(X.safetensors + X.json, its config X.yaml or the folder's config.yaml)")
    _add_config_arg(p, required=False, help="the config of a checkpoint without X.yaml or config.yaml beside it "
                                            "(shipped name or YAML file)")
    p.add_argument("--image-size", type=_int_at_least(8),
                   help=f"the model's input size {_config_default('data.image_size')}; 473 for a "
                        "save_pretrained folder")


def _add_deployment_parsers(sub) -> None:
    """``prepare``, ``predict`` and ``export``: from the downloads to a model on your own photos."""
    p = _add_subparser(sub, "prepare", help="build PASCAL-5i / COCO-20i from the official downloads",
                       description="pascal: SegmentationClassAug (grey PNGs 0-20, 255 boundary) and the standard "
                                   "train_aug.txt (SBD train + val + VOC train, minus VOC val) / val.txt from the "
                                   "VOC 2012 and SBD downloads, under --output-dir/VOC2012 (data.root = "
                                   "--output-dir). coco: the 80-class masks rasterised once from the instance "
                                   "JSON into annotations/{train,val}2014/*.png (data.annotation_format=png). "
                                   "Idempotent and resumable: labels already written are kept.")
    prep = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    q = prep.add_parser("pascal", formatter_class=_HelpFormatter, allow_abbrev=False,
                        help="SegmentationClassAug + train_aug.txt / val.txt from VOC 2012 and SBD",
                        description="Write --output-dir/VOC2012/SegmentationClassAug/*.png, "
                                    "ImageSets/Segmentation/train_aug.txt and val.txt, and link JPEGImages.")
    q.add_argument("--voc", required=True, metavar="DIR", help="the VOC 2012 download (VOCdevkit/VOC2012)")
    q.add_argument("--sbd", required=True, metavar="DIR", help="the SBD download (benchmark_RELEASE/dataset)")
    q.add_argument("--output-dir", metavar="DIR", required=True,
                   help="the dataset root to write (use it as data.root); may be the folder holding the VOC "
                        "download's VOC2012")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    q = prep.add_parser("coco", formatter_class=_HelpFormatter, allow_abbrev=False,
                        help="annotations/{train,val}2014/*.png from the instance JSON",
                        description="Rasterise annotations/instances_{train,val}2014.json once (needs "
                                    "pycocotools) into the PNG masks CocoFewShot reads with "
                                    "data.annotation_format=png.")
    q.add_argument("--root", required=True, metavar="DIR", help="the COCO 2014 root (train2014/, val2014/, "
                                                                 "annotations/)")
    q.add_argument("--splits", nargs="+", choices=["train", "val"], default=["train", "val"], help="splits")
    q.add_argument("--crowd", choices=["ignore", "include", "background"], default="ignore",
                   help="crowd regions: 255, their class, or background (data.crowd)")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    p = _add_subparser(sub, "predict", help="segment your own images with a trained model and K annotated supports",
                       description="For each query image: a mask PNG (0/255) at its original size, an overlay PNG "
                                   "and, with --maps, the guided and prior region maps; predictions.json lists "
                                   "them. Support masks: 0/1 or 0/255 images, or label maps (palette PNGs) with "
                                   "--class-id.")
    _add_model_source_args(p)
    p.add_argument("--support", nargs=2, action="append", required=True, metavar=("IMAGE", "MASK"),
                   help="a support image and its mask; repeat for K shots")
    p.add_argument("--query", nargs="+", action="extend", required=True, metavar="PATH",
                   help="query images, or folders of them")
    p.add_argument("--class-id", type=_int_at_least(1), help="the class of the support masks when they are label "
                                                             "maps (e.g. 15 for a VOC person)")
    p.add_argument("--maps", action="store_true", help="also write the guided and prior region maps")
    p.add_argument("--output-dir", metavar="DIR", default="predictions", help="output folder")
    _add_run_args(p, "model.region_map_backend=chunked", progress="progress bar")

    p = _add_subparser(sub, "export", help="export a trained model to ONNX or TorchScript for inference",
                       description="The inference path with fixed shapes (query 1x3xSxS, supports 1xKx3xSxS, "
                                   "masks 1xKxSxS -> logits 1x2xSxS), checked against the PyTorch model on "
                                   "random inputs (ONNX with onnxruntime, when installed).")
    _add_model_source_args(p)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="file format")
    p.add_argument("--shots", type=_positive_int, default=1, help="K, the supports the graph takes")
    p.add_argument("--output", metavar="FILE", required=True, help="the file to write, e.g. qgnet.onnx")
    _add_run_args(p, "model.eps=1e-6", progress="status lines")


# --------------------------------------------------------------------------- commands


def _cmd_configs(args) -> int:
    import yaml

    from fewshot_priors.config import available_configs, describe_keys, resolve_config_path

    if args.keys:
        print("\n".join(describe_keys()))
        return 0

    for name in available_configs():
        content = yaml.safe_load(resolve_config_path(name).read_text(encoding="utf-8")) or {}
        base = content.get("_base_") if isinstance(content, dict) and set(content) == {"_base_"} else None
        # an alias file holds nothing but its _base_: list it with the config it names
        print(f"{name} -> {Path(base).with_suffix('').as_posix()} (alias)" if isinstance(base, str) else name)
    return 0


def _dotted(overrides) -> dict:
    """``--set`` items -> ``{"section.key": value}`` (parsed, unknown keys refused)."""
    from fewshot_priors.config import parse_overrides

    return {f"{sec}.{k}": v for sec, kv in parse_overrides(overrides).items() for k, v in kv.items()}


def _run_overrides(args, flags: dict | None = None) -> dict:
    """A command's flags (``{"section.key": value}``, None = not given), ``--device``, then ``--set`` (last wins)."""
    over = {k: v for k, v in (flags or {}).items() if v is not None}
    if getattr(args, "device", None) is not None:
        over["experiment.device"] = args.device
    over.update(_dotted(args.overrides))
    return over


def _cmd_demo(args) -> int:
    from fewshot_priors.app.demo import run_demo

    # the demo prints its status lines and results itself; metrics.json holds them as JSON
    run_demo(args.output_dir, quick=args.quick, ablation=args.ablation or None, seed=args.seed,
             device=args.device, progress=not args.no_progress, overrides=args.overrides)
    return 0


def _cmd_real_images(args) -> int:
    from fewshot_priors.app.real_images import run_real_images

    # no model.bins here: the shipped presets' bins are fractions of the feature size, resolved by
    # FEMDecoder at the backbone's real feature size, so --image-size needs nothing else
    flags = {"data.image_size": args.image_size, "pretrain.size": args.image_size, "train.epochs": args.train_epochs,
             "pretrain.epochs": args.pretrain_epochs, "eval.episodes": args.episodes,
             "model.fg_weight": args.fg_weight, "model.weights": args.backbone_weights,
             "model.backbone": args.backbone, "pretrain.backbone": args.prior_backbone,
             "pretrain.weights": args.prior_weights}
    if args.quick and args.preset not in ("full", "quick"):
        raise ValueError(f"--quick and --preset {args.preset} disagree: pass one of them")
    over = _run_overrides(args, flags)
    if args.fg_weight is not None and "train.fg_balance" not in over:
        over["train.fg_balance"] = None  # a fixed weight replaces the presets' weight from the data
    metrics = run_real_images(args.root, args.output_dir, seeds=args.seeds, folds=args.folds, num_folds=args.num_folds,
                              min_images=args.min_images, fold_seed=args.fold_seed,
                              preset="quick" if args.quick else args.preset,
                              overrides=over, variants=args.models,
                              progress=not args.no_progress)
    print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
    return 0 if metrics["summary"] else 1


def _load_model_for_eval(cfg, checkpoint):
    from fewshot_priors.engine.predict import model_from_checkpoint
    from fewshot_priors.engine.runtime import Runtime

    # the weights come from the checkpoint: no backbone file is read, nothing is downloaded
    return model_from_checkpoint(cfg, checkpoint, Runtime.from_config(cfg).device)  # cuda:<local_rank> under DDP


def _cmd_train(args) -> int:
    from fewshot_priors.config import load_config
    from fewshot_priors.distributed import cleanup_distributed, init_distributed
    from fewshot_priors.engine.build import build_dataset, build_model, build_validation_set
    from fewshot_priors.engine.evaluate import evaluate
    from fewshot_priors.engine.preflight import check_run_inputs
    from fewshot_priors.engine.runtime import Runtime, seed_everything
    from fewshot_priors.engine.train import train

    cfg = load_config(args.config, _run_overrides(args, {"experiment.output_dir": args.output_dir}))
    # before the datasets are scanned or a model is built: the run folder, every path, the resume
    # checkpoint and its settings, an impossible download fail now
    check_run_inputs(cfg, "train", resume=args.resume, overwrite=args.overwrite)
    info = init_distributed()
    try:
        rt = Runtime.from_config(cfg, dist=info)  # experiment.device (cuda:<local_rank> under DDP), seed
        seed_everything(rt.seed)
        model = build_model(cfg).to(rt.device)
        ddp = rt.wrap_ddp(model)
        train_set = build_dataset(cfg, "train", progress=not args.no_progress)
        # train.val_split: the test classes (the paper's protocol) or classes held back from training
        val_set = build_validation_set(cfg, train_set, progress=not args.no_progress)

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


def _class_names(dataset) -> dict[str, str]:
    """``{"<id>": name}`` of a dataset's classes (``{}`` for a dataset without names)."""
    return {str(c): str(n) for c, n in dict(getattr(dataset, "class_names", None) or {}).items()}


def _cmd_eval(args) -> int:
    from fewshot_priors.config import load_config, resolve_shots
    from fewshot_priors.distributed import cleanup_distributed, init_distributed
    from fewshot_priors.engine.build import build_dataset
    from fewshot_priors.engine.evaluate import evaluate, format_results, results_json, write_results
    from fewshot_priors.engine.protocols import evaluate_protocol

    cfg = load_config(args.config, _run_overrides(args, {"data.num_workers": args.num_workers}))
    if args.protocol is not None and (args.episodes is not None or args.seed is not None):
        raise ValueError(f"--protocol {args.protocol} sets the episodes and seeds: drop --episodes / --seed")
    if args.output:
        _check_output_file(args.output, "--output")
    info = init_distributed()
    try:
        shots = resolve_shots(cfg, "eval", args.shots)
        episodes = args.episodes if args.episodes is not None else (
            cfg["eval"]["episodes"] if cfg["eval"]["episodes"] is not None else cfg["data"]["test_episodes"])
        seed = cfg["eval"]["seed"] if args.seed is None else args.seed
        model = _load_model_for_eval(cfg, args.checkpoint)
        if cfg["eval"]["support_check"]:  # K >= 2: the guided map answers where it did better on the supports
            from fewshot_priors.engine.support_check import SupportCheck

            model = SupportCheck(model)
        datasets = []

        def run(episodes: int, seed: int) -> dict:
            datasets.append(build_dataset(cfg, "val", shots=shots, episodes=episodes, seed=seed,
                                          progress=not args.no_progress))
            return evaluate(model, datasets[-1], seed=seed, batch_size=cfg["eval"]["batch_size"],
                            num_workers=cfg["data"]["num_workers"], progress=not args.no_progress, dist=info)

        res = (run(episodes, seed) if args.protocol is None
               else evaluate_protocol(args.protocol, cfg["data"]["dataset"], run))
        res["shots"] = shots
        names = {c: n for c, n in _class_names(datasets[0]).items() if c in res.get("per_class_iou", {})}
        if info.is_main:
            print(format_results(res, f"{args.config} {shots}-shot", class_names=names))
            if args.output:
                extra = {"class_names": names, "config": str(args.config), "checkpoint": str(args.checkpoint)}
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

    from fewshot_priors.app.report import episode_rows
    from fewshot_priors.config import load_config, resolve_shots
    from fewshot_priors.engine.build import build_dataset
    from fewshot_priors.viz import save_episode_figures

    cfg = load_config(args.config, _run_overrides(args))
    _check_output_file(args.output, "--output")
    shots = resolve_shots(cfg, "eval", args.shots)
    seed = cfg["eval"]["seed"] if args.seed is None else args.seed
    model = _load_model_for_eval(cfg, args.checkpoint)
    dataset = build_dataset(cfg, "val", shots=shots, episodes=args.episodes, seed=seed,
                            progress=not args.no_progress)
    with torch.no_grad():
        rows = episode_rows(model, dataset, range(min(args.episodes, len(dataset))))
    path = save_episode_figures(rows, args.output, title=f"{args.config}, {shots}-shot")
    print(f"wrote {path}")
    return 0


def _cmd_pretrain(args) -> int:
    from fewshot_priors.config import ConfigError, load_config
    from fewshot_priors.engine.pretrain import pretrain

    flags = {"pretrain.images": args.images, "experiment.output_dir": args.output_dir,
             "pretrain.backbone": args.backbone, "pretrain.epochs": args.epochs, "pretrain.batch_size": args.batch_size,
             "pretrain.size": args.size, "pretrain.superpixel_method": args.superpixels,
             "pretrain.diag_every": args.diag_every, "pretrain.probe_root": args.probe_root}
    over = _run_overrides(args, flags)
    if args.config is None and "experiment.output_dir" not in over:
        over["experiment.output_dir"] = "runs/pretrain"
    cfg = load_config(args.config, over)
    if cfg["pretrain"]["images"] is None:
        raise ConfigError("pretrain.images is not set: pass --images (a folder, a .txt list of paths)")
    res = pretrain(cfg, resume=bool(args.resume), overwrite=args.overwrite, progress=not args.no_progress,
                   tensorboard=not args.no_tensorboard)
    if res.get("prior_extractor"):
        print(f"prior extractor written to {res['prior_extractor']} (use it as model.prior_weights)")
    return 0


def _cmd_convert(args) -> int:
    from fewshot_priors.engine.convert import write_converted_checkpoint

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ValueError(f"--output {out} must name the checkpoint file to write, e.g. "
                         f"{out.with_suffix('') if out.suffix in ('.json', '.yaml') else out}.safetensors")
    _check_output_file(out, "--output")
    # keys the name table cannot map, a checkpoint of another kind: ValueError, reported by main()
    written = write_converted_checkpoint(args.source, out, kind=args.kind, config=args.config,
                                         overrides=args.overrides, bins=args.bins)
    for what, path in written.items():
        print(f"wrote {what}: {path}")
    return 0


def _cmd_prepare(args) -> int:
    if args.dataset == "pascal":
        from fewshot_priors.data.prepare import prepare_pascal

        res = prepare_pascal(args.voc, args.sbd, args.output_dir, progress=not args.no_progress)
        print(f"{res['labels']} labels in {Path(res['root']) / 'VOC2012' / 'SegmentationClassAug'} "
              f"({res['written']} written, {res['kept']} already there); train_aug.txt {res['train_aug']} ids, "
              f"val.txt {res['val']} ids; use --set data.root={res['root']}")
    else:
        from fewshot_priors.data.prepare import prepare_coco

        res = prepare_coco(args.root, splits=args.splits, crowd=args.crowd, progress=not args.no_progress)
        for split, r in res.items():
            print(f"{split}2014: {r['labels']} masks ({r['written']} written, {r['kept']} already there)")
        print("use --set data.annotation_format=png")
    return 0


def _cmd_predict(args) -> int:
    from fewshot_priors.app.predict import run_predict

    res = run_predict(args.model, [tuple(s) for s in args.support], args.query, args.output_dir,
                      class_id=args.class_id, config=args.config, overrides=args.overrides,
                      image_size=args.image_size, device=args.device, maps=args.maps, progress=not args.no_progress)
    check = res["support_check"]
    if check is not None:
        answer = "the guided map answers" if check["answer"] == "guided_map" else "the model answers"
        print(f"support check (each support segmented from the others): model IoU {100 * check['model_iou']:.1f} %, "
              f"guided map >= 0.5 {100 * check['guided_map_iou']:.1f} %: {answer}")
    print(f"wrote {len(res['queries'])} mask(s) and overlay(s) to {args.output_dir} (predictions.json lists them)")
    return 0


def _cmd_export(args) -> int:
    from fewshot_priors.engine.export import export_model
    from fewshot_priors.engine.predict import DEFAULT_IMAGE_SIZE, load_trained_model

    _check_output_file(args.output, "--output")
    model, cfg = load_trained_model(args.model, config=args.config, overrides=args.overrides, device=args.device)
    size = args.image_size or (int(cfg["data"]["image_size"]) if cfg is not None else DEFAULT_IMAGE_SIZE)
    res = export_model(model, args.output, fmt=args.format, image_size=size, shots=args.shots)
    check = ("not checked (install onnxruntime)" if res["max_abs_diff"] is None
             else f"largest logit difference to PyTorch {res['max_abs_diff']:.2e}")
    print(f"wrote {res['path']} ({args.format}, {args.shots} shot(s), {size} x {size}); {check}")
    return 0


_COMMANDS = {
    "prepare": _cmd_prepare,
    "predict": _cmd_predict,
    "export": _cmd_export,
    "configs": _cmd_configs,
    "demo": _cmd_demo,
    "real-images": _cmd_real_images,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "visualize": _cmd_visualize,
    "pretrain": _cmd_pretrain,
    "convert": _cmd_convert,
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _check_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """An unknown command is refused with the closest known one (argparse itself suggests nothing)."""
    import difflib

    commands = _subcommands(parser)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is not None and first not in commands:
        close = difflib.get_close_matches(first, list(commands), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f" (choose from {', '.join(commands)})"
        parser.error(f"unknown command {first!r}{hint}")


def _one_line(text: str, limit: int = 600) -> str:
    """A warning as one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


class _WarningLines(logging.Handler):
    """The library's log records of level WARNING and above as ``warning: ...`` lines on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {_one_line(record.getMessage())}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _cli_warnings():
    """Warnings are shown as one ``warning: ...`` line each, without the source line Python echoes;
    so are the library's logged warnings (logger ``fewshot_priors``)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {_one_line(message)}", file=sys.stderr if file is None else file, flush=True)

    saved = warnings.showwarning
    warnings.showwarning = show
    handler, logger = _WarningLines(), logging.getLogger("fewshot_priors")
    logger.addHandler(handler)
    try:
        yield
    finally:
        warnings.showwarning = saved
        logger.removeHandler(handler)


def _stdout_closed() -> int:
    """The reader of stdout went away (``fewshot-priors configs | head``): stop quietly, as a Unix
    tool killed by SIGPIPE does (status 141), instead of an error about the broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    return 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fewshot-priors`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _check_command(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would report them under the top-level usage: show the subcommand's
        _subcommands(parser).get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 1
    from fewshot_priors.engine.checkpoint import CheckpointError

    try:
        with _cli_warnings():
            return _COMMANDS[args.command](args)
    except BrokenPipeError:
        return _stdout_closed()
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
