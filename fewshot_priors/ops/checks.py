"""Input checks: short, public helpers that raise an error naming the argument.

Every public op validates its arguments up front with these helpers (as kornia's
``KORNIA_CHECK_*``) and raises a ``TypeError`` or ``ValueError`` that names the argument
and the expected form, so that a wrong call fails early and loudly instead of returning a
silently wrong answer. They are public so that the models, the analysis helpers and your
own modules check their inputs the same way::

    from fewshot_priors.ops.checks import check_float, check_rank, check_same

    def my_op(query, support):
        check_float("query", query)
        check_rank("query", query, (4,), "B, C, H, W")
        check_same("channel count", "query", query.shape[1], "support", support.shape[1])

Two kinds of checks:

* shape / dtype / device checks read only metadata: they are always on;
* *value* checks (mask values in [0, 1] or 255, label ids in range, images that
  look normalised, ...) read tensor values, which on a GPU makes the host wait
  for the device (a synchronisation). They are on by default; :func:`set_checks`
  turns them off in the current context (thread or asyncio task, a
  :class:`contextvars.ContextVar`) and :func:`checks_disabled` for a block, once a
  pipeline is known to be correct. With value checks off, a bad value gives an
  unspecified result instead of an error.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from ..constants import IGNORE_INDEX

__all__ = ["check_eps", "check_float", "check_nonempty", "check_rank", "check_same", "check_tensor", "checks_disabled",
           "checks_enabled", "clean_mask", "set_checks", "warn_ignore_only"]

#: Whether the value checks run, per context (a new thread starts with the default, on).
_VALUE_CHECKS: ContextVar[bool] = ContextVar("fewshot_priors_value_checks", default=True)


def set_checks(enabled: bool) -> None:
    """Turn the value checks that synchronise with the GPU on (default) or off in the current
    context (this thread or asyncio task, and the tasks it starts afterwards).

    Shape and dtype checks stay on either way. See also :func:`checks_disabled`.

    Example:
        >>> fewshot_priors.set_checks(False)   # a validated pipeline: no host-device syncs for checks
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"`enabled` must be a bool, got {type(enabled).__name__}")
    _VALUE_CHECKS.set(enabled)


def checks_enabled() -> bool:
    """Whether the value checks (those that read tensor values) are on in the current context."""
    return _VALUE_CHECKS.get()


@contextmanager
def checks_disabled() -> Iterator[None]:
    """Context manager: value checks off inside the block, previous setting restored after.

    Example:
        >>> with fewshot_priors.checks_disabled():
        ...     out = model(query, support, masks)   # no host-device sync for input checks
    """
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def check_tensor(name: str, value: object) -> torch.Tensor:
    """Require a ``torch.Tensor`` (``TypeError`` naming ``name`` otherwise); return it.

    Example:
        >>> check_tensor("mask", [[0, 1]])
        Traceback (most recent call last):
        TypeError: `mask` must be a torch.Tensor, got list
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float(name: str, value: object) -> torch.Tensor:
    """Require a floating point tensor (features must not be integer images); return it.

    Example:
        >>> feats = check_float("query", torch.zeros(1, 8, 4, 4))
    """
    t = check_tensor(name, value)
    if not t.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating point tensor (features), got dtype {t.dtype}; "
            "convert with `.float()` (and normalise images) first"
        )
    return t


def check_rank(name: str, t: torch.Tensor, ranks: Sequence[int], form: str) -> torch.Tensor:
    """Require ``t.dim()`` in ``ranks`` (``form`` names the expected shape in the message); return ``t``.

    Example:
        >>> check_rank("query", torch.zeros(8, 4, 4), (4,), "B, C, H, W")
        Traceback (most recent call last):
        ValueError: `query` must have shape B, C, H, W, got shape (8, 4, 4)
    """
    if t.dim() not in tuple(ranks):
        raise ValueError(f"`{name}` must have shape {form}, got shape {tuple(t.shape)}")
    return t


def check_same(
    what: str, name_a: str, value_a: int, name_b: str, value_b: int
) -> None:
    """Require two sizes to agree (``what``: e.g. "batch size"), naming both arguments.

    Example:
        >>> check_same("batch size", "query", 2, "support", 3)
        Traceback (most recent call last):
        ValueError: batch size mismatch: `query` has 2 but `support` has 3
    """
    if value_a != value_b:
        raise ValueError(
            f"{what} mismatch: `{name_a}` has {value_a} but `{name_b}` has {value_b}"
        )


def check_nonempty(name: str, t: torch.Tensor, dims: Sequence[int], what: str, form: str) -> torch.Tensor:
    """Require the sizes of ``dims`` of ``t`` to be > 0 (``what``: e.g. "spatial size"); return ``t``.

    Example:
        >>> x = check_nonempty("query", torch.zeros(1, 8, 4, 4), (2, 3), "spatial size", "H, W >= 1")
    """
    if any(t.shape[d] == 0 for d in dims):
        raise ValueError(f"`{name}` must have a non-zero {what} ({form}), got shape {tuple(t.shape)}")
    return t


def check_eps(eps: object) -> float:
    """``eps`` must be a finite number > 0 (zero vectors then give cosine 0, never 0 / 0); return it as float.

    Example:
        >>> check_eps(1e-7)
        1e-07
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < float(eps) < float("inf"):
        raise ValueError(f"`eps` must be a finite number > 0, got {eps!r}")
    return float(eps)


def clean_mask(name: str, mask: torch.Tensor, check_values: bool | None = None) -> torch.Tensor:
    """Validate mask values and return a float mask with ignore (255) mapped to 0.

    Accepted values: anything in ``[0, 1]`` (binary or soft masks) and the
    ignore label ``255``. Boolean and integer masks are accepted. The value check
    (NaN, inf and values outside ``[0, 1]`` except 255 raise ``ValueError``) is
    skipped when ``check_values`` is False (``None``: when :func:`checks_enabled` is
    False); the mapping of 255 to 0 never reads values on the host.
    """
    mask = check_tensor(name, mask)
    if mask.dtype == torch.bool:
        return mask.float()
    if mask.is_complex():
        raise TypeError(f"`{name}` must be a real-valued mask, got dtype {mask.dtype}")
    m = mask if mask.is_floating_point() else mask.float()
    ignore = m == IGNORE_INDEX
    if _VALUE_CHECKS.get() if check_values is None else check_values:
        valid = ((m >= 0) & (m <= 1)) | ignore
        if not bool(valid.all()):
            bad = m[~valid]
            raise ValueError(
                f"`{name}` must contain values in [0, 1] (or 255 = ignore), found values such as "
                f"{bad.flatten()[:5].tolist()}; pass a binary foreground mask for the target class"
            )
        warn_ignore_only(name, mask)
    return torch.where(ignore, torch.zeros_like(m), m)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_NN_DIR = os.path.dirname(os.path.abspath(torch.nn.__file__)) + os.sep


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside this package
    (and outside ``torch.nn``'s module-call machinery), however deep the op was called."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith((_PACKAGE_DIR, _TORCH_NN_DIR)):
        level, frame = level + 1, frame.f_back
    return level


def warn_ignore_only(name: str, mask: torch.Tensor) -> None:
    """Warn about masks with no foreground pixel but some 255 (ignore): most likely a
    0/255 binary image read from disk (FSS-1000 and folder datasets store masks so),
    whose 255 means "ignore" here, so the mask is silently empty (an all-zero map, a
    zero prototype). One check for every op and model that takes masks; a value check
    (it reads tensor values), called by :func:`clean_mask` when value checks are on.

    ``mask``'s last two dimensions are spatial; the warning lists the offending items
    by their leading indices (e.g. ``(batch, shot)``). Boolean masks cannot hold 255.
    """
    if mask.dtype == torch.bool or mask.numel() == 0 or mask.dim() < 2:
        return
    flat = mask.reshape(*mask.shape[:-2], -1)
    no_fg = ~((flat > 0) & (flat != IGNORE_INDEX)).any(dim=-1)
    some_ignore = (flat == IGNORE_INDEX).any(dim=-1)
    bad = (no_fg & some_ignore).nonzero().tolist()
    if bad:
        where = "the mask has" if mask.dim() == 2 else f"items {[tuple(i) for i in bad[:5]]} have"
        warnings.warn(
            f"`{name}`: {where} no foreground pixel but contain 255, which means 'ignore' (treated as "
            "background; masks are 0 = background, 1 = foreground, 255 = ignore): they are empty, so their "
            "prototype is zero and their guided map all zeros. Either the object was cropped out or shrunk "
            "away by the augmentation / resize (the 255 is then padding or boundary; the datasets' eligibility "
            "rules avoid most such episodes), or your masks are 0/255 binary images as stored on disk: then "
            "pass `mask / 255` or `mask > 127`.",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
