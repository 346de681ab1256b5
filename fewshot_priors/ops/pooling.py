"""Masked average pooling (the "category guider" / support prototype)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_float, check_nonempty, check_rank, check_same, clean_mask

#: Added to the mask area in the denominator, as in PFENet's ``Weighted_GAP``.
AREA_EPS = 5e-4


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a float ``B, K, h, w`` mask to ``size`` (align_corners=True, as PFENet)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=True)


def as_mask4d(name: str, mask: torch.Tensor, batch: int) -> torch.Tensor:
    """Validate a ``B, 1, h, w`` or ``B, h, w`` mask and return it as float ``B, 1, h, w``."""
    check_rank(name, mask, (3, 4), "B, 1, h, w or B, h, w")
    if mask.dim() == 4 and mask.shape[1] != 1:
        raise ValueError(f"`{name}` must have shape B, 1, h, w or B, h, w, got shape {tuple(mask.shape)}")
    check_same("batch size", "features", batch, name, mask.shape[0])
    check_nonempty(name, mask, (-2, -1), "spatial size", "h, w >= 1")
    m = clean_mask(name, mask)
    return m if m.dim() == 4 else m.unsqueeze(1)


def masked_average_pool(
    features: torch.Tensor, mask: torch.Tensor, keepdim: bool = False, *, check: bool = True
) -> torch.Tensor:
    """Average of ``features`` over the (soft) foreground of ``mask``.

    Args:
        features: ``B, C, H, W`` floating point features.
        mask: ``B, 1, h, w`` or ``B, h, w`` with values in [0, 1] (255 = ignore,
            treated as 0); resized bilinearly to ``H, W``. A mask with no foreground
            but some 255 (a 0/255 image as stored on disk: pass ``mask / 255``) warns
            (value check).
        keepdim: return ``B, C, 1, 1`` instead of ``B, C``.
        check: validate the arguments and clean the mask (the default: shapes, mask
            values, 255 mapped to 0). ``False`` is the same computation for a float
            ``B, 1, h, w`` mask already in [0, 1] without 255, as QGNet passes it (it
            cleans its masks once); other input then gives an unspecified result.

    Returns:
        ``B, C`` (or ``B, C, 1, 1``): ``sum(f * m) / (sum(m) + 5e-4)``. An all-zero
        mask gives a zero prototype; NaN / inf features under the mask (or anywhere,
        since ``0 * nan = nan``) give NaN.

    Raises:
        ValueError: bad shapes, an empty spatial size, mask values outside ``[0, 1]``
            other than 255 (value check, see :func:`~fewshot_priors.ops.set_checks`).

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import masked_average_pool
        >>> features = torch.arange(4.0).view(1, 1, 2, 2)  # B=1, C=1: [[0, 1], [2, 3]]
        >>> mask = torch.tensor([[[1, 0], [0, 1]]])  # B, h, w: the diagonal
        >>> masked_average_pool(features, mask).round(decimals=4)  # (0 + 3) / (2 + 5e-4)
        tensor([[1.4996]])
    """
    if check:
        check_float("features", features)
        check_rank("features", features, (4,), "B, C, H, W")
        check_nonempty("features", features, (2, 3), "spatial size", "H, W >= 1")
        mask = as_mask4d("mask", mask, features.shape[0])
    m = resize_mask(mask.to(features.dtype), tuple(features.shape[-2:]))
    out = (features * m).sum(dim=(2, 3)) / (m.sum(dim=(2, 3)) + AREA_EPS)
    return out[..., None, None] if keepdim else out
