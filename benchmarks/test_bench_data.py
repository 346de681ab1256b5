"""Data loading: episodes/s of the training DataLoader at the paper's PASCAL batch size.

The loader keeps up when its episodes/s (this file) exceed the training step's
episodes/s (``test_bench_models.py``, same run, same machine). Data: the built-in
synthetic dataset in the real PASCAL on-disk layout (JPEG + palette PNG), the
paper's training transform at 473.
"""

from __future__ import annotations

import pytest
import torch
from conftest import run_benchmark

BATCH = 4  # PFENet's PASCAL-5i batch size


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    data = pytest.importorskip("fewshot_priors.data")
    return data.generate_synthetic_dataset(
        tmp_path_factory.mktemp("syn"), num_classes=8, images_per_class=6, image_size=400, progress=False
    )


def _default_workers() -> int:
    try:
        from fewshot_priors.config import DEFAULTS

        return int(DEFAULTS["data"]["num_workers"])
    except Exception:
        return 4


@pytest.mark.parametrize(
    "shots,workers", [(1, 0), (1, "default"), (5, "default")], ids=["1shot-serial", "1shot-default", "5shot-default"]
)
def test_train_loader(benchmark, synthetic_root, shots, workers):
    data = pytest.importorskip("fewshot_priors.data")
    workers = _default_workers() if workers == "default" else workers
    ds = data.PascalFewShot(
        synthetic_root, fold=0, split="train", shots=shots, transform=data.TrainTransform(473, scale=(0.9, 1.1)),
        image_size=473,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=workers, collate_fn=data.collate_episodes,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0), drop_last=True,
    )  # fmt: skip
    if len(loader) == 0:
        pytest.skip("dataset too small for one batch")

    def forever():
        while True:
            yield from loader

    batches = forever()
    # each timed call drains PULL batches, so the workers' prefetch queue (2 per worker) is a small part
    pull = 16 if torch.cuda.is_available() else 4

    def drain():
        for _ in range(pull):
            out = next(batches)
        return out

    run_benchmark(
        benchmark,
        drain,
        torch.device("cpu"),
        group=f"data loading: PASCAL train episodes, {shots}-shot, batch {BATCH}, 473 [cpu, {torch.get_num_threads()} thread(s) main]",
        impl=f"DataLoader(num_workers={workers})",
        role="reference" if workers == 0 and shots == 1 else "library",
        rounds=2,
        episodes=BATCH * pull,
        measure_memory=False,
    )
