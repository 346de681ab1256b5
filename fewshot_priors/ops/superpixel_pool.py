"""Mean of dense features over each superpixel (patch embeddings for the local loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validate import is_int
from .checks import (
    check_float,
    check_nonempty,
    check_rank,
    check_same,
    check_tensor,
    checks_enabled,
)

POOL_MODES = ("nearest", "area")


def check_num_segments(num_segments: object) -> int:
    """``num_segments`` must be a positive int (``ValueError`` naming it otherwise)."""
    if not is_int(num_segments) or num_segments < 1:
        raise ValueError(f"`num_segments` must be a positive int, got {num_segments!r}")
    return int(num_segments)


def _cell_index(size: int, out: int, device: torch.device) -> torch.Tensor:
    """Index of the output cell each of ``size`` input positions falls in (area partition)."""
    return torch.div(torch.arange(size, device=device) * out, size, rounding_mode="floor")


def superpixel_pool(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_segments: int,
    mode: str = "area",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average dense ``features`` over every superpixel of ``labels``.

    Vectorised (one ``scatter_add``/``index_add`` plus a batched matmul; no loop
    over patches) and differentiable w.r.t. ``features``.

    Args:
        features: ``B, C, h, w`` floating point dense features.
        labels: ``B, H, W`` integer superpixel ids in ``[0, num_segments)``;
            ``-1`` (any negative value) = ignored pixel.
        num_segments: ``P``, the number of patch slots in the output.
        mode: how labels are brought to the feature resolution:

            * ``"area"`` (default): every pixel of the label map votes for the
              feature cell it falls in (cell ``floor(y * h / H), floor(x * w / W)``),
              so patch ``j``'s embedding is the mean of the cell features weighted by
              how many of its pixels each cell covers (exact area weights when
              ``H, W`` are multiples of ``h, w``). Small patches survive.
            * ``"nearest"``: labels are resized to ``h, w`` by nearest neighbour and
              each cell counts once; a patch that misses every sampled cell is invalid.

    Returns:
        ``(pooled, valid)``: ``pooled`` ``B, P, C`` (zeros for invalid slots) and
        ``valid`` ``B, P`` bool, True where patch ``j`` has non-zero weight. A NaN / inf
        anywhere in channel ``c`` of an image's features makes channel ``c`` NaN for
        every valid patch of that image (as a dense matmul with zero weights would);
        invalid slots stay zero.

    Raises:
        TypeError: non-float ``features`` or non-integer ``labels``.
        ValueError: bad shapes (``h, w`` and ``H, W`` must be >= 1), ``num_segments``
            or ``mode``, and, as a value check (see :func:`~fewshot_priors.ops.set_checks`),
            a label id ``>= num_segments``; with value checks off such an id is
            undefined behaviour.

    Memory: ``B * P * h * w`` weights in the feature dtype.

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import superpixel_pool
        >>> features = torch.arange(4.0).view(1, 1, 2, 2)  # B=1, C=1: [[0, 1], [2, 3]]
        >>> labels = torch.tensor([[[0, 0], [1, -1]]])  # B, H, W: two patches, one ignored pixel
        >>> pooled, valid = superpixel_pool(features, labels, num_segments=3)
        >>> pooled[..., 0], valid  # patch 0 = mean(0, 1), patch 1 = 2, slot 2 unused
        (tensor([[0.5000, 2.0000, 0.0000]]), tensor([[ True,  True, False]]))
    """
    check_float("features", features)
    check_rank("features", features, (4,), "B, C, h, w")
    check_nonempty("features", features, (2, 3), "spatial size", "h, w >= 1")
    labels = check_tensor("labels", labels)
    check_rank("labels", labels, (3,), "B, H, W")
    check_nonempty("labels", labels, (1, 2), "spatial size", "H, W >= 1")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"`labels` must be an integer tensor of superpixel ids, got dtype {labels.dtype}")
    check_same("batch size", "features", features.shape[0], "labels", labels.shape[0])
    check_num_segments(num_segments)
    if mode not in POOL_MODES:
        raise ValueError(f"`mode` must be one of {POOL_MODES}, got {mode!r}")
    if checks_enabled() and labels.numel() and int(labels.max()) >= num_segments:
        raise ValueError(
            f"`labels` contains id {int(labels.max())} but `num_segments` is {num_segments}; "
            "cap the patches (SuperpixelPatchSampler(max_patches=P)) or raise num_segments"
        )
    B, C, h, w = features.shape
    labels = labels.to(features.device).long()
    if mode == "nearest":
        lab = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        cell = torch.arange(h * w, device=features.device).expand(B, h * w)
        lab = lab.reshape(B, h * w)
    else:
        H, W = labels.shape[-2:]
        ys = _cell_index(H, h, features.device)
        xs = _cell_index(W, w, features.device)
        cell = (ys[:, None] * w + xs[None, :]).reshape(1, H * W).expand(B, H * W)
        lab = labels.reshape(B, H * W)
    keep = lab >= 0
    # flat index into a (B, P, h*w) weight tensor; ignored pixels go to a dump slot
    b_idx = torch.arange(B, device=features.device)[:, None].expand_as(lab)
    flat = (b_idx * num_segments + lab.clamp(min=0)) * (h * w) + cell
    dump = B * num_segments * h * w
    flat = torch.where(keep, flat, torch.full_like(flat, dump))
    weights = torch.zeros(dump + 1, device=features.device, dtype=features.dtype)
    weights.index_add_(0, flat.reshape(-1), torch.ones(flat.numel(), device=features.device, dtype=features.dtype))
    weights = weights[:dump].view(B, num_segments, h * w)
    total = weights.sum(-1)  # B, P
    valid = total > 0
    pooled = torch.bmm(weights, features.reshape(B, C, h * w).transpose(1, 2))  # B, P, C
    pooled = pooled / total.clamp(min=1).unsqueeze(-1)
    # a non-finite value poisons its channel for every patch of its image, whatever the matmul does with 0 * nan
    finite = torch.isfinite(features).flatten(2).all(dim=2)  # B, C
    pooled = pooled.masked_fill(~finite.unsqueeze(1), float("nan"))
    return pooled.masked_fill(~valid.unsqueeze(-1), 0), valid
