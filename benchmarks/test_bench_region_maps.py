"""Region maps: the library (fused Triton kernel on CUDA, chunked on CPU) vs PFENet's code.

Sizes: on CUDA the paper's (batch 8, C = 2048, 60x60, 1- and 5-shot; C = 256; the
COCO size batch 32 at 81x81); on CPU scaled down to fit a small machine.
"""

from __future__ import annotations

import pytest
import torch
from conftest import on_gpu, run_benchmark
from reference import bf16_guided_map, bf16_prior, pfenet_guided_map, pfenet_prior

from fewshot_priors.ops import fused
from fewshot_priors.ops.pooling import resize_mask
from fewshot_priors.ops.region_maps import guided_region_map, prior_region_map
from fewshot_priors.ops.similarity import minmax_normalize

# case -> (batch, channels, feature side, shots) per device type
CASES = {
    "guided 1-shot": {"cuda": (8, 2048, 60, 1), "cpu": (2, 256, 30, 1)},
    "guided 5-shot": {"cuda": (8, 2048, 60, 5), "cpu": (2, 256, 30, 5)},
    "guided 1-shot narrow": {"cuda": (8, 256, 60, 1), "cpu": (2, 64, 30, 1)},
    "guided 1-shot COCO": {"cuda": (32, 2048, 81, 1), "cpu": (4, 256, 41, 1)},
    "prior map": {"cuda": (8, 256, 60, 1), "cpu": (2, 256, 30, 1)},
}
IMPLS = [
    "reference", "reference-bf16", "library", "library-chunked-16MiB", "fused-tf32", "fused-guided", "fused-guided-bf16-features",
    "bf16-matmul",
]
SMALL_BUDGET = 16 * 2**20
# the speed-up columns of RESULTS.md are relative to these rows (see conftest.REFERENCE_ROLES)
_ROLES = {"reference": "reference", "reference-bf16": "reference-bf16", "bf16-matmul": "ceiling"}

_DATA: dict = {}


def _inputs(case: str, device: torch.device):
    key = (case, device.type)
    if key not in _DATA:
        _DATA.clear()  # keep one case's tensors alive at a time (GPU memory)
        b, c, side, k = CASES[case][device.type]
        gen = torch.Generator(device=device).manual_seed(0)
        query = torch.randn(b, c, side, side, generator=gen, device=device).relu_()
        support = torch.randn(b, k, c, side, side, generator=gen, device=device).relu_()
        # blobby masks: a random coarse grid upsampled, ~40 % foreground
        coarse = torch.rand(b, k, 6, 6, generator=gen, device=device)
        masks = (torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear") > 0.6).float()
        _DATA[key] = (query, support, masks)
    return _DATA[key]


def fused_guided_map(query: torch.Tensor, support: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The guided map through :func:`fused.guided_max_cosine`: masks folded in, query shared by the shots.

    What ``guided_region_map(backend="fused")`` computes, minus its ``B*K`` copies of the
    query and of the masked support (not wired into the library yet).
    """
    b, k, c, h, w = support.shape
    weight = resize_mask(masks, (h, w))
    values, _ = fused.guided_max_cosine(query.flatten(2), support.flatten(3), weight.flatten(2))
    s = minmax_normalize(values.flatten(0, 1).float(), 1e-7)
    return s.view(b, k, *query.shape[-2:]).mean(dim=1, keepdim=True)


def _flops(case: str, device: torch.device) -> float:
    b, c, side, k = CASES[case][device.type]
    n = side * side
    return 2.0 * b * k * n * n * c


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", list(CASES))
def test_region_map(benchmark, device, case, impl):
    gpu = on_gpu(device)
    if (impl.startswith("fused") or impl == "bf16-matmul") and not (gpu and fused.is_available()):
        pytest.skip("needs CUDA and Triton")
    query, support, masks = _inputs(case, device)
    b, c, side, k = CASES[case][device.type]
    prior = case == "prior map"
    support0 = support[:, 0]

    if impl == "reference":
        fn = (lambda: pfenet_prior(query, support0)) if prior else (lambda: pfenet_guided_map(query, support, masks))
    elif impl == "reference-bf16":
        fn = (lambda: bf16_prior(query, support0)) if prior else (lambda: bf16_guided_map(query, support, masks))
    elif impl.startswith("fused-guided"):
        if prior:
            pytest.skip("the prior map has no masks or shots: `library` is already the plain kernel")
        if impl.endswith("bf16-features"):  # features as they come out of a bf16-autocast backbone
            qb, sb = query.to(torch.bfloat16), support.to(torch.bfloat16)
            fn = lambda: fused_guided_map(qb, sb, masks)  # noqa: E731
        else:
            fn = lambda: fused_guided_map(query, support, masks)  # noqa: E731
    elif impl == "bf16-matmul":
        # the same FLOPs as one plain bf16 batched matmul: the tensor-core ceiling of this run
        xq = query.flatten(2).transpose(1, 2).to(torch.bfloat16).repeat_interleave(k, 0).contiguous()
        ys = support.flatten(3).flatten(0, 1).to(torch.bfloat16).contiguous()
        fn = lambda: torch.bmm(xq, ys)  # noqa: E731
    else:
        kwargs = {}
        if impl == "library-chunked-16MiB":
            kwargs = {"backend": "chunked", "max_chunk_bytes": SMALL_BUDGET}
        elif impl == "fused-tf32":
            kwargs = {"backend": "fused"}
        if prior:
            fn = lambda: prior_region_map(query, support0, **kwargs)  # noqa: E731
        else:
            fn = lambda: guided_region_map(query, support if k > 1 else support0, masks, **kwargs)  # noqa: E731
        if impl == "fused-tf32":
            inner = fn

            def fn():
                old, fused.DEFAULT_PRECISION = fused.DEFAULT_PRECISION, "tf32"
                try:
                    return inner()
                finally:
                    fused.DEFAULT_PRECISION = old

    notes = ""
    if impl != "bf16-matmul":
        with torch.no_grad():
            ref = pfenet_prior(query, support0) if prior else pfenet_guided_map(query, support, masks)
            err = (fn().float() - ref.float()).abs().max().item()
        notes = f"max abs diff vs reference {err:.1e}"
        if impl == "library" and gpu:
            notes += " (fused, bf16)"
        del ref

    backend = "fused" if gpu and fused.is_available() else "chunked"
    with torch.no_grad():
        run_benchmark(
            benchmark,
            fn,
            device,
            group=f"region maps: {case} (B={b}, C={c}, {side}x{side}, K={k}) [{device.type}]",
            impl=impl if impl != "library" else f"library (auto -> {backend})",
            role=_ROLES.get(impl, "library"),
            flops=_flops(case, device) if gpu and impl not in ("reference", "library-chunked-16MiB") else None,
            notes=notes,
        )


@pytest.mark.parametrize("impl", ["reference", "library"])
def test_region_map_training(benchmark, device, impl):
    """Forward + backward of a 1-shot guided map (the gradient of the max is a gather)."""
    query, support, masks = _inputs("guided 1-shot", device)
    b, c, side, k = CASES["guided 1-shot"][device.type]
    q = query.clone().requires_grad_()
    s = support[:, 0].clone().requires_grad_()
    m = masks[:, :1]
    weight = torch.randn(b, 1, side, side, device=device)

    def step():
        q.grad = s.grad = None
        if impl == "reference":
            out = pfenet_guided_map(q, s[:, None], m)
        else:
            out = guided_region_map(q, s, m)
        (out * weight).sum().backward()
        return q.grad

    run_benchmark(
        benchmark,
        step,
        device,
        group=f"region maps: guided 1-shot forward+backward (B={b}, C={c}, {side}x{side}) [{device.type}]",
        impl=impl,
        role="reference" if impl == "reference" else "library",
    )


# ----------------------------------------------------------------------------- sizes and alignment
# The paper-scale sizes for the guided map against both references: 60x60 (N = 3600, rows 16-byte
# aligned), 61x61 and 81x81 (N odd: the direct kernel's channel stride is not 16-aligned, the
# COCO-size cliff), 119x119 (the largest feature map); batch 8, plus batch 32 at 81x81 (COCO).
# case -> (batch, channels, feature side) per device type; each runs 1-shot and 5-shot.
SIZE_CASES = {
    "60x60": {"cuda": (8, 2048, 60), "cpu": (2, 64, 16)},
    "61x61": {"cuda": (8, 2048, 61), "cpu": (2, 64, 17)},
    "81x81": {"cuda": (8, 2048, 81), "cpu": (2, 64, 21)},
    "81x81 B=32": {"cuda": (32, 2048, 81), "cpu": (4, 64, 21)},
    "119x119": {"cuda": (8, 2048, 119), "cpu": (2, 64, 25)},
}
# library: auto (padded bf16 path on CUDA); fused-direct: the kernel on the fp32 inputs' own strides
# (PADDED_BF16 = False); fused-padded-one-launch: the padded path without the 64 MiB batch chunks
SIZE_IMPLS = ["reference", "reference-bf16", "library", "fused-direct", "fused-padded-one-launch"]


class _patched:
    """Set module attributes for the duration of one call."""

    def __init__(self, module, **values):
        self.module, self.values, self.saved = module, values, {}

    def __enter__(self):
        for k, v in self.values.items():
            self.saved[k] = getattr(self.module, k)
            setattr(self.module, k, v)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.module, k, v)


def _size_inputs(case: str, shots: int, device: torch.device):
    key = ("size", case, shots, device.type)
    if key not in _DATA:
        _DATA.clear()
        b, c, side = SIZE_CASES[case][device.type]
        gen = torch.Generator(device=device).manual_seed(1)
        query = torch.randn(b, c, side, side, generator=gen, device=device).relu_()
        support = torch.randn(b, shots, c, side, side, generator=gen, device=device).relu_()
        coarse = torch.rand(b, shots, 6, 6, generator=gen, device=device)
        masks = (torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear") > 0.6).float()
        _DATA[key] = (query, support, masks)
    return _DATA[key]


@pytest.mark.parametrize("impl", SIZE_IMPLS)
@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_guided_map_sizes(benchmark, device, case, shots, impl):
    """Guided map at the paper-scale sizes: PFENet fp32, the plain bf16 version, the library paths."""
    gpu = on_gpu(device)
    if impl.startswith("fused") and not (gpu and fused.is_available()):
        pytest.skip("needs CUDA and Triton")
    query, support, masks = _size_inputs(case, shots, device)
    b, c, side = SIZE_CASES[case][device.type]
    n = side * side
    if impl == "reference":
        fn = lambda: pfenet_guided_map(query, support, masks)  # noqa: E731
    elif impl == "reference-bf16":
        fn = lambda: bf16_guided_map(query, support, masks)  # noqa: E731
    else:
        patch = {}
        if impl == "fused-direct":
            patch = {"PADDED_BF16": False}
        elif impl == "fused-padded-one-launch":
            patch = {"PADDED_MAX_BYTES": None}
        backend = "fused" if impl.startswith("fused") else "auto"

        def fn():
            with _patched(fused, **patch):
                return guided_region_map(query, support, masks, backend=backend)

    with torch.no_grad():
        ref = pfenet_guided_map(query, support, masks)
        err = (fn().float() - ref.float()).abs().max().item()
        del ref
    big = gpu and b * shots * n * n * c >= 2e12  # >= ~40 ms per PFENet call: fewer rounds
    with torch.no_grad():
        run_benchmark(
            benchmark,
            fn,
            device,
            group=f"guided map sizes: {case} K={shots} (B={b}, C={c}, {side}x{side}, N={n}{', odd' if n % 2 else ''}) [{device.type}]",
            impl=impl if impl != "library" else f"library (auto -> {'fused' if gpu and fused.is_available() else 'chunked'})",
            role=_ROLES.get(impl, "library"),
            rounds=5 if big else None,
            flops=2.0 * b * shots * n * n * c if gpu and impl.startswith(("fused", "library")) else None,
            notes=f"max abs diff vs PFENet fp32 {err:.1e}" + _tile_note(impl, gpu),
        )


def _tile_note(impl: str, gpu: bool) -> str:
    """The tile config the autotuner picked for the last padded / direct launch (GPU rows only)."""
    if not gpu or impl.startswith("reference"):
        return ""
    tuner = fused._max_cosine_autotuned if impl == "fused-direct" else fused._max_cosine_padded_autotuned
    best = getattr(tuner, "best_config", None)
    if best is None:
        return ""
    k = best.kwargs
    return f"; tiles {k.get('BLOCK_N')}x{k.get('BLOCK_M')}x{k.get('BLOCK_K')}, {best.num_warps} warps, {best.num_stages} stages"
