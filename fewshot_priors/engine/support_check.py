"""The support check: how a few-shot model does on the episode's own annotated examples.

With K >= 2 support images, each one in turn is segmented from the other K - 1 as if it were
the query and scored against its own mask (foreground IoU, :func:`~fewshot_priors.metrics.foreground_iou`).
The same forward passes score the model's guided region map thresholded at 0.5, the
training-free answer the model is given as an input. Only the support masks are used: the
check is available wherever a prediction is made, on any photos.

* :func:`leave_one_out_iou`: per episode, the mean IoU of the model and of the map over its K supports;
* :func:`map_logits`: two-channel logits whose argmax is the thresholded map, at the query's size;
* :func:`map_answers`: the rule: the map answers where it beat the model on the supports;
* :class:`SupportCheck`: a model wrapper that answers with the map in the episodes where the map
  scored higher on the supports than the model (by more than ``margin``), else with the model.

A model trained on a few photos can learn a class of the test photos as background (its objects
were unlabelled background in the training photos): on such a class it ends below its own guided
map, and its supports show it. The check costs K extra forward passes of K - 1 shots per episode;
1-shot episodes cannot be checked and keep the model's answer. Not in the paper.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .._validate import finite_number
from ..metrics import foreground_iou
from ..ops.pooling import resize_mask

__all__ = ["SupportCheck", "leave_one_out_iou", "map_answers", "map_logits"]

#: The threshold of the guided map's answer (the "guided map >= 0.5" baseline of the studies).
MAP_THRESHOLD = 0.5


def map_logits(guided_map: torch.Tensor, size: tuple[int, int], threshold: float = MAP_THRESHOLD) -> torch.Tensor:
    """Logits whose argmax is the region map thresholded at ``threshold``.

    Args:
        guided_map: ``B, 1, h, w`` region map in [0, 1] (a model's ``guided_map`` output).
        size: ``H, W`` of the output (the query's input size).
        threshold: the map's foreground threshold.

    Returns:
        float32 ``B, 2, H, W``: ``(threshold - m, m - threshold)`` of the map ``m`` resized
        bilinearly (align_corners, as the model's logits): foreground where ``m > threshold``
        (a pixel exactly at the threshold is background), and resized like logits by the evaluation.

    Example:
        >>> m = torch.tensor([[[[0.2, 0.9]]]])
        >>> map_logits(m, (1, 2)).argmax(1)
        tensor([[[0, 1]]])
    """
    if not isinstance(guided_map, torch.Tensor) or guided_map.dim() != 4 or guided_map.shape[1] != 1:
        got = tuple(guided_map.shape) if isinstance(guided_map, torch.Tensor) else type(guided_map).__name__
        raise ValueError(f"`guided_map` must be a B, 1, h, w tensor, got {got}")
    m = resize_mask(guided_map.float(), tuple(size)) - finite_number("threshold", threshold)
    return torch.cat([-m, m], dim=1)


def _guided(out: dict) -> torch.Tensor:
    m = out.get("guided_map") if isinstance(out, dict) else None
    if m is None:
        raise ValueError("the support check needs a model whose output holds a `guided_map` (QGNet with its "
                         "guided region map)")
    return m


@torch.no_grad()
def leave_one_out_iou(model: nn.Module, support_images: torch.Tensor, support_masks: torch.Tensor, *,
                      threshold: float = MAP_THRESHOLD) -> dict[str, torch.Tensor]:
    """Segment each support from the other K - 1 and score the model and its guided map on it.

    Args:
        model: a few-shot model called as ``model(query, support_images, support_masks)`` and
            returning ``logits`` (``B, 2, H, W``) and ``guided_map`` (``B, 1, h, w``), e.g. QGNet.
        support_images: ``B, K, 3, H, W`` with ``K >= 2``.
        support_masks: ``B, K, H, W`` with 0 / 1 (255 = ignore, not scored).
        threshold: the guided map's foreground threshold.

    Returns:
        ``{"model": B, "guided_map": B}``: float64 mean foreground IoU over the K supports.

    Raises:
        ValueError: fewer than two shots, shapes that do not match, a model without a guided map.

    Example:
        >>> from fewshot_priors.models import QGNet
        >>> model = QGNet("resnet18", use_prior=False, bins=(4, 2), channels=16).eval()
        >>> images, masks = torch.rand(2, 3, 3, 64, 64), torch.zeros(2, 3, 64, 64)
        >>> masks[..., 16:48, 16:48] = 1
        >>> scores = leave_one_out_iou(model, images, masks)
        >>> scores["model"].shape, scores["guided_map"].shape
        (torch.Size([2]), torch.Size([2]))
    """
    if not isinstance(support_images, torch.Tensor) or support_images.dim() != 5:
        raise ValueError("`support_images` must be a B, K, 3, H, W tensor")
    if not isinstance(support_masks, torch.Tensor) or tuple(support_masks.shape) != (
            *support_images.shape[:2], *support_images.shape[-2:]):
        raise ValueError(f"`support_masks` must have shape B, K, H, W = "
                         f"{(*support_images.shape[:2], *support_images.shape[-2:])}")
    k = support_images.shape[1]
    if k < 2:
        raise ValueError(f"the support check needs K >= 2 shots (one held out, the others as supports), got K = {k}")
    size = tuple(support_images.shape[-2:])
    model_iou, map_iou = [], []
    for j in range(k):
        others = [i for i in range(k) if i != j]
        out = model(support_images[:, j], support_images[:, others], support_masks[:, others])
        truth = support_masks[:, j]
        model_iou.append(foreground_iou(out["logits"].argmax(1), truth))
        map_iou.append(foreground_iou(map_logits(_guided(out), size, threshold).argmax(1), truth))
    return {"model": torch.stack(model_iou).mean(0), "guided_map": torch.stack(map_iou).mean(0)}


def map_answers(scores: dict[str, torch.Tensor], margin: float = 0.0) -> torch.Tensor:
    """``B`` bool: the episodes where the guided map answers, its support IoU above the model's by
    more than ``margin`` (``scores``: :func:`leave_one_out_iou`'s; the model answers ties).

    Example:
        >>> map_answers({"model": torch.tensor([0.4, 0.6]), "guided_map": torch.tensor([0.5, 0.5])})
        tensor([ True, False])
    """
    return scores["guided_map"] > scores["model"] + margin


class SupportCheck(nn.Module):
    """A few-shot model that answers with its guided map where the map did better on the supports.

    Args:
        model: the wrapped model (QGNet, or a module with its call signature returning
            ``logits`` and ``guided_map``).
        margin: the map answers an episode when its support IoU exceeds the model's by more than
            this (a fraction in [0, 1); 0 = whichever scored higher, the model on ties).
        threshold: the guided map's foreground threshold.

    ``forward`` takes the model's arguments and returns the model's output with ``logits``
    replaced by :func:`map_logits` in the episodes the map answers, the model's own logits under
    ``model_logits``, and ``support_check``: ``{"model": B, "guided_map": B, "use_map": B}`` (the
    :func:`leave_one_out_iou` scores and the choice), ``None`` for 1-shot episodes (not checked:
    the model answers). For inference: the check runs without gradients and a ``loss`` is the model's.

    Example:
        >>> from fewshot_priors.models import QGNet
        >>> checked = SupportCheck(QGNet("resnet18", use_prior=False, bins=(4, 2), channels=16)).eval()
        >>> images, masks = torch.rand(1, 3, 3, 64, 64), torch.zeros(1, 3, 64, 64)
        >>> masks[..., 16:48, 16:48] = 1
        >>> out = checked(torch.rand(1, 3, 64, 64), images, masks)
        >>> out["logits"].shape, sorted(out["support_check"])
        (torch.Size([1, 2, 64, 64]), ['guided_map', 'model', 'use_map'])
    """

    def __init__(self, model: nn.Module, margin: float = 0.0, threshold: float = MAP_THRESHOLD) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
        margin = finite_number("margin", margin)
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"`margin` must be in [0, 1) (an IoU difference), got {margin!r}")
        self.model = model
        self.margin = margin
        self.threshold = finite_number("threshold", threshold)

    def forward(self, query_image: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor,
                query_mask: torch.Tensor | None = None, **kwargs) -> dict:
        out = dict(self.model(query_image, support_images, support_masks, query_mask, **kwargs))
        out["model_logits"] = out["logits"]
        out["support_check"] = None
        if support_images.dim() != 5 or support_images.shape[1] < 2:
            return out
        scores = leave_one_out_iou(self.model, support_images, support_masks, threshold=self.threshold)
        use_map = map_answers(scores, self.margin)
        if bool(use_map.any()):
            fallback = map_logits(_guided(out), tuple(out["logits"].shape[-2:]), self.threshold)
            out["logits"] = torch.where(use_map[:, None, None, None].to(out["logits"].device),
                                        fallback.to(out["logits"].dtype), out["logits"])
        out["support_check"] = {**scores, "use_map": use_map}
        return out

    def feature_memo(self) -> contextlib.AbstractContextManager:
        """The wrapped model's ``feature_memo()`` (each photo's frozen features once), if it has one."""
        memo = getattr(self.model, "feature_memo", None)
        return memo() if callable(memo) else contextlib.nullcontext()

    def extra_repr(self) -> str:
        return f"margin={self.margin}, threshold={self.threshold}"
