"""FewShotSegMeter against hand-computed values, a plain reference, and across 2 ranks."""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- threshold-free map scores
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fewshot_priors.metrics import pixel_average_precision, pixel_roc_auc  # noqa: E402


def _pairwise_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(wins.mean())


def _ap_by_thresholds(s, y):
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        sel = s >= t
        tp = float((sel & (y == 1)).sum())
        recall, precision = tp / float((y == 1).sum()), tp / float(sel.sum())
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0, 1, 255])), min_size=1, max_size=40))
def test_pixel_auc_and_ap_equal_their_definitions(pairs):
    """Ties (few distinct scores), ignored pixels and one-class episodes included."""
    s = torch.tensor([p[0] / 6 for p in pairs], dtype=torch.float32)
    y = torch.tensor([p[1] for p in pairs])
    keep = y != 255
    sv, yv = s[keep], y[keep]
    auc, ap = pixel_roc_auc(s, y), pixel_average_precision(s, y)
    if (yv == 1).any() and (yv == 0).any():
        assert auc == pytest.approx(_pairwise_auc(sv, yv))
    else:
        assert math.isnan(auc)
    if (yv == 1).any():
        assert ap == pytest.approx(_ap_by_thresholds(sv, yv))
    else:
        assert math.isnan(ap)


def test_pixel_auc_known_answers_and_invariances():
    s = torch.tensor([0.1, 0.4, 0.35, 0.8])
    y = torch.tensor([0, 0, 1, 1])
    assert pixel_roc_auc(s, y) == pytest.approx(0.75)  # scikit-learn's documented example
    assert pixel_average_precision(s, y) == pytest.approx(0.8333333)
    assert pixel_roc_auc(1 - s, y) == pytest.approx(0.25)  # an inverted map
    assert pixel_roc_auc(torch.exp(3 * s), y) == pytest.approx(0.75)  # monotone maps: same ranking
    assert pixel_roc_auc(torch.full((4,), 0.3), y) == pytest.approx(0.5)  # a constant map: no information
    with pytest.raises(ValueError, match="target"):
        pixel_roc_auc(s, torch.tensor([0, 2, 1, 1]))
    with pytest.raises(ValueError, match="finite"):
        pixel_roc_auc(torch.tensor([0.1, float("nan"), 0.2, 0.3]), y)
    with pytest.raises(ValueError, match="shape"):
        pixel_roc_auc(s, y[:3])
