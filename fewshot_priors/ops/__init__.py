"""Functional ops: tensors in, tensors out, differentiable.

These are the building blocks a user can call on the features of their own
few-shot model; :mod:`fewshot_priors.models` composes them.
"""

from .checks import checks_disabled, checks_enabled, set_checks
from .contrastive import info_nce, momentum_update
from .modules import GuidedRegionMap, InfoNCELoss, MaskedAveragePool, PriorRegionMap, SuperpixelPool
from .pooling import masked_average_pool, resize_mask
from .region_maps import guided_region_map, prior_region_map
from .similarity import BACKENDS, DEFAULT_MAX_CHUNK_BYTES, max_cosine_similarity, minmax_normalize
from .superpixel_pool import superpixel_pool

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_CHUNK_BYTES",
    "GuidedRegionMap",
    "InfoNCELoss",
    "MaskedAveragePool",
    "PriorRegionMap",
    "SuperpixelPool",
    "checks_disabled",
    "checks_enabled",
    "guided_region_map",
    "info_nce",
    "masked_average_pool",
    "max_cosine_similarity",
    "minmax_normalize",
    "momentum_update",
    "prior_region_map",
    "resize_mask",
    "set_checks",
    "superpixel_pool",
]
