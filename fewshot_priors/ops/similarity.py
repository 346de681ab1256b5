"""Max-over-positions cosine similarity, the kernel behind both region maps.

For every position ``n`` of ``x`` (``B, C, N``) we want

    s[b, n] = max_m  <x[b, :, n], y[b, :, m]> / (|x[b, :, n]| |y[b, :, m]| + eps)

A PFENet-style implementation builds the whole ``B x N x M`` similarity matrix.
:func:`max_cosine_similarity` never does: the ``"chunked"`` backend walks over
tiles of positions whose temporaries fit a byte budget and keeps a running max
and argmax, and its backward pass is a gather through the argmax (the gradient
of a max), so training keeps the memory win too. ``"reference"`` is the
PFENet-style computation (whole matrix, autograd through ``max``), kept for
comparisons. ``"fused"`` is the Triton kernel (CUDA only).

Non-finite input: NaN propagates as in ``torch.max``. ``s[b, n]`` is NaN when
``x[b, :, n]`` holds a NaN or an inf, and the whole row ``s[b, :]`` is NaN when
any position of ``y[b]`` does (inf / inf cosines are NaN too). Every backend and
every ``max_chunk_bytes`` gives the same NaN pattern; the argmax is unspecified
where the value is NaN. Other batch items are unaffected.
"""

from __future__ import annotations

import difflib
import math

import torch

from .._validate import is_int
from ..constants import DEFAULT_MAX_CHUNK_BYTES
from ._backward import MaxCosineFunction
from .checks import check_eps, check_float, check_nonempty, check_rank, check_same

#: Live temporaries per similarity element in a tile: dot products, denominators, ratios.
_TEMPS_PER_ELEMENT = 3

BACKENDS = ("auto", "chunked", "reference", "fused")


def tile_sizes(batch: int, n: int, m: int, element_size: int, max_chunk_bytes: int) -> tuple[int, int]:
    """Tile sizes ``(n_tile, m_tile)`` whose temporaries stay within ``max_chunk_bytes`` (checked by the caller)."""
    allowed = max(1, max_chunk_bytes // (_TEMPS_PER_ELEMENT * element_size * max(batch, 1)))
    if n * m <= allowed:
        return n, m
    if allowed >= n:
        return n, max(1, min(m, allowed // n))
    m_tile = max(1, min(m, math.isqrt(allowed)))
    return max(1, min(n, allowed // m_tile)), m_tile


def _cosine_tile(x: torch.Tensor, xn: torch.Tensor, y: torch.Tensor, yn: torch.Tensor, eps: float) -> torch.Tensor:
    """``B, n, m`` cosine tile: x ``B,C,n``, xn ``B,n``, y ``B,C,m``, yn ``B,m``."""
    dot = torch.bmm(x.transpose(1, 2), y)
    den = xn.unsqueeze(2) * yn.unsqueeze(1)
    den.add_(eps)
    return dot.div_(den)


@torch.no_grad()
def _chunked_max(x: torch.Tensor, y: torch.Tensor, eps: float, max_chunk_bytes: int):
    b, _, n = x.shape
    m = y.shape[2]
    xn = x.norm(dim=1)
    yn = y.norm(dim=1)
    n_tile, m_tile = tile_sizes(b, n, m, x.element_size(), max_chunk_bytes)
    values = x.new_empty(b, n)
    index = torch.empty(b, n, dtype=torch.long, device=x.device)
    for n0 in range(0, n, n_tile):
        n1 = min(n, n0 + n_tile)
        best = None
        best_idx = None
        for m0 in range(0, m, m_tile):
            m1 = min(m, m0 + m_tile)
            tile = _cosine_tile(x[:, :, n0:n1], xn[:, n0:n1], y[:, :, m0:m1], yn[:, m0:m1], eps)
            v, i = tile.max(dim=2)
            i += m0
            if best is None:
                best, best_idx = v, i
            else:
                # strict: the first maximum wins, as in torch.max; a NaN wins over numbers and
                # stays (torch.max propagates NaN), so the result cannot depend on the tiling
                better = (v > best) | (v.isnan() & ~best.isnan())
                best = torch.where(better, v, best)
                best_idx = torch.where(better, i, best_idx)
        values[:, n0:n1] = best
        index[:, n0:n1] = best_idx
    return values, index


class _ChunkedMaxCosine(MaxCosineFunction):
    @staticmethod
    def forward(ctx, x, y, eps, max_chunk_bytes):
        values, index = _chunked_max(x, y, eps, max_chunk_bytes)
        MaxCosineFunction.save(ctx, x, y, index, eps)
        return values, index


def _reference_max(x: torch.Tensor, y: torch.Tensor, eps: float):
    """PFENet-style: materialise the whole ``B, N, M`` matrix, then max."""
    sim = torch.bmm(x.transpose(1, 2), y) / (
        x.norm(dim=1).unsqueeze(2) * y.norm(dim=1).unsqueeze(1) + eps
    )
    return sim.max(dim=2)


def _fused_available(x: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        from . import fused  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installed triton
        return False
    return x.dtype in fused.SUPPORTED_DTYPES and fused.is_available()


def check_backend(backend: object, name: str = "backend") -> str:
    """``backend`` if it is one of :data:`~fewshot_priors.ops.similarity.BACKENDS`, else a
    ``ValueError`` naming ``name`` and suggesting the closest valid backend."""
    if isinstance(backend, str) and backend in BACKENDS:
        return backend
    close = difflib.get_close_matches(str(backend), BACKENDS, n=1) if isinstance(backend, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"`{name}` must be one of {BACKENDS}, got {backend!r}{hint}")


def check_max_chunk_bytes(value: object, name: str = "max_chunk_bytes") -> int:
    """``value`` if it is a positive int (bytes), else a ``ValueError`` naming ``name``.

    The one check of ``max_chunk_bytes``, made where the value enters: a public op called
    with ``check=True``, a region-map module's constructor. Its one default is
    :data:`~fewshot_priors.constants.DEFAULT_MAX_CHUNK_BYTES`.
    """
    if not is_int(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int (bytes), got {value!r}")
    return int(value)


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete backend ``"auto"`` stands for with features like ``x`` (``backend`` already checked)."""
    if backend == "auto":
        return "fused" if _fused_available(x) else "chunked"
    return backend


def max_cosine_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = 1e-7,
    *,
    backend: str = "auto",
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    return_index: bool = False,
    check: bool = True,
):
    """For each position of ``x``, the largest cosine similarity with any position of ``y``.

    Args:
        x: ``B, C, N`` floating point features (positions flattened).
        y: ``B, C, M`` floating point features.
        eps: added to ``|x||y|`` in the denominator (zero vectors give similarity 0);
            a finite number > 0.
        backend: ``"auto"`` (fused Triton kernel on CUDA when available, else
            chunked), ``"chunked"``, ``"reference"`` (whole matrix, PFENet-style)
            or ``"fused"``.
        max_chunk_bytes: budget for the temporaries of one tile (chunked backend).
        return_index: also return the argmax over ``M`` (``B, N`` long).
        check: validate the arguments (the default). ``False`` skips every check, for a
            caller that validated them already (the region-map ops): bad input then gives
            an unspecified result instead of an error.

    Returns:
        ``B, N`` similarities (and the ``B, N`` argmax if ``return_index``). NaN
        where the input is not finite (see the module docstring), identically for
        every backend and chunk size.

    Raises:
        TypeError: ``x`` / ``y`` not floating point tensors.
        ValueError: bad shapes, no positions (``N`` or ``M`` = 0), ``eps <= 0``, unknown
            ``backend``, a ``max_chunk_bytes`` that is not a positive int.

    Examples:
        >>> import torch
        >>> from fewshot_priors.ops import max_cosine_similarity
        >>> x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # B=1, C=2, N=2: unit vectors e0, e1
        >>> y = torch.tensor([[[2.0], [0.0]]])  # B=1, C=2, M=1: a multiple of e0
        >>> s, index = max_cosine_similarity(x, y, return_index=True)
        >>> s.round(decimals=4), index
        (tensor([[1., 0.]]), tensor([[0, 0]]))
    """
    if check:
        check_float("x", x)
        check_float("y", y)
        check_rank("x", x, (3,), "B, C, N")
        check_rank("y", y, (3,), "B, C, M")
        check_same("batch size", "x", x.shape[0], "y", y.shape[0])
        check_same("channel count", "x", x.shape[1], "y", y.shape[1])
        check_nonempty("x", x, (2,), "number of positions", "N >= 1")
        check_nonempty("y", y, (2,), "number of positions", "M >= 1")
        eps = check_eps(eps)
        check_backend(backend)
        max_chunk_bytes = check_max_chunk_bytes(max_chunk_bytes)
    if x.dtype != y.dtype:
        dtype = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(dtype), y.to(dtype)
    backend = resolve_backend(backend, x)
    if backend == "fused":
        from . import fused

        values, index = fused.max_cosine(x, y, eps)
    elif backend == "reference":
        values, index = _reference_max(x, y, eps)
    else:
        values, index = _ChunkedMaxCosine.apply(x.contiguous(), y.contiguous(), eps, max_chunk_bytes)
    return (values, index) if return_index else values


def minmax_normalize(s: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-image min-max normalisation (eq. 12): ``(s - min) / (max - min + eps)``.

    ``s`` is ``B, N`` (or ``B, ...``: everything after the batch dim is one image).
    All-equal values map to 0. Half-precision input is normalised in float32. An
    image with a NaN anywhere maps to all NaN (``min`` / ``max`` propagate NaN).
    """
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    flat = s.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(s)
