"""Fused Triton max-cosine kernel: on a CUDA GPU, or on CPU through Triton's interpreter.

``TRITON_INTERPRET`` must be set before ``triton`` itself is imported (triton's
own helpers are decorated at import) and stay set while kernels run, so on a
machine without a GPU this module re-runs itself in a child ``pytest`` process
with ``TRITON_INTERPRET=1`` (``test_interpreted_in_subprocess``) and skips the
in-process copies of the tests. Run the interpreted tests directly with
``TRITON_INTERPRET=1 python3 -m pytest tests/test_fused.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from fewshot_priors.ops import fused as fused_module  # noqa: E402
from fewshot_priors.ops.region_maps import guided_region_map, prior_region_map  # noqa: E402
from fewshot_priors.ops.similarity import max_cosine_similarity, minmax_normalize  # noqa: E402

EPS = 1e-7
# max abs error of the min-max normalised map vs float64, per operand precision
MAP_TOL = {"bf16": 1e-2, "tf32": 1e-3, "fp32": 1e-5}
# reference top-1 minus top-2 above which the argmax must agree exactly (>> the raw cosine error)
ARGMAX_GAP = {"bf16": 1e-2, "tf32": 1e-3, "fp32": 1e-5}
MAP_TOL_SEEDS = {"bf16": 1, "tf32": 2, "fp32": 3}

_ON_GPU = torch.cuda.is_available() and fused_module.is_available()
_RUNNABLE = fused_module.interpreting() or _ON_GPU
_DEVICE = "cpu" if fused_module.interpreting() else "cuda"


@pytest.fixture()
def fused():
    if not _RUNNABLE:
        pytest.skip("no GPU: run with TRITON_INTERPRET=1 (done by test_interpreted_in_subprocess)")
    return fused_module


def _dev(*tensors: torch.Tensor):
    out = tuple(t.to(_DEVICE) for t in tensors)
    return out if len(out) > 1 else out[0]


@pytest.mark.skipif(_RUNNABLE, reason="the kernel runs in this process")
def test_interpreted_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("PYTEST_XDIST_WORKER", None)
    env["OMP_NUM_THREADS"] = "1"  # `make test` runs two xdist workers on two cores
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # the child must really have run the kernel tests, not skipped them
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert int(summary.split(" passed")[0].split()[-1]) >= 16, summary


def reference64(x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Plain float64 cosine matrix ``B, N, M``: <x, y> / (|x||y| + eps)."""
    x, y = x.detach().cpu().double(), y.detach().cpu().double()
    dots = torch.einsum("bcn,bcm->bnm", x, y)
    return dots / (x.norm(dim=1)[:, :, None] * y.norm(dim=1)[:, None, :] + eps)


def features(gen: torch.Generator, *shape: int, relu: bool) -> torch.Tensor:
    t = torch.randn(*shape, generator=gen)
    return t.relu() if relu else t


@pytest.mark.parametrize("precision", ["bf16", "tf32", "fp32"])
@pytest.mark.parametrize("relu", [False, True], ids=["signed", "relu"])
def test_matches_float64_reference(fused, precision, relu):
    # 37 x 53 positions, 72 / 200 channels: none a multiple of the 16-wide interpreter tiles.
    # Non-negative (ReLU) features have high cosines in a narrow range, which the min-max
    # normalisation stretches: bf16 operands need a few hundred channels to stay under 1e-2 there.
    gen = torch.Generator().manual_seed(10 * MAP_TOL_SEEDS[precision] + relu)
    c = 200 if relu else 72
    x = features(gen, 2, c, 37, relu=relu)
    y = features(gen, 2, c, 53, relu=relu)
    values, index = fused.max_cosine(*_dev(x, y), EPS, precision=precision)
    values, index = values.cpu(), index.cpu()
    assert values.shape == (2, 37) and values.dtype == torch.float32
    assert index.shape == (2, 37) and index.dtype == torch.int64
    assert torch.isfinite(values).all()

    sim = reference64(x, y)
    ref_values, _ = sim.max(dim=2)
    map_err = (minmax_normalize(values.double(), EPS) - minmax_normalize(ref_values, EPS)).abs().max()
    assert map_err <= MAP_TOL[precision], map_err
    assert (values.double() - ref_values).abs().max() <= MAP_TOL[precision]

    # the returned index must point at a position whose similarity is the max (up to precision) ...
    picked = torch.gather(sim, 2, index.unsqueeze(2)).squeeze(2)
    assert (ref_values - picked).abs().max() <= 2 * MAP_TOL[precision]
    # ... and be exactly the reference argmax wherever the top two are clearly apart
    top2 = sim.topk(2, dim=2).values
    clear = (top2[..., 0] - top2[..., 1]) > ARGMAX_GAP[precision]
    assert clear.float().mean() > 0.5  # the check below must cover most positions
    assert torch.equal(index[clear], sim.argmax(dim=2)[clear])


@pytest.mark.skipif(not fused_module.interpreting(), reason="checks the tf32 rounding of Triton's CPU interpreter (TRITON_INTERPRET=1), which is not active")
def test_tf32_rounds_operands(fused):
    # 1 + 2^-12 is not representable in tf32 (10 mantissa bits): the products must see 1.0, while the
    # norms (float32, computed beforehand) keep it. cos = x0 y0 / (|x| |y|) with y = (1, 0).
    a = 1.0 + 2.0**-12
    x = torch.tensor([[[a], [1.0]]])  # B=1, C=2, N=1
    y = torch.tensor([[[1.0], [0.0]]])  # B=1, C=2, M=1
    norm = (a * a + 1.0) ** 0.5
    v32, _ = fused.max_cosine(x, y, 0.0, precision="fp32")
    vtf, _ = fused.max_cosine(x, y, 0.0, precision="tf32")
    assert v32.item() == pytest.approx(a / norm, abs=1e-7)
    assert vtf.item() == pytest.approx(1.0 / norm, abs=1e-7)


def test_first_maximum_wins_across_tiles(fused):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 5, generator=gen)
    y = torch.randn(1, 8, 40, generator=gen)
    target = x[0, :, 2] * 3.0
    y[0, :, 3] = target  # tile 0
    y[0, :, 21] = target  # tile 1, identical column: same dot products bit for bit
    y[0, :, 38] = target  # tile 2 (partial)
    values, index = fused.max_cosine(*_dev(x, y), EPS, precision="fp32")
    assert index[0, 2].item() == 3
    assert values[0, 2].item() == pytest.approx(1.0, abs=1e-6)


def test_edge_sizes_and_zero_vectors(fused):
    gen = torch.Generator().manual_seed(2)
    for b, c, n, m in [(1, 1, 1, 1), (3, 3, 5, 1), (1, 17, 16, 17)]:
        x = torch.randn(b, c, n, generator=gen)
        y = torch.randn(b, c, m, generator=gen)
        values, index = fused.max_cosine(*_dev(x, y), EPS, precision="fp32")
        values, index = values.cpu(), index.cpu()
        ref_values, ref_index = reference64(x, y).max(dim=2)
        torch.testing.assert_close(values.double(), ref_values, atol=1e-5, rtol=0)
        assert torch.equal(index, ref_index)
    # zero vectors give cosine 0, never NaN
    x = torch.zeros(1, 4, 3)
    y = torch.randn(1, 4, 6, generator=gen)
    y[:, :, 2] = 0
    values, _ = fused.max_cosine(*_dev(x, y), EPS, precision="bf16")
    assert torch.equal(values.cpu(), torch.zeros(1, 3))


def test_strided_and_half_inputs(fused):
    gen = torch.Generator().manual_seed(3)
    # B, C, N with C the fast axis (channels_last features), and a transposed B, C, M
    x = torch.randn(2, 24, 6, 5, generator=gen).to(memory_format=torch.channels_last).flatten(2)
    y = torch.randn(2, 30, 24, generator=gen).transpose(1, 2)
    x, y = _dev(x, y)
    assert not x.is_contiguous() and not y.is_contiguous()
    values, index = fused.max_cosine(x, y, EPS, precision="fp32")
    ref_values, ref_index = fused.max_cosine(x.contiguous(), y.contiguous(), EPS, precision="fp32")
    torch.testing.assert_close(values, ref_values)
    assert torch.equal(index, ref_index)
    for dtype in (torch.float16, torch.bfloat16):
        v, _ = fused.max_cosine(x.to(dtype), y.to(dtype), EPS)
        assert v.dtype == dtype
        # reference64 computes on the CPU: compare there (v may be on the GPU)
        ref = reference64(x.to(dtype), y.to(dtype)).max(dim=2).values
        assert (v.cpu().double() - ref).abs().max() <= 1e-2


def test_gradients_match_chunked(fused):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 20, 23, generator=gen)
    y = torch.randn(2, 20, 31, generator=gen)
    w = torch.randn(2, 23, generator=gen)
    x, y, w = _dev(x, y, w)
    grads = {}
    for backend in ("fused", "chunked"):
        xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
        # the fused path of max_cosine_similarity uses the default precision; compare in fp32
        if backend == "fused":
            values, index = fused.max_cosine(xr, yr, EPS, precision="fp32")
        else:
            values, index = max_cosine_similarity(xr, yr, EPS, backend="chunked", return_index=True)
        (values * w).sum().backward()
        grads[backend] = (values.detach(), index, xr.grad, yr.grad)
    vf, idf, gxf, gyf = grads["fused"]
    vc, idc, gxc, gyc = grads["chunked"]
    assert torch.equal(idf, idc)
    torch.testing.assert_close(vf, vc, atol=1e-6, rtol=0)
    assert gxf.abs().sum() > 0 and gyf.abs().sum() > 0
    torch.testing.assert_close(gxf, gxc, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gyf, gyc, atol=1e-6, rtol=1e-5)


def _plain_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Float64 ``B, N`` region map: max cosine, then per-image min-max."""
    s = reference64(x, y).max(dim=2).values
    lo, hi = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    return (s - lo) / (hi - lo + EPS)


def test_prior_region_map_fused(fused):
    gen = torch.Generator().manual_seed(5)
    bridge = torch.randn(2, 32, 6, 7, generator=gen).relu()
    prior = torch.randn(2, 32, 5, 4, generator=gen).relu()
    bridge, prior = _dev(bridge, prior)
    out = prior_region_map(bridge, prior, backend="fused")
    assert out.shape == (2, 1, 6, 7)
    expected = _plain_map(bridge.flatten(2), prior.flatten(2)).view(2, 1, 6, 7)
    assert (out.cpu().double() - expected).abs().max() <= MAP_TOL["bf16"]

    # training through the fused map: gradients agree with the chunked path (same argmax here)
    b1, p1 = bridge.clone().requires_grad_(), prior.clone().requires_grad_()
    b2, p2 = bridge.clone().requires_grad_(), prior.clone().requires_grad_()
    weight = _dev(torch.randn(2, 1, 6, 7, generator=gen))
    orig = fused.DEFAULT_PRECISION
    fused.DEFAULT_PRECISION = "fp32"
    try:
        (prior_region_map(b1, p1, backend="fused") * weight).sum().backward()
    finally:
        fused.DEFAULT_PRECISION = orig
    (prior_region_map(b2, p2, backend="chunked") * weight).sum().backward()
    torch.testing.assert_close(b1.grad, b2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-4)


def test_guided_region_map_k_shot_fused(fused):
    gen = torch.Generator().manual_seed(6)
    b, k, c, h, w = 2, 3, 24, 5, 6
    query = torch.randn(b, c, h, w, generator=gen).relu()
    support = torch.randn(b, k, c, 4, 5, generator=gen).relu()
    masks = (torch.rand(b, k, 8, 10, generator=gen) > 0.5).float()
    query, support, masks = _dev(query, support, masks)
    out = guided_region_map(query, support, masks, backend="fused")
    assert out.shape == (b, 1, h, w)
    # plain reference: per-shot masked support, float64 map, average over shots
    small = torch.nn.functional.interpolate(masks, size=(4, 5), mode="bilinear", align_corners=True)
    maps = []
    for shot in range(k):
        y = (support[:, shot] * small[:, shot : shot + 1]).flatten(2)
        maps.append(_plain_map(query.flatten(2), y))
    expected = torch.stack(maps, 1).mean(1).view(b, 1, h, w)
    assert (out.cpu().double() - expected).abs().max() <= MAP_TOL["bf16"]
    chunked = guided_region_map(query, support, masks, backend="chunked")
    assert (out - chunked).abs().max() <= MAP_TOL["bf16"]


def test_bad_input(fused):
    x = _dev(torch.randn(1, 4, 3))
    with pytest.raises(ValueError, match="precision"):
        fused.max_cosine(x, x, precision="fp8")
    with pytest.raises(TypeError, match="`x`.*float64"):
        fused.max_cosine(x.double(), x.double())
    with pytest.raises(TypeError, match="same dtype"):
        fused.max_cosine(x, x.half())
    with pytest.raises(ValueError, match="`y`"):
        fused.max_cosine(x, _dev(torch.randn(4, 3)))
    with pytest.raises(ValueError, match="agree"):
        fused.max_cosine(x, _dev(torch.randn(1, 5, 3)))


@pytest.mark.skipif(fused_module.interpreting() or torch.cuda.is_available(), reason="kernel available here")
def test_cpu_without_interpreter_falls_back():
    assert not fused_module.is_available()
    x = torch.randn(1, 4, 3)
    with pytest.raises(RuntimeError, match="chunked"):
        fused_module.max_cosine(x, x)
    with pytest.raises(RuntimeError, match="chunked"):
        max_cosine_similarity(x, x, backend="fused")
    # auto never picks the fused kernel here and matches the chunked backend exactly
    torch.testing.assert_close(
        max_cosine_similarity(x, x, backend="auto"), max_cosine_similarity(x, x, backend="chunked")
    )


@pytest.mark.skipif(not fused_module.interpreting(), reason="checks the interpreter mode")
def test_auto_on_cpu_stays_chunked_under_interpreter(fused, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("auto must not use the fused kernel on CPU tensors")

    monkeypatch.setattr(fused, "max_cosine", boom)
    x = torch.randn(1, 4, 3)
    max_cosine_similarity(x, x, backend="auto")


# Unit roundoff of the operands the tensor cores see, per precision: bf16 keeps 8 significant bits and
# the padded path rounds to nearest (2^-8); tf32 keeps 11, but the tensor cores may truncate a float32
# operand instead of rounding it, so allow a whole last place (2^-10).
OPERAND_ROUNDOFF = {"bf16": 2.0**-8, "tf32": 2.0**-10}


def cosine_error_bound(precision: str, channels: int, abs_cos: torch.Tensor) -> torch.Tensor:
    """Worst-case bound on |computed - exact| for each cosine (float64, same shape as ``abs_cos``).

    Each operand carries a relative error <= u (``OPERAND_ROUNDOFF``), so every product
    ``x_c y_c`` is off by <= (2u + u^2) |x_c y_c|; float32 accumulation over C terms adds
    <= C 2^-23 sum |x_c y_c| (one bit of slack for the tensor cores' accumulation order), and the
    norms / epilogue a few float32 roundings. Summing, |error of <x, y>| / (|x||y|) <=
    (2u + u^2 + C 2^-23) * ``abs_cos`` + 2^-20, with ``abs_cos = sum_c |x_c||y_c| / (|x||y|)``
    (<= 1 by Cauchy-Schwarz, = the cosine for non-negative features).
    """
    u = OPERAND_ROUNDOFF[precision]
    return (2 * u + u * u + channels * 2.0**-23) * abs_cos + 2.0**-20


@pytest.mark.skipif(not _ON_GPU, reason="real sizes need the GPU")
@pytest.mark.parametrize("precision", ["bf16", "tf32"])
@pytest.mark.parametrize("shape", [(8, 2048, 3600, 3600), (8, 256, 3600, 3600), (2, 2048, 6561, 6561)])
def test_real_sizes_on_gpu(precision, shape):
    """The paper-scale sizes on the GPU, against float64 on the GPU with a derived error bound.

    Per position the max similarity may move by at most E_n = max_m bound_nm
    (:func:`cosine_error_bound`); the min-max map ``(s - lo) / (hi - lo)`` then by at most
    ``4 E / (hi - lo - 2 E)`` per image (E = max_n E_n: ``s``, ``lo`` and ``hi`` each move by <= E).
    A fixed 1e-3 on the map is not a bound for tf32: with non-negative features the cosines
    bunch in a narrow range (``hi - lo`` of a few 1e-2), which the normalisation stretches.
    """
    b, c, n, m = shape
    gen = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(b, c, n, generator=gen, device="cuda").relu_()
    y = torch.randn(b, c, m, generator=gen, device="cuda").relu_()
    values, index = fused_module.max_cosine(x, y, EPS, precision=precision)
    values = values.double()
    for i in range(b):  # one image at a time keeps the float64 matrices to N x M
        xd, yd = x[i].double(), y[i].double()
        denom = xd.norm(dim=0)[:, None] * yd.norm(dim=0)[None, :] + EPS
        sim = (xd.t() @ yd) / denom
        ref_values, ref_index = sim.max(dim=1)
        bound_n = cosine_error_bound(precision, c, (xd.abs().t() @ yd.abs()) / denom).max(dim=1).values
        del sim
        err_n = (values[i] - ref_values).abs()
        assert (err_n <= bound_n).all(), f"image {i}: value error {err_n.max().item():.2e}, bound {bound_n.max().item():.2e}"
        big_e = bound_n.max()
        spread = ref_values.max() - ref_values.min()
        map_bound = (4 * big_e / (spread - 2 * big_e)).item()
        map_err = (minmax_normalize(values[i : i + 1], EPS) - minmax_normalize(ref_values[None], EPS)).abs().max().item()
        print(f"{shape} {precision} image {i}: value err {err_n.max().item():.2e} (bound {big_e.item():.2e}), "
              f"map err {map_err:.2e} (bound {map_bound:.2e}, spread {spread.item():.3f})")  # fmt: skip
        assert map_err <= map_bound, (map_err, map_bound)
        assert (index[i] == ref_index).float().mean() > 0.9


def test_guided_max_cosine_folds_masks_and_shots(fused):
    """K shots share the query and the mask weights are folded in: same as masking first."""
    gen = torch.Generator().manual_seed(8)
    b, k, c, n, m = 2, 3, 24, 21, 35
    query = torch.randn(b, c, n, generator=gen).relu()
    support = torch.randn(b, k, c, m, generator=gen).relu()
    weight = torch.rand(b, k, m, generator=gen)
    weight[weight < 0.4] = 0  # hard zeros like a binary mask, soft values elsewhere
    weight[1, 2] = 0  # an all-zero mask: similarity 0 everywhere
    query, support, weight = _dev(query, support, weight)
    values, index = fused.guided_max_cosine(query, support, weight, EPS, precision="fp32")
    assert values.shape == (b, k, n) and index.shape == (b, k, n)
    masked = support * weight[:, :, None, :]
    for shot in range(k):
        ref_values, ref_index = reference64(query, masked[:, shot]).max(dim=2)
        torch.testing.assert_close(values[:, shot].cpu().double(), ref_values, atol=1e-5, rtol=0)
        assert torch.equal(index[:, shot].cpu(), ref_index)  # incl. the all-zero mask: first index
    assert torch.equal(values[1, 2].cpu(), torch.zeros(n))

    # gradients: the same as the plain kernel on explicitly masked, repeated inputs
    q1, s1 = query.clone().requires_grad_(), support.clone().requires_grad_()
    q2, s2 = query.clone().requires_grad_(), support.clone().requires_grad_()
    w = _dev(torch.randn(b, k, n, generator=gen))
    v1, _ = fused.guided_max_cosine(q1, s1, weight, EPS, precision="fp32")
    (v1 * w).sum().backward()
    x_rep = q2.unsqueeze(1).expand(b, k, c, n).reshape(b * k, c, n)
    y_eff = (s2 * weight[:, :, None, :]).reshape(b * k, c, m)
    v2, _ = fused.max_cosine(x_rep, y_eff, EPS, precision="fp32")
    (v2.view(b, k, n) * w).sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s1.grad, s2.grad, atol=1e-6, rtol=1e-5)
    assert q1.grad.abs().sum() > 0 and s1.grad.abs().sum() > 0

    with pytest.raises(ValueError, match="`weight`"):
        fused.guided_max_cosine(query, support, weight[:, :1])
    with pytest.raises(ValueError, match="`support`"):
        fused.guided_max_cosine(query, support[0], weight)


# ----------------------------------------------------------------------------- padded bf16 path
def test_normalize_pad_layout(fused):
    """Unit 16-bit rows, channels contiguous, zeros in every padded row and channel, float32 norms."""
    gen = torch.Generator().manual_seed(20)
    x = torch.randn(2, 21, 19, generator=gen) * 5
    x[1, :, 4] = 0  # a zero column: normalised to zeros, norm 0
    w = torch.rand(2, 19, generator=gen) - 0.3  # signed weights, some negative
    for weight in (None, w):
        padded, norms = fused.normalize_pad(_dev(x), None if weight is None else _dev(weight))
        padded, norms = padded.cpu(), norms.cpu()
        align = 16 if fused.interpreting() else fused.ROW_ALIGN
        calign = 16 if fused.interpreting() else fused.CHANNEL_ALIGN
        assert padded.dtype == torch.bfloat16 and padded.is_contiguous()
        assert padded.shape[1] % align == 0 and padded.shape[1] >= 19
        assert padded.shape[2] % calign == 0 and padded.shape[2] >= 21
        assert padded[:, 19:].abs().sum() == 0 and padded[:, :, 21:].abs().sum() == 0
        eff = x if weight is None else x * weight[:, None, :]
        expected_norms = eff.double().norm(dim=1)
        torch.testing.assert_close(norms.double(), expected_norms, rtol=1e-6, atol=0)
        unit = eff.double() / expected_norms.clamp_min(1e-300)[:, None, :]
        # rounded to nearest bf16: relative error <= 2^-8 per element
        diff = (padded[:, :19, :21].double().transpose(1, 2) - unit).abs()
        assert (diff <= 2.0**-8 * unit.abs() + 1e-30).all()
        assert padded[1, 4].abs().sum() == 0
    half, _ = fused.normalize_pad(_dev(x.half()))
    assert half.dtype == torch.float16


@pytest.mark.parametrize("n, m, c", [(37, 53, 72), (1, 17, 3), (31, 1, 20), (49, 33, 200)])
def test_padded_matches_reference_odd_sizes(fused, n, m, c):
    """Odd N / M / C (none a multiple of the tiles): values within the bf16 bound, argmax exact where clear."""
    gen = torch.Generator().manual_seed(n * 1000 + m)
    x = torch.randn(2, c, n, generator=gen)
    y = torch.randn(2, c, m, generator=gen)
    values, index = fused._launch_padded(*_dev(x, y), EPS)
    values, index = values.cpu(), index.cpu()
    assert values.shape == (2, n) and index.shape == (2, n)
    sim = reference64(x, y)
    ref_values, ref_index = sim.max(dim=2)
    assert (values.double() - ref_values).abs().max() <= 2 * 2.0**-8 + 1e-6
    assert ((index >= 0) & (index < m)).all()
    top2 = sim.topk(min(2, m), dim=2).values
    clear = (top2[..., 0] - top2[..., -1]) > 2e-2 if m > 1 else torch.ones_like(ref_index, dtype=torch.bool)
    assert torch.equal(index[clear], ref_index[clear])


def test_padding_never_wins_the_max(fused):
    """All cosines negative: a padded (zero) support row would score 0 and win if it were not masked."""
    gen = torch.Generator().manual_seed(21)
    x = torch.rand(2, 24, 29, generator=gen) + 0.1  # positive
    y = -(torch.rand(2, 24, 19, generator=gen) + 0.1)  # negative: every cosine < 0
    values, index = fused._launch_padded(*_dev(x, y), EPS)
    values, index = values.cpu(), index.cpu()
    assert (values < 0).all()
    assert ((index >= 0) & (index < 19)).all()
    ref_values = reference64(x, y).max(dim=2).values
    assert (values.double() - ref_values).abs().max() <= 2 * 2.0**-8
    # a single support position (M = 1, 15 padded rows): every query position must pick it
    values1, index1 = fused._launch_padded(*_dev(x, y[:, :, :1]), EPS)
    assert torch.equal(index1.cpu(), torch.zeros(2, 29, dtype=torch.int64))
    assert (values1.cpu() < 0).all()


def test_padded_argmax_indexes_unpadded_positions_across_tiles(fused):
    """The first maximum wins across tiles; indices count unpadded support positions."""
    gen = torch.Generator().manual_seed(22)
    x = torch.randn(1, 8, 5, generator=gen)
    y = torch.randn(1, 8, 40, generator=gen)
    target = x[0, :, 2] * 3.0
    for col in (3, 21, 38):  # tiles 0, 1 and the partial tile 2 (padded to 48 in the interpreter)
        y[0, :, col] = target
    values, index = fused._launch_padded(*_dev(x, y), EPS)
    assert index[0, 2].item() == 3
    assert values[0, 2].item() == pytest.approx(1.0, abs=2 * 2.0**-8)
    y2 = y.clone()
    y2[0, :, 3] = y2[0, :, 21] = -target  # now only the last, partial tile holds the match
    _, index2 = fused._launch_padded(*_dev(x, y2), EPS)
    assert index2[0, 2].item() == 38


def test_padded_chunking_and_weights(fused, monkeypatch):
    """Chunks of whole batch items give bit-identical results; weights and shots as the direct kernel."""
    gen = torch.Generator().manual_seed(23)
    b, k, c, n, m = 3, 2, 40, 23, 27
    query = torch.randn(b, c, n, generator=gen).relu()
    support = torch.randn(b, k, c, m, generator=gen).relu()
    weight = torch.rand(b, k, m, generator=gen)
    weight[weight < 0.4] = 0
    weight[2, 1] = 0  # an all-zero mask: similarity 0, first index
    query, support, weight = _dev(query, support, weight)
    monkeypatch.setattr(fused, "PADDED_MAX_BYTES", None)
    whole = fused.guided_max_cosine(query, support, weight, EPS)
    monkeypatch.setattr(fused, "PADDED_MAX_BYTES", 1)  # one batch item per launch
    chunked = fused.guided_max_cosine(query, support, weight, EPS)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert torch.equal(whole[0][2, 1].cpu(), torch.zeros(n))
    assert torch.equal(whole[1][2, 1].cpu(), torch.zeros(n, dtype=torch.int64))
    masked = (support * weight[:, :, None, :]).cpu()
    for shot in range(k):
        ref_values, _ = reference64(query, masked[:, shot]).max(dim=2)
        assert (whole[0][:, shot].cpu().double() - ref_values).abs().max() <= 2 * 2.0**-8
    # the direct kernel (bf16 operands too) agrees within the two roundings
    monkeypatch.setattr(fused, "PADDED_BF16", False)
    direct = fused.guided_max_cosine(query, support, weight, EPS)
    assert (direct[0] - whole[0]).abs().max() <= 4 * 2.0**-8


@pytest.mark.skipif(fused_module.interpreting(), reason="compiles for sm_90 with the real backend")
def test_padded_kernel_compiles_to_hopper_mma():
    """Without a GPU: Triton compiles the padded kernel for sm_90 to wgmma fed by cp.async pipelining.

    The hints are what the JIT derives at run time from the padded layout (16-aligned pointers,
    ``NP``, ``MP``, ``CP`` multiples of 16); the direct kernel on odd ``N`` gets no such hint for
    its channel stride, which is the COCO-size cliff.
    """
    triton = pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:  # pragma: no cover - other triton layout
        pytest.skip("triton without ASTSource / GPUTarget")
    sig = {
        "xh_ptr": "*bf16", "yh_ptr": "*bf16", "xa_ptr": "*fp32", "ya_ptr": "*fp32", "val_ptr": "*fp32",
        "idx_ptr": "*i64", "N": "i32", "M": "i32", "NP": "i32", "MP": "i32", "CP": "i32", "SHOTS": "i32",
        "SPLITS": "i32", "BY": "i32",
        "eps": "fp32", "BLOCK_N": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "EMULATE": "constexpr",
    }  # fmt: skip
    names = list(sig)
    aligned = ["xh_ptr", "yh_ptr", "xa_ptr", "ya_ptr", "val_ptr", "idx_ptr", "NP", "MP", "CP"]
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    cfg = fused_module._PADDED_GPU_CONFIGS[0]
    assert cfg.kwargs["BLOCK_N"] <= fused_module.ROW_ALIGN and cfg.kwargs["BLOCK_K"] <= fused_module.CHANNEL_ALIGN
    src = ASTSource(
        fn=fused_module._max_cosine_padded_kernel, signature=sig, constexprs={**cfg.kwargs, "EMULATE": False}, attrs=attrs
    )
    try:
        compiled = triton.compile(
            src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        )
    except Exception as exc:  # pragma: no cover - no ptxas / backend in this install
        pytest.skip(f"cannot compile for sm_90 here: {exc}")
    ptx = compiled.asm["ptx"]
    assert "wgmma.mma_async" in ptx
    assert "cp.async" in ptx  # software-pipelined global -> shared copies
    assert ".local" not in ptx  # no register spills to local memory


def test_padded_support_splits_agree(fused, monkeypatch):
    """Cutting the support positions into runs (to fill the GPU) changes no value and no index."""
    gen = torch.Generator().manual_seed(24)
    x = torch.randn(2, 20, 18, generator=gen)
    y = torch.randn(2, 20, 75, generator=gen)
    y[:, :, 70] = y[:, :, 5]  # an exact tie across runs: the first position must win
    x, y = _dev(x, y)
    results = {}
    for splits in (1, 2, 5, 9):  # 9 runs of one 16-wide tile leave some runs empty (75 -> 5 tiles)
        monkeypatch.setattr(fused, "_num_splits", lambda *args, s=splits: s)
        results[splits] = fused._launch_padded(x, y, EPS)
    for splits in (2, 5, 9):
        assert torch.equal(results[splits][0], results[1][0])
        assert torch.equal(results[splits][1], results[1][1])
    assert not (results[1][1] == 70).any()


def test_nan_and_inf_give_the_nan_pattern_of_the_other_backends(fused):
    """The kernel's running max skips NaN; the result must still match torch.max's propagation."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, 20, generator=gen)
    y = torch.randn(3, 8, 37, generator=gen)
    x[0, 2, 5] = float("nan")  # one position of image 0
    y[1, 1, 33] = float("inf")  # a late y position (last tile) of image 1: all of image 1
    ref = max_cosine_similarity(x, y, backend="reference")
    values, _ = fused.max_cosine(*_dev(x, y), EPS, precision="fp32")
    assert torch.equal(torch.isnan(values.cpu()), torch.isnan(ref))
    assert torch.isnan(ref[0, 5]) and torch.isnan(ref[1]).all() and torch.isfinite(ref[2]).all()
    torch.testing.assert_close(values.cpu(), ref, equal_nan=True, atol=1e-5, rtol=0)
    values16, _ = fused.max_cosine(*_dev(x, y), EPS, precision="bf16")  # the padded path: same pattern
    assert torch.equal(torch.isnan(values16.cpu()), torch.isnan(ref))
    # the region maps: NaN over the whole image, in every backend
    bridge, prior = x.view(3, 8, 4, 5), y[..., :36].reshape(3, 8, 6, 6).clone()
    prior[2, 0, 5, 5] = float("nan")
    maps = prior_region_map(*_dev(bridge, prior), backend="fused").cpu()
    ref_maps = prior_region_map(bridge, prior, backend="chunked", max_chunk_bytes=64)
    assert torch.isnan(ref_maps).all()
    assert torch.isnan(maps).all()
    # guided, K shots, NaN outside the mask (0 * NaN = NaN in the chunked backend too)
    q = torch.randn(2, 8, 4, 4, generator=gen)
    s = torch.randn(2, 2, 8, 4, 4, generator=gen)
    m = torch.zeros(2, 2, 4, 4)
    m[..., :2, :2] = 1
    s[1, 1, :, 3, 3] = float("nan")
    ref_guided = guided_region_map(q, s, m, backend="chunked")
    guided = guided_region_map(*_dev(q, s, m), backend="fused").cpu()
    assert torch.isnan(ref_guided[1]).all() and torch.isfinite(ref_guided[0]).all()
    assert torch.equal(torch.isnan(guided), torch.isnan(ref_guided))
    torch.testing.assert_close(guided, ref_guided, equal_nan=True, atol=1e-2, rtol=0)
