"""DDP on CPU: 2 gloo processes train in lock-step, match one process, and reduce metrics correctly."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fewshot_priors.config import load_config
from fewshot_priors.distributed import DistInfo, all_reduce_sum, dist_info, shard_indices
from fewshot_priors.engine.evaluate import collate_eval
from fewshot_priors.engine.train import train


class Episodes(torch.utils.data.Dataset):
    class_ids = [1, 2]

    def __len__(self):
        return 16

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        img = torch.randn(3, 8, 8, generator=g)
        sup = torch.rand(1, 3, 8, 8, generator=g)
        return {"query_image": img, "query_mask": (img[0] > 0).long(), "support_images": sup,
                "support_masks": (sup[:, 0] > 0).long(), "class_id": 1 + i % 2}


class Net(nn.Module):
    """No dropout: DDP's gradient average over two half-batches equals the full-batch gradient."""

    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))

    def forward(self, query_image, support_images, support_masks, query_mask=None):
        proto = (support_images[:, 0] * support_masks[:, :1]).mean((2, 3), keepdim=True)
        sim = torch.cosine_similarity(query_image, proto, dim=1).unsqueeze(1)
        logits = self.head(torch.cat([query_image, sim], 1))
        out = {"logits": logits}
        if query_mask is not None:
            out["loss"] = nn.functional.cross_entropy(logits, query_mask)
        return out


def _cfg(out):
    cfg = load_config(None, {"train.epochs": 1, "train.batch_size": 4, "train.lr": 0.1, "train.log_every": 1,
                             "train.val_every": 0, "data.num_workers": 0, "experiment.seed": 3})
    cfg["experiment"]["output_dir"] = str(out)
    return cfg


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from fewshot_priors.distributed import cleanup_distributed, init_distributed

    info = init_distributed("gloo")
    try:
        torch.manual_seed(0)
        model = Net()
        ddp = nn.parallel.DistributedDataParallel(model)
        res = train(_cfg(os.path.join(out, "run")), model=model, train_set=Episodes(), collate_fn=collate_eval,
                    progress=False, dist=info, ddp_model=ddp, max_steps=3)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        # rank r owns episodes r, r + 2, ...: sum of their indices reduced over ranks = sum over all
        owned = torch.tensor([float(sum(shard_indices(10)))])
        all_reduce_sum(owned)
        counts = torch.tensor([float(len(shard_indices(10)))])
        all_reduce_sum(counts)
        metrics = None
        try:
            import fewshot_priors.metrics  # noqa: F401
            from fewshot_priors.engine.evaluate import evaluate

            metrics = evaluate(model, Episodes(), seed=1, batch_size=3, progress=False, dist=info)
        except ImportError:
            pass
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"params": flat.tolist(), "owned": owned.item(), "counts": counts.item(),
                       "step": res["step"], "metrics": metrics, "world": dist_info().world_size}, f)
    finally:
        cleanup_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters importing torch: ~10-20 s
def test_two_process_gloo_training_agrees_and_reduces(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == 2 and r0["step"] == r1["step"] == 3
    assert r0["params"] == r1["params"]  # DDP keeps the replicas identical
    assert r0["owned"] == r1["owned"] == float(sum(range(10)))
    assert r0["counts"] == 10.0
    assert (tmp_path / "run" / "last.safetensors").is_file()  # rank 0 checkpointed

    # one process with the same global batch reaches the same weights (up to float summation order)
    torch.manual_seed(0)
    single = Net()
    train(_cfg(tmp_path / "single"), model=single, train_set=Episodes(), collate_fn=collate_eval,
          progress=False, dist=DistInfo(), max_steps=3)
    flat = torch.cat([p.detach().flatten() for p in single.parameters()])
    assert torch.allclose(flat, torch.tensor(r0["params"]), atol=1e-5)

    if r0["metrics"] is not None:  # metrics reduced over ranks equal the single-process evaluation
        from fewshot_priors.engine.evaluate import evaluate

        ref = evaluate(single, Episodes(), seed=1, batch_size=3, progress=False, dist=DistInfo())
        assert r0["metrics"]["miou"] == pytest.approx(ref["miou"], abs=1e-5)
        assert r0["metrics"]["fbiou"] == pytest.approx(ref["fbiou"], abs=1e-5)
        assert r0["metrics"] == r1["metrics"]
