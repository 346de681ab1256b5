"""The real-images preset's hot paths on a CPU: a QGNet training step and an evaluation.

The settings are the default ``real-images`` preset's (``tf_efficientnet_lite0`` supervised backbone
and prior extractor from one weights file, 224 px, output stride 16, batch 8, 1-shot). ``plain`` is
the same model the way it was built before: contiguous memory format, the prior extractor running its
own pass on the query, every evaluation episode through the frozen backbones. ``library`` is what the
preset runs: ``experiment.channels_last`` (the frozen backbones' depthwise and dilated convolutions
leave the slow path), the query's high-level features shared with the prior extractor
(``QGNet.prior_shares_backbone``: the same weights), and, in evaluation, each distinct photo through
the frozen backbones once (``evaluate(memo_features=True)``). The weights are random (the timing does
not depend on them); the evaluation draws 40 episodes over 10 photos, as a held-out fold of a small
photo set does.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_benchmark

SIZE, BATCH, STRIDE = 224, 8, 16


def real_images_model(fast: bool):
    qg = pytest.importorskip("fewshot_priors.models.qgnet")
    bb = pytest.importorskip("fewshot_priors.models.backbone")
    torch.manual_seed(0)
    weights = bb.create_backbone("tf_efficientnet_lite0").body.state_dict()
    model = qg.QGNet("tf_efficientnet_lite0", weights=weights, prior_weights=weights, output_stride=STRIDE,
                     channels=64, bins=(1.0, 0.5, 0.25, 0.125), fg_weight=4.0)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    else:
        model._prior_shares_backbone = False  # the prior extractor runs its own pass
    return model


def real_images_episodes(n_photos: int, n_episodes: int):
    g = torch.Generator().manual_seed(0)
    photos = torch.rand(n_photos, 3, SIZE, SIZE, generator=g)
    masks = (torch.rand(n_photos, SIZE, SIZE, generator=g) > 0.7).long()
    pick = torch.randint(0, n_photos, (n_episodes, 2), generator=g)
    return [{"query_image": photos[q], "query_mask": masks[q], "support_images": photos[s][None],
             "support_masks": masks[s][None], "class_id": 1} for q, s in pick.tolist()]


@pytest.mark.parametrize("impl", ["plain", "library"])
def test_real_images_train_step(benchmark, device, impl):
    if device.type != "cpu":
        pytest.skip("the CPU preset's step; test_bench_models.py times the GPU one")
    model = real_images_model(fast=impl == "library").train()
    from fewshot_priors.data import collate_episodes

    batch = collate_episodes(real_images_episodes(BATCH, BATCH))
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)

    def step():
        loss = model(batch["query_image"], batch["support_images"], batch["support_masks"],
                     query_mask=batch["query_mask"])["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    run_benchmark(benchmark, step, device, group=f"real-images training step (Lite0, {SIZE} px, stride {STRIDE}, "
                  f"batch {BATCH}, 1-shot) [cpu]", impl=impl + ("" if impl == "plain" else
                                                               " (channels_last, shared prior features)"),
                  role="reference" if impl == "plain" else "library", rounds=3, episodes=BATCH)


@pytest.mark.parametrize("impl", ["plain", "library"])
def test_real_images_evaluation(benchmark, device, impl):
    if device.type != "cpu":
        pytest.skip("the CPU preset's evaluation")
    from fewshot_priors.engine.evaluate import evaluate

    model = real_images_model(fast=impl == "library").eval()
    episodes = real_images_episodes(10, 40)

    def run():
        return evaluate(model, episodes, class_ids=[1], batch_size=BATCH, progress=False,
                        memo_features=impl == "library")["miou"]

    run_benchmark(benchmark, run, device, group=f"real-images evaluation, 40 episodes over 10 photos (Lite0, "
                  f"{SIZE} px, stride {STRIDE}) [cpu]", impl=impl + ("" if impl == "plain" else
                                                                    " (channels_last, shared prior, feature memo)"),
                  role="reference" if impl == "plain" else "library", rounds=2, measure_memory=False, episodes=40)
