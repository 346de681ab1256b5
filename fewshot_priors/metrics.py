"""Few-shot segmentation metrics: mIoU and FB-IoU exactly as PFENet computes them (docs/how-to/reproduce.md).

* mIoU: for each class, the foreground intersection and union are summed over
  all episodes of that class; ``IoU_c = sum I / (sum U + 1e-10)``; mIoU is the
  mean over the fold's test classes.
* FB-IoU: the intersection and union of background and of foreground are summed
  over all episodes regardless of class; FB-IoU is the mean of the two IoUs.

Pixels labelled ``ignore_index`` (255) are excluded everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .constants import IGNORE_INDEX
from .distributed import all_reduce_sum, world_size

__all__ = ["FewShotSegMeter"]

_EPS = 1e-10


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
        b = pred.shape[0]
        if isinstance(class_id, torch.Tensor):
            class_id = class_id.flatten().tolist()
        ids = [int(class_id)] * b if isinstance(class_id, int) else [int(c) for c in class_id]
        if len(ids) != b:
            raise ValueError(f"`class_id` has {len(ids)} entries for a batch of {b}")
        unknown = sorted({c for c in ids if c not in self._pos})
        if unknown:
            raise ValueError(f"`class_id` {unknown} not in the meter's class_ids {self.class_ids}")
        pred = pred.detach().cpu().long()
        target = target.detach().cpu().long()
        bad_pred = ~((pred == 0) | (pred == 1))
        if bool(bad_pred.any()):
            raise ValueError("`pred` must contain only 0 and 1")
        valid = target != self.ignore_index
        bad_t = valid & ~((target == 0) | (target == 1))
        if bool(bad_t.any()):
            raise ValueError(f"`target` must contain only 0, 1 and {self.ignore_index}")
        p = (pred == 1) & valid
        t = (target == 1) & valid
        inter = (p & t).flatten(1).sum(1).double()
        union = (p | t).flatten(1).sum(1).double()
        pb = (pred == 0) & valid
        tb = (target == 0) & valid
        inter_b = (pb & tb).flatten(1).sum(1).double()
        union_b = (pb | tb).flatten(1).sum(1).double()
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
