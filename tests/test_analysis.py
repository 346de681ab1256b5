"""Table-7 recall of region maps (fewshot_priors.analysis): hand-computed answers and a plain reference."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot_priors.analysis import TABLE7_THRESHOLDS, RecallMeter, recall_counts, region_map_recall


def _map(values):
    return torch.tensor(values, dtype=torch.float32)[None, None]


def test_known_answer_with_ignore_pixels():
    # 2x3 map, label: 3 object pixels, 1 ignored pixel (its map value must not count)
    m = _map([[0.95, 0.55, 0.15], [0.75, 0.05, 0.35]])
    gt = torch.tensor([[[1, 1, 1], [255, 0, 0]]])
    r = region_map_recall(m, gt, thresholds=(0.1, 0.5, 0.6, 0.9, 0.99))
    # object values 0.95, 0.55, 0.15 -> >=0.1: 3/3, >=0.5: 2/3, >=0.6: 1/3, >=0.9: 1/3, >=0.99: 0
    assert r.shape == (1, 5)
    assert torch.allclose(r[0], torch.tensor([1.0, 2 / 3, 1 / 3, 1 / 3, 0.0], dtype=torch.float64))


def test_low_is_object_uses_one_minus_map():
    m = _map([[0.95, 0.55, 0.15], [0.75, 0.05, 0.35]])
    gt = torch.tensor([[[1, 1, 1], [255, 0, 0]]])
    # 1 - map on the object: 0.05, 0.45, 0.85 -> >=0.1: 2/3, >=0.5: 1/3, >=0.9: 0
    r = region_map_recall(m, gt, thresholds=(0.1, 0.5, 0.9), low_is_object=True)
    assert torch.allclose(r[0], torch.tensor([2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    # inverting the map and the convention together gives the same answer
    r2 = region_map_recall(1 - m, gt, thresholds=(0.1, 0.5, 0.9), low_is_object=False)
    assert torch.allclose(r, r2, atol=1e-6)


def test_empty_ground_truth_is_nan_and_skipped_by_meter():
    m = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    gt = torch.zeros(2, 4, 4, dtype=torch.long)
    gt[0, :2] = 1
    r = region_map_recall(m, gt)
    assert r.shape == (2, len(TABLE7_THRESHOLDS))
    assert not torch.isnan(r[0]).any() and torch.isnan(r[1]).all()
    meter = RecallMeter()
    meter.update(m, gt)
    assert meter.compute()["episodes"] == 1


def test_map_is_resized_to_the_label_bilinearly():
    # a 2x2 map [[0, 1], [0, 1]] resized to 2x3 with align_corners=True: columns 0, 0.5, 1
    m = _map([[0.0, 1.0], [0.0, 1.0]])
    gt = torch.ones(1, 2, 3, dtype=torch.long)
    r = region_map_recall(m, gt, thresholds=(0.4, 0.6))
    assert torch.allclose(r[0], torch.tensor([4 / 6, 2 / 6], dtype=torch.float64))


def test_matches_plain_reference_and_meter_aggregates():
    g = torch.Generator().manual_seed(3)
    maps = torch.rand(5, 1, 6, 7, generator=g)
    gt = torch.randint(0, 2, (5, 6, 7), generator=g)
    gt[torch.rand(5, 6, 7, generator=g) < 0.1] = 255
    thr = (0.2, 0.5, 0.8)
    r = region_map_recall(maps, gt, thr, low_is_object=True)
    inter_all, gt_all, area_all, valid_all = [0.0] * 3, 0.0, [0.0] * 3, 0.0
    for b in range(5):
        obj = [(1 - maps[b, 0, i, j].item(), gt[b, i, j].item()) for i in range(6) for j in range(7)]
        n_gt = sum(1 for _, t in obj if t == 1)
        gt_all += n_gt
        valid_all += sum(1 for _, t in obj if t != 255)
        for k, a in enumerate(thr):
            hit = sum(1 for v, t in obj if t == 1 and v >= a)
            inter_all[k] += hit
            area_all[k] += sum(1 for v, t in obj if t != 255 and v >= a)
            assert r[b, k].item() == pytest.approx(hit / n_gt)
    meter = RecallMeter(thr, low_is_object=True)
    meter.update(maps[:2], gt[:2])
    meter.update(maps[2:], gt[2:])
    res = meter.compute()
    assert res["pooled"] == pytest.approx([x / gt_all for x in inter_all])
    assert res["mean"] == pytest.approx(r.mean(0).tolist())
    assert res["area"] == pytest.approx([x / valid_all for x in area_all])
    assert res["episodes"] == 5
    # recall can only fall as the threshold rises
    assert all(a >= b for a, b in zip(res["pooled"], res["pooled"][1:]))


def test_counts_accept_b1hw_labels():
    m = torch.rand(2, 1, 3, 3)
    gt = torch.randint(0, 2, (2, 3, 3))
    a = recall_counts(m, gt)
    b = recall_counts(m, gt[:, None])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_input_names_the_argument():
    gt = torch.ones(1, 3, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="region_map"):
        region_map_recall(torch.ones(1, 1, 3, 3, dtype=torch.long), gt)
    with pytest.raises(ValueError, match="region_map"):
        region_map_recall(torch.ones(1, 2, 3, 3), gt)
    with pytest.raises(ValueError, match="gt_mask"):
        region_map_recall(torch.ones(2, 1, 3, 3), gt)
    with pytest.raises(TypeError, match="gt_mask"):
        region_map_recall(torch.ones(1, 1, 3, 3), [[1]])
    with pytest.raises(ValueError, match="thresholds"):
        region_map_recall(torch.ones(1, 1, 3, 3), gt, thresholds=())
    assert math.isnan(RecallMeter().compute()["pooled"][0])
