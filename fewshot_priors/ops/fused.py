"""Fused Triton kernel for max-over-positions cosine similarity (the region maps' hot path).

For ``x`` (``B, C, N``) and ``y`` (``B, C, M``) it computes

    s[b, n] = max_m  <x[b, :, n], y[b, :, m]> / (|x[b, :, n]| |y[b, :, m]| + eps)

and the argmax over ``m``, without ever writing the ``B x N x M`` similarity
matrix: each program takes a tile of ``BLOCK_N`` positions of ``x`` and walks over
tiles of ``BLOCK_M`` positions of ``y``; a tile of dot products is accumulated on
the tensor cores (``tl.dot``, bf16 / tf32 / fp32 operands, fp32 accumulation)
over the channels, divided by ``|x||y| + eps`` (norms computed beforehand in one
cheap pass over the inputs), and folded into a running max and argmax kept in
registers. Only ``B, N`` values and ``B, N`` indices reach memory. Temporary
memory is the ``B, N + B, M`` norms: independent of ``N x M``.

The backward pass is a gather through the argmax
(:func:`fewshot_priors.ops.similarity.max_cosine_backward`), so training keeps
the memory win.

Operand precision (``precision=``, default :data:`DEFAULT_PRECISION`):

* ``"bf16"``: channels rounded to bfloat16 (float16 if the inputs are float16)
  before the products; max abs error of the min-max normalised map vs a float64
  reference ``<= 1e-2``.
* ``"tf32"``: TensorFloat-32 operands (10-bit mantissa); error ``<= 1e-3``.
* ``"fp32"``: exact float32 products (slowest, no tensor cores on fp32 data).

Runs on CUDA GPUs with compute capability >= 8.0, or anywhere through Triton's
interpreter (set ``TRITON_INTERPRET=1`` in the environment *before* this module
is imported; the interpreter is slow and only meant for tests). Note that the
interpreter multiplies bfloat16 bit patterns as integers, so in interpreter
mode the kernel rounds operands to bf16 (nearest even) / tf32 (nearest, ties
away) itself and multiplies them in float32, which gives the same products as
the tensor cores.
"""

from __future__ import annotations

import os

import torch

from .similarity import MaxCosineFunction

try:  # triton is an optional dependency (``pip install fewshot_priors[triton]``)
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "guided_max_cosine", "interpreting", "is_available", "max_cosine"]

#: Accepted operand precisions.
PRECISIONS = ("bf16", "tf32", "fp32")

#: Precision used when ``precision=None`` (the region maps' ``backend="fused"`` path).
DEFAULT_PRECISION = "bf16"

#: Input dtypes the kernel reads directly (float64 goes to the chunked backend).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Whether the kernel below was built for Triton's interpreter: TRITON_INTERPRET is
# read when ``@triton.jit`` runs, i.e. when this module is imported.
def _interpret_requested() -> bool:
    if triton is None:
        return False
    try:  # triton's own reading of TRITON_INTERPRET (accepts 1 / true / on / yes)
        return bool(triton.knobs.runtime.interpret)
    except Exception:  # pragma: no cover - older triton without knobs
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


_INTERPRET = _interpret_requested()


def interpreting() -> bool:
    """Whether the kernel runs through Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return triton is not None and _INTERPRET


def is_available() -> bool:
    """Whether :func:`max_cosine` can run here.

    True with Triton installed and either a CUDA GPU of compute capability >= 8.0
    (bf16 / tf32 tensor cores) or the interpreter (``TRITON_INTERPRET=1``).
    """
    if triton is None:
        return False
    if _INTERPRET:
        return True
    try:
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    except Exception:  # pragma: no cover - broken driver
        return False


if triton is not None:

    @triton.jit
    def _round_tf32(t):
        # TF32 keeps 10 of float32's 23 mantissa bits; round to nearest, ties away (cvt.rna.tf32.f32).
        bits = t.to(tl.int32, bitcast=True)
        bits = (bits + 0x1000) & -8192  # -8192 == ~0x1FFF
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _round_bf16(t):
        # bfloat16 keeps the top 16 bits of a float32: round to nearest even, as the GPU's cvt.rn.bf16.f32
        # (the interpreter's own float32 -> bfloat16 cast truncates).
        bits = t.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 == 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _max_cosine_kernel(
        x_ptr, y_ptr, w_ptr, xn_ptr, yn_ptr, val_ptr, idx_ptr,
        C, N, M, SHOTS,
        sxb, sxc, sxn, syb, syc, sym,
        eps,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr, HALF_FP16: tl.constexpr, HAS_W: tl.constexpr, EMULATE: tl.constexpr,
    ):  # fmt: skip
        """One program: ``BLOCK_N`` positions of x against all of y (batch ``program_id(1)``).

        y has ``B * SHOTS`` batches; y batch ``b`` is compared with x batch ``b // SHOTS``.
        With ``HAS_W`` column ``m`` of y is scaled by ``w[b, m]`` (``yn`` already holds ``|w y|``).
        """
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        xb = b // SHOTS
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        x_base = x_ptr + xb * sxb
        y_base = y_ptr + b * syb
        xn = tl.load(xn_ptr + xb * N + offs_n, mask=n_ok, other=1.0)

        best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int64)
        for m0 in range(0, M, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            m_ok = offs_m < M
            acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            for k0 in range(0, C, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_ok = offs_k < C
                xt = tl.load(
                    x_base + offs_n[:, None] * sxn + offs_k[None, :] * sxc,
                    mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0,
                )  # BLOCK_N, BLOCK_K
                yt = tl.load(
                    y_base + offs_k[:, None] * syc + offs_m[None, :] * sym,
                    mask=k_ok[:, None] & m_ok[None, :],
                    other=0.0,
                )  # BLOCK_K, BLOCK_M
                if PRECISION == "bf16":
                    if EMULATE:  # interpreter: 16-bit x 16-bit products are exact in fp32
                        xt = xt.to(tl.float32)
                        yt = yt.to(tl.float32)
                        if not HALF_FP16:
                            xt = _round_bf16(xt)
                            yt = _round_bf16(yt)
                        acc = tl.dot(xt, yt, acc, input_precision="ieee")
                    elif HALF_FP16:
                        acc = tl.dot(xt.to(tl.float16), yt.to(tl.float16), acc)
                    else:
                        acc = tl.dot(xt.to(tl.bfloat16), yt.to(tl.bfloat16), acc)
                elif PRECISION == "tf32":
                    if EMULATE:
                        acc = tl.dot(
                            _round_tf32(xt.to(tl.float32)),
                            _round_tf32(yt.to(tl.float32)),
                            acc,
                            input_precision="ieee",
                        )
                    else:
                        acc = tl.dot(xt.to(tl.float32), yt.to(tl.float32), acc, input_precision="tf32")
                else:
                    acc = tl.dot(xt.to(tl.float32), yt.to(tl.float32), acc, input_precision="ieee")
            yn = tl.load(yn_ptr + b * M + offs_m, mask=m_ok, other=1.0)
            if HAS_W:
                w = tl.load(w_ptr + b * M + offs_m, mask=m_ok, other=0.0)
                acc = acc * w[None, :]
            s = acc / (xn[:, None] * yn[None, :] + eps)
            s = tl.where(m_ok[None, :], s, float("-inf"))
            tile_best, tile_idx = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best > best  # strict: the first maximum wins, as in torch.max
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx.to(tl.int64) + m0, best_idx)
        tl.store(val_ptr + b * N + offs_n, best, mask=n_ok)
        tl.store(idx_ptr + b * N + offs_n, best_idx, mask=n_ok)

    # GPU: pick tiles per problem size (cached per key). The interpreter uses one small fixed config.
    _GPU_CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bm, bk, w, s in [
            (128, 128, 64, 8, 3),
            (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (128, 128, 32, 8, 4),
            (64, 64, 64, 4, 3),
            (128, 256, 32, 8, 3),
        ]
    ]
    _max_cosine_autotuned = triton.autotune(configs=_GPU_CONFIGS, key=["C", "N", "M", "PRECISION", "HALF_FP16", "HAS_W"])(
        _max_cosine_kernel
    )


def _launch(
    x: torch.Tensor, y: torch.Tensor, eps: float, precision: str, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm pass + kernel launch.

    ``x`` ``B, C, N``; ``y`` ``B * S, C, M`` (``S`` shots per x batch, ``S = 1`` for the plain
    op); ``weight`` optional ``B * S, M`` per-column scale of ``y``. Returns ``B * S, N``
    float32 values and ``B * S, N`` int64 argmax.
    """
    b, c, n = x.shape
    by, _, m = y.shape
    shots = by // b
    xn = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).contiguous()  # B, N
    yn = torch.linalg.vector_norm(y, dim=1, dtype=torch.float32)  # B*S, M
    if weight is not None:
        weight = weight.to(torch.float32).contiguous()
        yn = yn * weight.abs()  # |w y| = |w| |y|
    yn = yn.contiguous()
    values = torch.empty(by, n, dtype=torch.float32, device=x.device)
    index = torch.empty(by, n, dtype=torch.int64, device=x.device)
    w_arg = weight if weight is not None else yn  # unused pointer when HAS_W is False
    args = (x, y, w_arg, xn, yn, values, index, c, n, m, shots, *x.stride(), *y.stride(), float(eps))
    flags = {"PRECISION": precision, "HALF_FP16": x.dtype == torch.float16, "HAS_W": weight is not None}
    if _INTERPRET:
        # the interpreter's argmax (numpy nanargmax) raises on an all-NaN row; the GPU's skips NaN.
        # Either way the NaN pattern comes from the norms (_propagate_nonfinite), so feed it finite data.
        x, y, w_arg = (torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0) for t in (x, y, w_arg))
        xn_k, yn_k = (torch.nan_to_num(t, nan=1.0, posinf=1.0, neginf=1.0) for t in (xn, yn))
        args = (x, y, w_arg, xn_k, yn_k, values, index, c, n, m, shots, *x.stride(), *y.stride(), float(eps))
        block_n, block_m, block_k = 16, 16, 16
        grid = (triton.cdiv(n, block_n), by)
        _max_cosine_kernel[grid](
            *args, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k, EMULATE=True, **flags
        )
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), by)  # noqa: E731
        with torch.cuda.device(x.device):
            _max_cosine_autotuned[grid](*args, EMULATE=False, **flags)
    return _propagate_nonfinite(values, xn, yn, shots), index


def _propagate_nonfinite(values: torch.Tensor, xn: torch.Tensor, yn: torch.Tensor, shots: int) -> torch.Tensor:
    """NaN where the chunked / reference backends give NaN (``torch.max`` propagates it).

    The kernel's running max skips NaN, so rows are marked from the norms instead: a
    non-finite ``x`` column (``xn`` ``B, N``) gives NaN at its position and a non-finite
    ``y`` column anywhere (``yn`` ``B * S, M``) gives NaN over the whole row. No host sync.
    """
    bad = ~torch.isfinite(xn).repeat_interleave(shots, dim=0) | ~torch.isfinite(yn).all(dim=1, keepdim=True)
    return values.masked_fill(bad, float("nan"))


class _FusedMaxCosine(MaxCosineFunction):
    @staticmethod
    def forward(ctx, x, y, eps, precision):
        values, index = _launch(x, y, eps, precision)
        MaxCosineFunction.save(ctx, x, y, index, eps)
        return values.to(x.dtype), index


def _check_pair(
    x: torch.Tensor, y: torch.Tensor, precision: str | None, shots: int = 1, names: tuple[str, str] = ("x", "y")
) -> None:
    """Validate ``x`` ``B, C, N`` and ``y`` ``B * shots, C, M`` for the kernel (early, named errors)."""
    nx, ny = names
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}")
    for name, t in ((nx, x), (ny, y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"`{name}` must be float32, float16 or bfloat16 for the fused kernel, got {t.dtype} "
                "(use backend='chunked' for float64)"
            )
    for name, t in ((nx, x), (ny, y)):
        if t.dim() != 3:
            raise ValueError(f"`{name}` must have shape B, C, positions, got {tuple(t.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"`{nx}` and `{ny}` must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"`{nx}` and `{ny}` must be on the same device, got {x.device} and {y.device}")
    if y.shape[0] != x.shape[0] * shots or y.shape[1] != x.shape[1]:
        raise ValueError(
            f"`{nx}` and `{ny}` must agree in batch size and channels, got shapes {tuple(x.shape)} and "
            f"{tuple(y.shape)}" + (f" ({shots} shots)" if shots != 1 else "")
        )
    if x.shape[2] == 0 or y.shape[2] == 0:
        raise ValueError(f"`{nx}` and `{ny}` need at least one position, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not is_available():
        raise RuntimeError(
            "the fused max-cosine kernel needs Triton and a CUDA GPU with compute capability >= 8.0 "
            "(or TRITON_INTERPRET=1 set before importing fewshot_priors.ops.fused); use backend='chunked'"
        )
    if not _INTERPRET and not x.is_cuda:
        raise ValueError(f"the fused kernel runs on CUDA tensors, got `{nx}` on {x.device}; use backend='chunked'")


def max_cosine(
    x: torch.Tensor, y: torch.Tensor, eps: float = 1e-7, precision: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over ``y``'s positions of the cosine similarity, fused (no ``N x M`` matrix).

    Args:
        x: ``B, C, N`` float32 / float16 / bfloat16 features (any strides).
        y: ``B, C, M`` features, same dtype and device as ``x``.
        eps: added to ``|x||y|`` in the denominator.
        precision: operand precision, ``"bf16"``, ``"tf32"`` or ``"fp32"``
            (``None``: :data:`DEFAULT_PRECISION`). See the module docstring for the
            accuracy of each.

    Returns:
        ``(values, index)``: ``B, N`` similarities in ``x``'s dtype (differentiable
        w.r.t. ``x`` and ``y`` through the argmax) and the ``B, N`` int64 argmax over
        ``M`` (the first one on exact ties). NaN / inf input gives NaN where the
        other backends do (see :func:`~fewshot_priors.ops.max_cosine_similarity`).

    Raises:
        RuntimeError: Triton is not installed, or no CUDA GPU / interpreter is available.
        TypeError: unsupported dtype (e.g. float64: use the chunked backend).
        ValueError: bad shapes or ``precision``.
    """
    _check_pair(x, y, precision)
    precision = DEFAULT_PRECISION if precision is None else precision
    if x.shape[0] == 0:
        return x.new_empty(0, x.shape[2]), torch.empty(0, x.shape[2], dtype=torch.int64, device=x.device)
    return _FusedMaxCosine.apply(x, y, float(eps), precision)


class _FusedGuidedMaxCosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, support, weight, eps, precision):
        b, k, c, m = support.shape
        values, index = _launch(query, support.reshape(b * k, c, m), eps, precision, weight.reshape(b * k, m))
        ctx.save_for_backward(query, support, weight, index)
        ctx.eps = eps
        ctx.mark_non_differentiable(index)
        n = query.shape[2]
        return values.to(query.dtype).view(b, k, n), index.view(b, k, n)

    @staticmethod
    def backward(ctx, grad_values, _grad_index):
        from .similarity import max_cosine_backward

        query, support, weight, index = ctx.saved_tensors
        b, k, c, m = support.shape
        n = query.shape[2]
        # gradients through the argmax of the masked support y_eff = w * y (materialised here only)
        x_rep = query.unsqueeze(1).expand(b, k, c, n).reshape(b * k, c, n)
        w = weight.to(support.dtype).unsqueeze(2)  # B, K, 1, M
        y_eff = (support * w).reshape(b * k, c, m)
        grad_x, grad_y = max_cosine_backward(grad_values.reshape(b * k, n), x_rep, y_eff, index.reshape(b * k, n), ctx.eps)
        grad_query = grad_x.view(b, k, c, n).sum(dim=1) if ctx.needs_input_grad[0] else None
        grad_support = grad_y.view(b, k, c, m) * w if ctx.needs_input_grad[1] else None
        return grad_query, grad_support, None, None, None


def guided_max_cosine(
    query: torch.Tensor,
    support: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-7,
    precision: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-shot max cosine of ``query`` against mask-weighted ``support``, without copies.

    The guided region map's K-shot form: for every shot ``k`` and query position ``n``,
    ``max_m cos(query[b, :, n], weight[b, k, m] * support[b, k, :, m])``. The K shots share
    the query (no ``B*K`` copy of it) and the mask weights are folded into the kernel
    (no masked copy of the support), so the temporaries are the ``B, K, M`` norms.

    Args:
        query: ``B, C, N`` features.
        support: ``B, K, C, M`` features (same dtype and device).
        weight: ``B, K, M`` per-position weights (the support masks at feature size),
            not differentiated.
        eps: added to ``|x||w y|`` in the denominator (weight 0 -> similarity 0).
        precision: see :func:`max_cosine`.

    Returns:
        ``(values, index)``: ``B, K, N`` (differentiable w.r.t. ``query`` and ``support``)
        and the ``B, K, N`` int64 argmax over ``M``.
    """
    if not isinstance(support, torch.Tensor) or support.dim() != 4:
        raise ValueError(f"`support` must be a B, K, C, M tensor, got {getattr(support, 'shape', type(support))}")
    b, k, c, m = support.shape
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (b, k, m):
        raise ValueError(f"`weight` must have shape B, K, M = {(b, k, m)}, got {getattr(weight, 'shape', None)}")
    if k == 0:
        raise ValueError("`support` must hold at least one shot (K >= 1)")
    if not isinstance(query, torch.Tensor) or query.dim() != 3:
        raise ValueError(f"`query` must be a B, C, N tensor, got {getattr(query, 'shape', type(query))}")
    _check_pair(query, support.reshape(b * k, c, m), precision, shots=k, names=("query", "support"))
    if b == 0:
        n = query.shape[2]
        return query.new_empty(b, k, n), torch.empty(b, k, n, dtype=torch.int64, device=query.device)
    precision = DEFAULT_PRECISION if precision is None else precision
    return _FusedGuidedMaxCosine.apply(query, support, weight.to(query.device).detach(), float(eps), precision)
