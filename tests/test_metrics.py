"""FewShotSegMeter against hand-computed values, a plain reference, and across 2 ranks."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fewshot_priors.metrics import FewShotSegMeter


def _t(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_hand_computed_with_ignore_and_empty_prediction():
    meter = FewShotSegMeter([1, 2])
    # class 1, episode A: pred fg at 3 px, target fg at 2 px, one pixel ignored
    pred_a = _t([[1, 1, 0], [1, 0, 0]])
    tgt_a = _t([[1, 0, 0], [255, 1, 0]])
    # valid pixels: 5. fg: I = 1 ((0,0)), U = 3 ((0,0),(0,1),(1,1)); (1,0) ignored
    # bg: pred bg valid = (0,2),(1,1),(1,2); tgt bg valid = (0,1),(0,2),(1,2)
    #     I_bg = 2, U_bg = 4
    meter.update(pred_a, tgt_a, 1)
    # class 2: nothing predicted, target fg 2 px -> I = 0, U = 2; bg I = 2, U = 4
    pred_b = _t([[0, 0], [0, 0], [0, 0]])
    tgt_b = _t([[1, 1], [0, 0], [255, 255]])
    meter.update(pred_b, tgt_b, 2)
    out = meter.compute()
    assert out["per_class_iou"][1] == pytest.approx(1 / 3)
    assert out["per_class_iou"][2] == pytest.approx(0.0)
    assert out["miou"] == pytest.approx((1 / 3 + 0) / 2)
    # FB: fg I = 1, U = 5; bg I = 4, U = 8
    assert out["fbiou"] == pytest.approx((1 / 5 + 4 / 8) / 2)
    assert out["episodes"] == 2


def test_accumulates_over_episodes_not_mean_of_episodes():
    meter = FewShotSegMeter([3])
    # episode 1: I=1, U=1 (IoU 1); episode 2: I=0, U=3 (IoU 0)
    meter.update(_t([[1, 0]]), _t([[1, 0]]), 3)
    meter.update(_t([[1, 1, 0]]), _t([[0, 0, 1]]), 3)
    assert meter.compute()["miou"] == pytest.approx(1 / 4)  # not (1 + 0) / 2


def _reference(preds, targets, classes, class_ids, ignore=255):
    inter = {c: 0 for c in class_ids}
    union = {c: 0 for c in class_ids}
    fbi, fbu = [0, 0], [0, 0]
    for p, t, c in zip(preds, targets, classes):
        for y in range(p.shape[0]):
            for x in range(p.shape[1]):
                if t[y, x] == ignore:
                    continue
                pf, tf = p[y, x] == 1, t[y, x] == 1
                inter[c] += pf and tf
                union[c] += pf or tf
                fbi[1] += pf and tf
                fbu[1] += pf or tf
                fbi[0] += (not pf) and (not tf)
                fbu[0] += (not pf) or (not tf)
    ious = [inter[c] / (union[c] + 1e-10) for c in class_ids]
    return float(np.mean(ious)), float(np.mean([fbi[k] / (fbu[k] + 1e-10) for k in (0, 1)]))


def test_matches_plain_reference_on_random_batches():
    g = torch.Generator().manual_seed(0)
    class_ids = [1, 2, 5]
    meter = FewShotSegMeter(class_ids)
    preds, targets, classes = [], [], []
    for _ in range(4):
        p = torch.randint(0, 2, (3, 7, 6), generator=g)
        t = torch.randint(0, 3, (3, 7, 6), generator=g)
        t[t == 2] = 255
        c = [class_ids[int(i)] for i in torch.randint(0, 3, (3,), generator=g)]
        meter.update(p, t, torch.tensor(c))
        preds += list(p.numpy())
        targets += list(t.numpy())
        classes += c
    miou, fbiou = _reference(preds, targets, classes, class_ids)
    out = meter.compute()
    assert out["miou"] == pytest.approx(miou, abs=1e-12)
    assert out["fbiou"] == pytest.approx(fbiou, abs=1e-12)


def test_state_dict_roundtrip_and_reset():
    m = FewShotSegMeter([1, 2])
    m.update(_t([[1, 0], [1, 1]]), _t([[1, 1], [0, 255]]), 2)
    m2 = FewShotSegMeter([1, 2])
    m2.load_state_dict(m.state_dict())
    assert m2.compute() == m.compute()
    with pytest.raises(ValueError, match="class_ids"):
        FewShotSegMeter([1, 3]).load_state_dict(m.state_dict())
    m.reset()
    assert m.compute()["episodes"] == 0 and m.compute()["miou"] == 0.0


def test_bad_input():
    m = FewShotSegMeter([1])
    with pytest.raises(ValueError, match="same shape"):
        m.update(_t([[1, 0]]), _t([[1]]), 1)
    with pytest.raises(ValueError, match="class_ids"):
        m.update(_t([[1]]), _t([[1]]), 7)
    with pytest.raises(TypeError, match="scores"):
        m.update(torch.rand(2, 2), _t([[1, 0], [0, 1]]), 1)
    with pytest.raises(ValueError, match="only 0, 1"):
        m.update(_t([[1]]), _t([[4]]), 1)
    with pytest.raises(ValueError, match="entries"):
        m.update(_t([[[1]], [[0]]]), _t([[[1]], [[0]]]), [1])
    with pytest.raises(ValueError, match="non-empty"):
        FewShotSegMeter([])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = FewShotSegMeter([1, 2])
        if rank == 0:
            m.update(_t([[1, 1, 0], [1, 0, 0]]), _t([[1, 0, 0], [255, 1, 0]]), 1)
        else:
            m.update(_t([[0, 0], [0, 0], [0, 0]]), _t([[1, 1], [0, 0], [255, 255]]), 2)
        m.all_reduce()
        torch.save(m.compute(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_process_gloo(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = FewShotSegMeter([1, 2])
    single.update(_t([[1, 1, 0], [1, 0, 0]]), _t([[1, 0, 0], [255, 1, 0]]), 1)
    single.update(_t([[0, 0], [0, 0], [0, 0]]), _t([[1, 1], [0, 0], [255, 255]]), 2)
    expected = single.compute()
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["miou"] == pytest.approx(expected["miou"])
        assert got["fbiou"] == pytest.approx(expected["fbiou"])
        assert got["episodes"] == 2
