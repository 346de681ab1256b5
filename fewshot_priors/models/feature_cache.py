"""A per-sample memo of a frozen feature extractor's outputs, for evaluation on few photos.

An evaluation of ``N`` episodes over a few dozen photos runs the frozen backbones on the same
photo many times: its test resize is deterministic, so the features of one photo are the same
each time. :class:`FeatureMemo` keys each sample of a batch by its content (dtype, shape and a
BLAKE2 digest of its bytes) and runs the wrapped function only on the samples it has not seen,
so every photo goes through the backbone once per evaluation. The result equals the uncached
one up to float rounding (a sample computed in a smaller batch may round differently).

:meth:`fewshot_priors.models.FrozenBackbone.feature_memo` switches one on for a backbone;
:meth:`fewshot_priors.models.QGNet.feature_memo` for both frozen parts of QGNet.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

from .._validate import is_int

__all__ = ["FeatureMemo"]


def _digest(sample: torch.Tensor) -> tuple:
    data = sample.detach().contiguous().cpu().flatten().view(torch.uint8).numpy().tobytes()  # any dtype, bf16 too
    return str(sample.dtype), tuple(sample.shape), hashlib.blake2b(data, digest_size=16).digest()


class FeatureMemo:
    """Remember per-sample outputs of ``fn(x) -> tuple of B, ... tensors``, keyed by content.

    Args:
        max_items: the most samples remembered per kind (the oldest are forgotten first).

    Example:
        >>> memo = FeatureMemo()
        >>> calls = []
        >>> def fn(x):
        ...     calls.append(len(x))
        ...     return (x * 2,)
        >>> x = torch.rand(3, 2)
        >>> memo("double", x, fn)[0].equal(x * 2), memo("double", x[:2], fn)[0].equal(x[:2] * 2), calls
        (True, True, [3])
    """

    def __init__(self, max_items: int = 4096):
        if not is_int(max_items) or max_items < 1:
            raise ValueError(f"`max_items` must be an int >= 1, got {max_items!r}")
        self.max_items = max_items
        self.store: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, kind: str, x: torch.Tensor,
                 fn: Callable[[torch.Tensor], Sequence[torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """``fn(x)``, computed only for the samples of ``x`` (``B, ...``) not seen under ``kind``."""
        keys = [(kind, *_digest(x[i])) for i in range(x.shape[0])]
        todo = [i for i, k in enumerate(keys) if k not in self.store]
        if todo:
            fresh = fn(x[todo] if len(todo) < len(keys) else x)
            for j, i in enumerate(todo):
                self.store[keys[i]] = tuple(t[j].clone() for t in fresh)
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        out = tuple(torch.stack(parts) for parts in zip(*(self.store[k] for k in keys)))
        while len(self.store) > self.max_items:
            self.store.popitem(last=False)
        return out
