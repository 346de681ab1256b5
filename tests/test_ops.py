"""Functional ops: region maps, max-cosine similarity, masked average pooling."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fewshot_priors as fp
from fewshot_priors.ops import similarity
from fewshot_priors.ops.similarity import max_cosine_similarity, minmax_normalize, tile_sizes

EPS = 1e-7


# ----------------------------------------------------------------------------- references
def ref_max_cosine(x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Plain float64 loop: x B,C,N; y B,C,M -> B,N."""
    x, y = x.double(), y.double()
    out = torch.empty(x.shape[0], x.shape[2], dtype=torch.float64)
    for b in range(x.shape[0]):
        for n in range(x.shape[2]):
            xv = x[b, :, n]
            best = -float("inf")
            for m in range(y.shape[2]):
                yv = y[b, :, m]
                c = float(xv @ yv) / (float(xv.norm()) * float(yv.norm()) + eps)
                best = max(best, c)
            out[b, n] = best
    return out


def ref_normalise(s: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    lo = s.min(dim=1, keepdim=True).values
    hi = s.max(dim=1, keepdim=True).values
    return (s - lo) / (hi - lo + eps)


def ref_prior_map(bridge, prior):
    b, _, h, w = bridge.shape
    s = ref_max_cosine(bridge.flatten(2), prior.flatten(2))
    return ref_normalise(s).view(b, 1, h, w)


def ref_guided_map(query, support, masks):
    """query B,C,H,W; support B,K,C,h,w; masks B,K,h,w already at support size."""
    b, k = support.shape[:2]
    h, w = query.shape[-2:]
    maps = []
    for i in range(k):
        masked = support[:, i] * masks[:, i, None]
        s = ref_max_cosine(query.flatten(2), masked.flatten(2))
        maps.append(ref_normalise(s))
    return torch.stack(maps, 1).mean(1).view(b, 1, h, w)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------- correctness
def test_prior_region_map_matches_float64_reference(gen):
    bridge = torch.randn(2, 6, 4, 5, generator=gen)
    prior = torch.randn(2, 6, 3, 3, generator=gen)  # different spatial size
    out = fp.prior_region_map(bridge, prior)
    assert out.shape == (2, 1, 4, 5)
    torch.testing.assert_close(out.double(), ref_prior_map(bridge, prior), atol=1e-5, rtol=0)
    assert out.min() >= 0 and out.max() <= 1
    # per image the normalised map spans [0, 1)
    assert torch.allclose(out.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(out.flatten(1).max(1).values, torch.ones(2), atol=1e-5)


def test_guided_region_map_matches_reference_one_and_k_shot(gen):
    query = torch.randn(2, 5, 4, 4, generator=gen)
    support = torch.randn(2, 3, 5, 4, 4, generator=gen)
    masks = (torch.rand(2, 3, 4, 4, generator=gen) > 0.4).float()
    out = fp.guided_region_map(query, support, masks)
    torch.testing.assert_close(out.double(), ref_guided_map(query, support, masks), atol=1e-5, rtol=0)
    # 1-shot forms: B,C,h,w with B,1,h,w or B,h,w masks
    one = fp.guided_region_map(query, support[:, 0], masks[:, :1])
    torch.testing.assert_close(one, fp.guided_region_map(query, support[:, 0], masks[:, 0]))
    torch.testing.assert_close(one.double(), ref_guided_map(query, support[:, :1], masks[:, :1]), atol=1e-5, rtol=0)


def test_k_shot_map_is_mean_of_one_shot_maps(gen):
    query = torch.randn(1, 4, 5, 5, generator=gen)
    support = torch.randn(1, 4, 4, 5, 5, generator=gen)
    masks = (torch.rand(1, 4, 9, 9, generator=gen) > 0.5).float()
    k_map = fp.guided_region_map(query, support, masks)
    singles = [fp.guided_region_map(query, support[:, i], masks[:, i]) for i in range(4)]
    torch.testing.assert_close(k_map, torch.stack(singles).mean(0))


def test_support_mask_is_resized_bilinearly_to_feature_size(gen):
    query = torch.randn(1, 3, 4, 4, generator=gen)
    support = torch.randn(1, 3, 4, 4, generator=gen)
    mask = (torch.rand(1, 1, 13, 11, generator=gen) > 0.5).float()
    small = torch.nn.functional.interpolate(mask, size=(4, 4), mode="bilinear", align_corners=True)
    expected = ref_guided_map(query, support[:, None], small)
    torch.testing.assert_close(fp.guided_region_map(query, support, mask).double(), expected, atol=1e-5, rtol=0)


def test_ignore_label_counts_as_background(gen):
    query = torch.randn(1, 3, 4, 4, generator=gen)
    support = torch.randn(1, 3, 4, 4, generator=gen)
    mask = torch.tensor([[1, 0, 255, 1]] * 4).view(1, 4, 4)
    as_zero = torch.where(mask == 255, 0, mask)
    torch.testing.assert_close(
        fp.guided_region_map(query, support, mask), fp.guided_region_map(query, support, as_zero)
    )


@pytest.mark.parametrize("budget", [64, 700, 5_000, 10**9])
def test_chunked_equals_unchunked(gen, budget):
    x = torch.randn(3, 7, 37, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 7, 23, generator=gen, dtype=torch.float64)
    v_ref, i_ref = max_cosine_similarity(x, y, backend="reference", return_index=True)
    v, i = max_cosine_similarity(x, y, backend="chunked", max_chunk_bytes=budget, return_index=True)
    assert torch.equal(i, i_ref)
    torch.testing.assert_close(v, v_ref, atol=1e-12, rtol=0)


def test_tile_sizes_respect_budget():
    for b, n, m, budget in [(8, 3600, 3600, 2**20), (40, 3600, 3600, 2**28), (1, 5, 7, 10**9), (2, 1000, 10, 100)]:
        nt, mt = tile_sizes(b, n, m, 4, budget)
        assert 1 <= nt <= n and 1 <= mt <= m
        assert 3 * 4 * b * nt * mt <= max(budget, 3 * 4 * b)


def test_gradcheck_chunked_max_cosine(gen):
    x = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: max_cosine_similarity(a, b, backend="chunked", max_chunk_bytes=200), (x, y)
    )


def test_gradcheck_region_maps(gen):
    bridge = torch.randn(1, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    prior = torch.randn(1, 3, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: fp.prior_region_map(a, b, backend="chunked"), (bridge, prior))
    query = torch.randn(1, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    support = torch.randn(1, 2, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, 3, 3, dtype=torch.float64)
    mask[:, :, 0] = 0
    assert torch.autograd.gradcheck(lambda q, s: fp.guided_region_map(q, s, mask), (query, support))


def test_chunked_gradients_match_autograd_through_full_matrix(gen):
    x = torch.randn(2, 5, 30, generator=gen, requires_grad=True)
    y = torch.randn(2, 5, 20, generator=gen, requires_grad=True)
    w = torch.randn(2, 30, generator=gen)
    (max_cosine_similarity(x, y, backend="reference") * w).sum().backward()
    gx, gy = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    (max_cosine_similarity(x, y, backend="chunked", max_chunk_bytes=512) * w).sum().backward()
    torch.testing.assert_close(x.grad, gx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.grad, gy, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- edge cases
def test_all_zero_support_mask_gives_zero_map(gen):
    query = torch.randn(2, 4, 5, 5, generator=gen, requires_grad=True)
    support = torch.randn(2, 3, 4, 5, 5, generator=gen, requires_grad=True)
    out = fp.guided_region_map(query, support, torch.zeros(2, 3, 5, 5))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(support.grad).all()


def test_zero_feature_vectors_and_constant_maps_are_finite(gen):
    bridge = torch.randn(1, 4, 3, 3, generator=gen, requires_grad=True)
    with torch.no_grad():
        bridge[..., 0, :] = 0  # a row of zero vectors
    prior = torch.randn(1, 4, 3, 3, generator=gen, requires_grad=True)
    out = fp.prior_region_map(bridge, prior)
    assert torch.isfinite(out).all()
    # zero vectors have cosine 0 with everything (the eps keeps the division finite)
    torch.testing.assert_close(out.double(), ref_prior_map(bridge.detach(), prior.detach()), atol=1e-5, rtol=0)
    out.sum().backward()
    assert torch.isfinite(bridge.grad).all() and torch.isfinite(prior.grad).all()
    # all-equal similarities (identical features everywhere) -> zeros
    const = torch.ones(1, 4, 3, 3)
    assert torch.equal(fp.prior_region_map(const, const), torch.zeros(1, 1, 3, 3))
    # all-zero features on both sides
    zero = torch.zeros(1, 4, 3, 3)
    assert torch.equal(fp.prior_region_map(zero, zero), torch.zeros(1, 1, 3, 3))


def test_minmax_normalize_constant_is_zero():
    s = torch.full((2, 5), 0.3)
    assert torch.equal(minmax_normalize(s), torch.zeros(2, 5))


# ----------------------------------------------------------------------------- memory bound
class LiveBytes(TorchDispatchMode):
    """Tracks the peak bytes of tensors created inside the mode that are alive at once."""

    def __init__(self, *inputs: torch.Tensor):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0
        self._ptrs: set[int] = set()
        # views of the inputs share their storage: they are not new memory
        self._external = {t.untyped_storage().data_ptr() for t in inputs}

    def _release(self, ptr: int, nbytes: int) -> None:
        if ptr in self._ptrs:
            self._ptrs.discard(ptr)
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                ptr, nbytes = st.data_ptr(), st.nbytes()
                if nbytes == 0 or ptr in self._ptrs or ptr in self._external:
                    continue
                self._ptrs.add(ptr)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                self.largest = max(self.largest, nbytes)
                weakref.finalize(t, self._release, ptr, nbytes)
        return out


def test_peak_temporary_memory_stays_within_budget():
    torch.manual_seed(0)
    b, k, c, side = 2, 5, 64, 24  # a scaled-down 5-shot episode: 576 x 576 positions per shot
    query = torch.randn(b, c, side, side)
    support = torch.randn(b, k, c, side, side)
    masks = torch.ones(b, k, side, side)
    shot_matrix = b * (side * side) ** 2 * 4  # one shot's similarity matrix: 2.65 MB
    budget = 2**18  # 256 KiB, a tenth of it
    one_shot_copy = support.nbytes // k  # the masked support of the shot being processed
    with LiveBytes(query, support, masks) as chunked:
        fp.guided_region_map(query, support, masks, backend="chunked", max_chunk_bytes=budget)
    assert chunked.largest <= max(budget, one_shot_copy)
    assert chunked.peak <= budget + 2 * one_shot_copy
    with LiveBytes(query, support, masks) as reference:
        fp.guided_region_map(query, support, masks, backend="reference")
    # the measurement can fail: the PFENet-style path does materialise the whole matrix
    assert reference.largest >= shot_matrix
    assert reference.peak > budget + 2 * one_shot_copy


# ----------------------------------------------------------------------------- masked average pooling
def test_masked_average_pool_known_answer():
    feats = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    mask = torch.tensor([[[1, 0], [0, 1]], [[0, 0], [0, 0]]], dtype=torch.float32)
    out = fp.masked_average_pool(feats, mask)
    expected0 = (feats[0, :, 0, 0] + feats[0, :, 1, 1]) / (2 + 5e-4)
    torch.testing.assert_close(out[0], expected0)
    assert torch.equal(out[1], torch.zeros(3))  # empty mask -> zero prototype
    assert fp.masked_average_pool(feats, mask[:, None], keepdim=True).shape == (2, 3, 1, 1)


def test_masked_average_pool_resizes_mask_and_has_gradient(gen):
    feats = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 1, 17, 17, dtype=torch.float64)
    out = fp.masked_average_pool(feats, mask)
    torch.testing.assert_close(out, feats.sum((2, 3)) / (25 + 5e-4))
    assert torch.autograd.gradcheck(lambda f: fp.masked_average_pool(f, mask), (feats,))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: fp.prior_region_map(torch.ones(1, 3, 4, 4, dtype=torch.long), torch.ones(1, 3, 4, 4)), TypeError, "`bridge`"),
        (lambda: fp.prior_region_map(torch.ones(3, 4, 4), torch.ones(1, 3, 4, 4)), ValueError, "B, C, H, W"),
        (lambda: fp.prior_region_map(torch.ones(2, 3, 4, 4), torch.ones(1, 3, 4, 4)), ValueError, "batch size"),
        (lambda: fp.prior_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 5, 4, 4)), ValueError, "channel count"),
        (lambda: fp.prior_region_map([[1.0]], torch.ones(1, 3, 4, 4)), TypeError, "torch.Tensor"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 2, 3, 4, 4), torch.ones(1, 3, 4, 4)), ValueError, "shot count"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4), torch.full((1, 4, 4), 2.0)), ValueError, "[0, 1]"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4), torch.full((1, 2, 4, 4), 1.0)), ValueError, "`support_mask`"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4, dtype=torch.uint8), torch.ones(1, 4, 4)), TypeError, "`support`"),
        (lambda: fp.guided_region_map(torch.ones(2, 3, 4, 4), torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4)), ValueError, "batch size"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4), torch.full((1, 4, 4), -1)), ValueError, "[0, 1]"),
        (lambda: fp.masked_average_pool(torch.ones(1, 3, 4, 4), torch.ones(2, 4, 4)), ValueError, "batch size"),
        (lambda: fp.masked_average_pool(torch.ones(1, 3, 4, 4), torch.ones(1, 2, 4, 4)), ValueError, "B, 1, h, w"),
        (lambda: fp.masked_average_pool(torch.ones(1, 3, 4, 4, dtype=torch.int32), torch.ones(1, 4, 4)), TypeError, "floating point"),
        (lambda: max_cosine_similarity(torch.ones(1, 3, 4), torch.ones(1, 3, 4), backend="cuda"), ValueError, "`backend`"),
        (lambda: max_cosine_similarity(torch.ones(1, 3, 0), torch.ones(1, 3, 4)), ValueError, "`x` must have a non-zero number of positions"),
    ],
)
def test_bad_input_raises_with_helpful_message(call, exc, words):
    with pytest.raises(exc, match=None) as info:
        call()
    assert words in str(info.value)


def test_mixed_precision_inputs_are_promoted(gen):
    x = torch.randn(1, 3, 4, generator=gen)
    y = torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
    assert max_cosine_similarity(x, y).dtype == torch.float64


def test_auto_backend_uses_chunked_on_cpu(monkeypatch, gen):
    called = {}
    original = similarity._ChunkedMaxCosine.apply

    def spy(*args):
        called["chunked"] = True
        return original(*args)

    monkeypatch.setattr(similarity._ChunkedMaxCosine, "apply", spy)
    max_cosine_similarity(torch.randn(1, 3, 4, generator=gen), torch.randn(1, 3, 4, generator=gen))
    assert called == {"chunked": True}


# ----------------------------------------------------------------------------- hostile values
def _nan_inputs(gen):
    """Batch of 3: image 0 has a NaN prior position, image 1 an inf bridge position, image 2 is clean."""
    bridge = torch.randn(3, 6, 5, 7, generator=gen)
    prior = torch.randn(3, 6, 4, 3, generator=gen)
    prior[0, :, 2, 1] = float("nan")
    bridge[1, 3, 0, 4] = float("inf")
    return bridge, prior


@pytest.mark.parametrize("budget", [1, 64, 300, 4096, similarity.DEFAULT_MAX_CHUNK_BYTES])
def test_nan_in_prior_features_does_not_depend_on_chunk_size(gen, budget):
    """NaN / inf make that image's map all NaN, like torch.max; never finite for one tiling only."""
    bridge, prior = _nan_inputs(gen)
    ref = fp.prior_region_map(bridge, prior, backend="reference")
    out = fp.prior_region_map(bridge, prior, backend="chunked", max_chunk_bytes=budget)
    assert torch.isnan(ref[:2]).all() and torch.isfinite(ref[2]).all()
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=1e-6)


@pytest.mark.parametrize("budget", [1, 100, similarity.DEFAULT_MAX_CHUNK_BYTES])
def test_max_cosine_nan_pattern_is_the_same_for_every_backend(gen, budget):
    x = torch.randn(2, 4, 9, generator=gen)
    y = torch.randn(2, 4, 11, generator=gen)
    x[0, 1, 3] = float("nan")  # one position of image 0
    y[1, 2, 10] = float("-inf")  # the last position of image 1's y: every row of image 1
    ref = max_cosine_similarity(x, y, backend="reference")
    out = max_cosine_similarity(x, y, backend="chunked", max_chunk_bytes=budget)
    expect_nan = torch.zeros(2, 9, dtype=torch.bool)
    expect_nan[0, 3] = True
    expect_nan[1] = True
    assert torch.equal(torch.isnan(ref), expect_nan)
    torch.testing.assert_close(out, ref, equal_nan=True, rtol=0, atol=1e-6)


def test_guided_map_nan_outside_the_mask_propagates_in_every_backend(gen):
    """0 * NaN is NaN: a NaN support feature poisons its image even where the mask is 0."""
    q = torch.randn(2, 4, 5, 5, generator=gen)
    s = torch.randn(2, 3, 4, 5, 5, generator=gen)
    m = torch.zeros(2, 3, 5, 5)
    m[..., 1:4, 1:4] = 1
    s[0, 2, :, 4, 4] = float("nan")  # outside the mask of shot 2, in the last tile
    maps = [fp.guided_region_map(q, s, m, backend="reference")]
    maps += [fp.guided_region_map(q, s, m, backend="chunked", max_chunk_bytes=b) for b in (1, 128)]
    assert torch.isnan(maps[0][0]).all() and torch.isfinite(maps[0][1]).all()
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], equal_nan=True, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eps", [0, -1e-7, float("nan"), float("inf"), "1e-7"])
def test_eps_must_be_positive_and_finite(eps):
    x = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="`eps`"):
        max_cosine_similarity(x, x, eps)
    with pytest.raises(ValueError, match="`eps`"):
        fp.prior_region_map(x[..., None], x[..., None], eps)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 0, 3, 4, 4), torch.ones(1, 0, 4, 4)), "`support` must hold at least one shot"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 1, 3, 4, 4), torch.ones(1, 1, 0, 4)), "`support_mask` must have a non-zero spatial size"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 0), torch.ones(1, 4, 4)), "`support` must have a non-zero spatial size"),
        (lambda: fp.guided_region_map(torch.ones(1, 3, 0, 4), torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4)), "`query` must have a non-zero spatial size"),
        (lambda: fp.prior_region_map(torch.ones(1, 3, 4, 4), torch.ones(1, 3, 0, 2)), "`prior` must have a non-zero spatial size"),
        (lambda: fp.masked_average_pool(torch.ones(1, 3, 4, 4), torch.ones(1, 1, 0, 4)), "`mask` must have a non-zero spatial size"),
        (lambda: fp.masked_average_pool(torch.ones(1, 3, 4, 0), torch.ones(1, 1, 4, 4)), "`features` must have a non-zero spatial size"),
        (lambda: fp.superpixel_pool(torch.ones(1, 3, 0, 4), torch.zeros(1, 4, 4, dtype=torch.long), 2), "`features` must have a non-zero spatial size"),
    ],
)
def test_empty_shots_and_sizes_raise_naming_the_argument(call, words):
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value)


def test_empty_batch_gives_empty_maps(gen):
    q = torch.randn(0, 4, 5, 6, generator=gen)
    assert fp.prior_region_map(q, torch.randn(0, 4, 2, 2)).shape == (0, 1, 5, 6)
    assert fp.guided_region_map(q, torch.randn(0, 2, 4, 3, 3), torch.ones(0, 2, 3, 3)).shape == (0, 1, 5, 6)
    assert fp.masked_average_pool(q, torch.ones(0, 3, 3)).shape == (0, 4)


def test_superpixel_pool_invalid_slots_stay_zero_with_nan_features():
    feats = torch.randn(1, 3, 4, 4)
    feats[0, :, 0, 0] = float("nan")
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    pooled, valid = fp.superpixel_pool(feats, labels, 3)
    assert valid.tolist() == [[True, False, False]]
    assert torch.isnan(pooled[0, 0]).all() and torch.equal(pooled[0, 1:], torch.zeros(2, 3))


# ----------------------------------------------------------------------------- switchable value checks
def test_set_checks_and_checks_disabled_restore_the_setting():
    assert fp.checks_enabled()
    with fp.checks_disabled():
        assert not fp.checks_enabled()
        with fp.checks_disabled():
            assert not fp.checks_enabled()
        assert not fp.checks_enabled()
    assert fp.checks_enabled()
    try:
        fp.set_checks(False)
        assert not fp.checks_enabled()
    finally:
        fp.set_checks(True)
    with pytest.raises(TypeError, match="`enabled`"):
        fp.set_checks("no")
    with pytest.raises(RuntimeError), fp.checks_disabled():
        raise RuntimeError  # restored on error too
    assert fp.checks_enabled()


class _SyncCounter:
    """Counts Python-level reads of tensor values (each one a host-device sync on a GPU)."""

    NAMES = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "unique")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _original=original, **kwargs):
                self.count += 1
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_value_checks_are_the_only_syncs_and_can_be_switched_off(monkeypatch, gen):
    q = torch.randn(2, 4, 5, 5, generator=gen)
    s = torch.randn(2, 2, 4, 5, 5, generator=gen)
    m = (torch.rand(2, 2, 5, 5, generator=gen) > 0.5).float()
    m[0, 0, 0] = 255
    labels = torch.randint(0, 3, (2, 10, 10), generator=gen)
    expected = (fp.guided_region_map(q, s, m), fp.masked_average_pool(q, m[:, 0]), fp.superpixel_pool(q, labels, 3)[0])
    counter = _SyncCounter(monkeypatch)

    def run():
        return (fp.guided_region_map(q, s, m), fp.masked_average_pool(q, m[:, 0]), fp.superpixel_pool(q, labels, 3)[0])

    run()
    assert counter.count > 0  # the value checks do read values...
    counter.count = 0
    with fp.checks_disabled():
        out = run()
    assert counter.count == 0  # ...and nothing else does
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b)
    # a bad mask passes silently with checks off, and raises with them on
    with fp.checks_disabled():
        fp.masked_average_pool(q, torch.full((2, 5, 5), 7.0))
    with pytest.raises(ValueError, match="`mask`"):
        fp.masked_average_pool(q, torch.full((2, 5, 5), 7.0))


# ----------------------------------------------------------------------------- module wrappers
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_region_map_modules_equal_functional_ops(backend):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 8, 5, 6, generator=g)
    s = torch.randn(2, 3, 8, 4, 4, generator=g)
    m = (torch.rand(2, 3, 7, 7, generator=g) > 0.5).float()
    m[0, 0, 0, 0] = 255.0  # ignore label: cleaned the same way by both
    kw = dict(backend=backend, max_chunk_bytes=64)
    guided = fp.GuidedRegionMap(eps=1e-5, **kw)
    assert torch.equal(guided(q, s, m), fp.guided_region_map(q, s, m, 1e-5, **kw))
    # the fast path QGNet uses is the same op with its checks off (mask cleaned once upstream): same bits
    clean = torch.where(m == 255, torch.zeros_like(m), m)
    fast = fp.GuidedRegionMap(eps=1e-5, check_inputs=False, **kw)
    assert torch.equal(fast(q, s, clean), guided(q, s, m))
    assert torch.equal(fp.guided_region_map(q, s, clean, 1e-5, check=False, **kw), guided(q, s, m))
    assert torch.equal(fp.masked_average_pool(q, clean[:, :1], check=False), fp.masked_average_pool(q, m[:, :1]))
    bridge, prior = torch.randn(2, 8, 5, 6, generator=g), torch.randn(2, 8, 3, 4, generator=g)
    prior_map = fp.PriorRegionMap(eps=1e-5, **kw)
    assert torch.equal(prior_map(bridge, prior), fp.prior_region_map(bridge, prior, 1e-5, **kw))
    unchecked = fp.PriorRegionMap(eps=1e-5, check_inputs=False, **kw)
    assert torch.equal(unchecked(bridge, prior), prior_map(bridge, prior)) and "check_inputs=False" in repr(unchecked)


def test_region_map_modules_defaults_hold_no_state_and_pass_gradients():
    guided, prior_map = fp.GuidedRegionMap(), fp.PriorRegionMap()
    assert guided.max_chunk_bytes == fp.ops.DEFAULT_MAX_CHUNK_BYTES and guided.backend == "auto"
    assert guided.eps == 1e-7 and prior_map.max_chunk_bytes == fp.ops.DEFAULT_MAX_CHUNK_BYTES
    assert not list(guided.state_dict()) and not list(prior_map.state_dict())
    assert "backend='auto'" in repr(guided) and "max_chunk_bytes=" in repr(prior_map)
    q = torch.randn(1, 4, 3, 3, requires_grad=True)
    s = torch.randn(1, 4, 3, 3, requires_grad=True)
    guided(q, s, torch.ones(1, 3, 3)).sum().backward()
    assert q.grad is not None and s.grad is not None and q.grad.abs().sum() > 0
    b = torch.randn(1, 4, 3, 3, requires_grad=True)
    p = torch.randn(1, 4, 2, 2, requires_grad=True)
    prior_map(b, p).sum().backward()
    assert b.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "chunkd"}, r"`backend` must be one of .*did you mean 'chunked'"),
        ({"backend": 3}, r"`backend` must be one of"),
        ({"max_chunk_bytes": 0}, r"`max_chunk_bytes` must be a positive int"),
        ({"max_chunk_bytes": True}, r"`max_chunk_bytes`"),
        ({"max_chunk_bytes": 1.5}, r"`max_chunk_bytes`"),
        ({"max_chunk_bytes": None}, r"`max_chunk_bytes` must be a positive int"),  # one default: no None
        ({"eps": 0.0}, r"`eps` must be a finite number > 0"),
    ],
)
@pytest.mark.parametrize("cls", ["GuidedRegionMap", "PriorRegionMap"])
def test_region_map_modules_name_bad_arguments_at_construction(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(fp, cls)(**kwargs)


def test_clean_mask_value_check_per_call_wins_over_the_global_flag():
    """check_values=True/False decides for this call only; None follows fewshot_priors.set_checks."""
    from fewshot_priors.ops import checks_disabled, checks_enabled
    from fewshot_priors.ops.checks import clean_mask

    bad = torch.tensor([[0.0, 3.0]])
    assert torch.equal(clean_mask("m", bad, check_values=False), bad)
    with pytest.raises(ValueError, match="`m` must contain values"):
        clean_mask("m", bad)
    with checks_disabled():
        with pytest.raises(ValueError, match="`m` must contain values"):
            clean_mask("m", bad, check_values=True)
        assert torch.equal(clean_mask("m", bad), bad)
    assert checks_enabled()


# ----------------------------------------------------------------------------- module pairs of the other ops
def test_info_nce_loss_module_equals_the_function():
    g = torch.Generator().manual_seed(5)
    q, k, neg = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(10, 8, generator=g)
    for kw in ({}, {"normalize": False, "reduction": "sum"}, {"reduction": "none"}):
        loss = fp.InfoNCELoss(0.1, **kw)
        assert torch.equal(loss(q, k, neg), fp.info_nce(q, k, neg, 0.1, **kw))
    details = fp.InfoNCELoss(return_details=True)(q, k, neg)
    ref = fp.info_nce(q, k, neg, return_details=True)
    assert all(torch.equal(a, b) for a, b in zip(details, ref))
    assert not list(fp.InfoNCELoss().state_dict()) and "temperature=0.2" in repr(fp.InfoNCELoss())
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        fp.InfoNCELoss(0.0)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        fp.InfoNCELoss(reduction="avg")


def test_masked_average_pool_module_equals_the_function():
    g = torch.Generator().manual_seed(6)
    f = torch.randn(2, 4, 5, 5, generator=g)
    m = (torch.rand(2, 7, 7, generator=g) > 0.5).float()
    m[0, 0, 0] = 255.0
    assert torch.equal(fp.MaskedAveragePool()(f, m), fp.masked_average_pool(f, m))
    assert torch.equal(fp.MaskedAveragePool(keepdim=True)(f, m), fp.masked_average_pool(f, m, keepdim=True))
    with pytest.raises(ValueError, match="`mask`"):
        fp.MaskedAveragePool()(f, torch.full((2, 7, 7), 7.0))


def test_superpixel_pool_module_equals_the_function():
    g = torch.Generator().manual_seed(7)
    f = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    labels = torch.randint(-1, 5, (2, 8, 8), generator=g)
    for mode in ("area", "nearest"):
        got, valid = fp.SuperpixelPool(5, mode)(f, labels)
        ref, ref_valid = fp.superpixel_pool(f, labels, 5, mode)
        assert torch.equal(got, ref) and torch.equal(valid, ref_valid)
    got.sum().backward()
    assert f.grad is not None
    for bad, match in ((0, "`num_segments` must be a positive int"), (True, "`num_segments`"), (2.0, "`num_segments`")):
        with pytest.raises(ValueError, match=match):
            fp.SuperpixelPool(bad)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        fp.SuperpixelPool(4, "bilinear")


def test_max_chunk_bytes_is_checked_where_it_enters():
    """The functional ops check it (one default, no None); an invalid value never reaches the tiling."""
    x, y = torch.randn(1, 3, 4), torch.randn(1, 3, 5)
    for bad in (0, -1, None, 2.5, True):
        with pytest.raises(ValueError, match="`max_chunk_bytes` must be a positive int"):
            max_cosine_similarity(x, y, max_chunk_bytes=bad)
        with pytest.raises(ValueError, match="`max_chunk_bytes`"):
            fp.prior_region_map(x.view(1, 3, 2, 2), y.view(1, 3, 5, 1), max_chunk_bytes=bad)
    assert fp.ops.DEFAULT_MAX_CHUNK_BYTES == 256 * 2**20
    from fewshot_priors.config import DEFAULTS

    assert DEFAULTS["model"]["max_chunk_bytes"] == fp.ops.DEFAULT_MAX_CHUNK_BYTES
    assert fp.QGNet.__init__.__kwdefaults__["max_chunk_bytes"] == fp.ops.DEFAULT_MAX_CHUNK_BYTES


def test_the_value_check_switch_is_context_local():
    """``set_checks`` / ``checks_disabled`` set a ContextVar: another thread keeps its own setting,
    a copied context keeps the value it was copied with, and the block restores the previous one."""
    import contextvars
    import threading

    import fewshot_priors as fp

    seen = {}
    with fp.checks_disabled():
        worker = threading.Thread(target=lambda: seen.update(thread=fp.checks_enabled()))
        worker.start()
        worker.join()
        seen["block"] = fp.checks_enabled()
        copied = contextvars.copy_context()
    assert seen == {"thread": True, "block": False} and fp.checks_enabled()
    assert copied.run(fp.checks_enabled) is False
    copied.run(fp.set_checks, True)
    assert copied.run(fp.checks_enabled) is True
    with pytest.raises(TypeError, match="enabled"):
        fp.set_checks("off")
