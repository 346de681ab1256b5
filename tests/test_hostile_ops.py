"""Hypothesis: the ops under hostile shapes, dtypes, mask values and NaN / inf.

Every call must either raise a ``ValueError`` / ``TypeError`` whose message names one
of the call's arguments in backticks, or return a result that equals the reference
backend (same NaN pattern), lies in ``[0, 1]`` where that is documented and is NaN
exactly for the images whose features are not finite. Any other exception (an
``IndexError`` or ``RuntimeError`` from deep inside torch) fails the test.

Sizes are tiny and ``max_examples`` small: the whole file runs in seconds.
"""

from __future__ import annotations

import re

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fewshot_priors as fp
from fewshot_priors.ops import fused as fused_module
from fewshot_priors.ops.pooling import AREA_EPS

SETTINGS = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# the fused kernel is exercised here only where it runs in-process (GPU, or TRITON_INTERPRET=1)
BACKENDS = ["chunked", "reference"] + (
    ["fused"] if fused_module.is_available() and (fused_module.interpreting() or torch.cuda.is_available()) else []
)
DEVICE = "cuda" if "fused" in BACKENDS and not fused_module.interpreting() else "cpu"
# tolerance of a backend vs the reference, by dtype (bf16 has 8 mantissa bits; fused uses bf16 operands)
ATOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
FUSED_ATOL = 3e-2


def EMPTY(names: list[str]):
    """Which argument (if any) gets a zero size: mostly none."""
    return st.sampled_from([None] * (2 * len(names)) + names)


def _emptied(size: tuple[int, int], yes: bool) -> tuple[int, int]:
    return (0, size[1]) if yes else size


def named_error(call, names: tuple[str, ...]):
    """Run ``call``; a ValueError / TypeError must name one of ``names``; returns the result or None."""
    try:
        result = call()
    except (ValueError, TypeError) as err:
        named = set(re.findall(r"`([A-Za-z_]+)`", str(err)))
        assert named & set(names), f"error does not name an argument of {names}: {err}"
        event(f"rejected: {type(err).__name__} naming {sorted(named & set(names))}")
        return None
    event("accepted")
    return result


@st.composite
def features(draw, batch: int, channels: int, spatial: tuple[int, ...], dtype: torch.dtype, hostile: bool = True):
    """Features in [-4, 4], optionally with one NaN / +inf / -inf planted at a random place."""
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(batch, channels, *spatial, generator=g, dtype=torch.float64) * 8 - 4)
    if t.shape[-1] and draw(st.booleans()):  # some all-zero feature vectors (cosine 0, never 0 / 0)
        t[..., 0] = 0
    if hostile and t.numel() and draw(st.integers(0, 3)) == 0:
        idx = draw(st.integers(0, t.numel() - 1))
        t.view(-1)[idx] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    return t.to(dtype)


def bad_images(t: torch.Tensor) -> torch.Tensor:
    """``B`` bool: images holding a non-finite value."""
    return ~torch.isfinite(t.double().flatten(1)).all(dim=1) if t.shape[0] else torch.zeros(0, dtype=torch.bool)


@st.composite
def masks(draw, shape: tuple[int, ...]):
    """Masks of every kind a user might pass: all 0, all 1, 0/1, with 255, soft, bool, uint8, bad values."""
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["zeros", "ones", "binary", "ignore", "soft", "only255", "bad"]))
    if kind == "zeros":
        m = torch.zeros(shape)
    elif kind == "ones":
        m = torch.ones(shape)
    elif kind == "binary":
        m = (torch.rand(shape, generator=g) > 0.5).float()
    elif kind == "ignore":
        m = (torch.rand(shape, generator=g) > 0.5).float()
        m[torch.rand(shape, generator=g) > 0.7] = 255
    elif kind == "soft":
        m = torch.rand(shape, generator=g)
    elif kind == "only255":
        m = torch.full(shape, 255.0)
    else:
        m = torch.rand(shape, generator=g).float()
        if m.numel():
            m.view(-1)[0] = draw(st.sampled_from([2.0, -1.0, 254.0, float("nan"), float("inf")]))
    dtype = draw(st.sampled_from([torch.float32, torch.uint8, torch.long, torch.bool, torch.float64]))
    if dtype == torch.bool:
        return m == 1, True
    if not dtype.is_floating_point:
        m = torch.nan_to_num(m, nan=0.0, posinf=255.0).clamp(-1, 255).floor()
    m = m.to(dtype)
    v = m.double()
    return m, bool((((v >= 0) & (v <= 1)) | (v == 255)).all())


def assert_same(out: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    assert out.shape == ref.shape
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), (out, ref)
    torch.testing.assert_close(out.double().cpu(), ref.double().cpu(), equal_nan=True, atol=atol, rtol=0)


def on(device: str, *ts: torch.Tensor):
    return tuple(t.to(device) for t in ts)


# ----------------------------------------------------------------------------- max_cosine_similarity
@SETTINGS
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(0, 4),
    n=st.integers(1, 6),
    m=st.integers(1, 6),
    dtype=st.sampled_from(FLOATS),
    budget=st.sampled_from([1, 7, 64, 2**20]),
    empty=EMPTY(["x", "y"]),
)
def test_max_cosine_similarity_backends_agree(data, b, c, n, m, dtype, budget, empty):
    n, m = n * (empty != "x"), m * (empty != "y")
    x = data.draw(features(b, c, (n,), dtype))
    y = data.draw(features(b, c, (m,), dtype))
    ref = named_error(lambda: fp.max_cosine_similarity(x, y, backend="reference"), ("x", "y"))
    if ref is None:
        assert empty  # the only rejected case here
        return
    assert ref.shape == (b, n)
    for backend in BACKENDS:
        if backend == "reference" or (backend == "fused" and dtype == torch.float64):
            continue
        xs, ys = on(DEVICE if backend == "fused" else "cpu", x, y)
        out = fp.max_cosine_similarity(xs, ys, backend=backend, max_chunk_bytes=budget)
        assert_same(out, ref, FUSED_ATOL if backend == "fused" else ATOL[dtype])
    # NaN exactly at non-finite x positions and for every position of an image with a non-finite y
    bad_x = ~torch.isfinite(x.double()).all(dim=1)
    bad_y = ~torch.isfinite(y.double().flatten(1)).all(dim=1, keepdim=True) if b else bad_x
    assert torch.equal(torch.isnan(ref), bad_x | bad_y)
    fin = ref[~torch.isnan(ref)].double()
    assert (fin.abs() <= 1 + 1e-2).all()


# ----------------------------------------------------------------------------- prior_region_map
@SETTINGS
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(1, 4),
    hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    phw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    dtype=st.sampled_from(FLOATS),
    budget=st.sampled_from([1, 50, 2**20]),
    empty=EMPTY(["bridge", "prior"]),
)
def test_prior_region_map_is_bounded_backend_independent_and_nan_per_image(data, b, c, hw, phw, dtype, budget, empty):
    hw, phw = _emptied(hw, empty == "bridge"), _emptied(phw, empty == "prior")
    bridge = data.draw(features(b, c, hw, dtype))
    prior = data.draw(features(b, c, phw, dtype))
    ref = named_error(lambda: fp.prior_region_map(bridge, prior, backend="reference"), ("bridge", "prior"))
    if ref is None:
        assert empty
        return
    assert ref.shape == (b, 1, *hw)
    for backend in BACKENDS:
        if backend == "reference" or (backend == "fused" and dtype == torch.float64):
            continue
        args = on(DEVICE if backend == "fused" else "cpu", bridge, prior)
        out = fp.prior_region_map(*args, backend=backend, max_chunk_bytes=budget)
        # normalisation divides by (max - min): near-ties amplify low-precision differences
        if dtype in (torch.float16, torch.bfloat16) or backend == "fused":
            assert torch.equal(torch.isnan(out.cpu()), torch.isnan(ref))
        else:
            assert_same(out, ref, 1e-4 if dtype == torch.float32 else 1e-9)
    bad = bad_images(bridge) | bad_images(prior)
    assert torch.isnan(ref[bad]).all()
    good = ref[~bad]
    assert torch.isfinite(good).all() and (good >= 0).all() and (good <= 1).all()


# ----------------------------------------------------------------------------- guided_region_map
@SETTINGS
@given(
    data=st.data(),
    b=st.integers(0, 2),
    k=st.integers(1, 3),
    c=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    shw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    mhw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    one_shot_form=st.booleans(),
    empty=EMPTY(["k", "query", "support", "mask"]),
)
def test_guided_region_map_hostile_masks(data, b, k, c, hw, shw, mhw, one_shot_form, empty):
    dtype = torch.float32
    k, hw, shw, mhw = k * (empty != "k"), _emptied(hw, empty == "query"), _emptied(shw, empty == "support"), _emptied(mhw, empty == "mask")
    query = data.draw(features(b, c, hw, dtype))
    support = data.draw(torch_strategy_support(b, k, c, shw, dtype))
    mask, mask_ok = data.draw(masks((b, k, *mhw)))
    if one_shot_form and k == 1:
        support, mask = support[:, 0], mask[:, 0]
    names = ("query", "support", "support_mask")
    ref = named_error(lambda: fp.guided_region_map(query, support, mask, backend="reference"), names)
    if ref is None:
        assert empty or not mask_ok
        return
    assert mask_ok or b == 0 or 0 in mhw, "a bad mask value was accepted"
    assert ref.shape == (b, 1, *hw)
    for backend in BACKENDS:
        if backend == "reference":
            continue
        for budget in (1, 2**20):
            dev = DEVICE if backend == "fused" else "cpu"
            out = fp.guided_region_map(*on(dev, query, support, mask), backend=backend, max_chunk_bytes=budget)
            if backend == "fused":
                assert torch.equal(torch.isnan(out.cpu()), torch.isnan(ref))
            else:
                assert_same(out, ref, 1e-4)
    bad = bad_images(query) | bad_images(support.flatten(1))
    assert torch.isnan(ref[bad]).all()
    good = ref[~bad]
    assert torch.isfinite(good).all() and (good >= 0).all() and (good <= 1).all()


def torch_strategy_support(b, k, c, shw, dtype):
    return features(b, k * c, shw, dtype).map(lambda t: t.reshape(b, k, c, *shw))


# ----------------------------------------------------------------------------- masked_average_pool
@SETTINGS
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(0, 3),
    hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    mhw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    keepdim=st.booleans(),
    empty=EMPTY(["features", "mask"]),
)
def test_masked_average_pool_hostile(data, b, c, hw, mhw, dtype, keepdim, empty):
    hw, mhw = _emptied(hw, empty == "features"), _emptied(mhw, empty == "mask")
    feats = data.draw(features(b, c, hw, dtype))
    mask, mask_ok = data.draw(masks((b, *mhw)))
    out = named_error(lambda: fp.masked_average_pool(feats, mask, keepdim=keepdim), ("features", "mask"))
    if out is None:
        assert empty or not mask_ok
        return
    assert mask_ok or b == 0
    assert out.shape == ((b, c, 1, 1) if keepdim else (b, c))
    out = out.flatten(1)
    m = mask.double()
    m = torch.where(m == 255, torch.zeros_like(m), m)
    bad = bad_images(feats)
    # a weighted mean with weights summing to <= 1: within the range of the (finite) features
    fin = feats.double()[~bad]
    if fin.numel():
        lo = fin.flatten(2).amin(dim=2).clamp(max=0)
        hi = fin.flatten(2).amax(dim=2).clamp(min=0)
        res = out.double()[~bad]
        assert (res >= lo - 1e-6).all() and (res <= hi + 1e-6).all()
    # no foreground at all -> the zero prototype
    empty = (m.flatten(1) == 0).all(dim=1) & ~bad
    assert (out[empty] == 0).all()
    # full foreground at the feature size -> the plain mean (up to the area epsilon)
    if tuple(mhw) == tuple(hw) and c:
        full = (m.flatten(1) == 1).all(dim=1) & ~bad
        area = hw[0] * hw[1]
        expect = feats.double().flatten(2).sum(2) / (area + AREA_EPS)
        torch.testing.assert_close(out.double()[full], expect[full], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- superpixel_pool
@SETTINGS
@given(
    data=st.data(),
    b=st.integers(0, 2),
    c=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    lhw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    p=st.integers(1, 5),
    mode=st.sampled_from(["area"] * 3 + ["nearest"] * 3 + ["bilinear"]),
    label_dtype=st.sampled_from([torch.long] * 4 + [torch.int32, torch.uint8, torch.float32]),
    empty=EMPTY(["features", "labels", "num_segments"]),
)
def test_superpixel_pool_hostile(data, b, c, hw, lhw, p, mode, label_dtype, empty):
    hw, lhw, p = _emptied(hw, empty == "features"), _emptied(lhw, empty == "labels"), p * (empty != "num_segments")
    feats = data.draw(features(b, c, hw, torch.float32))
    seed = data.draw(st.integers(0, 2**16))
    high = p + data.draw(st.sampled_from([0, 0, 0, 2]))  # mostly in range, sometimes ids >= num_segments
    labels = torch.randint(-1, max(high, 1), (b, *lhw), generator=torch.Generator().manual_seed(seed))
    if label_dtype == torch.uint8:
        labels = labels.clamp(min=0)
    labels = labels.to(label_dtype)
    out = named_error(lambda: fp.superpixel_pool(feats, labels, p, mode=mode), ("features", "labels", "num_segments", "mode"))
    if out is None:
        in_range = labels.numel() == 0 or int(labels.max()) < p
        assert empty or mode == "bilinear" or label_dtype == torch.float32 or not in_range
        return
    pooled, valid = out
    assert pooled.shape == (b, p, c) and valid.shape == (b, p) and valid.dtype == torch.bool
    assert (pooled[~valid] == 0).all()  # invalid slots are zeros, even next to NaN features
    for i in range(b):
        # per channel: a non-finite value anywhere in it poisons it for every patch (dense matmul with
        # zero weights), otherwise a mean of feature cells lies within their range
        f = feats[i].flatten(1).double()
        v = pooled[i][valid[i]].double()  # patches, C
        bad_c = ~torch.isfinite(f).all(dim=1)
        assert torch.isnan(v[:, bad_c]).all() and torch.isfinite(v[:, ~bad_c]).all()
        lo, hi = f.amin(dim=1), f.amax(dim=1)
        ok = ~bad_c
        assert (v[:, ok] >= lo[ok] - 1e-5).all() and (v[:, ok] <= hi[ok] + 1e-5).all()
        if mode == "area":  # every labelled pixel votes: valid == the id occurs
            present = torch.zeros(p, dtype=torch.bool)
            ids = labels[i].long()
            present[ids[ids >= 0].unique()] = True
            assert torch.equal(valid[i], present)


# ----------------------------------------------------------------------------- value checks off
@settings(max_examples=15, deadline=None, derandomize=True)
@given(data=st.data(), b=st.integers(1, 2), hw=st.tuples(st.integers(1, 4), st.integers(1, 4)))
def test_checks_off_changes_nothing_for_valid_input(data, b, hw):
    """Turning the value checks off must not change any result for valid input."""
    q = data.draw(features(b, 3, hw, torch.float32, hostile=False))
    s = data.draw(torch_strategy_support(b, 2, 3, hw, torch.float32))
    mask, ok = data.draw(masks((b, 2, *hw)))
    if not ok:
        return
    on_ = fp.guided_region_map(q, s, mask), fp.masked_average_pool(q, mask[:, 0])
    with fp.checks_disabled():
        off = fp.guided_region_map(q, s, mask), fp.masked_average_pool(q, mask[:, 0])
    for a, b_ in zip(on_, off):
        assert torch.equal(torch.isnan(a), torch.isnan(b_))
        torch.testing.assert_close(a, b_, equal_nan=True, rtol=0, atol=0)
