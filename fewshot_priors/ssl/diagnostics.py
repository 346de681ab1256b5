"""Collapse diagnostics for self-supervised embeddings (tensors in, floats-as-tensors out).

Used by :func:`~fewshot_priors.engine.pretrain.pretrain` (``diag_every``, ``probe_root``)
to tell a prior extractor that learns from one that collapses or drifts:

* :func:`embedding_std`: mean over dimensions of the per-dimension standard deviation
  of the L2-normalised embeddings. Collapse (every sample on one point) gives ``0``;
  embeddings spread uniformly on the unit sphere of ``D`` dimensions give
  ``~ 1 / sqrt(D)`` (SimSiam, Chen & He 2021, Sec. 4.1).
* :func:`alignment`: ``E ||f(x) - f(y)||^alpha`` over positive pairs (Wang & Isola 2020):
  ``0`` when both views map to the same point, ``2^alpha`` at most.
* :func:`uniformity`: ``log E exp(-t ||f(x) - f(y)||^2)`` over all distinct pairs
  (Wang & Isola 2020): ``0`` (= log 1) for collapsed embeddings, more negative the more
  uniform; on the circle (``D = 2``) the uniform limit is ``-2t + log I0(2t)``, on the
  sphere ``S^2`` (``D = 3``) it is ``log((1 - exp(-4t)) / (4t))``.
* :func:`knn_accuracy`: weighted k-nearest-neighbour classification of held-out
  embeddings by cosine similarity (Wu et al. 2018, the usual SSL probe).

All functions L2-normalise their inputs first (rows of ``N, D``) and compute in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["alignment", "embedding_std", "knn_accuracy", "uniformity"]


def _embeddings(name: str, z: torch.Tensor, min_rows: int = 1) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape N, D, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"`{name}` must have shape N, D, got {tuple(z.shape)}")
    if not (z.is_floating_point()):
        raise TypeError(f"`{name}` must be a floating tensor, got {z.dtype}")
    if z.shape[0] < min_rows or z.shape[1] < 1:
        raise ValueError(f"`{name}` needs at least {min_rows} row(s) and 1 column, got {tuple(z.shape)}")
    return F.normalize(z.detach().float(), dim=1)


def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of the L2-normalised embeddings.

    Args:
        z: ``N, D`` embeddings (``N >= 2``).

    Returns:
        0-dim tensor: ``0`` for collapsed embeddings, ``~1/sqrt(D)`` for embeddings spread
        uniformly on the sphere (population std, ``unbiased=False``).
    """
    z = _embeddings("z", z, min_rows=2)
    return z.std(dim=0, unbiased=False).mean()


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Wang & Isola's alignment ``mean_i ||x_i - y_i||^alpha`` of positive pairs.

    Args:
        x: ``N, D`` embeddings of one view.
        y: ``N, D`` embeddings of the other view (row ``i`` pairs with ``x[i]``).
        alpha: exponent (``> 0``; 2 as in the paper).

    Returns:
        0-dim tensor in ``[0, 2^alpha]``; lower = better aligned.
    """
    x = _embeddings("x", x)
    y = _embeddings("y", y)
    if x.shape != y.shape:
        raise ValueError(f"`x` and `y` must have the same shape N, D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not alpha > 0:
        raise ValueError(f"`alpha` must be > 0, got {alpha}")
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity ``log mean_{i<j} exp(-t ||z_i - z_j||^2)``.

    Args:
        z: ``N, D`` embeddings (``N >= 2``); all ``N (N - 1) / 2`` pairs are used, so keep
            ``N`` to a few thousand.
        t: ``> 0`` (2 as in the paper).

    Returns:
        0-dim tensor ``<= 0``: ``0`` for collapsed embeddings, lower = more uniform.
    """
    z = _embeddings("z", z, min_rows=2)
    if not t > 0:
        raise ValueError(f"`t` must be > 0, got {t}")
    sq = torch.pdist(z, p=2).pow(2)
    return torch.logsumexp(-t * sq, dim=0) - torch.log(torch.tensor(float(sq.numel())))


def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 4096,
) -> torch.Tensor:
    """Weighted kNN accuracy of ``test`` against ``train`` (cosine similarity).

    Each test embedding takes its ``k`` most similar training embeddings; each votes
    for its label with weight ``exp(similarity / temperature)`` (Wu et al. 2018);
    the prediction is the label with the largest total (ties: smallest label).

    Args:
        train: ``N, D`` labelled embeddings.
        train_labels: ``N`` int labels ``>= 0``.
        test: ``M, D`` embeddings to classify (``M >= 1``).
        test_labels: ``M`` int labels.
        k: neighbours (clipped to ``N``).
        temperature: vote temperature ``> 0``.
        chunk: test rows per similarity block (bounds memory to ``chunk x N``).

    Returns:
        0-dim tensor: fraction of ``test`` rows classified correctly.
    """
    train = _embeddings("train", train)
    test = _embeddings("test", test)
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"`train` and `test` must have the same D, got {train.shape[1]} and {test.shape[1]}")
    for name, lab, emb in (("train_labels", train_labels, train), ("test_labels", test_labels, test)):
        if not isinstance(lab, torch.Tensor) or lab.dim() != 1 or lab.shape[0] != emb.shape[0]:
            shape = tuple(lab.shape) if isinstance(lab, torch.Tensor) else type(lab).__name__
            raise ValueError(f"`{name}` must have shape ({emb.shape[0]},), got {shape}")
        if lab.is_floating_point() or (lab.numel() and int(lab.min()) < 0):
            raise ValueError(f"`{name}` must hold integer labels >= 0")
    if int(k) < 1:
        raise ValueError(f"`k` must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be > 0, got {temperature}")
    ytr = train_labels.to(train.device).long()
    yte = test_labels.to(train.device).long()
    n_cls = int(max(int(ytr.max()), int(yte.max()))) + 1
    k = min(int(k), train.shape[0])
    correct = 0
    for s in range(0, test.shape[0], max(1, int(chunk))):
        sim = test[s : s + chunk] @ train.t()  # m, N
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], n_cls, device=sim.device)
        votes.scatter_add_(1, ytr[idx], torch.exp((top - 1.0) / temperature))  # shift by 1: no overflow
        correct += int((votes.argmax(dim=1) == yte[s : s + chunk]).sum())
    return torch.tensor(correct / test.shape[0])
