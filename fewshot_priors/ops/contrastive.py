"""Contrastive-learning ops: the InfoNCE loss and the momentum (EMA) update."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_float, check_rank, check_same

#: The ``reduction`` values of :func:`info_nce`.
REDUCTIONS = ("mean", "sum", "none")


def check_temperature(temperature: Any) -> Any:
    """``temperature`` must be > 0 (``ValueError`` naming it otherwise); returned as given."""
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    return temperature


class InfoNCEResult(NamedTuple):
    """Details returned by :func:`info_nce` with ``return_details=True``."""

    #: scalar loss (or ``N`` per-query losses with ``reduction="none"``).
    loss: torch.Tensor
    #: fraction of queries whose positive logit beats every negative (strictly).
    accuracy: torch.Tensor
    #: ``N, 1 + K`` logits (positive first), already divided by the temperature.
    logits: torch.Tensor


def info_nce(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.2,
    *,
    normalize: bool = True,
    reduction: str = "mean",
    return_details: bool = False,
) -> torch.Tensor | InfoNCEResult:
    """InfoNCE loss (paper Eq. 1-2): ``-log exp(q.k0/t) / (exp(q.k0/t) + sum_i exp(q.ki/t))``.

    Args:
        query: ``N, D`` query embeddings.
        positive_key: ``N, D`` positive keys (row ``n`` is the positive of query ``n``).
        negatives: ``K, D`` negatives shared by all queries (a memory queue) or
            ``N, K, D`` per-query negatives.
        temperature: ``t > 0``.
        normalize: L2-normalise ``query``, ``positive_key`` and ``negatives`` inside
            (cosine similarities). With ``False`` the inputs are used as given
            (MoCo passes already normalised embeddings).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        return_details: return an :class:`InfoNCEResult` (loss, accuracy, logits)
            instead of the loss tensor.

    Returns:
        The loss (``float32`` or the input dtype), or :class:`InfoNCEResult`.
        With zero queries the mean loss is ``0`` (still attached to the graph).

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import info_nce
        >>> q = torch.tensor([[1.0, 0.0]])
        >>> negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])  # K=2 shared negatives
        >>> easy = info_nce(q, q, negatives, temperature=0.2)  # the positive is the query itself
        >>> hard = info_nce(q, -q, negatives, temperature=0.2)  # the positive points away
        >>> bool(easy < 0.01), bool(hard > 5)  # about log(1 + e^-5) and 5 + log(1 + 2 e^-5)
        (True, True)
    """
    check_float("query", query)
    check_float("positive_key", positive_key)
    check_float("negatives", negatives)
    check_rank("query", query, (2,), "N, D")
    check_rank("positive_key", positive_key, (2,), "N, D")
    check_rank("negatives", negatives, (2, 3), "K, D or N, K, D")
    check_same("number of queries", "query", query.shape[0], "positive_key", positive_key.shape[0])
    check_same("embedding dim", "query", query.shape[1], "positive_key", positive_key.shape[1])
    check_same("embedding dim", "query", query.shape[1], "negatives", negatives.shape[-1])
    if negatives.dim() == 3:
        check_same("number of queries", "query", query.shape[0], "negatives", negatives.shape[0])
    check_temperature(temperature)
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}")
    if normalize:
        query = F.normalize(query, dim=-1)
        positive_key = F.normalize(positive_key, dim=-1)
        negatives = F.normalize(negatives, dim=-1)
    negatives = negatives.to(query.dtype)
    l_pos = (query * positive_key.to(query.dtype)).sum(-1, keepdim=True)  # N, 1
    if negatives.dim() == 2:
        l_neg = query @ negatives.t()  # N, K
    else:
        l_neg = torch.einsum("nd,nkd->nk", query, negatives)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    if query.shape[0] == 0:
        loss = logits.sum() * 0.0 if reduction != "none" else logits.new_zeros(0)
    else:
        loss = F.cross_entropy(logits.float(), target, reduction=reduction)
    if not return_details:
        return loss
    with torch.no_grad():
        if query.shape[0] == 0:
            acc = logits.new_tensor(float("nan"))
        elif l_neg.shape[1] == 0:
            acc = logits.new_tensor(1.0)
        else:
            acc = (l_pos[:, 0] > l_neg.max(dim=1).values).float().mean()
    return InfoNCEResult(loss, acc, logits)


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, m: float) -> None:
    """EMA update of ``target`` from ``online`` in place: ``t = m * t + (1 - m) * o``.

    Parameters are averaged; floating buffers (e.g. BatchNorm running stats) and
    integer buffers (``num_batches_tracked``) are copied from ``online`` (as MoCo,
    whose key encoder keeps its own BN statistics in train mode; copying them keeps
    the two encoders' eval-mode behaviour aligned).

    Args:
        online: the trained (query) module.
        target: the momentum (key) module with the same parameter names/shapes.
        m: momentum in ``[0, 1]``; ``m = 1`` leaves ``target`` unchanged, ``m = 0``
            copies ``online``.

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import momentum_update
        >>> online, target = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
        >>> _ = online.weight.data.fill_(1.0), target.weight.data.fill_(0.0)
        >>> momentum_update(online, target, m=0.9)  # t = 0.9 * 0 + 0.1 * 1
        >>> round(target.weight.item(), 6)
        0.1
    """
    if not isinstance(online, nn.Module) or not isinstance(target, nn.Module):
        raise TypeError("`online` and `target` must be torch.nn.Module instances")
    if not 0.0 <= float(m) <= 1.0:
        raise ValueError(f"`m` must be in [0, 1], got {m}")
    po = dict(online.named_parameters())
    pt = dict(target.named_parameters())
    if po.keys() != pt.keys():
        missing = sorted(set(po) ^ set(pt))[:5]
        raise ValueError(f"`online` and `target` have different parameters, e.g. {missing}")
    names = list(po)
    for n in names:
        if po[n].shape != pt[n].shape:
            raise ValueError(f"parameter {n!r}: `online` has {tuple(po[n].shape)}, `target` {tuple(pt[n].shape)}")
    t_list = [pt[n].data for n in names]
    o_list = [po[n].data.to(pt[n].dtype) for n in names]
    if t_list:
        torch._foreach_mul_(t_list, float(m))
        torch._foreach_add_(t_list, o_list, alpha=1.0 - float(m))
    bo = dict(online.named_buffers())
    for n, b in target.named_buffers():
        if n in bo:
            b.copy_(bo[n])
