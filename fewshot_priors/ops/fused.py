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

try:  # triton is an optional dependency (``pip install fewshot_priors[triton]``)
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "is_available", "interpreting", "max_cosine"]

#: Accepted operand precisions.
PRECISIONS = ("bf16", "tf32", "fp32")

#: Precision used when ``precision=None`` (the region maps' ``backend="fused"`` path).
DEFAULT_PRECISION = "bf16"

#: Input dtypes the kernel reads directly (float64 goes to the chunked backend).
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Whether the kernel below was built for Triton's interpreter: TRITON_INTERPRET is
# read when ``@triton.jit`` runs, i.e. when this module is imported.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


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
        x_ptr, y_ptr, xn_ptr, yn_ptr, val_ptr, idx_ptr,
        C, N, M,
        sxb, sxc, sxn, syb, syc, sym,
        eps,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr, HALF_FP16: tl.constexpr, EMULATE: tl.constexpr,
    ):  # fmt: skip
        """One program: ``BLOCK_N`` positions of x (batch ``program_id(1)``) against all of y."""
        pid_n = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        x_base = x_ptr + b * sxb
        y_base = y_ptr + b * syb
        xn = tl.load(xn_ptr + b * N + offs_n, mask=n_ok, other=1.0)

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
    _max_cosine_autotuned = triton.autotune(configs=_GPU_CONFIGS, key=["C", "N", "M", "PRECISION", "HALF_FP16"])(
        _max_cosine_kernel
    )


def _launch(x: torch.Tensor, y: torch.Tensor, eps: float, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm pass + kernel launch: ``B, N`` float32 values and ``B, N`` int64 argmax."""
    b, c, n = x.shape
    m = y.shape[2]
    xn = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).contiguous()  # B, N
    yn = torch.linalg.vector_norm(y, dim=1, dtype=torch.float32).contiguous()  # B, M
    values = torch.empty(b, n, dtype=torch.float32, device=x.device)
    index = torch.empty(b, n, dtype=torch.int64, device=x.device)
    args = (x, y, xn, yn, values, index, c, n, m, *x.stride(), *y.stride(), float(eps))
    flags = {"PRECISION": precision, "HALF_FP16": x.dtype == torch.float16}
    if _INTERPRET:
        block_n, block_m, block_k = 16, 16, 16
        grid = (triton.cdiv(n, block_n), b)
        _max_cosine_kernel[grid](
            *args, BLOCK_N=block_n, BLOCK_M=block_m, BLOCK_K=block_k, EMULATE=True, **flags
        )
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), b)  # noqa: E731
        with torch.cuda.device(x.device):
            _max_cosine_autotuned[grid](*args, EMULATE=False, **flags)
    return values, index


class _FusedMaxCosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, eps, precision):
        values, index = _launch(x, y, eps, precision)
        ctx.save_for_backward(x, y, index)
        ctx.eps = eps
        ctx.mark_non_differentiable(index)
        return values.to(x.dtype), index

    @staticmethod
    def backward(ctx, grad_values, _grad_index):
        from .similarity import max_cosine_backward

        x, y, index = ctx.saved_tensors
        grad_x, grad_y = max_cosine_backward(grad_values, x, y, index, ctx.eps)
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_y if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


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
        ``M`` (the first one on exact ties).

    Raises:
        RuntimeError: Triton is not installed, or no CUDA GPU / interpreter is available.
        TypeError: unsupported dtype (e.g. float64: use the chunked backend).
        ValueError: bad shapes or ``precision``.
    """
    precision = DEFAULT_PRECISION if precision is None else precision
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}, got {precision!r}")
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"`{name}` must be float32, float16 or bfloat16 for the fused kernel, got {t.dtype} "
                "(use backend='chunked' for float64)"
            )
        if t.dim() != 3:
            raise ValueError(f"`{name}` must have shape B, C, positions, got {tuple(t.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"`x` and `y` must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"`x` and `y` must be on the same device, got {x.device} and {y.device}")
    if x.shape[0] != y.shape[0] or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` (B, C, N) and `y` (B, C, M) must agree in B and C, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[2] == 0 or y.shape[2] == 0:
        raise ValueError(f"`x` and `y` need at least one position, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not is_available():
        raise RuntimeError(
            "the fused max-cosine kernel needs Triton and a CUDA GPU with compute capability >= 8.0 "
            "(or TRITON_INTERPRET=1 set before importing fewshot_priors.ops.fused); use backend='chunked'"
        )
    if not _INTERPRET and not x.is_cuda:
        raise ValueError(f"the fused kernel runs on CUDA tensors, got `x` on {x.device}; use backend='chunked'")
    if x.shape[0] == 0:
        return x.new_empty(0, x.shape[2]), torch.empty(0, x.shape[2], dtype=torch.int64, device=x.device)
    return _FusedMaxCosine.apply(x, y, float(eps), precision)
