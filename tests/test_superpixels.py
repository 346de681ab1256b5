"""SuperpixelPatchSampler (backends, contiguity, filters, seeding) and the on-disk cache."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot_priors.ssl import superpixels as sp
from fewshot_priors.ssl.superpixels import (
    SuperpixelCache,
    SuperpixelPatchSampler,
    available_backends,
    build_superpixel_cache,
    filter_segments,
)


def blocks_image(h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """A 4x4 grid of flat, clearly different colours (+ mild noise): obvious superpixels."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(4, 4, 3))
    img = np.kron(colours, np.ones((h // 4, w // 4, 1))).astype(np.float64)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def assert_contiguous(labels: torch.Tensor, counts: torch.Tensor) -> None:
    for lab, n in zip(labels, counts):
        ids = torch.unique(lab[lab >= 0])
        assert torch.equal(ids, torch.arange(int(n))), (ids, n)


@pytest.mark.parametrize("backend", available_backends("slic"))
def test_slic_backends_contiguous_and_follow_colour_blocks(backend):
    img = blocks_image()
    s = SuperpixelPatchSampler("slic", backend, n_segments=16, compactness=10)
    assert s.backend == backend
    labels, counts = s(np.stack([img, img[::-1].copy()]))
    assert labels.dtype == torch.int64 and labels.shape == (2, 64, 80)
    assert_contiguous(labels, counts)
    assert (labels >= 0).all()  # no filter requested -> every pixel labelled
    # each superpixel should be (almost) a single colour block: purity of the majority block
    block = np.kron(np.arange(16).reshape(4, 4), np.ones((16, 20), dtype=int))
    lab = labels[0].numpy()
    pure = sum(np.bincount(block[lab == j]).max() for j in range(int(counts[0])))
    assert pure / lab.size > 0.9


def test_backends_agree_on_block_image():
    """All SLIC backends (and Felzenszwalb) recover the 16 colour blocks (adjusted agreement)."""
    from skimage.metrics import adapted_rand_error

    img = blocks_image()
    block = np.kron(np.arange(16).reshape(4, 4), np.ones((16, 20), dtype=int))
    samplers = [SuperpixelPatchSampler("slic", b, n_segments=16) for b in available_backends("slic")]
    samplers.append(SuperpixelPatchSampler("felzenszwalb", scale=200, sigma=0.5, min_size=20))
    for s in samplers:
        lab, _ = s(img)
        err, _, _ = adapted_rand_error(block, lab[0].numpy())
        assert err < 0.25, (s, err)


def test_auto_picks_fastest_available_and_falls_back(monkeypatch):
    s = SuperpixelPatchSampler("slic")
    assert s.backend == available_backends("slic")[0]
    assert SuperpixelPatchSampler("felzenszwalb").backend == "skimage"
    monkeypatch.setattr(sp, "_fast_slic_available", lambda avx2: False)
    monkeypatch.setattr(sp, "_warned_missing_fast_slic", False)
    with pytest.warns(UserWarning, match="fast-slic"):
        s2 = SuperpixelPatchSampler("slic")
    assert s2.backend == "skimage"
    labels, counts = s2(blocks_image())
    assert_contiguous(labels, counts)


def test_torch_inputs_uint8_and_float_agree():
    img = blocks_image()
    s = SuperpixelPatchSampler("slic", n_segments=16)
    a, _ = s(img)
    t8 = torch.from_numpy(img).permute(2, 0, 1)[None]
    b, _ = s(t8)
    c, _ = s(t8.float() / 255)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_min_area_and_max_patches_seeded():
    lab = np.zeros((10, 10), dtype=np.int64)
    lab[:, 5:] = 7  # area 50
    lab[0, 0] = 3  # area 1
    lab[9, 9] = 9  # area 1
    out, n = filter_segments(lab, min_area=2)
    assert n == 2 and (out[0, 0] == -1) and (out[9, 9] == -1)
    assert set(np.unique(out)) == {-1, 0, 1}
    many = np.arange(100).reshape(10, 10)
    a, na = filter_segments(many, max_patches=5, rng=np.random.default_rng(1))
    b, nb = filter_segments(many, max_patches=5, rng=np.random.default_rng(1))
    c, _ = filter_segments(many, max_patches=5, rng=np.random.default_rng(2))
    assert na == nb == 5 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert set(np.unique(a)) == {-1, 0, 1, 2, 3, 4} and (a >= 0).sum() == 5
    s1 = SuperpixelPatchSampler(n_segments=64, max_patches=4, seed=3)
    s2 = SuperpixelPatchSampler(n_segments=64, max_patches=4, seed=3)
    img = blocks_image()
    l1, c1 = s1(img)
    l2, c2 = s2(img)
    assert torch.equal(l1, l2) and int(c1[0]) == 4
    assert_contiguous(l1, c1)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="method"):
        SuperpixelPatchSampler("watershed")
    with pytest.raises(ValueError, match="backend"):
        SuperpixelPatchSampler("felzenszwalb", "fast-slic")
    s = SuperpixelPatchSampler()
    with pytest.raises(ValueError, match="images"):
        s(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(TypeError, match="images"):
        s(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


def test_cache_roundtrip_reuse_and_workers(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.jpg"
        Image.fromarray(blocks_image(seed=i)).save(p, quality=95)
        paths.append(p)
    s = SuperpixelPatchSampler("slic", n_segments=16)
    man = build_superpixel_cache(paths, tmp_path / "cache", s, progress=False)
    m = json.loads(man.read_text())
    assert m["format"] == "fewshot_priors.superpixel_cache" and len(m["items"]) == 3
    cache = SuperpixelCache(tmp_path / "cache")
    for p in paths:
        expect = s.segment(np.asarray(Image.open(p).convert("RGB")))
        assert np.array_equal(cache.get(p), expect)
    assert cache.get(tmp_path / "missing.jpg") is None
    # second build reuses every entry (files untouched)
    mtimes = {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("*.npz")}
    time.sleep(0.01)
    build_superpixel_cache(paths, tmp_path / "cache", s, progress=False)
    assert mtimes == {f: f.stat().st_mtime_ns for f in (tmp_path / "cache").glob("*.npz")}
    # worker processes give identical files
    build_superpixel_cache(paths, tmp_path / "cache2", s, workers=2, progress=False)
    cache2 = SuperpixelCache(tmp_path / "cache2")
    for p in paths:
        assert np.array_equal(cache.get(p), cache2.get(p))


# ----------------------------------------------------------------------------- two views
def smooth_image(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth random colour field: every superpixel has its own, distinct mean colour."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    return (img[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def patch_means(img: torch.Tensor, lab: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Loop reference: mean colour (3,) of each id and whether it is present."""
    means = torch.zeros(n, 3)
    present = torch.zeros(n, dtype=torch.bool)
    for j in range(n):
        m = lab == j
        if m.any():
            means[j] = img[:, m].mean(1)
            present[j] = True
    return means, present


@pytest.mark.parametrize("hflip_p", [0.0, 1.0])
def test_two_views_patch_correspondence_survives_crop_flip_resize(hflip_p):
    """Paint every superpixel of an image in its own flat colour c_j; then in both views the
    pixels labelled j must still show c_j (up to bilinear blending at patch borders)."""
    from fewshot_priors.ssl.augment import TwoViewAugment

    labels, counts = SuperpixelPatchSampler("slic", n_segments=24, compactness=20)(smooth_image())
    n = int(counts[0])
    colours = torch.rand(n, 3, generator=torch.Generator().manual_seed(5))
    x = colours[labels[0]].permute(2, 0, 1)[None]  # 1, 3, H, W float in [0, 1]
    aug = TwoViewAugment(48, color=False, hflip_p=hflip_p, min_area=6)
    matched, mismatched, n_shared = [], [], 0
    for seed in range(4):
        v = aug(x, labels, seed=seed)
        for key in ("labels_a", "labels_b"):  # no label is invented; small ones dropped
            lab = v[key][0]
            ids = lab[lab >= 0]
            assert set(ids.unique().tolist()) <= set(range(n))
            assert (torch.bincount(ids, minlength=n)[ids.unique()] >= 6).all()
        ma, pa = patch_means(v["view_a"][0], v["labels_a"][0], n)
        mb, pb = patch_means(v["view_b"][0], v["labels_b"][0], n)
        for means, present in ((ma, pa), (mb, pb)):
            matched.append((means[present] - colours[present]).abs().max(1).values)
        shared = torch.nonzero(pa & pb).flatten()
        n_shared += len(shared)
        if len(shared) > 1:
            matched.append((ma[shared] - mb[shared]).abs().max(1).values)
            mismatched.append((ma[shared] - mb[shared.roll(1)]).abs().max(1).values)
    assert n_shared >= 8
    matched_t, mismatched_t = torch.cat(matched), torch.cat(mismatched)
    assert float(matched_t.median()) < 0.02 and float(matched_t.quantile(0.9)) < 0.08
    assert float(mismatched_t.median()) > 0.2


def test_two_views_seeded_and_validated():
    from fewshot_priors.ssl.augment import TwoViewAugment, drop_small_segments

    x = torch.rand(2, 3, 40, 50)
    lab = torch.randint(0, 5, (2, 40, 50))
    aug = TwoViewAugment(32)
    a, b, c = aug(x, lab, seed=1), aug(x, lab, seed=1), aug(x, lab, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["view_a"], c["view_a"])
    assert not torch.equal(a["view_a"], a["view_b"])  # the two views differ
    assert a["view_a"].shape == (2, 3, 32, 32) and a["labels_b"].shape == (2, 32, 32)
    state = torch.random.get_rng_state()
    aug(x, lab, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    with pytest.raises(ValueError, match="labels"):
        aug(x, lab[:, :10])
    with pytest.raises(TypeError, match="labels"):
        aug(x, lab.float())
    small = torch.tensor([[[0, 0, 1], [0, 0, 2], [-1, 2, 2]]])
    assert torch.equal(drop_small_segments(small, 2), torch.tensor([[[0, 0, -1], [0, 0, 2], [-1, 2, 2]]]))


@pytest.mark.parametrize("backend", available_backends("slic"))
def test_segmentation_does_not_depend_on_processing_order(backend):
    """fast-slic objects warm-start from their previous image; the sampler must not."""
    s = SuperpixelPatchSampler("slic", backend, n_segments=16)
    a, b = blocks_image(seed=1), blocks_image(seed=2)
    first = s.segment(b)
    s.segment(a)
    assert np.array_equal(s.segment(b), first)
    assert np.array_equal(SuperpixelPatchSampler("slic", backend, n_segments=16).segment(b), first)


# --------------------------------------------------------------------------- hostile input
_TINY_IMAGES_SCRIPT = r"""
import numpy as np
from fewshot_priors.ssl.superpixels import SuperpixelPatchSampler
rng = np.random.default_rng(0)
for backend in {backends!r}:
    s = SuperpixelPatchSampler("slic", backend, n_segments=64)
    for h, w in [(1, 1), (2, 2), (3, 3), (1, 9), (5, 7), (7, 7), (0, 4), (3, 0)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        labels, counts = s(img)
        n = int(counts[0])
        assert labels.shape == (1, h, w) and 1 <= n <= h * w or (h * w == 0 and n == 0), (backend, h, w, n)
        print(backend, h, w, n, flush=True)
print("done")
"""


@pytest.mark.parametrize("backend", [b for b in available_backends("slic") if b.startswith("fast-slic")])
def test_fast_slic_on_tiny_images_does_not_kill_the_process(backend):
    """fast-slic dies with SIGFPE when asked for more superpixels than pixels: run in a child."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run(
        [sys.executable, "-c", _TINY_IMAGES_SCRIPT.format(backends=[backend])],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert proc.stdout.strip().endswith("done")


@pytest.mark.parametrize("method", sp.METHODS)
def test_tiny_and_empty_images_in_process(method):
    """The skimage / Felzenszwalb backends (no crash risk): every pixel at most one segment."""
    s = SuperpixelPatchSampler(method, "skimage", n_segments=64)
    for h, w in [(1, 1), (2, 3), (0, 4)]:
        labels, counts = s(np.full((h, w, 3), 100, dtype=np.uint8))
        assert labels.shape == (1, h, w)
        assert (1 <= int(counts[0]) <= h * w) if h * w else int(counts[0]) == 0
        assert_contiguous(labels, counts)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_float_images_outside_unit_range_or_non_finite_are_rejected(as_tensor):
    s = SuperpixelPatchSampler("slic", "skimage", n_segments=16)
    img = blocks_image().astype(np.float32)  # 0-255 floats: the forgotten / 255

    def call(a):
        return s(torch.from_numpy(a).permute(2, 0, 1)[None] if as_tensor else a)

    with pytest.raises(ValueError, match=r"`images` must be in \[0, 1\].*divide by 255"):
        call(img)
    nan = img / 255
    nan[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="`images` holds NaN"):
        call(nan)
    with pytest.raises(ValueError, match=r"down to .*normalisation"):
        call(img / 255 - 0.5)
    # in range (with float rounding slack) is accepted, and equals the uint8 result
    ok = (img / 255).astype(np.float32)
    ok[0, 0, 0] = 1 + 1e-6
    assert torch.equal(call(ok)[0], s(blocks_image())[0])
