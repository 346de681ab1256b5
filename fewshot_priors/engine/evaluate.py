"""Few-shot evaluation with the field's protocol (PFENet's test protocol, used by QGNet).

* The RNGs are reset to the evaluation seed before every evaluation, and the
  test episodes themselves are a function of the dataset's seed.
* Predictions are made at the network's input size, mapped back with
  :func:`fewshot_priors.data.restore_prediction` and scored against the label
  at its ORIGINAL resolution (``query_mask_orig``) when the dataset provides it.
* Under DDP each rank scores every ``world``-th episode and the meter's
  accumulators are summed across ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._progress import progress_bar
from ..constants import IGNORE_INDEX
from ..data.workers import resolve_num_workers
from ..distributed import DistInfo, all_reduce_sum, dist_info, shard_indices
from .runtime import seed_everything

__all__ = ["collate_eval", "evaluate", "format_results", "predict_fn_from_model", "results_json", "write_results"]


def collate_eval(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack same-shaped tensors; keep lists for per-item ones (original-size labels)."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack(values)
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def predict_fn_from_model(model: torch.nn.Module) -> Callable[[Mapping[str, Any]], torch.Tensor]:
    """``batch -> B, C, H, W`` logits of ``model(...)["logits"]``.

    Logits (not their argmax) are returned so that the test protocol can resize
    them bilinearly to the original label size before the argmax, as PFENet does.
    """

    def predict(batch: Mapping[str, Any]) -> torch.Tensor:
        out = model(batch["query_image"], batch["support_images"], batch["support_masks"])
        return out["logits"].float()

    return predict


def _restore(pred: torch.Tensor, batch: Mapping[str, Any], i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) of item ``i`` at the resolution it is scored at.

    ``pred`` is ``B, C, H, W`` float logits or ``B, H, W`` integer labels.
    """
    if pred.is_floating_point() and "query_mask_orig" not in batch:
        return pred[i].argmax(0), batch["query_mask"][i]
    if "query_mask_orig" in batch:
        from fewshot_priors.data import restore_prediction

        target = batch["query_mask_orig"][i]
        valid = batch["query_valid_hw"][i]
        valid_hw = tuple(int(v) for v in (valid.tolist() if isinstance(valid, torch.Tensor) else valid))
        p = restore_prediction(pred[i], valid_hw, tuple(target.shape[-2:]))
        return p, target
    return pred[i], batch["query_mask"][i]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module | None,
    dataset: Dataset,
    *,
    class_ids: Sequence[int] | None = None,
    seed: int = 321,
    batch_size: int = 1,
    num_workers: int | str = 0,
    predict_fn: Callable[[Mapping[str, Any]], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    desc: str = "eval",
    dist: DistInfo | None = None,
    memo_features: bool | None = None,
) -> dict[str, Any]:
    """Score a model (or any ``predict_fn``) on every episode of ``dataset``.

    Args:
        model: the few-shot model (put in eval mode); may be None if ``predict_fn`` is given.
        dataset: test episodes (items with ``query_image``, ``support_images``,
            ``support_masks``, ``class_id`` and either ``query_mask_orig`` +
            ``query_valid_hw`` or ``query_mask``).
        class_ids: the classes averaged in mIoU (default ``dataset.class_ids``).
        seed: RNG seed reset before the evaluation (reported in the result).
        batch_size: episodes per forward pass.
        num_workers: data loader workers (``"auto"``: ``min(cores, 8)``).
        predict_fn: ``batch -> B, C, H, W`` float logits (resized bilinearly to the
            original label size before the argmax, PFENet's protocol) or ``B, H, W``
            integer predictions (resized with nearest neighbour) at the input size
            (default: ``model(...)["logits"]``), or ``batch -> {name: prediction}``
            to score several predictors (a model and its baselines) in one pass.
        device: where to run (default: the model's device, else CPU).
        progress: show a tqdm bar (rank 0 only).
        desc: progress bar label.
        dist: rank info (default: current process group).
        memo_features: compute the frozen features of each distinct photo once for the whole
            evaluation (the model's ``feature_memo()``, e.g. :meth:`QGNet.feature_memo
            <fewshot_priors.models.QGNet.feature_memo>`): the test resize is deterministic, so
            N episodes over a few dozen photos need a few dozen backbone passes, not N; equal up
            to float rounding. ``None`` (default): on for a CPU device, where the backbone
            dominates and the digests are cheap.

    Returns:
        ``{"miou", "fbiou", "per_class_iou", "episodes", "seed", "protocol", "predicted_foreground_share",
        "true_foreground_share"}`` (``protocol``: the name of the :mod:`~fewshot_priors.engine.protocols`
        protocol these episodes and seed are, else ``"custom"``; the shares: of the scored, non-ignored
        pixels that the prediction and the label call foreground); with a dict-valued
        ``predict_fn``, ``{name: that dict}``.
    """
    dist = dist or dist_info()
    seed_everything(seed)
    if class_ids is None:
        class_ids = list(getattr(dataset, "class_ids"))
    if device is None:
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    if predict_fn is None:
        if model is None:
            raise ValueError("pass a `model` or a `predict_fn`")
        predict_fn = predict_fn_from_model(model)

    n = len(dataset)  # type: ignore[arg-type]
    shard = Subset(dataset, list(shard_indices(n, dist))) if dist.distributed else dataset
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=resolve_num_workers(num_workers),
                        collate_fn=collate_eval)
    if memo_features is None:
        memo_features = device.type == "cpu"
    memo = getattr(model, "feature_memo", None) if memo_features else None
    meters: dict[str, Any] = {}
    with memo() if callable(memo) else contextlib.nullcontext():
        single = _score_batches(progress_bar(loader, desc=desc, disable=not (progress and dist.is_main),
                                             dynamic_ncols=True, leave=False), predict_fn, meters, class_ids, device)
    if not meters:
        raise ValueError("the evaluation dataset is empty")
    results = {}
    for name, (meter, fg) in meters.items():
        if dist.distributed:
            meter.all_reduce()
            fg = [int(v) for v in all_reduce_sum(torch.tensor(fg, dtype=torch.float64)).tolist()]
        res = dict(meter.compute())
        res["predicted_foreground_share"] = fg[0] / max(fg[2], 1)
        res["true_foreground_share"] = fg[1] / max(fg[2], 1)
        res["per_class_iou"] = {str(k): float(v) for k, v in dict(res["per_class_iou"]).items()}
        res["miou"], res["fbiou"] = float(res["miou"]), float(res["fbiou"])
        res["episodes"] = n
        res["seed"] = seed
        res["protocol"] = _protocol_of(dataset, n, seed)
        results[name] = res
    if model is not None and was_training:
        model.train()
    return results["model"] if single else results


def _score_batches(batches, predict_fn, meters: dict[str, Any], class_ids, device) -> bool:
    """Predict each batch and update ``meters`` (one :class:`~fewshot_priors.metrics.FewShotSegMeter`
    and one foreground count per predictor name); whether ``predict_fn`` returned one tensor."""
    from fewshot_priors.metrics import FewShotSegMeter

    single = True
    for batch in batches:
        batch_dev = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        preds = predict_fn(batch_dev)
        if isinstance(preds, torch.Tensor):
            preds = {"model": preds}
        else:
            single = False
        for name, pred in preds.items():
            meter, fg = meters.setdefault(name, (FewShotSegMeter(class_ids), [0, 0, 0]))
            pred = pred.cpu()
            for i in range(pred.shape[0]):
                p, t = _restore(pred, batch, i)
                meter.update(p, t, int(batch["class_id"][i]))
                valid = t != IGNORE_INDEX
                fg[0] += int(((p == 1) & valid).sum())
                fg[1] += int(((t == 1) & valid).sum())
                fg[2] += int(valid.sum())
    return single


def _protocol_of(dataset: Dataset, episodes: int, seed: int) -> str:
    """The protocol name of an evaluation of ``episodes`` episodes of ``dataset`` with ``seed``."""
    from .protocols import protocol_name

    episode_seed = getattr(dataset, "seed", seed)  # the episodes are a function of the dataset's seed
    if episode_seed != seed:
        return "custom"
    return protocol_name(getattr(dataset, "dataset_name", None), episodes, [seed])


def format_results(results: Mapping[str, Any], title: str = "evaluation",
                   class_names: Mapping[Any, str] | None = None) -> str:
    """Plain-text table of mIoU, FB-IoU and per-class IoU (percent).

    Args:
        results: what :func:`evaluate` returns.
        title: the first line.
        class_names: class id -> name (a dataset's ``class_names``); each class row shows
            ``<name> (<id>)``, or ``class <id>`` for an id without a name.
    """
    names = {str(k): str(v) for k, v in (class_names or {}).items()}
    rows = [(f"{names[str(cid)]} ({cid})" if str(cid) in names else f"class {cid}", iou)
            for cid, iou in results.get("per_class_iou", {}).items()]
    width = max([10, *(len(label) + 2 for label, _ in rows)])
    episodes = results.get("episodes", "?")
    if "seeds" in results:  # several seeds (engine.protocols): the mean and std over them
        seeds = results["seeds"]
        head = f"{len(seeds)} x {episodes} episodes, seeds {', '.join(map(str, seeds))}"
    else:
        head = f"{episodes} episodes, seed {results.get('seed', '?')}"
    protocol = f" (protocol {results['protocol']})" if results.get("protocol") else ""
    lines = [f"{title}: {head}{protocol}"]
    for label, key in (("mIoU", "miou"), ("FB-IoU", "fbiou")):
        std = f" +- {100 * results[key + '_std']:.2f}" if key + "_std" in results else ""
        lines.append(f"  {label:<{width}}{100 * results[key]:7.2f}{std}")
    for label, iou in rows:
        lines.append(f"  {label:<{width}}{100 * iou:7.2f}")
    return "\n".join(lines)


def results_json(results: Mapping[str, Any], **extra: Any) -> str:
    """The JSON text :func:`write_results` writes: ``results`` plus ``extra`` fields."""
    return json.dumps({**results, **extra}, indent=2)


def write_results(results: Mapping[str, Any], path: str | os.PathLike, **extra: Any) -> Path:
    """Write results (plus ``extra`` fields such as shots / checkpoint) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(results_json(results, **extra), encoding="utf-8")
    return path
