"""Few-shot segmentation metrics: mIoU and FB-IoU exactly as PFENet computes them (docs/how-to/reproduce.md).

* mIoU: for each class, the foreground intersection and union are summed over
  all episodes of that class; ``IoU_c = sum I / (sum U + 1e-10)``; mIoU is the
  mean over the fold's test classes.
* FB-IoU: the intersection and union of background and of foreground are summed
  over all episodes regardless of class; FB-IoU is the mean of the two IoUs.

Pixels labelled ``ignore_index`` (255) are excluded everywhere.

Threshold-free scores of a region map (does a map rank object pixels above background
before any decoder is trained?): :func:`pixel_roc_auc` and :func:`pixel_average_precision`.
Written here rather than taken from scikit-learn (not a dependency): a rank formula of a few
lines, checked against the pairwise definition in ``tests/test_metrics.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .constants import IGNORE_INDEX
from .distributed import all_reduce_sum, world_size

__all__ = ["FewShotSegMeter", "foreground_iou", "pixel_average_precision", "pixel_roc_auc"]

_EPS = 1e-10


def _scored_pixels(scores: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(scores, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("`scores` and `target` must be tensors")
    if scores.shape != target.shape:
        raise ValueError(f"`scores` {tuple(scores.shape)} and `target` {tuple(target.shape)} must have the same shape")
    if scores.is_complex():
        raise TypeError(f"`scores` must be real, got {scores.dtype}")
    valid = target != ignore_index
    s, y = scores[valid].double().flatten(), target[valid].flatten()
    bad = ~((y == 0) | (y == 1))
    if bool(bad.any()):
        raise ValueError(f"`target` must hold 0, 1 or {ignore_index} (ignore), found {y[bad].unique()[:5].tolist()}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("`scores` must be finite on the scored pixels")
    return s, y == 1


def pixel_roc_auc(scores: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Area under the ROC curve of ``scores`` ranking the foreground pixels of ``target``.

    The probability that a random foreground pixel scores above a random background pixel
    (ties count one half): the Mann-Whitney U statistic with average ranks. 0.5 = no
    information, 1 = perfect ranking, below 0.5 = inverted (e.g. the prior map, low on objects).

    Args:
        scores: any shape, real values (higher = more object-like).
        target: same shape, labels 0 / 1, ``ignore_index`` excluded.

    Returns:
        The AUC, or NaN when the scored pixels hold only one class (undefined).
    """
    s, pos = _scored_pixels(scores, target, ignore_index)
    n_pos = int(pos.sum())
    n_neg = int(pos.numel()) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = float(avg_rank[inverse][pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pixel_average_precision(scores: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Average precision of ``scores`` for the foreground pixels of ``target``.

    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest first (the
    step-wise area under the precision-recall curve, as scikit-learn's
    ``average_precision_score``). Its chance level is the foreground share, not 0.5.

    Returns:
        The AP, or NaN when the scored pixels hold no foreground.
    """
    s, pos = _scored_pixels(scores, target, ignore_index)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    uniq, inverse = torch.unique(s, return_inverse=True)
    # per distinct value (descending): positives and pixels at that threshold
    tp_at = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, pos.double()).flip(0)
    all_at = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(s)).flip(0)
    tp, seen = tp_at.cumsum(0), all_at.cumsum(0)
    return float((tp_at / n_pos * (tp / seen)).sum())


def _binary_pair(pred: torch.Tensor, target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a binary prediction and its label (``B, H, W`` or ``H, W``); both as int64 ``B, H, W`` on the CPU."""
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("`pred` and `target` must be torch.Tensors")
    if pred.shape != target.shape:
        raise ValueError(
            f"`pred` {tuple(pred.shape)} and `target` {tuple(target.shape)} must have the "
            "same shape (resize the prediction to the label first)"
        )
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    if pred.dim() != 3:
        raise ValueError(f"`pred` must have shape B, H, W or H, W, got {tuple(pred.shape)}")
    if pred.is_floating_point():
        raise TypeError("`pred` must be a binary label map (bool/int), not scores")
    pred = pred.detach().cpu().long()
    target = target.detach().cpu().long()
    if bool((~((pred == 0) | (pred == 1))).any()):
        raise ValueError("`pred` must contain only 0 and 1")
    valid = target != ignore_index
    if bool((valid & ~((target == 0) | (target == 1))).any()):
        raise ValueError(f"`target` must contain only 0, 1 and {ignore_index}")
    return pred, target


def _intersection_union(pred: torch.Tensor, target: torch.Tensor, value: int,
                        ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (float64 ``B``): the intersection and union of ``pred == value`` and ``target == value``
    over the pixels not labelled ``ignore_index`` (arguments checked by :func:`_binary_pair`)."""
    valid = target != ignore_index
    p, t = (pred == value) & valid, (target == value) & valid
    return (p & t).flatten(1).sum(1).double(), (p | t).flatten(1).sum(1).double()


def foreground_iou(pred: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The foreground IoU of each sample (not accumulated over episodes as :class:`FewShotSegMeter` does).

    Args:
        pred: binary prediction ``B, H, W`` or ``H, W`` (0 / 1, bool or int).
        target: label of the same shape with 0 / 1 / ``ignore_index`` (excluded).

    Returns:
        float64 ``B`` (``1`` for an ``H, W`` pair) in [0, 1]; a sample with no foreground in either
        (empty union) scores 1: nothing to find, nothing found.

    Raises:
        TypeError / ValueError: as :meth:`FewShotSegMeter.update` (shapes, values).

    Example:
        >>> pred = torch.tensor([[1, 1, 0, 0]])
        >>> target = torch.tensor([[1, 0, 0, 255]])
        >>> foreground_iou(pred, target)  # 1 px in both / 2 px in either
        tensor([0.5000], dtype=torch.float64)
    """
    pred, target = _binary_pair(pred, target, ignore_index)
    inter, union = _intersection_union(pred, target, 1, ignore_index)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


class FewShotSegMeter:
    """Accumulates per-class and foreground/background intersection and union.

    Args:
        class_ids: the classes of the fold (the mean of mIoU is over these).
        ignore_index: target label excluded from scoring.

    Example:
        >>> import torch
        >>> meter = FewShotSegMeter([1, 2])
        >>> meter.update(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]), class_id=1)
        >>> round(meter.compute()["per_class_iou"][1], 3)
        0.5
    """

    def __init__(self, class_ids: Sequence[int], ignore_index: int = IGNORE_INDEX) -> None:
        ids = [int(c) for c in class_ids]
        if not ids:
            raise ValueError("`class_ids` must be a non-empty sequence of class ids")
        if len(set(ids)) != len(ids):
            raise ValueError(f"`class_ids` must be unique, got {ids}")
        self.class_ids = ids
        self.ignore_index = int(ignore_index)
        self._pos = {c: i for i, c in enumerate(ids)}
        self.reset()

    def reset(self) -> None:
        """Clear all accumulators."""
        n = len(self.class_ids)
        # float64 sums are exact for integer pixel counts up to 2**53
        self.intersection = torch.zeros(n, dtype=torch.float64)
        self.union = torch.zeros(n, dtype=torch.float64)
        self.episodes = torch.zeros(n, dtype=torch.float64)
        self.fb_intersection = torch.zeros(2, dtype=torch.float64)  # [bg, fg]
        self.fb_union = torch.zeros(2, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor, class_id: Any) -> None:
        """Add episodes.

        Args:
            pred: binary prediction ``B, H, W`` or ``H, W`` (0/1, bool or int).
            target: label ``B, H, W`` or ``H, W`` with 0 / 1 / ``ignore_index``.
            class_id: the episode's class, an int or one per sample (sequence / tensor).
        """
        pred, target = _binary_pair(pred, target, self.ignore_index)
        b = pred.shape[0]
        if isinstance(class_id, torch.Tensor):
            class_id = class_id.flatten().tolist()
        ids = [int(class_id)] * b if isinstance(class_id, int) else [int(c) for c in class_id]
        if len(ids) != b:
            raise ValueError(f"`class_id` has {len(ids)} entries for a batch of {b}")
        unknown = sorted({c for c in ids if c not in self._pos})
        if unknown:
            raise ValueError(f"`class_id` {unknown} not in the meter's class_ids {self.class_ids}")
        inter, union = _intersection_union(pred, target, 1, self.ignore_index)
        inter_b, union_b = _intersection_union(pred, target, 0, self.ignore_index)
        idx = torch.tensor([self._pos[c] for c in ids], dtype=torch.long)
        self.intersection.index_add_(0, idx, inter)
        self.union.index_add_(0, idx, union)
        self.episodes.index_add_(0, idx, torch.ones(b, dtype=torch.float64))
        self.fb_intersection += torch.stack([inter_b.sum(), inter.sum()])
        self.fb_union += torch.stack([union_b.sum(), union.sum()])

    def compute(self) -> dict[str, Any]:
        """Scores as fractions in 0..1.

        Returns:
            ``{"miou", "fbiou", "per_class_iou": {class_id: iou}, "episodes": count}``.
        """
        iou = self.intersection / (self.union + _EPS)
        fb = self.fb_intersection / (self.fb_union + _EPS)
        return {
            "miou": float(iou.mean()),
            "fbiou": float(fb.mean()),
            "per_class_iou": {c: float(iou[i]) for i, c in enumerate(self.class_ids)},
            "episodes": int(self.episodes.sum()),
        }

    def _tensors(self) -> list[torch.Tensor]:
        return [self.intersection, self.union, self.episodes, self.fb_intersection, self.fb_union]

    def all_reduce(self) -> None:
        """Sum the accumulators over all ranks (no-op unless torch.distributed is initialised).

        Call it once on every rank before :meth:`compute`; afterwards each rank
        holds the global sums. One :func:`~fewshot_priors.distributed.all_reduce_sum`
        of the concatenated accumulators.
        """
        if world_size() == 1:
            return
        flat = all_reduce_sum(torch.cat(self._tensors()))
        sizes = [t.numel() for t in self._tensors()]
        parts = torch.split(flat, sizes)
        (self.intersection, self.union, self.episodes, self.fb_intersection, self.fb_union) = (
            p.clone() for p in parts
        )

    sync = all_reduce

    def state_dict(self) -> dict[str, Any]:
        """Accumulators and configuration (tensors + plain values)."""
        return {
            "class_ids": list(self.class_ids),
            "ignore_index": self.ignore_index,
            "intersection": self.intersection.clone(),
            "union": self.union.clone(),
            "episodes": self.episodes.clone(),
            "fb_intersection": self.fb_intersection.clone(),
            "fb_union": self.fb_union.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore accumulators saved by :meth:`state_dict` (class ids must match)."""
        if [int(c) for c in state["class_ids"]] != self.class_ids:
            raise ValueError(
                f"state has class_ids {list(state['class_ids'])}, meter has {self.class_ids}"
            )
        for key in ("intersection", "union", "episodes", "fb_intersection", "fb_union"):
            value = torch.as_tensor(state[key], dtype=torch.float64).clone()
            if value.shape != getattr(self, key).shape:
                raise ValueError(f"state `{key}` has shape {tuple(value.shape)}")
            setattr(self, key, value)

    def __repr__(self) -> str:
        return f"FewShotSegMeter(class_ids={self.class_ids}, episodes={int(self.episodes.sum())})"
