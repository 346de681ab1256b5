"""Self-supervised pretraining of the prior extractor (GlobalLocalMoCo), exactly resumable.

Usage (one process, or ``torchrun --nproc_per_node=N`` for DDP)::

    from fewshot_priors.engine.pretrain import pretrain
    result = pretrain(images="data/VOC2012/JPEGImages", output_dir="runs/prior",
                      backbone="resnet50", epochs=200, batch_size=256)
    result["prior_extractor"]   # .safetensors for QGNet(prior_weights=...)

Recipe (REFERENCE §1): SGD, lr ``0.03 * batch / 256``, momentum 0.9, weight decay
1e-4, cosine schedule stepped per iteration, bf16 autocast on CUDA.

Exact resume: the batches of step ``s`` and every item's augmentation are pure
functions of ``(seed, s)`` (:class:`~fewshot_priors.engine.train.StepBatchSampler`),
the model's own randomness (shuffle-BN permutations) runs under
``torch.manual_seed((seed, step, rank))``, and the ``last`` checkpoint holds the
model *including the key encoder and both queues*, the optimizer and the
scheduler; so a run resumed at step ``N`` equals an uninterrupted run
bit-for-bit on CPU.

Outputs in ``output_dir``: ``last.safetensors/.json`` checkpoints, ``scalars.csv``
(step, tag, value) and TensorBoard events in ``tb/``, ``config.json`` and the
exported ``prior_extractor.safetensors``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .._progress import progress_bar
from ..augment import TwoViewAugment
from ..data.unlabeled import UnlabeledImages, list_images
from ..data.workers import resolve_num_workers
from ..models.backbone import MOCO_ENCODERS
from ..models.moco import GlobalLocalMoCo
from ..ssl_diagnostics import alignment, embedding_std, uniformity
from ..superpixels import SuperpixelPatchSampler, build_superpixel_cache
from .checkpoint import checkpoint_paths, load_checkpoint, save_checkpoint
from .distributed import barrier, init_distributed
from .logging import RunLogger
from .probe import load_probe_set, probe_encoder
from .rundir import prepare_run_dir
from .train import StepBatchSampler, derive_seed, resolve_device

__all__ = ["PretrainConfig", "batch_diagnostics", "cosine_scheduler", "pretrain", "queue_sizes_for"]


@dataclass
class PretrainConfig:
    """All settings of :func:`pretrain` (defaults = the paper's recipe at 224 px).

    Data: ``images`` is a folder, a ``.txt`` list or a list of paths.
    Superpixels: ``superpixel_method`` ``"slic"`` | ``"felzenszwalb"`` (Table 5) and
    their parameters; ``cache_dir`` is used when it holds a matching cache, and
    built first when ``build_cache`` is true. Ablations (Table 6): ``global_weight=0``
    (local only) or ``local_weight=0`` (global only).

    Diagnostics (off by default; see :mod:`fewshot_priors.ssl_diagnostics` and the
    pretraining how-to): ``diag_every=N`` logs the per-dimension std, alignment and
    uniformity of the batch's embeddings every ``N`` steps (``diag/...``);
    ``probe_root`` (a labelled class-folder tree, see
    :mod:`fewshot_priors.engine.probe`) adds global and local kNN accuracies of the
    encoder (``probe/...``) before the first step (= random init), every
    ``probe_every`` steps and after the last one.
    """

    images: str | list[str] | None = None
    output_dir: str = "runs/pretrain"
    # model
    backbone: str = "resnet50"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"output_stride": 8}
    dim: int = 128
    queue_size: int = 65536
    local_queue_size: int = 65536
    queue_init: str = "random"  # "random" (MoCo) or "empty" (only real keys are negatives)
    cap_queues: bool = False  # shorten queues longer than one epoch of keys (see queue_sizes_for)
    moco_momentum: float = 0.999
    temperature: float = 0.2
    global_weight: float = 1.0
    local_weight: float = 1.0
    mlp_hidden: int | None = None
    head_norm: str = "none"
    max_patches: int = 32
    pool_mode: str = "area"
    shuffle_bn: str = "auto"
    bn_splits: int = 2
    # superpixels + views
    superpixel_method: str = "slic"
    superpixel_backend: str = "auto"
    n_segments: int = 64
    compactness: float = 10.0
    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 50
    min_area: int = 0
    view_min_area: int = 4
    size: int = 224
    cache_dir: str | None = None
    build_cache: bool = False
    cache_workers: int = 0
    # optimisation
    batch_size: int = 256
    epochs: int = 200
    max_steps: int | None = None
    lr: float | None = None  # default 0.03 * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    amp: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    num_workers: int | str = "auto"  # "auto": min(cores, 8); superpixels + views are made in the workers
    log_every: int = 10
    # collapse diagnostics (fewshot_priors.ssl_diagnostics), logged under diag/ and probe/
    diag_every: int = 0  # batch embedding std / alignment / uniformity every N steps (0 = off)
    probe_root: str | None = None  # labelled folder (class/<stem>.jpg + .png masks) for kNN probes
    probe_every: int = 0  # kNN probe every N steps (0 = only before the first and after the last step)
    probe_size: int | None = None  # probe image side (default: size)
    probe_k: int = 20
    probe_train_fraction: float = 0.5
    probe_max_images: int | None = None
    ckpt_every_steps: int | None = None
    tensorboard: bool = True
    progress: bool = True
    resume: bool | str = False
    overwrite: bool = False  # output_dir holds a previous run: delete its files first (see engine/rundir.py)
    export_path: str | None = None
    export_encoder: str = "key"  # the momentum encoder, as the official QGNet; "query" for the query encoder
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def base_lr(self) -> float:
        return float(self.lr) if self.lr is not None else 0.03 * self.batch_size / 256

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["images"] is not None and not isinstance(d["images"], str):
            d["images"] = [os.fspath(p) for p in d["images"]]
        return d


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


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _config(cfg: PretrainConfig | Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> PretrainConfig:
    if cfg is None:
        base: dict[str, Any] = {}
    elif isinstance(cfg, PretrainConfig):
        base = cfg.to_dict()
    elif isinstance(cfg, Mapping):
        base = dict(cfg.get("pretrain", cfg))
    else:
        raise TypeError(f"`cfg` must be a PretrainConfig, a mapping or None, got {type(cfg).__name__}")
    base.update(overrides)
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(base) - names)
    if unknown:
        raise ValueError(f"unknown pretrain option(s) {unknown}; valid options: {sorted(names)}")
    c = PretrainConfig(**base)
    if c.images is None:
        raise ValueError("`images` is required: a folder of images, a .txt list of paths, or a list of paths")
    if c.batch_size < 1 or c.epochs < 1:
        raise ValueError(f"`batch_size` and `epochs` must be >= 1, got {c.batch_size}, {c.epochs}")
    if c.export_encoder not in MOCO_ENCODERS:
        raise ValueError(f"`export_encoder` must be one of {tuple(MOCO_ENCODERS)}, got {c.export_encoder!r}")
    if c.max_steps is not None and c.max_steps < 1:
        raise ValueError(f"`max_steps` must be >= 1 or None, got {c.max_steps}")
    resolve_num_workers(c.num_workers)  # early error for a bad value
    if c.diag_every < 0 or c.probe_every < 0:
        raise ValueError(f"`diag_every` and `probe_every` must be >= 0, got {c.diag_every}, {c.probe_every}")
    return c


def queue_sizes_for(c: PretrainConfig, num_images: int, total_steps: int | None = None) -> tuple[int, int]:
    """The queue sizes a run on ``num_images`` images uses (warns about stale self-negatives).

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
    spare = max(1, num_images - c.batch_size)
    limits = {
        "queue_size": (c.queue_size, max(c.batch_size, spare // c.batch_size * c.batch_size)),
        "local_queue_size": (c.local_queue_size, spare * c.max_patches),
    }
    sizes = []
    for name, (size, limit) in limits.items():
        if size > limit:
            if c.cap_queues:
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
    fill_steps = math.ceil(sizes[0] / c.batch_size)
    if total_steps is not None and c.queue_init == "random" and fill_steps > 0.1 * total_steps:
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


def pretrain(cfg: PretrainConfig | Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Pretrain a :class:`~fewshot_priors.models.moco.GlobalLocalMoCo` prior extractor.

    Args:
        cfg: a :class:`PretrainConfig`, a mapping of its fields (a full config with a
            ``pretrain`` section also works) or None.
        **overrides: field values that replace those of ``cfg``.

    Returns:
        dict with ``step``, ``total_steps``, ``history`` (one dict per log step with
        ``loss``, ``loss_global``, ``loss_local``, ``acc_global``, ``acc_local``,
        ``num_patches``, ``lr``), ``diagnostics`` (one dict per diagnostic step with
        ``step`` and the ``diag/...`` and ``probe/...`` values; empty unless
        ``diag_every`` or ``probe_root`` is set), ``output_dir``, ``last`` (checkpoint path),
        ``prior_extractor`` (exported file, rank 0) and ``backbone``.
    """
    c = _config(cfg, overrides)
    info = init_distributed()
    device = resolve_device(c.device)
    if info.distributed and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out = prepare_run_dir(c.output_dir, resume=bool(c.resume), overwrite=c.overwrite, kind="pretrain", dist=info)

    # -- data ---------------------------------------------------------------------------
    paths = list_images(c.images)
    sampler = SuperpixelPatchSampler(
        c.superpixel_method,
        c.superpixel_backend,
        n_segments=c.n_segments,
        compactness=c.compactness,
        scale=c.scale,
        sigma=c.sigma,
        min_size=c.min_size,
        min_area=c.min_area,
        max_patches=c.max_patches,
        seed=c.seed,
        num_threads=1,  # see SuperpixelPatchSampler: one thread per image, parallelism via workers
    )
    if c.cache_dir and c.build_cache:
        if info.is_main:
            build_superpixel_cache(paths, c.cache_dir, sampler, workers=c.cache_workers, progress=c.progress)
        barrier()
    dataset = UnlabeledImages(
        paths,
        size=c.size,
        sampler=sampler,
        max_patches=c.max_patches,
        cache_dir=c.cache_dir,
        augment=TwoViewAugment(c.size, min_area=c.view_min_area),
        seed=c.seed,
    )
    n = len(dataset)
    steps_per_epoch = n // c.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n} images are fewer than `batch_size`={c.batch_size}")
    total_steps = steps_per_epoch * c.epochs
    stop = total_steps if c.max_steps is None else min(total_steps, int(c.max_steps))
    queue_size, local_queue_size = queue_sizes_for(c, n, stop)

    # -- model / optimiser --------------------------------------------------------------
    torch.manual_seed(derive_seed(c.seed, "init"))
    model = GlobalLocalMoCo(
        c.backbone,
        dim=c.dim,
        queue_size=queue_size,
        local_queue_size=local_queue_size,
        momentum=c.moco_momentum,
        temperature=c.temperature,
        global_weight=c.global_weight,
        local_weight=c.local_weight,
        mlp_hidden=c.mlp_hidden,
        head_norm=c.head_norm,
        max_patches=c.max_patches,
        pool_mode=c.pool_mode,
        shuffle_bn=c.shuffle_bn,
        bn_splits=c.bn_splits,
        seed=derive_seed(c.seed, "queue") % (1 << 62),
        queue_init=c.queue_init,
        **c.backbone_kwargs,
    ).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=c.base_lr, momentum=c.momentum, weight_decay=c.weight_decay)
    scheduler = cosine_scheduler(optimizer, total_steps, c.warmup_steps)

    step = 0
    if c.resume:
        ck_path = out / "last" if c.resume is True else Path(c.resume)
        ck = load_checkpoint(ck_path, model=model, optimizer=optimizer, scheduler=scheduler, map_location=device)
        step = int(ck["meta"]["step"])
        if int(ck["meta"].get("total_steps", total_steps)) != total_steps:
            raise ValueError(
                f"cannot resume {ck_path}: it was run with {ck['meta']['total_steps']} total steps, this config gives "
                f"{total_steps} (images, batch_size or epochs changed)"
            )
    runner: torch.nn.Module = model
    if info.distributed:
        # queues are identical on every rank (all-gathered keys): do not broadcast buffers each step
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            runner = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )

    logger = RunLogger(out, enabled=info.is_main, tensorboard=c.tensorboard)
    if c.resume:
        logger.truncate_after(step)
    if info.is_main:
        (out / "config.json").write_text(json.dumps(c.to_dict(), indent=1, default=str))

    batches = StepBatchSampler(n, c.batch_size, c.seed, step, stop, info)
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=resolve_num_workers(c.num_workers),
        pin_memory=device.type == "cuda",
    )

    def save() -> None:
        if info.is_main:
            save_checkpoint(
                out / "last",
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                meta={"config": c.to_dict(), "step": step, "total_steps": total_steps, "kind": "pretrain"},
            )

    probe = None
    if c.probe_root and info.is_main:
        probe = load_probe_set(
            c.probe_root,
            size=c.probe_size or c.size,
            sampler=sampler,
            max_patches=c.max_patches,
            train_fraction=c.probe_train_fraction,
            seed=c.seed,
            max_images=c.probe_max_images,
        )
    diagnostics: list[dict[str, float]] = []
    latest: dict[str, float] = {}

    def record(at: int, values: Mapping[str, float], prefix: str) -> None:
        if not values:
            return
        latest.update({f"{prefix}/{k}": v for k, v in values.items()})
        if diagnostics and diagnostics[-1]["step"] == at:
            diagnostics[-1].update({f"{prefix}/{k}": v for k, v in values.items()})
        else:
            diagnostics.append({"step": at, **{f"{prefix}/{k}": v for k, v in values.items()}})
        logger.log(at, {f"{prefix}/{k}": v for k, v in values.items() if not math.isnan(v)})

    def run_probe(at: int) -> None:
        if probe is not None:
            record(at, probe_encoder(model.encoder, probe, k=c.probe_k, pool_mode=c.pool_mode), "probe")

    def postfix(row: Mapping[str, float]) -> dict[str, str]:
        d = {"loss": f"{row['loss']:.3f}", "acc_g": f"{row['acc_global']:.2f}", "acc_l": f"{row['acc_local']:.2f}"}
        for tag, short in (("diag/std_global", "std_g"), ("probe/knn_global", "knn_g"), ("probe/knn_local", "knn_l")):
            if tag in latest:
                d[short] = f"{latest[tag]:.3f}"
        return d

    local_keys = step * c.batch_size * c.max_patches  # patch keys enqueued so far (an upper bound after resume)
    if step == 0:
        run_probe(0)  # the random-init encoder: the baseline every later probe is compared with

    tags = ("loss", "loss_global", "loss_local", "acc_global", "acc_local", "num_patches")
    history: list[dict[str, float]] = []
    running: dict[str, list[float]] = {t: [] for t in tags}
    model.train()
    bar = progress_bar(total=stop, initial=step, desc="pretrain", disable=not (c.progress and info.is_main), dynamic_ncols=True)
    t0 = time.perf_counter()
    saved_at = step if c.resume else -1
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        torch.manual_seed(derive_seed(c.seed, "step", step, info.rank))
        with _autocast(device, c.amp):
            res = runner(batch["view_a"], batch["view_b"], batch["labels_a"], batch["labels_b"])
        loss = res["loss"].float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite pretraining loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        step += 1
        for t in tags:
            running[t].append(float(res[t].detach().float()))
        local_keys += int(res["num_patches"]) * info.world_size
        if c.diag_every and step % c.diag_every == 0 and info.is_main:
            d = batch_diagnostics(res, model.queue.negatives() if model.queue is not None else None)
            # share of each queue holding real keys (not its random init): the loss is
            # only comparable across steps once both are 1
            d["queue_fill"] = min(1.0, step * c.batch_size / queue_size)
            d["local_queue_fill"] = min(1.0, local_keys / local_queue_size)
            record(step, d, "diag")
        if c.probe_every and step % c.probe_every == 0 and step != stop:
            run_probe(step)
        bar.update(1)
        if step % c.log_every == 0 or step == stop:
            row = {t: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan") for t, v in running.items()}
            row["lr"] = lr
            row["steps_per_s"] = len(running["loss"]) / max(1e-9, time.perf_counter() - t0)
            history.append({"step": step, **row})
            logger.log(step, {f"pretrain/{k}": v for k, v in row.items() if not math.isnan(v)})
            bar.set_postfix(postfix(row))
            running = {t: [] for t in tags}
            t0 = time.perf_counter()
        if (c.ckpt_every_steps and step % int(c.ckpt_every_steps) == 0) or step % steps_per_epoch == 0:
            save()
            saved_at = step
    bar.close()
    if step == stop:
        run_probe(step)
    if saved_at != step:
        save()
    logger.close()
    export = None
    if info.is_main and step == stop:
        export = model.export_prior_extractor(c.export_path or out / "prior_extractor.safetensors",
                                              encoder=c.export_encoder)
    barrier()
    return {
        "step": step,
        "total_steps": total_steps,
        "history": history,
        "diagnostics": diagnostics,
        "output_dir": str(out),
        "last": str(checkpoint_paths(out / "last")[0]),
        "prior_extractor": export,
        "backbone": c.backbone,
    }
