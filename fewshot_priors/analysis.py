"""Recall of region maps against the ground-truth query mask (paper Table 7).

The paper thresholds a region map at ``alpha`` to get an object region ``R``
and reports ``Recall = |R ∩ R_GT| / |R_GT|`` for ``alpha = 0.1 .. 0.9``, for the
guided region map (high on the support's class) and for the prior region map.
The prior region map (Sec. 4.3) is the max cosine similarity between the prior
extractor's query features and the query's own bridge features, min-max
normalised per image; it is typically *low* on objects. ``low_is_object=True``
therefore takes ``R = {1 - map >= alpha}``; with ``False`` it is ``R = {map >= alpha}``.

Two aggregations are provided by :class:`RecallMeter`: *pooled* (all ground-truth
pixels of all episodes together, the literal formula) and *mean* (the per-episode
recall averaged over episodes with a non-empty ground truth).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .constants import IGNORE_INDEX
from .ops.checks import check_float, check_rank

__all__ = ["TABLE7_THRESHOLDS", "RecallMeter", "recall_counts", "region_map_recall"]

#: The thresholds of the paper's Table 7.
TABLE7_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _as_map(name: str, m: torch.Tensor) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape B,1,h,w, got {type(m).__name__}")
    check_float(name, m)
    check_rank(name, m, (4,), "B,1,h,w")
    if m.shape[1] != 1:
        raise ValueError(f"`{name}` must have shape B,1,h,w (one map per image), got {tuple(m.shape)}")
    return m


def recall_counts(
    region_map: torch.Tensor,
    gt_mask: torch.Tensor,
    thresholds: Sequence[float] = TABLE7_THRESHOLDS,
    low_is_object: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image counts ``|R ∩ R_GT|`` and ``|R_GT|`` behind :func:`region_map_recall`.

    Args:
        region_map: ``B, 1, h, w`` float map in ``[0, 1]``; resized bilinearly
            (``align_corners=True``) to the label size when it differs.
        gt_mask: ``B, H, W`` (or ``B, 1, H, W``) integer label: 1 = object,
            0 = background, ``ignore_index`` = not scored.
        thresholds: the ``alpha`` values, ``T`` of them.
        low_is_object: object region ``{1 - map >= alpha}`` instead of ``{map >= alpha}``.
        ignore_index: label value excluded from ``R_GT``.

    Returns:
        ``(intersection, gt)``: ``B, T`` and ``B`` pixel counts (float64).
    """
    region_map = _as_map("region_map", region_map)
    if not isinstance(gt_mask, torch.Tensor):
        raise TypeError(f"`gt_mask` must be a torch.Tensor of shape B,H,W, got {type(gt_mask).__name__}")
    if gt_mask.dim() == 4 and gt_mask.shape[1] == 1:
        gt_mask = gt_mask[:, 0]
    if gt_mask.dim() != 3:
        raise ValueError(f"`gt_mask` must have shape B,H,W or B,1,H,W, got {tuple(gt_mask.shape)}")
    if gt_mask.shape[0] != region_map.shape[0]:
        raise ValueError(f"`gt_mask` batch {gt_mask.shape[0]} != `region_map` batch {region_map.shape[0]}")
    thr = torch.as_tensor([float(a) for a in thresholds], dtype=torch.float64)
    if thr.numel() == 0:
        raise ValueError("`thresholds` must not be empty")
    m = region_map.detach().to(torch.float64)
    if m.shape[-2:] != gt_mask.shape[-2:]:
        m = F.interpolate(m, size=tuple(gt_mask.shape[-2:]), mode="bilinear", align_corners=True)
    m = m[:, 0]
    if low_is_object:
        m = 1.0 - m
    gt = (gt_mask == 1) & (gt_mask != ignore_index)
    obj = m[:, None] >= thr.to(m.device)[None, :, None, None]  # B,T,H,W
    inter = (obj & gt[:, None]).flatten(2).sum(-1).to(torch.float64).cpu()
    return inter, gt.flatten(1).sum(-1).to(torch.float64).cpu()


def region_map_recall(
    region_map: torch.Tensor,
    gt_mask: torch.Tensor,
    thresholds: Sequence[float] = TABLE7_THRESHOLDS,
    low_is_object: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Table-7 recall ``|R ∩ R_GT| / |R_GT|`` of each image, at each threshold.

    Args:
        region_map: ``B, 1, h, w`` float map in ``[0, 1]`` (resized to the label).
        gt_mask: ``B, H, W`` integer label (1 object, 0 background, ``ignore_index`` ignored).
        thresholds: the ``alpha`` values (default 0.1 .. 0.9).
        low_is_object: object region ``{1 - map >= alpha}`` (the prior map) instead
            of ``{map >= alpha}`` (the guided map).
        ignore_index: label value that is not scored.

    Returns:
        ``B, T`` float64 recalls in ``[0, 1]``; NaN for an image without object pixels.
    """
    inter, gt = recall_counts(region_map, gt_mask, thresholds, low_is_object, ignore_index)
    return torch.where(gt[:, None] > 0, inter / gt.clamp_min(1)[:, None], torch.full_like(inter, float("nan")))


class RecallMeter:
    """Accumulates :func:`recall_counts` over episodes.

    Args:
        thresholds: the ``alpha`` values.
        low_is_object: passed to :func:`recall_counts`.
        ignore_index: passed to :func:`recall_counts`.
    """

    def __init__(self, thresholds: Sequence[float] = TABLE7_THRESHOLDS, low_is_object: bool = False,
                 ignore_index: int = IGNORE_INDEX) -> None:
        self.thresholds = tuple(float(a) for a in thresholds)
        self.low_is_object = bool(low_is_object)
        self.ignore_index = int(ignore_index)
        self._inter = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self._gt = torch.zeros((), dtype=torch.float64)
        self._area = torch.zeros(len(self.thresholds), dtype=torch.float64)
        self._valid = torch.zeros((), dtype=torch.float64)
        self._per_image: list[torch.Tensor] = []

    def update(self, region_map: torch.Tensor, gt_mask: torch.Tensor) -> None:
        """Add a batch (``B, 1, h, w`` maps, ``B, H, W`` labels)."""
        inter, gt = recall_counts(region_map, gt_mask, self.thresholds, self.low_is_object, self.ignore_index)
        self._inter += inter.sum(0)
        self._gt += gt.sum()
        # |R| over the scored pixels: recall alone rewards a region that covers everything
        valid = (gt_mask != self.ignore_index).to(torch.long)
        area, n_valid = recall_counts(region_map, valid, self.thresholds, self.low_is_object, self.ignore_index)
        self._area += area.sum(0)
        self._valid += n_valid.sum()
        keep = gt > 0
        self._per_image.append(inter[keep] / gt[keep, None])

    def compute(self) -> dict[str, object]:
        """Per threshold (lists of floats): ``pooled`` and ``mean`` recall, and ``area``, the
        fraction of the scored pixels inside ``R``; plus ``thresholds`` and ``episodes``."""
        per = torch.cat(self._per_image) if self._per_image else torch.zeros(0, len(self.thresholds))
        nan = [float("nan")] * len(self.thresholds)
        return {
            "thresholds": list(self.thresholds),
            "pooled": (self._inter / self._gt).tolist() if self._gt > 0 else nan,
            "mean": per.mean(0).tolist() if len(per) else nan,
            "area": (self._area / self._valid).tolist() if self._valid > 0 else nan,
            "episodes": int(len(per)),
        }
