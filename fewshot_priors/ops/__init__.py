"""Functional ops: tensors in, tensors out, differentiable.

These are the building blocks a user can call on the features of their own
few-shot model; :mod:`fewshot_priors.models` composes them.
"""

from .pooling import masked_average_pool, resize_mask
from .region_maps import guided_region_map, prior_region_map
from .similarity import DEFAULT_MAX_CHUNK_BYTES, max_cosine_similarity, minmax_normalize

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "guided_region_map",
    "masked_average_pool",
    "max_cosine_similarity",
    "minmax_normalize",
    "prior_region_map",
    "resize_mask",
]
