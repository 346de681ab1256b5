"""Thin ``nn.Module`` wrappers over the functional ops (kornia style, lightly's ``NTXentLoss``).

Each module holds the options of its functional op (e.g. ``backend``, ``max_chunk_bytes``,
``eps``; ``temperature``; ``num_segments``), validates them once at construction and
calls the op in ``forward``; it has no parameters and no buffers, so it adds nothing to
a ``state_dict``. The result is exactly the functional op's::

    GuidedRegionMap(backend="chunked")(q, s, m) == guided_region_map(q, s, m, backend="chunked")
    InfoNCELoss(temperature=0.1)(q, k, negatives) == info_nce(q, k, negatives, 0.1)
    MaskedAveragePool()(features, mask) == masked_average_pool(features, mask)
    SuperpixelPool(64)(features, labels) == superpixel_pool(features, labels, 64)

:class:`~fewshot_priors.models.qgnet.QGNet` holds one of each region map (``"guided"`` and
``"prior"``); the class attributes ``consumes`` / ``out_channels`` declare what QGNet passes
them and how many channels they give (:mod:`fewshot_priors.models.region_maps`).
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import check_eps
from .contrastive import REDUCTIONS, InfoNCEResult, check_temperature, info_nce
from .pooling import masked_average_pool
from .region_maps import guided_region_map, prior_region_map
from .similarity import DEFAULT_MAX_CHUNK_BYTES, check_backend, check_max_chunk_bytes
from .superpixel_pool import POOL_MODES, check_num_segments, superpixel_pool

__all__ = ["GuidedRegionMap", "InfoNCELoss", "MaskedAveragePool", "PriorRegionMap", "SuperpixelPool"]


class _RegionMapBase(nn.Module):
    def __init__(self, backend: str = "auto", max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES, eps: float = 1e-7,
                 *, check_inputs: bool = True):
        super().__init__()
        self.backend = check_backend(backend)
        self.max_chunk_bytes = check_max_chunk_bytes(max_chunk_bytes)
        self.eps = check_eps(eps)
        if not isinstance(check_inputs, bool):
            raise TypeError(f"`check_inputs` must be a bool, got {type(check_inputs).__name__}")
        self.check_inputs = check_inputs

    def get_config(self) -> dict:
        """The options that rebuild this module (``backend``, ``max_chunk_bytes``, ``eps``)."""
        return {"backend": self.backend, "max_chunk_bytes": self.max_chunk_bytes, "eps": self.eps}

    def extra_repr(self) -> str:
        extra = "" if self.check_inputs else ", check_inputs=False"
        return f"backend={self.backend!r}, max_chunk_bytes={self.max_chunk_bytes}, eps={self.eps:g}{extra}"


class GuidedRegionMap(_RegionMapBase):
    """Module form of :func:`~fewshot_priors.ops.guided_region_map` (PFENet's prior).

    Args:
        backend: ``"auto"``, ``"chunked"``, ``"reference"`` or ``"fused"`` (see
            :func:`~fewshot_priors.ops.max_cosine_similarity`); checked here.
        max_chunk_bytes: memory budget of one similarity tile (a positive int; default
            :data:`~fewshot_priors.ops.DEFAULT_MAX_CHUNK_BYTES`).
        eps: epsilon of the cosine and of the min-max normalisation (finite, > 0).
        check_inputs: validate the tensors of each call and clean the mask (default).
            ``False`` calls the op with ``check=False``: for a caller that validated its
            input once and passes it in canonical form (``support`` ``B, K, C, h, w``, a
            float ``B, K, h', w'`` mask in [0, 1] without 255), as QGNet does.

    Shape:
        - query: ``B, C, H, W`` query features.
        - support: ``B, C, h, w`` (1 shot) or ``B, K, C, h, w``.
        - support_mask: ``B, 1, h', w'`` / ``B, h', w'`` (1 shot) or ``B, K, h', w'``,
          values in [0, 1] (255 = ignore, counted as 0).
        - output: ``B, 1, H, W`` map in [0, 1] (mean of the K per-shot maps).

    ``consumes`` / ``out_channels`` declare the module as a QGNet region map (see
    :mod:`fewshot_priors.models.region_maps`): QGNet calls it with its ``query``, ``support``
    and ``support_mask`` tensors.

    Raises:
        ValueError: at construction, a bad ``backend`` / ``max_chunk_bytes`` / ``eps``
            (named, with a suggestion for a misspelt backend); at call time, what
            :func:`~fewshot_priors.ops.guided_region_map` raises.
    """

    consumes = ("query", "support", "support_mask")
    out_channels = 1

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        return guided_region_map(query, support, support_mask, self.eps, backend=self.backend,
                                 max_chunk_bytes=self.max_chunk_bytes, check=self.check_inputs)


class PriorRegionMap(_RegionMapBase):
    """Module form of :func:`~fewshot_priors.ops.prior_region_map` (paper eqs. 9-12).

    Args:
        backend, max_chunk_bytes, eps, check_inputs: as :class:`GuidedRegionMap`.

    Shape:
        - bridge: ``B, C, H, W`` query features of the supervised backbone.
        - prior: ``B, C, H', W'`` query features of the prior extractor.
        - output: ``B, 1, H, W`` map in [0, 1] (typically *low* on objects).

    As a QGNet region map it consumes QGNet's ``bridge`` and ``prior`` (the two 3x3 projections).
    """

    consumes = ("bridge", "prior")
    out_channels = 1

    def forward(self, bridge: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        return prior_region_map(bridge, prior, self.eps, backend=self.backend, max_chunk_bytes=self.max_chunk_bytes,
                                check=self.check_inputs)


class InfoNCELoss(nn.Module):
    """Module form of :func:`~fewshot_priors.ops.info_nce` (paper Eq. 1-2; lightly's ``NTXentLoss``).

    Args:
        temperature: ``t > 0``.
        normalize: L2-normalise the inputs inside (cosine similarities).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        return_details: return an :class:`~fewshot_priors.ops.contrastive.InfoNCEResult`.

    Shape:
        - query: ``N, D``; positive_key: ``N, D``; negatives: ``K, D`` or ``N, K, D``.
        - output: scalar (``N`` with ``reduction="none"``).

    Raises:
        ValueError: at construction, a bad ``temperature`` / ``reduction``; at call time,
            what :func:`~fewshot_priors.ops.info_nce` raises.
    """

    def __init__(self, temperature: float = 0.2, *, normalize: bool = True, reduction: str = "mean",
                 return_details: bool = False):
        super().__init__()
        self.temperature = check_temperature(temperature)
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
        self.normalize, self.reduction, self.return_details = bool(normalize), reduction, bool(return_details)

    def forward(self, query: torch.Tensor, positive_key: torch.Tensor,
                negatives: torch.Tensor) -> torch.Tensor | InfoNCEResult:
        return info_nce(query, positive_key, negatives, self.temperature, normalize=self.normalize,
                        reduction=self.reduction, return_details=self.return_details)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize={self.normalize}, reduction={self.reduction!r}"


class MaskedAveragePool(nn.Module):
    """Module form of :func:`~fewshot_priors.ops.masked_average_pool` (the support prototype).

    Args:
        keepdim: return ``B, C, 1, 1`` instead of ``B, C``.

    Shape:
        - features: ``B, C, H, W``; mask: ``B, 1, h, w`` or ``B, h, w`` in [0, 1] (255 = ignore).
        - output: ``B, C`` (or ``B, C, 1, 1``).
    """

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = bool(keepdim)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_average_pool(features, mask, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"keepdim={self.keepdim}"


class SuperpixelPool(nn.Module):
    """Module form of :func:`~fewshot_priors.ops.superpixel_pool` (mean feature per superpixel).

    Args:
        num_segments: ``P``, the number of patch slots of the output.
        mode: ``"area"`` or ``"nearest"`` (see :func:`~fewshot_priors.ops.superpixel_pool`).

    Shape:
        - features: ``B, C, h, w``; labels: ``B, H, W`` integer ids in ``[0, P)`` (negative = ignored).
        - output: ``(pooled, valid)``: ``B, P, C`` and ``B, P`` bool.

    Raises:
        ValueError: at construction, a bad ``num_segments`` / ``mode``; at call time, what
            :func:`~fewshot_priors.ops.superpixel_pool` raises.
    """

    def __init__(self, num_segments: int, mode: str = "area"):
        super().__init__()
        self.num_segments = check_num_segments(num_segments)
        if mode not in POOL_MODES:
            raise ValueError(f"`mode` must be one of {POOL_MODES}, got {mode!r}")
        self.mode = mode

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return superpixel_pool(features, labels, self.num_segments, self.mode)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, mode={self.mode!r}"
