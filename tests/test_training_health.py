"""The training loop's self-checks and speed levers: foreground shares, the background-plateau warning,
best-checkpoint selection, validation classes held out of the training classes, AdamW + warm-up,
the frozen-feature memo and the shared prior features."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fewshot_priors.config import ConfigError, load_config
from fewshot_priors.engine.evaluate import collate_eval, evaluate
from fewshot_priors.engine.train import (
    PLATEAU_RATIO,
    BackgroundPlateauWarning,
    foreground_shares,
    make_optimizer,
    make_poly_scheduler,
    plateau_message,
    train,
)
from fewshot_priors.models import QGNet, create_backbone
from fewshot_priors.models.feature_cache import FeatureMemo


class Episodes(torch.utils.data.Dataset):
    """Episodes whose query foreground is the left half of the image (a known 50 % share)."""

    class_ids = [1]

    def __init__(self, n=8, size=8):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        mask = torch.zeros(self.size, self.size, dtype=torch.long)
        mask[:, : self.size // 2] = 1
        img = torch.rand(3, self.size, self.size, generator=g)
        return {"query_image": img, "query_mask": mask, "support_images": img[None], "support_masks": mask[None],
                "class_id": 1}


class ConstantModel(nn.Module):
    """Predicts one class everywhere (a learnable bias towards it); background = the plateau."""

    def __init__(self, foreground: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 5.0] if foreground else [5.0, 0.0]))

    def forward(self, query_image, support_images, support_masks, query_mask=None):
        b, _, h, w = query_image.shape
        logits = self.bias.view(1, 2, 1, 1).expand(b, 2, h, w)
        out = {"logits": logits}
        if query_mask is not None:
            out["loss"] = 0.0 * logits.sum() + self.bias.sum() * 0.0 + 1.0
        return out


def _cfg(tmp_path, **train_keys):
    cfg = load_config(None, {"train.epochs": 2, "train.batch_size": 4, "train.log_every": 1, "train.val_every": 0,
                             "data.num_workers": 0, "experiment.seed": 0})
    cfg["train"].update(train_keys)
    cfg["experiment"]["output_dir"] = str(tmp_path)
    return cfg


def test_foreground_shares_known_answer_and_ignored_pixels():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, :] = 1.0  # top row foreground
    mask = torch.tensor([[[1, 255], [1, 0]]])
    got = foreground_shares(logits, mask)
    assert got == pytest.approx({"fg_pred": 1 / 3, "fg_true": 2 / 3})  # 3 labelled pixels
    assert foreground_shares(None, mask) == {}


@pytest.mark.parametrize(("predicted", "true", "fires"), [(0.0, 0.1, True), (0.09 * PLATEAU_RATIO, 0.1, True), (0.1 * PLATEAU_RATIO, 0.1, False),
                                                          (0.1, 0.1, False), (0.0, 0.0, False)])
def test_plateau_message_fires_below_the_ratio(predicted, true, fires):
    assert (plateau_message(predicted, true, "x") is not None) == fires


def test_a_model_predicting_background_everywhere_gets_the_plateau_warning(tmp_path):
    with pytest.warns(BackgroundPlateauWarning, match="background plateau.*0.0 %.*50.0 %"):
        res = train(_cfg(tmp_path), model=ConstantModel(foreground=False), train_set=Episodes(),
                    collate_fn=collate_eval, progress=False)
    assert res["plateau"] is not None
    assert res["history"][-1]["fg_pred"] == 0.0 and res["history"][-1]["fg_true"] == pytest.approx(0.5)


def test_a_model_predicting_foreground_gets_no_plateau_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackgroundPlateauWarning)
        res = train(_cfg(tmp_path), model=ConstantModel(foreground=True), train_set=Episodes(),
                    collate_fn=collate_eval, progress=False)
    assert res["plateau"] is None


def test_the_plateau_is_judged_on_the_validation_of_the_selected_checkpoint(tmp_path):
    """Validation results with foreground shares decide, not the training batches."""
    vals = iter([{"miou": 0.4, "predicted_foreground_share": 0.0, "true_foreground_share": 0.2},
                 {"miou": 0.1, "predicted_foreground_share": 0.2, "true_foreground_share": 0.2}])
    with pytest.warns(BackgroundPlateauWarning, match="validation episodes \\(mIoU 40.0\\)"):
        res = train(_cfg(tmp_path, val_every=1), model=ConstantModel(foreground=True), train_set=Episodes(),
                    collate_fn=collate_eval, progress=False, val_fn=lambda m: next(vals), select_best=True)
    assert res["selected"] == "best"


def test_select_best_loads_the_best_checkpoint(tmp_path):
    scores = iter([0.5, 0.1])
    model = nn.Module()
    model = ConstantModel(foreground=True)
    seen = []

    def val_fn(m):
        seen.append(m.bias.detach().clone())
        with torch.no_grad():
            m.bias.add_(1.0)  # the weights move after each validation
        return {"miou": next(scores)}

    res = train(_cfg(tmp_path, val_every=1), model=model, train_set=Episodes(), collate_fn=collate_eval,
                progress=False, val_fn=val_fn, select_best=True)
    assert res["selected"] == "best" and res["best_miou"] == 0.5
    assert torch.equal(model.bias.detach(), seen[0] + 1.0)  # as saved after the first validation


def test_adamw_and_linear_warmup():
    p = nn.Parameter(torch.zeros(1))
    opt = make_optimizer([p], {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "momentum": 0.9})
    assert isinstance(opt, torch.optim.AdamW)
    sched = make_poly_scheduler(opt, total_steps=10, power=1.0, warmup_steps=3)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [1e-3 * min(1, (s + 1) / 4) * (1 - s / 10) for s in range(5)]
    assert lrs == pytest.approx(want)
    with pytest.raises(ValueError, match="train.optimizer"):
        make_optimizer([p], {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9})


def test_val_split_train_classes_needs_a_ratio():
    with pytest.raises(ConfigError, match="data.val_class_ratio"):
        load_config(None, {"train.val_split": "train_classes"})
    with pytest.raises(ConfigError, match="train.val_split"):
        load_config(None, {"train.val_split": "train"})
    load_config(None, {"train.val_split": "train_classes", "data.val_class_ratio": 0.25})


# --------------------------------------------------------------------------- validation classes


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    from fewshot_priors.data.synthetic import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("voc") / "data", num_classes=8, images_per_class=8,
                                      image_size=48, seed=0, min_pixels=64, progress=False)


def _data_cfg(root, ratio):
    return load_config(None, {"data.root": str(root), "data.num_classes": 8, "data.image_size": 48,
                              "data.val_class_ratio": ratio, "data.val_episodes": 6, "data.min_pixels": 64,
                              "train.val_split": "train_classes" if ratio else "test", "experiment.seed": 3})


def test_validation_classes_are_held_out_of_training_and_never_test_classes(pascal_root):
    from fewshot_priors.engine.build import build_dataset, build_validation_set

    cfg = _data_cfg(pascal_root, 0.34)
    train_set = build_dataset(cfg, "train", progress=False, cache=False)
    test_set = build_dataset(cfg, "val", progress=False, cache=False)
    val = train_set.val_class_ids
    assert len(val) == 2  # round(0.34 x 6 training classes)
    assert not set(val) & set(train_set.class_ids) and not set(val) & set(test_set.class_ids)
    assert set(val) | set(train_set.class_ids) | set(test_set.class_ids) == set(range(1, 9))
    assert all(c in train_set.class_ids for _, c in train_set.pairs)
    val_set = build_validation_set(cfg, train_set, progress=False, cache=False)
    assert sorted(val_set.class_ids) == val and len(val_set) == 6
    again = build_dataset(cfg, "train", progress=False, cache=False)  # seeded: the same classes
    assert again.val_class_ids == val
    with pytest.raises(ValueError, match="val_class_ratio"):
        build_validation_set(cfg, build_dataset(_data_cfg(pascal_root, 0.0), "train", progress=False, cache=False))


# --------------------------------------------------------------------------- speed levers


def test_feature_memo_computes_each_distinct_sample_once():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return x + 1, x.sum((1,))

    memo = FeatureMemo(max_items=3)
    x = torch.rand(4, 2)
    a = memo("k", x[[0, 1, 0]], fn)
    b = memo("k", x[[1, 2]], fn)
    assert calls == [3, 1]  # a duplicate inside the first batch is computed there; x[1] is remembered
    assert torch.equal(a[0], x[[0, 1, 0]] + 1) and torch.equal(b[1], x[[1, 2]].sum(1))
    assert len(memo.store) <= 3
    half = x.bfloat16()  # keyed by its bytes, whatever the dtype
    assert torch.equal(memo("k", half, fn)[0], half + 1)
    with pytest.raises(ValueError, match="max_items"):
        FeatureMemo(0)


def test_backbone_feature_memo_equals_the_plain_forward():
    bb = create_backbone("resnet18")
    x = torch.rand(3, 3, 48, 48)
    plain = bb(x)
    with bb.feature_memo() as memo:
        first = bb(x[[0, 1]])
        again = bb(x)  # x[0], x[1] remembered, x[2] computed
        masked = bb.forward_high(bb.forward_low_mid(x)[1] * 0.5)
    # low/mid and high of three photos, then the high stage of three masked mids; x[0], x[1] twice remembered
    assert (memo.misses, memo.hits) == (3 + 3 + 3, 2 + 2 + 3)
    for p, q in zip(plain, again):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first[2], plain[2][:2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked, bb.forward_high(bb.forward_low_mid(x)[1] * 0.5), rtol=1e-5, atol=1e-6)
    assert bb._memo is None  # off again outside the context


def test_evaluate_with_and_without_the_memo_agree(pascal_root):
    from fewshot_priors.engine.build import build_dataset

    cfg = _data_cfg(pascal_root, 0.0)
    ds = build_dataset(cfg, "val", episodes=8, seed=1, progress=False, cache=False)
    torch.manual_seed(0)
    model = QGNet("resnet18", channels=16, bins=(8, 4))
    a = evaluate(model, ds, batch_size=4, progress=False, memo_features=False)
    b = evaluate(model, ds, batch_size=4, progress=False, memo_features=True)
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-6)
    assert a["predicted_foreground_share"] == pytest.approx(b["predicted_foreground_share"], abs=1e-6)
    assert 0 < a["true_foreground_share"] < 1


def test_evaluate_reports_foreground_shares_known_answer(pascal_root):
    from fewshot_priors.engine.build import build_dataset

    ds = build_dataset(_data_cfg(pascal_root, 0.0), "val", episodes=4, seed=1, progress=False, cache=False)
    res = evaluate(None, ds, batch_size=2, progress=False,
                   predict_fn=lambda b: torch.ones(b["query_image"].shape[0], *b["query_image"].shape[-2:],
                                                   dtype=torch.long))
    labels = [ds[i]["query_mask_orig"] for i in range(len(ds))]
    valid = sum(int((t != 255).sum()) for t in labels)
    assert res["predicted_foreground_share"] == pytest.approx(1.0)
    assert res["true_foreground_share"] == pytest.approx(sum(int((t == 1).sum()) for t in labels) / valid)


def _pair(weights_equal: bool):
    torch.manual_seed(0)
    body = create_backbone("resnet18").body.state_dict()
    state = body if weights_equal else {k: (v + 0.01 if v.is_floating_point() else v) for k, v in body.items()}
    torch.manual_seed(1)
    return QGNet("resnet18", weights=body, prior_weights=state, channels=16, bins=(8, 4))


def test_prior_shares_the_backbone_only_with_the_same_weights_and_gives_the_same_outputs():
    model = _pair(weights_equal=True).eval()
    assert model.prior_shares_backbone
    q, s, m = torch.rand(2, 3, 48, 48), torch.rand(2, 1, 3, 48, 48), (torch.rand(2, 1, 48, 48) > 0.5).float()
    shared = model(q, s, m)
    model._prior_shares_backbone = False  # the prior extractor runs itself
    plain = model(q, s, m)
    assert torch.equal(shared["prior_map"], plain["prior_map"]) and torch.equal(shared["logits"], plain["logits"])
    assert not _pair(weights_equal=False).prior_shares_backbone


def test_loading_other_prior_weights_ends_the_sharing():
    model = _pair(weights_equal=True)
    assert model.prior_shares_backbone
    state = {k: (v + 0.01 if v.is_floating_point() else v) for k, v in model.prior_extractor.state_dict().items()}
    model.prior_extractor.load_state_dict(state)
    assert not model.prior_shares_backbone
    model.load_state_dict({**model.state_dict(), **{f"prior_extractor.{k}": v
                                                     for k, v in model.backbone.state_dict().items()}})
    assert model.prior_shares_backbone


def test_channels_last_model_from_the_config_matches_the_contiguous_one(tmp_path):
    from fewshot_priors.engine.build import build_model
    from fewshot_priors.engine.checkpoint import load_checkpoint, save_checkpoint

    cfg = load_config(None, {"model.backbone": "resnet18", "model.channels": 16, "model.bins": [8, 4]})
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    cfg["experiment"]["channels_last"] = True
    torch.manual_seed(0)
    fast = build_model(cfg).eval()
    assert fast.query_head[0].weight.is_contiguous(memory_format=torch.channels_last)
    q, s, m = torch.rand(1, 3, 48, 48), torch.rand(1, 1, 3, 48, 48), torch.ones(1, 1, 48, 48)
    torch.testing.assert_close(fast(q, s, m)["logits"], plain(q, s, m)["logits"], rtol=1e-4, atol=1e-4)
    save_checkpoint(tmp_path / "ck", model=fast)  # written contiguous, loads into either layout
    cfg["experiment"]["channels_last"] = False
    loaded = build_model(cfg)
    load_checkpoint(tmp_path / "ck", model=loaded)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), fast.state_dict().values()))


# --------------------------------------------------------------------------- recipe options


def test_soft_dice_loss_known_answers_ignores_255_and_has_gradients():
    from fewshot_priors.models.qgnet import soft_dice_loss

    target = torch.tensor([[[1, 1], [0, 255]]])
    sure = torch.tensor([[[[-20.0, -20.0], [20.0, 0.0]], [[20.0, 20.0], [-20.0, 0.0]]]])  # right, ignored pixel 50/50
    assert float(soft_dice_loss(sure, target)) == pytest.approx(0.0, abs=1e-6)
    wrong = -sure
    assert float(soft_dice_loss(wrong, target)) == pytest.approx(1 - 1 / (1 + 2 + 1), abs=1e-6)  # 1 - s / (|P| + |T| + s)
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    soft_dice_loss(logits, target).backward()
    assert logits.grad[0, 1, 0, 0] < 0 < logits.grad[0, 1, 1, 0]  # raise fg on the object, lower it off it
    assert logits.grad[0, :, 1, 1].abs().sum() == 0  # the ignored pixel


def test_qgnet_dice_weight_adds_the_dice_term():
    torch.manual_seed(0)
    plain = QGNet("resnet18", channels=16, bins=(8, 4)).eval()
    dice = QGNet("resnet18", channels=16, bins=(8, 4), dice_weight=0.5).eval()
    dice.load_state_dict(plain.state_dict())
    logits, aux = torch.randn(2, 2, 8, 8), [torch.randn(2, 2, 8, 8)]
    target = (torch.rand(2, 8, 8) > 0.5).long()
    from fewshot_priors.models.qgnet import soft_dice_loss

    want = plain.loss(logits, aux, target) + 0.5 * soft_dice_loss(logits, target)
    torch.testing.assert_close(dice.loss(logits, aux, target), want)
    with pytest.raises(ValueError, match="dice_weight"):
        QGNet("resnet18", dice_weight=-1.0)


def test_min_steps_adds_whole_epochs(tmp_path):
    res = train(_cfg(tmp_path, epochs=1, min_steps=5), model=ConstantModel(foreground=True), train_set=Episodes(),
                collate_fn=collate_eval, progress=False)
    assert res["step"] == 6 and res["epoch"] == 3  # 2 steps per epoch: 3 epochs reach 5 steps


def test_train_command_validates_on_classes_held_back_from_training(tmp_path, capsys):
    """`train --set train.val_split=train_classes`: the validation never sees a test class, logs the
    foreground shares, keeps the best checkpoint, and the run warns when it sits on the plateau."""
    import csv

    from fewshot_priors.app.cli import main
    from fewshot_priors.data import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path / "data", num_classes=8, images_per_class=8, image_size=48,
                                      min_pixels=64, progress=False)
    sets = [f"data.root={root}", "data.num_classes=8", "data.image_size=48", "model.bins=[8, 4]", "model.channels=16",
            "train.batch_size=2", "train.epochs=1", "train.log_every=1", "model.use_prior=false",
            "data.num_workers=0", "data.min_pixels=64", "data.val_episodes=4", "data.val_class_ratio=0.34",
            "train.val_split=train_classes", f"experiment.output_dir={tmp_path / 'run'}"]
    args = ["train", "--config", "demo", "--no-progress"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    assert (tmp_path / "run" / "best.safetensors").is_file()
    with open(tmp_path / "run" / "scalars.csv") as f:
        tags = {row["tag"] for row in csv.DictReader(f)}
    assert {"val/miou", "val/fg_pred", "val/fg_true", "train/fg_pred", "train/fg_true"} <= tags


def test_fg_balance_sets_the_weight_from_the_training_foreground_share(tmp_path):
    """Episodes with a 50 % foreground: balanced weight 1, times the balance factor; the draws of the
    run are unchanged (the sampling restores the RNG states)."""
    from fewshot_priors.engine.train import balanced_fg_weight, foreground_share

    class Weighted(ConstantModel):
        fg_weight = 1.0

    ds = Episodes()
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    assert foreground_share(ds) == pytest.approx(0.5)
    assert torch.equal(torch.rand(1), before)
    assert balanced_fg_weight(ds, 0.8) == pytest.approx((0.8, 0.5))
    model = Weighted(foreground=True)
    res = train(_cfg(tmp_path, fg_balance=2.0), model=model, train_set=ds, collate_fn=collate_eval, progress=False)
    assert model.fg_weight == pytest.approx(2.0) and res["fg_weight"] == pytest.approx(2.0)
    assert res["train_fg_share"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="train.fg_balance"):
        load_config(None, {"train.fg_balance": 0})


def test_results_md_quotes_each_plateau_finding():
    from fewshot_priors.app.real_images import _plateau_markdown

    msg = plateau_message(0.007, 0.089, "the last training batches")
    table = _plateau_markdown([{"seed": 1, "fold": 2, "model": "qgnet_without_prior", "warning": msg}])
    assert ("| 1 | 2 | qgnet_without_prior | on the last training batches the model predicts 0.7 % of the pixels "
            "as foreground where the labels have 8.9 %. |") in table
    assert _plateau_markdown([]) == ""
