"""Pooling, superpixel pooling, InfoNCE against a 65536 queue, superpixel backends.

Each op is timed side by side with a plain reference (``benchmarks/reference.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import on_gpu, run_benchmark
from reference import loop_superpixel_pool, moco_info_nce, random_image, weighted_gap

from fewshot_priors.ops.pooling import masked_average_pool


def _gen(device: torch.device, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------- masked average pooling
@pytest.mark.parametrize("impl", ["reference", "library"])
def test_masked_average_pool(benchmark, device, impl):
    # 8 episodes x 5 shots of mid-level support features, masks at the 473 input size
    b, c, side = (40, 1536, 60) if on_gpu(device) else (10, 256, 60)
    g = _gen(device)
    feats = torch.randn(b, c, side, side, generator=g, device=device).relu_()
    masks = (torch.rand(b, 1, 473, 473, generator=g, device=device) > 0.5).float()
    if impl == "reference":
        fn = lambda: weighted_gap(feats, masks)  # noqa: E731
    else:
        fn = lambda: masked_average_pool(feats, masks, keepdim=True)  # noqa: E731
    with torch.no_grad():
        err = (fn() - weighted_gap(feats, masks)).abs().max().item()
        run_benchmark(
            benchmark,
            fn,
            device,
            group=f"masked average pooling (B={b}, C={c}, {side}x{side}, masks 473x473) [{device.type}]",
            impl=impl,
            role="reference" if impl == "reference" else "library",
            notes=f"max abs diff vs reference {err:.1e}",
        )


# ----------------------------------------------------------------------------- superpixel pooling
@pytest.mark.parametrize("impl", ["reference", "library-nearest", "library-area"])
def test_superpixel_pool(benchmark, device, impl):
    sp = pytest.importorskip("fewshot_priors.ops.superpixel_pool")
    b, c, side, p = (64, 2048, 14, 64) if on_gpu(device) else (4, 256, 28, 64)
    g = _gen(device, 1)
    feats = torch.randn(b, c, side, side, generator=g, device=device)
    # blocky labels: a random 8x8 grid of patch ids upsampled to 224
    grid = torch.randint(0, p, (b, 1, 8, 8), generator=g, device=device).float()
    labels = F.interpolate(grid, size=(224, 224), mode="nearest")[:, 0].long()
    if impl == "reference":
        fn = lambda: loop_superpixel_pool(feats, labels, p)  # noqa: E731
    else:
        mode = impl.split("-")[1]
        fn = lambda: sp.superpixel_pool(feats, labels, p, mode=mode)[0]  # noqa: E731
    with torch.no_grad():
        notes = ""
        if impl == "library-nearest":  # same semantics as the loop: compare the numbers
            err = (fn() - loop_superpixel_pool(feats, labels, p)).abs().max().item()
            notes = f"max abs diff vs reference {err:.1e}"
        run_benchmark(
            benchmark,
            fn,
            device,
            group=f"superpixel pooling (B={b}, C={c}, {side}x{side}, labels 224x224, P={p}) [{device.type}]",
            impl=impl,
            role="reference" if impl == "reference" else "library",
            notes=notes,
        )


# ----------------------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("impl", ["reference", "library"])
@pytest.mark.parametrize("which", ["global", "local"])
def test_info_nce_queue(benchmark, device, impl, which):
    """Forward + backward of the InfoNCE loss against a 65536-entry memory queue."""
    contrastive = pytest.importorskip("fewshot_priors.ops.contrastive")
    gpu = on_gpu(device)
    # global: one query per image (MoCo batch 256); local: one per superpixel patch
    n = {"global": 256 if gpu else 64, "local": 4096 if gpu else 512}[which]
    d, k, t = 128, 65536, 0.2
    g = _gen(device, 2)
    q0 = F.normalize(torch.randn(n, d, generator=g, device=device), dim=1)
    key = F.normalize(torch.randn(n, d, generator=g, device=device), dim=1)
    queue_kd = F.normalize(torch.randn(k, d, generator=g, device=device), dim=1)  # library layout K, D
    queue_dk = queue_kd.t().contiguous()  # MoCo's layout D, K
    q = q0.clone().requires_grad_()

    def step():
        q.grad = None
        if impl == "reference":
            loss = moco_info_nce(q, key, queue_dk, t)
        else:
            loss = contrastive.info_nce(q, key, queue_kd, t, normalize=False)
        loss.backward()
        return loss.detach()

    ref = moco_info_nce(q0, key, queue_dk, t).item()
    lib = contrastive.info_nce(q0, key, queue_kd, t, normalize=False).item()
    run_benchmark(
        benchmark,
        step,
        device,
        group=f"InfoNCE fwd+bwd, {which} (N={n}, D={d}, queue {k}) [{device.type}]",
        impl=impl,
        role="reference" if impl == "reference" else "library",
        notes=f"loss diff vs reference {abs(ref - lib):.1e}",
    )


# ----------------------------------------------------------------------------- superpixel backends
BACKEND_CASES = [
    ("skimage-slic", "slic", "skimage"),
    ("fast-slic", "slic", "fast-slic"),
    ("fast-slic-avx2", "slic", "fast-slic-avx2"),
    ("skimage-felzenszwalb", "felzenszwalb", "skimage"),
]


@pytest.mark.parametrize("name,method,backend", BACKEND_CASES, ids=[c[0] for c in BACKEND_CASES])
def test_superpixel_backends(benchmark, name, method, backend):
    """One 473x473 image, ~64 segments, through the library's sampler (CPU work on any machine)."""
    sps = pytest.importorskip("fewshot_priors.ssl.superpixels")
    if backend not in sps.available_backends(method):
        pytest.skip(f"{backend} not available here")
    sampler = sps.SuperpixelPatchSampler(method, backend, n_segments=64, scale=100.0, min_size=200, num_threads=1)
    assert sampler.backend == backend
    image = random_image(0)
    n_segments = int(sampler.segment(image).max()) + 1
    run_benchmark(
        benchmark,
        lambda: sampler.segment(image),
        torch.device("cpu"),
        group="superpixels: one 473x473 image, ~64 segments [cpu, 1 thread]",
        impl=name,
        role="reference" if name == "skimage-slic" else "library",
        notes=f"{n_segments} segments",
    )
