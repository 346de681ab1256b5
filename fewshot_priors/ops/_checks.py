"""Input validation shared by the functional ops.

Every public op validates its arguments up front and raises a ``TypeError`` or
``ValueError`` that names the argument and the expected form, so that a wrong
call fails early and loudly instead of returning a silently wrong answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = 255


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float(name: str, value: object) -> torch.Tensor:
    """Require a floating point tensor (features must not be integer images)."""
    t = check_tensor(name, value)
    if not t.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating point tensor (features), got dtype {t.dtype}; "
            "convert with `.float()` (and normalise images) first"
        )
    return t


def check_rank(name: str, t: torch.Tensor, ranks: Sequence[int], form: str) -> torch.Tensor:
    if t.dim() not in tuple(ranks):
        raise ValueError(f"`{name}` must have shape {form}, got shape {tuple(t.shape)}")
    return t


def check_same(
    what: str, name_a: str, value_a: int, name_b: str, value_b: int
) -> None:
    if value_a != value_b:
        raise ValueError(
            f"{what} mismatch: `{name_a}` has {value_a} but `{name_b}` has {value_b}"
        )


def clean_mask(name: str, mask: torch.Tensor) -> torch.Tensor:
    """Validate mask values and return a float mask with ignore (255) mapped to 0.

    Accepted values: anything in ``[0, 1]`` (binary or soft masks) and the
    ignore label ``255``. Boolean and integer masks are accepted.
    """
    mask = check_tensor(name, mask)
    if mask.dtype == torch.bool:
        return mask.float()
    if mask.is_complex():
        raise TypeError(f"`{name}` must be a real-valued mask, got dtype {mask.dtype}")
    m = mask if mask.is_floating_point() else mask.float()
    ignore = m == IGNORE_INDEX
    valid = ((m >= 0) & (m <= 1)) | ignore
    if not bool(valid.all()):
        bad = m[~valid]
        raise ValueError(
            f"`{name}` must contain values in [0, 1] (or 255 = ignore), found values such as "
            f"{bad.flatten()[:5].tolist()}; pass a binary foreground mask for the target class"
        )
    if bool(ignore.any()):
        m = torch.where(ignore, torch.zeros_like(m), m)
    return m
