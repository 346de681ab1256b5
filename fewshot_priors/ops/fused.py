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

With ``precision="bf16"`` (the default) the inputs first go through one pass
(:func:`normalize_pad`) that L2-normalises each position, rounds it to bf16 (fp16 for
fp16 inputs) and writes it channels-last into a zero-padded layout (positions to a
multiple of :data:`ROW_ALIGN`, channels of :data:`CHANNEL_ALIGN`), so the GEMM-shaped
kernel loads aligned, unmasked, ``K``-contiguous tiles whatever ``N`` and ``M`` are
(odd sizes such as 81 x 81 = 6561 positions no longer fall off the slow path); its
epilogue restores ``<x, y> / (|x||y| + eps)`` from the float32 norms, masks padded
columns with ``-inf`` and keeps the running max / argmax. The padded copies are made
per chunk of whole batch items within :data:`PADDED_MAX_BYTES` (64 MiB). ``"tf32"`` and
``"fp32"`` keep the direct kernel on the inputs' own strides.

The backward pass is a gather through the argmax
(:func:`fewshot_priors.ops._backward.max_cosine_backward`, shared with the chunked
backend), so training keeps the memory win.

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
from contextlib import nullcontext as _nullcontext

import torch

from ._backward import MaxCosineFunction, max_cosine_backward

try:  # triton is an optional dependency (``pip install fewshot_priors[triton]``)
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = [
    "DEFAULT_PRECISION", "PRECISIONS", "guided_max_cosine", "interpreting", "is_available", "max_cosine", "normalize_pad",
]

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
    """Kernel launch: the padded bf16 path for ``precision="bf16"`` (see :data:`PADDED_BF16`), else
    the direct kernel on the inputs' own strides.

    ``x`` ``B, C, N``; ``y`` ``B * S, C, M`` (``S`` shots per x batch, ``S = 1`` for the plain
    op); ``weight`` optional ``B * S, M`` per-column scale of ``y``. Returns ``B * S, N``
    float32 values and ``B * S, N`` int64 argmax.
    """
    if precision == "bf16" and PADDED_BF16:
        return _launch_padded(x, y, eps, weight)
    return _launch_direct(x, y, eps, precision, weight)


def _launch_direct(
    x: torch.Tensor, y: torch.Tensor, eps: float, precision: str, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norm pass + the direct kernel (reads ``x`` / ``y`` in place, any strides); see :func:`_launch`."""
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


# ----------------------------------------------------------------------------- padded bf16 path
#: Positions (rows) of the padded operands are rounded up to a multiple of this: the largest
#: ``BLOCK_N`` / ``BLOCK_M`` among the GPU tile configs, so no tile load needs a mask.
ROW_ALIGN = 256
#: Channels of the padded operands are rounded up to a multiple of this (the largest ``BLOCK_K``);
#: rows of 64 bf16 = 128 bytes keep every tile row 16-byte aligned whatever ``C`` is.
CHANNEL_ALIGN = 64
#: Tile side of the interpreter (CPU tests): rows and channels are padded to it there.
_INTERPRET_BLOCK = 16

#: ``precision="bf16"`` runs through the padded path (normalise + cast + pad in one pass, then a
#: ``K``-contiguous bf16 GEMM with the max / argmax in its epilogue). ``False``: the direct kernel.
PADDED_BF16 = True
#: Budget for the padded bf16 operands of one launch: the batch is processed in chunks of whole
#: batch items (at least one) whose padded query + support copies fit it. ``None``: one launch.
PADDED_MAX_BYTES: int | None = 64 * 2**20


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


if triton is not None:

    @triton.jit
    def _normalize_pad_kernel(
        src_ptr, w_ptr, out_ptr, norm_ptr,
        C, P, PP, CP,
        ssb, ssc, ssp,
        HAS_W: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EMULATE: tl.constexpr,
        ROUND_BF16: tl.constexpr,
    ):  # fmt: skip
        """One program: ``BLOCK_P`` rows of the padded ``PP, CP`` layout of batch ``program_id(1)``.

        ``out[b, p, c] = f[b, p] * src[b, c, p]`` rounded to 16 bits, ``f = w / (|w| |src[b, :, p]|)``
        (``w = 1`` without ``HAS_W``; ``f = 0`` where ``|w| |src| = 0``), and ``norm[b, p] = |w| |src|``.
        Rows ``p >= P`` and channels ``c >= C`` are written as zeros.
        """
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs_p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = offs_p < P
        base = src_ptr + b * ssb
        sq = tl.zeros([BLOCK_P], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            t = tl.load(
                base + offs_c[:, None] * ssc + offs_p[None, :] * ssp,
                mask=(offs_c < C)[:, None] & p_ok[None, :],
                other=0.0,
            ).to(tl.float32)  # BLOCK_C, BLOCK_P
            sq += tl.sum(t * t, axis=0)
        a = tl.sqrt(sq)
        if HAS_W:
            w = tl.load(w_ptr + b * P + offs_p, mask=p_ok, other=0.0)
            a = tl.abs(w) * a
            f = tl.where(a > 0, w / tl.where(a > 0, a, 1.0), 0.0)
        else:
            f = tl.where(a > 0, 1.0 / tl.where(a > 0, a, 1.0), 0.0)
        tl.store(norm_ptr + b * P + offs_p, a, mask=p_ok)
        out_base = out_ptr + b * PP * CP
        for c0 in range(0, CP, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            t = tl.load(
                base + offs_c[:, None] * ssc + offs_p[None, :] * ssp,
                mask=(offs_c < C)[:, None] & p_ok[None, :],
                other=0.0,
            ).to(tl.float32)
            t = t * f[None, :]
            if EMULATE and ROUND_BF16:  # the interpreter's float32 -> bfloat16 cast truncates
                t = _round_bf16(t)
            tl.store(
                out_base + offs_p[None, :] * CP + offs_c[:, None],
                t.to(out_ptr.dtype.element_ty),
                mask=(offs_p < PP)[None, :],
            )

    @triton.jit
    def _max_cosine_padded_kernel(
        xh_ptr, yh_ptr, xa_ptr, ya_ptr, val_ptr, idx_ptr,
        N, M, NP, MP, CP, SHOTS, SPLITS, BY,
        eps,
        BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, EMULATE: tl.constexpr,
    ):  # fmt: skip
        """One program: ``BLOCK_N`` query rows against split ``program_id(1)`` of the support rows
        (batch ``program_id(2)`` of ``BY``).

        The ``M`` support rows are cut into ``SPLITS`` runs of whole ``BLOCK_M`` tiles, so that a
        launch has enough programs to fill the GPU when a chunk holds few batch items; each split
        writes its own max / argmax to ``val[split, b, :]`` / ``idx[split, b, :]`` (``-inf`` / 0 for
        an empty split), reduced afterwards (:func:`_reduce_splits`).

        ``xh`` ``B, NP, CP`` and ``yh`` ``B * SHOTS, MP, CP``: unit-norm 16-bit rows, zero padded
        (``NP``, ``MP`` multiples of every ``BLOCK_N`` / ``BLOCK_M``, ``CP`` of ``BLOCK_K``: no load
        masks); ``xa`` ``B, N`` and ``ya`` ``B * SHOTS, M`` the float32 norms. The epilogue turns
        the dot of unit vectors into ``<x, y> / (|x||y| + eps)`` (factor ``p / (p + eps)``,
        ``p = |x||y|``), masks the padded columns ``m >= M`` with ``-inf`` (padding never wins)
        and folds the tile into a running max / first argmax.
        """
        pid_n = tl.program_id(0)
        split = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        xb = b // SHOTS
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        offs_k = tl.arange(0, BLOCK_K)
        per_split = tl.cdiv(tl.cdiv(M, BLOCK_M), SPLITS) * BLOCK_M
        m_start = split * per_split
        m_end = tl.minimum(M, m_start + per_split)
        x_ptrs = xh_ptr + xb * NP * CP + offs_n[:, None] * CP + offs_k[None, :]
        y_base = yh_ptr + b * MP * CP
        xa = tl.load(xa_ptr + xb * N + offs_n, mask=n_ok, other=0.0)
        best = tl.full([BLOCK_N], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], tl.int64)
        for m0 in range(m_start, m_end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            y_ptrs = y_base + offs_m[:, None] * CP + offs_k[None, :]
            acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
            for k0 in range(0, CP, BLOCK_K):
                xt = tl.load(x_ptrs + k0)  # BLOCK_N, BLOCK_K
                yt = tl.load(y_ptrs + k0)  # BLOCK_M, BLOCK_K
                if EMULATE:  # interpreter: 16-bit x 16-bit products are exact in float32
                    acc = tl.dot(xt.to(tl.float32), tl.trans(yt.to(tl.float32)), acc, input_precision="ieee")
                else:
                    acc = tl.dot(xt, tl.trans(yt), acc)
            m_ok = offs_m < M
            ya = tl.load(ya_ptr + b * M + offs_m, mask=m_ok, other=0.0)
            p = xa[:, None] * ya[None, :]
            s = acc * (p / (p + eps))
            s = tl.where(m_ok[None, :], s, float("-inf"))
            tile_best, tile_idx = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best > best  # strict: the first maximum wins, as in torch.max
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx.to(tl.int64) + m0, best_idx)
        row = split * BY + b
        tl.store(val_ptr + row * N + offs_n, best, mask=n_ok)
        tl.store(idx_ptr + row * N + offs_n, best_idx, mask=n_ok)

    # (BLOCK_N, BLOCK_M, BLOCK_K, warps, stages); BLOCK_N, BLOCK_M <= ROW_ALIGN, BLOCK_K <= CHANNEL_ALIGN
    _PADDED_GPU_CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bm, bk, w, s in [
            (128, 256, 64, 8, 3),
            (256, 128, 64, 8, 3),
            (128, 128, 64, 8, 3),
            (128, 128, 64, 4, 4),
            (64, 128, 64, 4, 4),
            (128, 64, 64, 4, 4),
        ]
    ]
    _max_cosine_padded_autotuned = triton.autotune(configs=_PADDED_GPU_CONFIGS, key=["N", "M", "CP", "SHOTS", "SPLITS"])(
        _max_cosine_padded_kernel
    )


def normalize_pad(
    src: torch.Tensor, weight: torch.Tensor | None = None, *, row_align: int | None = None, channel_align: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: L2-normalise ``src``'s columns, cast to 16 bits, transpose and zero-pad.

    Args:
        src: ``B, C, P`` float32 / float16 / bfloat16 (any strides).
        weight: optional ``B, P`` per-position weight ``w`` (column ``p`` becomes ``w src_p``).
        row_align, channel_align: padding multiples (default :data:`ROW_ALIGN` and
            :data:`CHANNEL_ALIGN` on the GPU, the interpreter's tile side under ``TRITON_INTERPRET``).

    Returns:
        ``(padded, norms)``: ``B, PP, CP`` (float16 for float16 input, else bfloat16) with
        ``padded[b, p, :C] = w src[b, :, p] / |w src[b, :, p]|`` (0 for a zero column) and zeros
        in rows ``p >= P`` and channels ``c >= C``; ``norms`` ``B, P`` float32 ``|w src[b, :, p]|``.
    """
    b, c, p = src.shape
    if row_align is None:
        row_align = _INTERPRET_BLOCK if _INTERPRET else ROW_ALIGN
    if channel_align is None:
        channel_align = _INTERPRET_BLOCK if _INTERPRET else CHANNEL_ALIGN
    dtype = torch.float16 if src.dtype == torch.float16 else torch.bfloat16
    out = torch.empty(b, _round_up(p, row_align), _round_up(c, channel_align), dtype=dtype, device=src.device)
    norms = torch.empty(b, p, dtype=torch.float32, device=src.device)
    _normalize_pad_into(src, weight, out, norms)
    return out, norms


def _normalize_pad_into(src: torch.Tensor, weight: torch.Tensor | None, out: torch.Tensor, norms: torch.Tensor) -> None:
    """:func:`normalize_pad` into preallocated ``out`` (``>= B`` items, rows / channels padded) and ``norms``."""
    b, c, p = src.shape
    if b == 0:
        return
    pp, cp = out.shape[1], out.shape[2]
    if _INTERPRET:
        block_p, block_c, kwargs = _INTERPRET_BLOCK, _INTERPRET_BLOCK, {}
    else:
        block_p, block_c, kwargs = 32, 64, {"num_warps": 4}
    w_arg = weight if weight is not None else norms  # unused pointer without HAS_W
    grid = (triton.cdiv(pp, block_p), b)
    _normalize_pad_kernel[grid](
        src, w_arg, out, norms, c, p, pp, cp, *src.stride(),
        HAS_W=weight is not None, BLOCK_P=block_p, BLOCK_C=block_c, EMULATE=_INTERPRET,
        ROUND_BF16=out.dtype == torch.bfloat16, **kwargs,
    )  # fmt: skip


#: Aim for this many programs per multiprocessor in a padded launch (see :func:`_num_splits`).
PROGRAMS_PER_SM = 2


def _num_splits(n: int, m: int, rows: int, device: torch.device) -> int:
    """How many runs to cut the support positions into, so that a launch fills the GPU.

    ``cdiv(N, 128) * rows`` programs of 128 query rows; when that is under
    :data:`PROGRAMS_PER_SM` per multiprocessor, split ``M`` (at most one split per 256 support
    rows). The interpreter splits ``M`` into up to 3 runs of 16 (exercised by the CPU tests).
    """
    if _INTERPRET:
        return max(1, min(3, triton.cdiv(m, 2 * _INTERPRET_BLOCK)))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = triton.cdiv(n, 128) * rows
    want = triton.cdiv(PROGRAMS_PER_SM * sms, max(programs, 1))
    return max(1, min(want, triton.cdiv(m, ROW_ALIGN)))


def _reduce_splits(part_v: torch.Tensor, part_i: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> None:
    """Max over the splits of ``part_v`` (``S, R, N``) into ``values`` (``R, N``), the first maximum winning.

    Splits are in increasing support order, so the first split holding the maximum has the
    smallest argmax, as one pass over all of ``M`` would return.
    """
    if part_v.shape[0] == 1:
        values.copy_(part_v[0])
        index.copy_(part_i[0])
        return
    best = part_v.amax(dim=0)
    first = (part_v == best).to(torch.uint8).argmax(dim=0, keepdim=True)  # first split at the max
    values.copy_(best)
    index.copy_(part_i.gather(0, first)[0])


def _launch_padded(
    x: torch.Tensor, y: torch.Tensor, eps: float, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The padded bf16 path of :func:`_launch` (same arguments and results, ``precision="bf16"``).

    Per chunk of whole batch items (see :data:`PADDED_MAX_BYTES`): :func:`normalize_pad` of the
    query and of the (weighted) support into reused buffers, then one GEMM-shaped kernel launch
    (support positions split into runs when the chunk alone would leave the GPU idle,
    :func:`_num_splits`) and the reduction over those runs. Temporary memory: the two padded
    buffers, the float32 norms and ``splits x rows x N`` partial maxima.
    """
    b, c, n = x.shape
    by, _, m = y.shape
    shots = by // b
    align = _INTERPRET_BLOCK if _INTERPRET else ROW_ALIGN
    calign = _INTERPRET_BLOCK if _INTERPRET else CHANNEL_ALIGN
    np_, mp, cp = _round_up(n, align), _round_up(m, align), _round_up(c, calign)
    dtype = torch.float16 if x.dtype == torch.float16 else torch.bfloat16
    per_item = (np_ + shots * mp) * cp * 2
    items = b if PADDED_MAX_BYTES is None else min(b, max(1, PADDED_MAX_BYTES // per_item))
    dev = x.device
    xh = torch.empty(items, np_, cp, dtype=dtype, device=dev)
    yh = torch.empty(items * shots, mp, cp, dtype=dtype, device=dev)
    xa = torch.empty(items, n, dtype=torch.float32, device=dev)
    ya = torch.empty(items * shots, m, dtype=torch.float32, device=dev)
    if weight is not None:
        weight = weight.to(torch.float32).contiguous()
    values = torch.empty(by, n, dtype=torch.float32, device=dev)
    index = torch.empty(by, n, dtype=torch.int64, device=dev)
    splits = _num_splits(n, m, items * shots, dev)
    part_v = torch.empty(splits, items * shots, n, dtype=torch.float32, device=dev)
    part_i = torch.empty(splits, items * shots, n, dtype=torch.int64, device=dev)
    with torch.cuda.device(dev) if dev.type == "cuda" else _nullcontext():
        for i0 in range(0, b, items):
            k = min(b, i0 + items) - i0
            s0, s1 = i0 * shots, (i0 + k) * shots
            _normalize_pad_into(x[i0 : i0 + k], None, xh, xa)
            _normalize_pad_into(y[s0:s1], None if weight is None else weight[s0:s1], yh, ya)
            args = (xh, yh, xa, ya, part_v, part_i, n, m, np_, mp, cp, shots, splits, items * shots, float(eps))
            if _INTERPRET:
                # as in _launch_direct: the interpreter's argmax raises on an all-NaN row, so it gets
                # finite data; the NaN pattern comes from the norms below either way.
                args = (xh.nan_to_num(0.0, 0.0, 0.0), yh.nan_to_num(0.0, 0.0, 0.0), xa.nan_to_num(1.0, 1.0, 1.0),
                        ya.nan_to_num(1.0, 1.0, 1.0), *args[4:])
                grid = (triton.cdiv(n, _INTERPRET_BLOCK), splits, k * shots)
                _max_cosine_padded_kernel[grid](
                    *args, BLOCK_N=_INTERPRET_BLOCK, BLOCK_M=_INTERPRET_BLOCK, BLOCK_K=_INTERPRET_BLOCK, EMULATE=True
                )
            else:
                grid = lambda meta, _k=k: (triton.cdiv(n, meta["BLOCK_N"]), splits, _k * shots)  # noqa: E731
                _max_cosine_padded_autotuned[grid](*args, EMULATE=False)
            _reduce_splits(part_v[:, : k * shots], part_i[:, : k * shots], values[s0:s1], index[s0:s1])
            values[s0:s1] = _propagate_nonfinite(values[s0:s1], xa[:k], ya[: k * shots], shots)
    return values, index


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
