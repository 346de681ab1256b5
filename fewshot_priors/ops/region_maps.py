"""Prior and guided region maps (paper Sec. 4.2, eqs. 9-12).

Both maps are "for every query position, the best cosine match among a set of
other positions, min-max normalised per image". They differ in what the set
is: the query's own *prior* features (self-supervised extractor) for the prior
region map, the masked *support* features for the guided region map.

Defined results for degenerate input:

* all similarities equal (e.g. an all-zero support mask, constant features) -> the
  normalised map is all zeros;
* zero feature vectors -> cosine 0 at those positions;
* NaN or inf anywhere in an image's features (including support positions outside
  the mask) -> that image's map is all NaN, as ``torch.max`` propagates NaN. This
  is the same for every backend and every ``max_chunk_bytes``; other images of the
  batch are unaffected. With finite features maps are never NaN or inf;
* an empty batch (``B = 0``) gives an empty ``0, 1, H, W`` map; empty spatial sizes
  and ``K = 0`` shots raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .checks import (
    check_eps,
    check_float,
    check_nonempty,
    check_rank,
    check_same,
    check_tensor,
    clean_mask,
)
from .pooling import resize_mask
from .similarity import (
    DEFAULT_MAX_CHUNK_BYTES,
    check_backend,
    check_max_chunk_bytes,
    max_cosine_similarity,
    minmax_normalize,
    resolve_backend,
)

__all__ = ["guided_region_map", "prior_region_map"]


def prior_region_map(
    bridge: torch.Tensor,
    prior: torch.Tensor,
    eps: float = 1e-7,
    *,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    check: bool = True,
) -> torch.Tensor:
    """Prior region map of the query (eqs. 9-12).

    For each bridge position, the cosine similarity with every prior position
    (``<x, p> / (|x||p| + eps)``), max over prior positions, then min-max
    normalised per image (``(s - min) / (max - min + eps)``). Note (Sec. 4.3) the
    map is typically *low* on objects; it is not inverted.

    Args:
        bridge: ``B, C, H, W`` query features of the supervised backbone.
        prior: ``B, C, H', W'`` query features of the prior extractor (the spatial
            size may differ from ``bridge``).
        eps: numerical epsilon of the cosine and of the normalisation.
        backend: ``"auto"``, ``"chunked"``, ``"reference"`` or ``"fused"``
            (see :func:`~fewshot_priors.ops.max_cosine_similarity`).
        max_chunk_bytes: memory budget for one tile of the similarity matrix (a positive int).
        check: validate every argument (the default). ``False`` is the same computation
            without the checks, for a caller that validated them once already (a
            :class:`~fewshot_priors.ops.PriorRegionMap` built with ``check_inputs=False``,
            as QGNet's); bad input then gives an unspecified result instead of an error.

    Returns:
        ``B, 1, H, W`` map with values in ``[0, 1]`` (all NaN for an image whose
        features hold NaN / inf, see the module docstring).

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import prior_region_map
        >>> bridge, prior = torch.randn(2, 64, 30, 30), torch.randn(2, 64, 15, 15)
        >>> m = prior_region_map(bridge, prior)  # the prior features may be coarser
        >>> m.shape, float(m.amin()), round(float(m.amax()), 4)
        (torch.Size([2, 1, 30, 30]), 0.0, 1.0)
    """
    if check:
        check_float("bridge", bridge)
        check_float("prior", prior)
        check_rank("bridge", bridge, (4,), "B, C, H, W")
        check_rank("prior", prior, (4,), "B, C, H', W'")
        check_same("batch size", "bridge", bridge.shape[0], "prior", prior.shape[0])
        check_same("channel count", "bridge", bridge.shape[1], "prior", prior.shape[1])
        check_nonempty("bridge", bridge, (2, 3), "spatial size", "H, W >= 1")
        check_nonempty("prior", prior, (2, 3), "spatial size", "H', W' >= 1")
        eps = check_eps(eps)
        check_backend(backend)
        max_chunk_bytes = check_max_chunk_bytes(max_chunk_bytes)
    h, w = bridge.shape[-2:]
    s = max_cosine_similarity(
        bridge.flatten(2), prior.flatten(2), eps, backend=backend, max_chunk_bytes=max_chunk_bytes, check=False
    )
    return rearrange(minmax_normalize(s, eps), "b (h w) -> b 1 h w", h=h, w=w)


def _support_and_masks(support: torch.Tensor, support_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring support to ``B, K, C, h, w`` and masks to float ``B, K, h', w'``."""
    check_rank("support", support, (4, 5), "B, C, h, w (1-shot) or B, K, C, h, w")
    check_tensor("support_mask", support_mask)
    if support.dim() == 4:
        support = support.unsqueeze(1)
        check_rank("support_mask", support_mask, (3, 4), "B, 1, h, w or B, h, w for 1-shot support")
        if support_mask.dim() == 4:
            if support_mask.shape[1] != 1:
                raise ValueError(
                    "`support_mask` must have shape B, 1, h, w or B, h, w for a 1-shot `support` of shape "
                    f"B, C, h, w, got {tuple(support_mask.shape)}"
                )
        else:
            support_mask = support_mask.unsqueeze(1)
    else:
        check_rank("support_mask", support_mask, (4, 5), "B, K, h, w or B, K, 1, h, w for K-shot support")
        if support_mask.dim() == 5:
            if support_mask.shape[2] != 1:
                raise ValueError(
                    f"`support_mask` must have shape B, K, 1, h, w, got {tuple(support_mask.shape)}"
                )
            support_mask = support_mask.squeeze(2)
    check_same("batch size", "support", support.shape[0], "support_mask", support_mask.shape[0])
    check_same("shot count", "support", support.shape[1], "support_mask", support_mask.shape[1])
    if support.shape[1] == 0:
        raise ValueError(f"`support` must hold at least one shot (K >= 1), got shape {tuple(support.shape)}")
    check_nonempty("support", support, (3, 4), "spatial size", "h, w >= 1")
    check_nonempty("support_mask", support_mask, (2, 3), "spatial size", "h', w' >= 1")
    return support, clean_mask("support_mask", support_mask)


def guided_region_map(
    query: torch.Tensor,
    support: torch.Tensor,
    support_mask: torch.Tensor,
    eps: float = 1e-7,
    *,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    check: bool = True,
) -> torch.Tensor:
    """Guided region map (PFENet's training-free prior, Sec. 4.2.2).

    Support features are multiplied by their mask (resized bilinearly to the
    feature size), then for each query position the max cosine similarity over
    all support positions is taken and min-max normalised per image. With K
    shots the K per-shot maps are averaged.

    Args:
        query: ``B, C, H, W`` query features.
        support: ``B, C, h, w`` (1-shot) or ``B, K, C, h, w`` support features.
        support_mask: ``B, 1, h', w'`` / ``B, h', w'`` (1-shot) or ``B, K, h', w'``
            foreground masks with values in [0, 1]; 255 (ignore) counts as 0. A shot
            with no foreground but some 255 (a 0/255 image as stored on disk: pass
            ``mask / 255``) warns (value check).
        eps: numerical epsilon of the cosine and of the normalisation.
        backend, max_chunk_bytes: see :func:`prior_region_map`.
        check: validate every argument and bring the input to its canonical form (the
            default: 1-shot shapes expanded, mask values checked, 255 mapped to 0).
            ``False`` is the same computation for input already in that form --
            ``support`` ``B, K, C, h, w``, ``support_mask`` a float ``B, K, h', w'`` mask in
            [0, 1] without 255, valid options -- as QGNet passes it (it validates and
            cleans its inputs once); other input then gives an unspecified result.

    Returns:
        ``B, 1, H, W`` map in ``[0, 1]``. An all-zero support mask gives all zeros;
        NaN / inf in an image's query or support features give an all-NaN map for
        that image (see the module docstring).

    Raises:
        ValueError: bad shapes, ``K = 0`` shots, an empty spatial size, mask values
            outside ``[0, 1]`` other than 255 (value check, see
            :func:`~fewshot_priors.ops.set_checks`).

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import guided_region_map
        >>> query = torch.randn(2, 64, 30, 30)
        >>> support = torch.randn(2, 5, 64, 30, 30)  # B, K, C, h, w: 5 shots
        >>> masks = torch.zeros(2, 5, 120, 120)  # B, K, H, W at any resolution
        >>> masks[..., 30:90, 30:90] = 1
        >>> guided_region_map(query, support, masks).shape
        torch.Size([2, 1, 30, 30])
        >>> same = support[:, 0].flatten(2).mean(-1)[..., None, None].expand(-1, -1, 30, 30)
        >>> one_shot = guided_region_map(same, support[:, 0], masks[:, 0])  # a query equal everywhere
        >>> bool((one_shot == 0).all())  # a constant map normalises to 0
        True
    """
    masks = support_mask
    if check:
        check_float("query", query)
        check_float("support", support)
        check_rank("query", query, (4,), "B, C, H, W")
        check_nonempty("query", query, (2, 3), "spatial size", "H, W >= 1")
        eps = check_eps(eps)
        check_backend(backend)
        max_chunk_bytes = check_max_chunk_bytes(max_chunk_bytes)
        support, masks = _support_and_masks(support, support_mask)
        check_same("batch size", "query", query.shape[0], "support", support.shape[0])
        check_same("channel count", "query", query.shape[1], "support", support.shape[2])
    b, k, _, hs, ws = support.shape
    h, w = query.shape[-2:]
    if support.dtype != query.dtype:
        dtype = torch.promote_types(support.dtype, query.dtype)
        query, support = query.to(dtype), support.to(dtype)
    masks = resize_mask(masks.to(support.dtype), (hs, ws))
    x = rearrange(query, "b c h w -> b c (h w)")
    if resolve_backend(backend, x) == "fused":
        # masks folded into the kernel, query shared by the K shots: no per-shot copies
        from . import fused

        values, _ = fused.guided_max_cosine(x, support.flatten(3), masks.flatten(2), eps)
        s = minmax_normalize(rearrange(values, "b k n -> (b k) n"), eps)
        maps = rearrange(s, "(b k) n -> b k n", b=b, k=k)
    else:
        # one shot at a time: only one masked support copy is alive, the query is not copied
        maps = torch.stack(
            [
                minmax_normalize(
                    max_cosine_similarity(
                        x,
                        (support[:, i] * masks[:, i, None]).flatten(2),
                        eps,
                        backend=backend,
                        max_chunk_bytes=max_chunk_bytes,
                        check=False,
                    ),
                    eps,
                )
                for i in range(k)
            ],
            dim=1,
        )
    return rearrange(maps.mean(dim=1, keepdim=True), "b 1 (h w) -> b 1 h w", h=h, w=w)
