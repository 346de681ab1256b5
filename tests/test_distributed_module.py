"""fewshot_priors.distributed's collectives: identity on one process, correct over 2 gloo processes.

The engine-level DDP test (training in lock-step, evaluation reduced over ranks) is
tests/test_distributed.py; this file checks the helpers MoCo and the metrics use.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from fewshot_priors.distributed import (
    all_gather_variable,
    all_reduce_min,
    all_reduce_sum,
    broadcast,
    concat_all_gather,
    dist_info,
    world_size,
)
from fewshot_priors.metrics import FewShotSegMeter


def test_single_process_helpers_are_identities():
    x = torch.arange(6.0).view(3, 2)
    assert world_size() == 1 and dist_info().world_size == 1
    for fn in (concat_all_gather, all_gather_variable, all_reduce_sum, all_reduce_min, broadcast):
        out = fn(x)
        assert out is x and torch.equal(out, torch.arange(6.0).view(3, 2)), fn.__name__
    meter = FewShotSegMeter([1])
    meter.update(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]), class_id=1)
    before = meter.compute()
    meter.all_reduce()
    assert meter.compute() == before


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from fewshot_priors.distributed import cleanup_distributed, init_distributed

    init_distributed("gloo")
    try:
        res = {"world": world_size()}
        res["concat"] = concat_all_gather(torch.full((2, 1), float(rank))).flatten().tolist()
        # rank r contributes r + 1 rows valued 10 r + i: variable sizes, gathered in rank order
        rows = torch.tensor([[10.0 * rank + i] for i in range(rank + 1)])
        res["variable"] = all_gather_variable(rows).flatten().tolist()
        res["min"] = all_reduce_min(torch.tensor([float(rank), 5.0 - rank])).tolist()
        res["sum"] = all_reduce_sum(torch.tensor([1.0, float(rank)])).tolist()
        res["broadcast"] = broadcast(torch.tensor([float(rank) + 7.0]), src=0).tolist()
        # metrics: rank 0 scores a perfect episode, rank 1 a half-right one, both of class 1
        meter = FewShotSegMeter([1])
        pred = torch.tensor([[1, 1]]) if rank == 0 else torch.tensor([[1, 0]])
        meter.update(pred, torch.tensor([[1, 1]]), class_id=1)
        meter.all_reduce()
        res["iou"] = meter.compute()["per_class_iou"][1]
        res["episodes"] = float(meter.episodes.sum())
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        cleanup_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned interpreters importing torch
def test_two_process_collectives(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    for res in r:
        assert res["world"] == 2
        assert res["concat"] == [0.0, 0.0, 1.0, 1.0]
        assert res["variable"] == [0.0, 10.0, 11.0]
        assert res["min"] == [0.0, 4.0]
        assert res["sum"] == [2.0, 1.0]
        assert res["broadcast"] == [7.0]
        # summed intersection 2 + 1 over summed union 2 + 2, as one process scoring both episodes
        assert res["iou"] == pytest.approx(0.75) and res["episodes"] == 2.0
