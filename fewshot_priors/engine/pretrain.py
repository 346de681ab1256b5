"""Self-supervised pretraining of the prior extractor (GlobalLocalMoCo), exactly resumable.

Usage (one process, or ``torchrun --nproc_per_node=N`` for DDP)::

    from fewshot_priors.engine.pretrain import pretrain
    result = pretrain({"experiment": {"output_dir": "runs/prior", "seed": 0},
                       "pretrain": {"images": "data/VOC2012/JPEGImages", "backbone": "resnet50",
                                    "epochs": 200, "batch_size": 256}})
    result["prior_extractor"]   # .safetensors for QGNet(prior_weights=...)

The settings are the ``pretrain`` section of the config tree (defaults:
``fewshot_priors.config.DEFAULTS["pretrain"]``); the output folder, seed and device
are ``experiment.output_dir``, ``experiment.seed`` and ``experiment.device``.

Recipe (the paper's MoCo v2 setting, docs/how-to/pretrain.md): SGD, lr ``0.03 * batch / 256``, momentum 0.9, weight decay
1e-4, cosine schedule stepped per iteration, bf16 autocast on CUDA.

Exact resume: the batches of step ``s`` and every item's augmentation are pure
functions of ``(seed, s)`` (:class:`~fewshot_priors.engine.runtime.StepBatchSampler`),
the model's own randomness (shuffle-BN permutations) runs under
``torch.manual_seed((seed, step, rank))``, and the ``last`` checkpoint holds the
model *including the key encoder and both queues*, the optimizer, the scheduler
and the RNG state (:class:`~fewshot_priors.engine.loop.StepLoop`); so a run
resumed at step ``N`` equals an uninterrupted run bit-for-bit on CPU.

Outputs in ``experiment.output_dir``: ``last.safetensors/.json`` checkpoints,
``scalars.csv`` (step, tag, value) and TensorBoard events in ``tb/``,
``config.json`` (the ``experiment`` and ``pretrain`` sections that ran: pass it back
to :func:`pretrain` to repeat the run) and the exported ``prior_extractor.safetensors``.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..config import DEFAULTS, ConfigError, merge, validate
from ..data.unlabeled import list_images
from ..distributed import barrier, init_distributed
from ..ssl import (
    GlobalLocalMoCo,
    SuperpixelPatchSampler,
    UnlabeledImages,
    alignment,
    build_superpixel_cache,
    create_moco,
    create_patch_sampler,
    create_unlabeled_dataset,
    embedding_std,
    uniformity,
)
from ..ssl.probe import load_probe_set, probe_encoder
from .loop import StepLoop, check_finite_loss, check_resume_config, check_schedule, resume_meta
from .preflight import check_paths
from .rundir import check_run_dir, prepare_run_dir
from .runtime import Runtime, config_device, derive_seed

__all__ = ["DEFAULT_OUTPUT_DIR", "batch_diagnostics", "cosine_scheduler", "pretrain", "queue_sizes_for"]

#: ``experiment.output_dir`` of a pretraining run that sets none
DEFAULT_OUTPUT_DIR = "runs/pretrain"
#: keys of the ``experiment`` section that a ``pretrain`` section may not hold (named in the error)
_EXPERIMENT_KEYS = ("output_dir", "seed", "device")


def base_lr(p: Mapping[str, Any]) -> float:
    """``pretrain.lr``, or ``0.03 * batch_size / 256`` when it is None."""
    return float(p["lr"]) if p["lr"] is not None else 0.03 * p["batch_size"] / 256


def cosine_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Per-iteration LR factor: linear warm-up, then ``0.5 * (1 + cos(pi * t))``."""
    total = max(1, int(total_steps))
    warm = max(0, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _collate(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    out = {k: torch.stack([it[k] for it in items]) for k in ("view_a", "view_b", "labels_a", "labels_b")}
    out["index"] = torch.tensor([it["index"] for it in items])
    return out


def _unknown(keys: Sequence[str], valid: Sequence[str], where: str) -> ValueError:
    hints = []
    for k in keys:
        close = difflib.get_close_matches(k, valid, n=1)
        if k in _EXPERIMENT_KEYS:
            hints.append(f"{k!r} is experiment.{k}")
        elif close:
            hints.append(f"{k!r}: did you mean {close[0]!r}?")
    return ValueError(f"unknown pretrain option(s) {sorted(keys)} in {where}" + (f" ({'; '.join(hints)})" if hints else "")
                      + f"; valid options: {sorted(valid)}")


def _config(cfg: Any) -> dict[str, Any]:
    """Resolve and check the settings of a :func:`pretrain` call.

    Returns:
        The tree that runs: the ``experiment`` (output_dir, seed, device, ...) and
        ``pretrain`` (every key of ``DEFAULTS["pretrain"]``) sections.

    Raises:
        TypeError: ``cfg`` is not a mapping. ValueError: unknown ``pretrain`` keys.
        ConfigError (a ValueError): a value the schema rejects
        (:func:`fewshot_priors.config.validate`, the one place of the value checks) or no
        ``pretrain.images``.
    """
    defaults = DEFAULTS["pretrain"]
    if not isinstance(cfg, Mapping):
        raise TypeError(f"`cfg` must be a config tree (a mapping with a `pretrain` section), got {type(cfg).__name__}")
    stray = [k for k in cfg if k not in DEFAULTS]
    if stray:  # e.g. the 0.1.0 flat form {"images": ..., "output_dir": ...}
        raise _unknown(stray, list(DEFAULTS), "the config tree (its keys are sections)")
    section = cfg.get("pretrain") or {}
    if not isinstance(section, Mapping):
        raise TypeError(f"the `pretrain` section must be a mapping, got {type(section).__name__}")
    unknown = [k for k in section if k not in defaults]
    if unknown:
        raise _unknown(unknown, list(defaults), "the `pretrain` section")
    tree = {"experiment": {**DEFAULTS["experiment"], **(cfg.get("experiment") or {})},
            "pretrain": {**copy.deepcopy(defaults), **section}}
    p, exp = tree["pretrain"], tree["experiment"]
    exp["device"] = config_device(tree)
    exp["output_dir"] = os.fspath(DEFAULT_OUTPUT_DIR if exp.get("output_dir") is None else exp["output_dir"])
    if p["images"] is not None and not isinstance(p["images"], (str, os.PathLike)):
        p["images"] = [os.fspath(x) for x in p["images"]]
    elif p["images"] is not None:
        p["images"] = os.fspath(p["images"])
    if p["images"] is None:  # optional in a config file, required to run
        raise ConfigError("pretrain.images is required: a folder of images, a .txt list of paths, or a list of paths")
    # the value checks are the schema's (one place): the two sections that run, over the defaults
    validate(merge(DEFAULTS, {"experiment": exp, "pretrain": p}))
    return tree


def queue_sizes_for(c: Mapping[str, Any], num_images: int, total_steps: int | None = None) -> tuple[int, int]:
    """The queue sizes a run on ``num_images`` images uses (warns about stale self-negatives).

    ``c`` is the ``pretrain`` section.

    A queue longer than one epoch of keys (``queue_size > num_images - batch_size``)
    holds older keys of the very images in the batch, so each query meets copies of its
    own image among its negatives (``queue_size / num_images`` of them), and its loss
    cannot fall much below ``log(1 + copies)``; the same holds for the patch queue with
    ``num_images - batch_size`` images' worth of patches (at most ``max_patches``
    each). With ``cap_queues`` such queues are shortened to those bounds (the global
    one to a multiple of ``batch_size``), otherwise only a warning is issued.

    With ``total_steps`` it also warns when a ``queue_init="random"`` global queue needs
    more than a tenth of the run to fill: until then random vectors are most of the
    negatives, they repel nothing, and short runs drift toward collapse (use
    ``queue_init="empty"`` or a shorter queue).
    """
    spare = max(1, num_images - c["batch_size"])
    limits = {
        "queue_size": (c["queue_size"], max(c["batch_size"], spare // c["batch_size"] * c["batch_size"])),
        "local_queue_size": (c["local_queue_size"], spare * c["max_patches"]),
    }
    sizes = []
    for name, (size, limit) in limits.items():
        if size > limit:
            if c["cap_queues"]:
                warnings.warn(
                    f"`{name}`={size} is longer than one epoch of keys on {num_images} images; capped to {limit} "
                    "(cap_queues=True)",
                    stacklevel=3,
                )
                size = limit
            else:
                warnings.warn(
                    f"`{name}`={size} is longer than one epoch of keys on {num_images} images (limit {limit}): "
                    f"once it is full, each query meets ~{size / limit:.0f} stale copies of its own image among the "
                    "negatives and its loss cannot fall much below log(1 + copies); set cap_queues=True or a "
                    "smaller queue",
                    stacklevel=3,
                )
        sizes.append(int(size))
    fill_steps = math.ceil(sizes[0] / c["batch_size"])
    if total_steps is not None and c["queue_init"] == "random" and fill_steps > 0.1 * total_steps:
        warnings.warn(
            f"the random-initialised queue of {sizes[0]} keys fills only after {fill_steps} of {total_steps} steps; "
            "until then random negatives dominate the loss and push the embeddings toward collapse: "
            "set queue_init='empty' or a smaller queue_size",
            stacklevel=3,
        )
    return sizes[0], sizes[1]


#: subsample of patch embeddings used for the local uniformity (all pairs are compared)
_DIAG_MAX_ROWS = 1024


def batch_diagnostics(res: Mapping[str, torch.Tensor], queue: torch.Tensor | None = None) -> dict[str, float]:
    """Collapse diagnostics of one GlobalLocalMoCo forward's embeddings (``diag/...`` tags).

    ``std_*`` (per-dimension std of the normalised query embeddings; collapse -> 0,
    healthy ~ 1/sqrt(dim)), ``align_*`` (query vs key of the same image / patch) and
    ``unif_*`` (query embeddings), for ``global`` and ``local``; ``std_queue`` for the
    global queue when given.
    """
    out: dict[str, float] = {}
    for part in ("global", "local"):
        zq, zk = res.get(f"z_{part}_q"), res.get(f"z_{part}_k")
        if zq is None or zk is None or zq.shape[0] < 2:
            continue
        zq, zk = zq[:_DIAG_MAX_ROWS].float(), zk[:_DIAG_MAX_ROWS].float()
        out[f"std_{part}"] = float(embedding_std(zq))
        out[f"align_{part}"] = float(alignment(zq, zk))
        out[f"unif_{part}"] = float(uniformity(zq))
    if queue is not None and queue.shape[0] >= 2:
        out["std_queue"] = float(embedding_std(queue.float()))
    return out


def _data(p: Mapping[str, Any], paths: list[str], seed: int, info: Any,
          progress: bool) -> tuple[SuperpixelPatchSampler, UnlabeledImages]:
    """The superpixel sampler (cache built first when asked) and the two-view dataset of ``paths``."""
    sampler = create_patch_sampler(p, seed=seed)
    if p["cache_dir"] and p["build_cache"]:
        if info.is_main:
            build_superpixel_cache(paths, p["cache_dir"], sampler, workers=p["cache_workers"], progress=progress)
        barrier()
    return sampler, create_unlabeled_dataset(p, paths, sampler, seed=seed)


#: What a resume into another schedule means, in its error.
_CHANGED = "images, batch_size or epochs changed"


def _model(p: Mapping[str, Any], seed: int, queue_size: int, local_queue_size: int) -> GlobalLocalMoCo:
    """The GlobalLocalMoCo of the ``pretrain`` section, initialised under ``(seed, "init")``."""
    torch.manual_seed(derive_seed(seed, "init"))
    return create_moco(p, queue_size=queue_size, local_queue_size=local_queue_size,
                       seed=derive_seed(seed, "queue") % (1 << 62))


class _Monitor:
    """Collapse diagnostics (``diag/...``) and kNN probes (``probe/...``): they read the model, never change it."""

    def __init__(self, p: Mapping[str, Any], loop: StepLoop, model: GlobalLocalMoCo, probe: Any,
                 queue_sizes: tuple[int, int], world_size: int, is_main: bool):
        self.p, self.loop, self.model, self.probe = p, loop, model, probe
        self.queue_size, self.local_queue_size = queue_sizes
        self.world_size, self.is_main = world_size, is_main
        self.diagnostics: list[dict[str, float]] = []
        self.latest: dict[str, float] = {}
        self.local_keys = loop.step * p["batch_size"] * p["max_patches"]  # patch keys enqueued (upper bound)

    def record(self, at: int, values: Mapping[str, float], prefix: str) -> None:
        if not values:
            return
        tagged = {f"{prefix}/{k}": v for k, v in values.items()}
        self.latest.update(tagged)
        if self.diagnostics and self.diagnostics[-1]["step"] == at:
            self.diagnostics[-1].update(tagged)
        else:
            self.diagnostics.append({"step": at, **tagged})
        self.loop.log(at, {k: v for k, v in tagged.items() if not math.isnan(v)})

    def run_probe(self, at: int) -> None:
        if self.probe is not None:
            self.record(at, probe_encoder(self.model.encoder, self.probe, k=self.p["probe_k"],
                                          pool_mode=self.p["pool_mode"], normalize=self.model.normalize), "probe")

    def after_step(self, step: int, res: Mapping[str, torch.Tensor]) -> None:
        p = self.p
        self.local_keys += int(res["num_patches"]) * self.world_size
        if p["diag_every"] and step % p["diag_every"] == 0 and self.is_main:
            d = batch_diagnostics(res, self.model.queue.negatives() if self.model.queue is not None else None)
            # share of each queue holding real keys (not its random init): the loss is
            # only comparable across steps once both are 1
            d["queue_fill"] = min(1.0, step * p["batch_size"] / self.queue_size)
            d["local_queue_fill"] = min(1.0, self.local_keys / self.local_queue_size)
            self.record(step, d, "diag")
        if p["probe_every"] and step % p["probe_every"] == 0 and step != self.loop.stop:
            self.run_probe(step)

    def postfix(self, row: Mapping[str, float]) -> dict[str, str]:
        d = {"loss": f"{row['loss']:.3f}", "acc_g": f"{row['acc_global']:.2f}", "acc_l": f"{row['acc_local']:.2f}"}
        for tag, short in (("diag/std_global", "std_g"), ("probe/knn_global", "knn_g"), ("probe/knn_local", "knn_l")):
            if tag in self.latest:
                d[short] = f"{self.latest[tag]:.3f}"
        return d


def _schedule(p: Mapping[str, Any], n: int) -> tuple[int, int, int]:
    """``(steps per epoch, total steps, stop step)`` of ``pretrain.epochs`` over ``n`` images
    (stopping early at ``pretrain.max_steps`` when set)."""
    steps_per_epoch = n // p["batch_size"]
    if steps_per_epoch == 0:
        raise ValueError(f"{n} images are fewer than pretrain.batch_size={p['batch_size']}")
    total_steps = steps_per_epoch * p["epochs"]
    stop = total_steps if p["max_steps"] is None else min(total_steps, int(p["max_steps"]))
    return steps_per_epoch, total_steps, stop


#: The per-step values of the pretraining history.
_TAGS = ("loss", "loss_global", "loss_local", "acc_global", "acc_local", "num_patches")


def _step_fn(rt: Runtime, runner: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             last: dict[str, Any]):
    """One contrastive step (forward of both views, loss check, backward, SGD and LR steps); the
    forward's outputs are left in ``last["res"]`` for the diagnostics."""

    def step_fn(batch: dict[str, Any], step: int) -> dict[str, float]:
        with rt.autocast():
            res = runner(batch["view_a"], batch["view_b"], batch["labels_a"], batch["labels_b"])
        loss = res["loss"].float()
        check_finite_loss(loss, "pretraining loss", step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        last["res"] = res
        return {t: float(res[t].detach().float()) for t in _TAGS}

    return step_fn


def pretrain(
    cfg: Mapping[str, Any],
    *,
    resume: bool | str | os.PathLike = False,
    overwrite: bool = False,
    progress: bool = True,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Pretrain a :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` prior extractor.

    Args:
        cfg: the config tree: its ``pretrain`` section (merged over
            ``fewshot_priors.config.DEFAULTS["pretrain"]``; ``images`` is required) and
            ``experiment.output_dir`` (default ``runs/pretrain``), ``experiment.seed``,
            ``experiment.device``.
        resume: continue from ``<output_dir>/last`` (True) or from this checkpoint.
        overwrite: ``output_dir`` may hold a previous run: delete its files first
            (see :mod:`fewshot_priors.engine.rundir`).
        progress: show a progress bar (rank 0).
        tensorboard: also write TensorBoard events.

    Returns:
        dict with ``step``, ``total_steps``, ``history`` (one dict per log step with
        ``loss``, ``loss_global``, ``loss_local``, ``acc_global``, ``acc_local``,
        ``num_patches``, ``lr``, ``steps_per_s``), ``diagnostics`` (one dict per diagnostic
        step with ``step`` and the ``diag/...`` and ``probe/...`` values; empty unless
        ``diag_every`` or ``probe_root`` is set), ``output_dir``, ``last`` (checkpoint path),
        ``prior_extractor`` (exported file, rank 0) and ``backbone``.

    Raises:
        ValueError: unknown keys, bad values, fewer images than a batch, or a resume
            checkpoint of another number of total steps.
        RunFolderError: ``output_dir`` holds a run and neither ``resume`` nor ``overwrite``.
    """
    tree = _config(cfg)
    overwrite, progress, tensorboard = bool(overwrite), bool(progress), bool(tensorboard)
    p = tree["pretrain"]
    # before any work or deletion: the run folder policy, then pretrain.images, probe_root, the resume checkpoint
    check_run_dir(tree["experiment"]["output_dir"], resume=bool(resume), overwrite=overwrite, kind="pretrain")
    check_paths(tree, "pretrain", resume=resume)
    info = init_distributed()
    rt = Runtime.from_config(tree, amp=p["amp"], dist=info)
    out = prepare_run_dir(tree["experiment"]["output_dir"], resume=bool(resume), overwrite=overwrite,
                          kind="pretrain", dist=info)

    # the schedule (and a resume's fit to it) from the image list, before the superpixel cache is built
    paths = list_images(p["images"])
    n, batch_size = len(paths), p["batch_size"]
    steps_per_epoch, total_steps, stop = _schedule(p, n)
    saved_cfg = {"experiment": tree["experiment"], "pretrain": p}
    if resume:
        ck_path, ck_meta = resume_meta(out, resume)
        check_schedule(ck_path, ck_meta, total_steps, steps_per_epoch, _CHANGED)
        check_resume_config(ck_path, ck_meta, saved_cfg)
    sampler, dataset = _data(p, paths, rt.seed, info, progress)
    queue_sizes = queue_sizes_for(p, n, stop)
    model = _model(p, rt.seed, *queue_sizes).to(rt.device)
    optimizer = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=base_lr(p),
                                momentum=p["momentum"], weight_decay=p["weight_decay"])
    scheduler = cosine_scheduler(optimizer, total_steps, p["warmup_steps"])

    loop = StepLoop(rt, out, model=model, optimizer=optimizer, scheduler=scheduler, total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch, stop=stop, config=saved_cfg, prefix="pretrain",
                    log_every=p["log_every"], ckpt_every=p["ckpt_every_steps"], progress=progress,
                    tensorboard=tensorboard, meta=lambda: {"kind": "pretrain"},
                    changed=_CHANGED)
    loop.start(resume)
    # queues are identical on every rank (all-gathered keys): do not broadcast buffers each step
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        runner: torch.nn.Module = rt.wrap_ddp(model, broadcast_buffers=False) or model
    if info.is_main:
        (out / "config.json").write_text(json.dumps(saved_cfg, indent=1, default=str))
    loader = rt.loader(dataset, batch_size=batch_size, start_step=loop.step, end_step=stop, collate_fn=_collate,
                       num_workers=p["num_workers"], seeded_items=False)  # items take their seed themselves

    probe = None
    if p["probe_root"] and info.is_main:
        probe = load_probe_set(p["probe_root"], size=p["probe_size"] or p["size"], sampler=sampler,
                               max_patches=p["max_patches"], train_fraction=p["probe_train_fraction"], seed=rt.seed,
                               max_images=p["probe_max_images"])
    monitor = _Monitor(p, loop, model, probe, queue_sizes, info.world_size, info.is_main)
    if loop.step == 0:
        monitor.run_probe(0)  # the random-init encoder: the baseline every later probe is compared with

    last: dict[str, Any] = {}  # the latest forward's outputs, for the diagnostics
    step_fn = _step_fn(rt, runner, optimizer, scheduler, last)
    history = loop.run(loader, step_fn, after_step=lambda step: monitor.after_step(step, last.pop("res")),
                       postfix=monitor.postfix, on_end=lambda step: monitor.run_probe(step) if step == stop else None)
    export = None
    if info.is_main and loop.step == stop:
        export = model.export_prior_extractor(p["export_path"] or out / "prior_extractor.safetensors",
                                              encoder=p["export_encoder"])
    barrier()
    return {"step": loop.step, "total_steps": total_steps, "history": history, "diagnostics": monitor.diagnostics,
            "output_dir": str(out), "last": loop.last_path, "prior_extractor": export, "backbone": p["backbone"]}
