"""The support check (engine.support_check) and per-sample IoU (metrics.foreground_iou): known answers
with stub models whose answers are set by the test, a plain loop as reference, QGNet end to end."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fewshot_priors.engine.support_check import SupportCheck, leave_one_out_iou, map_logits
from fewshot_priors.metrics import FewShotSegMeter, foreground_iou

S = 16  # input size of the stub episodes


class Stub(nn.Module):
    """A few-shot 'model' that reads its answers from the query image: channel 0 > 0.5 is its
    foreground, channel 1 (at half resolution) its guided map. It records the shots it was given."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, query, support_images, support_masks, query_mask=None):
        self.calls.append(tuple(support_images.shape[:2]))
        fg = (query[:, 0] > 0.5).float()
        logits = torch.stack([1 - fg, fg], 1) + self.w
        guided = query[:, 1:2, ::2, ::2]
        return {"logits": logits, "guided_map": guided, "prior_map": None}


def _photo(model_fg, map_fg):
    """A stub photo: the model answers ``model_fg`` (bool S, S), the map ``map_fg`` (bool S, S)."""
    x = torch.zeros(3, S, S)
    x[0] = model_fg.float()
    x[1] = map_fg.float()
    return x


def _square(top, left, size=8):
    m = torch.zeros(S, S, dtype=torch.bool)
    m[top:top + size, left:left + size] = True
    return m


def _episode(model_right: bool, k: int = 3):
    """K supports whose true mask is a square; the model finds it and the map misses it, or the reverse."""
    truth = _square(4, 4)
    wrong = _square(8, 8)  # overlaps the truth by 16 of 64 px: IoU 16 / 112
    images = [_photo(truth if model_right else wrong, wrong if model_right else truth) for _ in range(k)]
    masks = truth.long().expand(k, S, S).clone()
    return torch.stack(images), masks


def test_foreground_iou_known_answers_and_meter():
    pred = torch.tensor([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0]]])
    target = torch.tensor([[[1, 0, 0], [255, 1, 0]], [[0, 0, 0], [0, 0, 255]], [[0, 1, 0], [0, 0, 0]]])
    iou = foreground_iou(pred, target)
    assert iou.tolist() == [1 / 3, 1.0, 0.0]  # I 1 / U 3 (ignored px out); nothing in either; disjoint
    meter = FewShotSegMeter([1, 2, 3])
    meter.update(pred, target, class_id=[1, 2, 3])
    per_class = meter.compute()["per_class_iou"]
    assert per_class[1] == pytest.approx(float(iou[0])) and per_class[3] == pytest.approx(float(iou[2]))


def test_foreground_iou_rejects_scores_and_bad_labels():
    with pytest.raises(TypeError, match="`pred` must be a binary label map"):
        foreground_iou(torch.rand(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="`target` must contain only 0, 1 and 255"):
        foreground_iou(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.floats(0.05, 0.95), st.integers(0, 2**16))
def test_map_logits_argmax_is_the_thresholded_map(b, h, w, threshold, seed):
    g = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(seed))
    size = (2 * h + 1, w + 3)
    resized = torch.nn.functional.interpolate(g, size=size, mode="bilinear", align_corners=True)[:, 0]
    assert torch.equal(map_logits(g, size, threshold).argmax(1), (resized > threshold).long())


def test_leave_one_out_holds_out_each_support_once():
    model = Stub()
    images, masks = _episode(model_right=True, k=4)
    scores = leave_one_out_iou(model, images[None], masks[None])
    assert model.calls == [(1, 3)] * 4  # each support segmented from the three others
    assert scores["model"].tolist() == [1.0]
    assert scores["guided_map"].tolist() == pytest.approx([16 / 112])


def test_leave_one_out_matches_a_plain_loop():
    torch.manual_seed(0)
    model = Stub()
    images = torch.rand(2, 3, 3, S, S)
    masks = (torch.rand(2, 3, S, S) > 0.6).long()
    masks[:, :, 0] = 255
    scores = leave_one_out_iou(model, images, masks)
    for b in range(2):
        ref_model, ref_map = [], []
        for j in range(3):
            truth = masks[b, j]
            valid = truth != 255
            pred = images[b, j, 0] > 0.5
            up = torch.nn.functional.interpolate(images[b:b + 1, j, 1:2, ::2, ::2], size=(S, S), mode="bilinear",
                                                 align_corners=True)[0, 0] > 0.5
            for p, out in ((pred, ref_model), (up, ref_map)):
                inter = (p & (truth == 1) & valid).sum()
                union = ((p | (truth == 1)) & valid).sum()
                out.append(float(inter) / float(union))
        assert float(scores["model"][b]) == pytest.approx(sum(ref_model) / 3)
        assert float(scores["guided_map"][b]) == pytest.approx(sum(ref_map) / 3)


def test_the_map_answers_only_where_it_did_better_on_the_supports():
    model = Stub()
    (img_a, mask_a), (img_b, mask_b) = _episode(model_right=False), _episode(model_right=True)
    supports, masks = torch.stack([img_a, img_b]), torch.stack([mask_a, mask_b])
    query = torch.rand(2, 3, S, S)
    out = SupportCheck(model)(query, supports, masks)
    assert out["support_check"]["use_map"].tolist() == [True, False]
    plain = model(query, supports, masks)
    assert torch.equal(out["model_logits"], plain["logits"])
    assert torch.equal(out["logits"][1], plain["logits"][1])  # the model did better: its own answer
    assert torch.equal(out["logits"][0].argmax(0), map_logits(plain["guided_map"], (S, S))[0].argmax(0))


def test_margin_and_one_shot_keep_the_model():
    model = Stub()
    images, masks = _episode(model_right=False)
    query = torch.rand(1, 3, S, S)
    plain = model(query, images[None], masks[None])["logits"]
    out = SupportCheck(model, margin=0.95)(query, images[None], masks[None])  # map 1.0 vs model 0.14: < 0.95 apart
    assert out["support_check"]["use_map"].tolist() == [False] and torch.equal(out["logits"], plain)
    one = SupportCheck(model)(query, images[None, :1], masks[None, :1])
    assert one["support_check"] is None and torch.equal(one["logits"], model(query, images[None, :1],
                                                                          masks[None, :1])["logits"])


def test_bad_arguments_are_named():
    model = Stub()
    images, masks = _episode(model_right=True)
    with pytest.raises(ValueError, match="K >= 2"):
        leave_one_out_iou(model, images[None, :1], masks[None, :1])
    with pytest.raises(ValueError, match="`support_masks` must have shape"):
        leave_one_out_iou(model, images[None], masks[None, :2])
    with pytest.raises(ValueError, match="`margin` must be in"):
        SupportCheck(model, margin=1.5)
    with pytest.raises(ValueError, match="`margin` must be a finite number"):
        SupportCheck(model, margin=float("nan"))
    with pytest.raises(TypeError, match="`model` must be an nn.Module"):
        SupportCheck(lambda *a: None)

    class NoMap(Stub):
        def forward(self, *args, **kwargs):
            return {"logits": super().forward(*args, **kwargs)["logits"]}

    with pytest.raises(ValueError, match="needs a model whose output holds a `guided_map`"):
        leave_one_out_iou(NoMap(), images[None], masks[None])


def test_qgnet_end_to_end_and_the_study_tally():
    from fewshot_priors.app.report import SupportCheckTally, predictors
    from fewshot_priors.models import QGNet

    torch.manual_seed(0)
    model = QGNet("resnet18", use_prior=False, bins=(4, 2), channels=16).eval()
    supports, masks = torch.rand(2, 3, 3, 64, 64), torch.zeros(2, 3, 64, 64, dtype=torch.long)
    masks[..., 16:48, 16:48] = 1
    batch = {"query_image": torch.rand(2, 3, 64, 64), "support_images": supports, "support_masks": masks,
             "query_mask": masks[:, 0]}
    tally = SupportCheckTally()
    with torch.no_grad():
        checked = predictors(model, checks=tally)(batch)
        expected = SupportCheck(model)(batch["query_image"], supports, masks)
    assert torch.equal(checked["qgnet"], expected["logits"].float())
    summary = tally.compute()
    assert summary["episodes"] == 2 and summary["map_answers"] == int(expected["support_check"]["use_map"].sum())
    assert 0.0 <= summary["model_iou"] <= 1.0 and 0.0 <= summary["guided_map_iou"] <= 1.0
    assert SupportCheckTally().compute() == {}
