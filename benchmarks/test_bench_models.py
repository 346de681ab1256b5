"""End to end: a QGNet training step and inference episodes, and a GlobalLocalMoCo step.

On CUDA: ResNet-50 at 473, batch 8; the library configuration is bf16 autocast,
channels_last and the fused region maps, against the same model in fp32 with the
PFENet-style ``"reference"`` region maps. On CPU the same comparison runs with a
ResNet-18 at 241 and batch 1 (the region maps are a small part of a CPU step,
so expect ratios near 1 there: the GPU numbers are the ones the targets are about).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import on_gpu, run_benchmark


def _qgnet_setup(device: torch.device, shots: int, backend: str, fast: bool):
    qg = pytest.importorskip("fewshot_priors.models.qgnet")
    gpu = on_gpu(device)
    name, size, batch = ("resnet50", 473, 8) if gpu else ("resnet18", 241, 1)
    torch.manual_seed(0)
    model = qg.QGNet(backbone=name, pretrained=False, region_map_backend=backend).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    query = torch.rand(batch, 3, size, size, generator=g, device=device)  # RGB in [0, 1]
    support = torch.rand(batch, shots, 3, size, size, generator=g, device=device)
    masks = (torch.rand(batch, shots, size, size, generator=g, device=device) > 0.5).float()
    qmask = (torch.rand(batch, size, size, generator=g, device=device) > 0.5).long()
    if fast and gpu:
        model = model.to(memory_format=torch.channels_last)
        query = query.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if fast and gpu else contextlib.nullcontext()
    )
    return model, (query, support, masks, qmask), autocast, f"{name}, {size}x{size}, batch {batch}", batch


IMPLS = {
    # impl -> (region-map backend, bf16 autocast + channels_last on GPU)
    "reference": ("reference", False),
    "library": ("auto", True),
}


@pytest.mark.parametrize("impl", list(IMPLS))
def test_qgnet_train_step(benchmark, device, impl):
    backend, fast = IMPLS[impl]
    model, (query, support, masks, qmask), autocast, desc, batch = _qgnet_setup(device, 1, backend, fast)
    model.train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)

    def step():
        with autocast:
            loss = model(query, support, masks, qmask)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    run_benchmark(
        benchmark,
        step,
        device,
        group=f"QGNet training step, 1-shot ({desc}) [{device.type}]",
        impl=impl + ("" if impl == "reference" else " (auto region maps" + (", bf16, channels_last)" if on_gpu(device) else ")")),
        role="reference" if impl == "reference" else "library",
        rounds=10 if on_gpu(device) else 3,
        episodes=batch,
    )


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shots", [1, 5])
def test_qgnet_inference(benchmark, device, impl, shots):
    backend, fast = IMPLS[impl]
    model, (query, support, masks, _), autocast, desc, batch = _qgnet_setup(device, shots, backend, fast)
    model.eval()

    def episode():
        with torch.no_grad(), autocast:
            return model(query, support, masks)["logits"]

    run_benchmark(
        benchmark,
        episode,
        device,
        group=f"QGNet inference, {shots}-shot ({desc}) [{device.type}]",
        impl=impl,
        role="reference" if impl == "reference" else "library",
        rounds=10 if on_gpu(device) else 3,
        episodes=batch,
    )


@pytest.mark.parametrize("variant", ["global only", "global + local"])
def test_moco_step(benchmark, device, variant):
    """One GlobalLocalMoCo step (forward, backward, SGD, momentum update, enqueue), 65536 queues."""
    moco = pytest.importorskip("fewshot_priors.ssl.moco")
    gpu = on_gpu(device)
    name, size, batch = ("resnet50", 224, 64) if gpu else ("resnet18", 128, 8)
    torch.manual_seed(0)
    model = moco.GlobalLocalMoCo(
        name, local_weight=0.0 if variant == "global only" else 1.0, max_patches=64, seed=0
    ).to(device)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.rand(batch, 3, size, size, generator=g, device=device)  # views in [0, 1]
    b = torch.rand(batch, 3, size, size, generator=g, device=device)
    # blocky superpixel ids shared by both views (8x8 grid of patches)
    grid = torch.arange(64, device=device).view(1, 1, 8, 8).float().expand(batch, 1, 8, 8)
    labels = torch.nn.functional.interpolate(grid, size=(size, size), mode="nearest")[:, 0].long()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()

    def step():
        with autocast:
            out = model(a, b, labels, labels)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out["loss"].detach()

    run_benchmark(
        benchmark,
        step,
        device,
        group=f"GlobalLocalMoCo step ({name}, {size}x{size}, batch {batch}, queues 65536) [{device.type}]",
        impl=variant,
        role="reference" if variant == "global only" else "library",
        rounds=10 if gpu else 3,
        notes="speed-up < 1 here is the local loss's overhead (target: >= 0.83x, i.e. <= 20 %)"
        if variant != "global only"
        else "baseline",
    )
