"""Tests for the QGNet model (Fig. 2): shapes, wiring, freezing, training, bad input.

Most tests use timm's tiny ``test_resnet`` (a real ResNet, 0.4 M parameters, dilated
to output stride 8 like resnet50) so that the file stays fast on one CPU core.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot_priors.models.backbone import FrozenBackbone
from fewshot_priors.models.qgnet import QGNet
from fewshot_priors.ops.region_maps import guided_region_map, prior_region_map

TINY = dict(backbone="test_resnet", bins=(6, 3, 2, 1), channels=16)


def _episode(b=1, k=1, h=33, w=33, seed=0, hs=None, ws=None):
    g = torch.Generator().manual_seed(seed)
    hs, ws = hs or h, ws or w
    q = torch.rand(b, 3, h, w, generator=g)
    s = torch.rand(b, k, 3, hs, ws, generator=g)
    sm = torch.zeros(b, k, hs, ws)
    sm[..., hs // 4: 3 * hs // 4, ws // 4: 3 * ws // 4] = 1
    qm = torch.zeros(b, h, w, dtype=torch.long)
    qm[:, h // 3: 2 * h // 3, w // 5: 4 * w // 5] = 1
    return q, s, sm, qm


@pytest.fixture(scope="module")
def tiny() -> QGNet:
    torch.manual_seed(0)
    return QGNet(**TINY).eval()


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("b, k, h, w", [(1, 1, 33, 33), (3, 5, 41, 37), (2, 2, 50, 64), (1, 3, 30, 45)])
def test_output_shapes(tiny, b, k, h, w):
    q, s, sm, qm = _episode(b, k, h, w)
    out = tiny(q, s, sm, qm)
    feat = (-(-h // 8), -(-w // 8))  # dilated ResNet: ceil(H / 8)
    assert out["logits"].shape == (b, 2, h, w)
    assert len(out["aux_logits"]) == 4 and all(a.shape == (b, 2, h, w) for a in out["aux_logits"])
    for key in ("guided_map", "prior_map"):
        assert out[key].shape == (b, 1, *feat)
        assert out[key].min() >= 0 and out[key].max() <= 1
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])


def test_resnet18_one_and_five_shot_shapes():
    torch.manual_seed(0)
    model = QGNet("resnet18", bins=(8, 4, 2, 1), channels=32).eval()  # K comes from the data
    assert model.backbone.channels == (128, 256, 512)
    q, s, sm, _ = _episode(1, 1, 65, 65)
    out = model(q, s[:, 0], sm[:, 0])  # 1-shot given as B,3,H,W and B,H,W
    assert out["logits"].shape == (1, 2, 65, 65) and "loss" not in out
    q, s, sm, _ = _episode(2, 5, 45, 45, hs=49, ws=41)  # support size differs from the query
    assert model(q, s, sm)["logits"].shape == (2, 2, 45, 45)


def test_one_shot_input_forms_agree(tiny):
    q, s, sm, _ = _episode(2, 1)
    ref = tiny(q, s, sm)["logits"]
    torch.testing.assert_close(tiny(q, s[:, 0], sm[:, 0])["logits"], ref)
    torch.testing.assert_close(tiny(q, s[:, 0], sm)["logits"], ref)  # B, 1, H, W mask
    torch.testing.assert_close(tiny(q, s, sm.unsqueeze(2))["logits"], ref)  # B, K, 1, H, W


# --------------------------------------------------------------------------- wiring


def test_region_maps_follow_fig2(tiny):
    """The maps equal the ops applied to the features as described in Fig. 2 / REFERENCE §2."""
    q, s, sm, _ = _episode(2, 3, seed=1)
    out = tiny(q, s, sm)
    bb = tiny.backbone
    with torch.no_grad():
        q_high = bb(q)[2]
        s_flat = s.flatten(0, 1)
        _, s_mid = bb.forward_low_mid(s_flat)
        m = F.interpolate(sm.flatten(0, 1)[:, None], size=s_mid.shape[-2:], mode="bilinear", align_corners=True)
        s_high = bb.forward_high(s_mid * m).unflatten(0, (2, 3))
        guided = guided_region_map(q_high, s_high, sm)
        prior_feat = tiny.prior_extractor(q)[2]
        prior = prior_region_map(tiny.down_bridge(q_high), tiny.down_prior(prior_feat))
    torch.testing.assert_close(out["guided_map"], guided)
    torch.testing.assert_close(out["prior_map"], prior)


def test_shot_order_and_duplicate_shots(tiny):
    q, s, sm, _ = _episode(1, 3, seed=2)
    sm[:, 1, :5] = 1  # make the shots differ in mask too
    ref = tiny(q, s, sm)["logits"]
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(tiny(q, s[:, perm], sm[:, perm])["logits"], ref)
    one = tiny(q, s[:, :1], sm[:, :1])["logits"]
    torch.testing.assert_close(tiny(q, s[:, :1].expand(-1, 4, -1, -1, -1), sm[:, :1].expand(-1, 4, -1, -1))["logits"], one)


def test_support_ignore_label_counts_as_background(tiny):
    q, s, sm, _ = _episode(1, 1, seed=3)
    ignored = sm.clone()
    ignored[..., :3, :] = 255
    torch.testing.assert_close(tiny(q, s, ignored)["logits"], tiny(q, s, sm)["logits"])


def test_loss_is_main_plus_mean_aux(tiny):
    q, s, sm, qm = _episode(2, 1, seed=4)
    qm[0, :2] = 255
    out = tiny(q, s, sm, qm)
    main = F.cross_entropy(out["logits"], qm, ignore_index=255)
    aux = sum(F.cross_entropy(a, qm, ignore_index=255) for a in out["aux_logits"]) / 4
    torch.testing.assert_close(out["loss"], main + aux)
    all_ignored = tiny(q, s, sm, torch.full_like(qm, 255))["loss"]
    assert all_ignored.item() == 0.0


def test_aux_logits_are_resized_from_each_bin_to_the_input(tiny):
    """PFENet: inner_cls output (bin size) -> bilinear to the input size in ONE step."""
    q, s, sm, _ = _episode(1, 1, 41, 37, seed=5)
    captured = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: captured.append(o)) for m in tiny.decoder.inner_cls]
    try:
        out = tiny(q, s, sm)
    finally:
        for h in hooks:
            h.remove()
    assert [tuple(c.shape[-2:]) for c in captured] == [(6, 6), (3, 3), (2, 2), (1, 1)]
    for c, a in zip(captured, out["aux_logits"]):
        torch.testing.assert_close(a, F.interpolate(c, size=(41, 37), mode="bilinear", align_corners=True))


# --------------------------------------------------------------------------- training


def test_train_step_keeps_frozen_parts_frozen():
    torch.manual_seed(0)
    model = QGNet(**TINY)
    model.train()
    frozen = {"backbone": model.backbone, "prior": model.prior_extractor}
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in frozen.items()}
    trainable = model.trainable_parameters()
    frozen_ids = {id(p) for m in frozen.values() for p in m.parameters()}
    assert trainable and not frozen_ids & {id(p) for p in trainable}
    assert len(trainable) == sum(1 for _ in model.parameters()) - len(frozen_ids)
    start = [p.detach().clone() for p in trainable]
    opt = torch.optim.SGD(trainable, lr=0.1)
    q, s, sm, qm = _episode(2, 2)
    model(q, s, sm, qm)["loss"].backward()
    opt.step()
    for name, m in frozen.items():
        assert not m.body.training  # BN in eval although the model is in train()
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[name][k]), f"{name}.{k} changed"
        assert all(p.grad is None for p in m.parameters())
    assert all(not torch.equal(a, p) for a, p in zip(start, trainable) if p.grad is not None)
    # the prior map is trained through both down projections
    assert model.down_prior[0].weight.grad.abs().sum() > 0
    assert model.down_bridge[0].weight.grad.abs().sum() > 0


def test_overfits_one_episode():
    torch.manual_seed(0)
    model = QGNet(**TINY)
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    q, s, sm, qm = _episode(1, 1, 33, 33, seed=5)
    qm[:] = 0
    qm[:, :16] = 1  # foreground: the top half
    losses = []
    for _ in range(50):
        opt.zero_grad()
        loss = model(q, s, sm, qm)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # train mode (dropout on) makes single steps noisy: compare the mean of the last five
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses
    pred = model.predict(q, s, sm)
    assert model.training  # predict restores the mode
    assert pred.dtype == torch.long and pred.shape == (1, 33, 33)
    assert (pred == qm).float().mean() > 0.85


def test_autocast_cpu_bfloat16(tiny):
    q, s, sm, qm = _episode(1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny(q, s, sm, qm)
    assert out["logits"].shape == (1, 2, 33, 33)
    assert torch.isfinite(out["logits"].float()).all() and torch.isfinite(out["loss"])


# --------------------------------------------------------------------------- variants


def test_use_prior_false_is_pfenet_ablation(tiny):
    torch.manual_seed(0)
    model = QGNet(use_prior=False, **TINY).eval()
    assert model.prior_extractor is None and model.decoder.n_maps == 1
    assert not hasattr(model, "down_prior") and not hasattr(model, "down_bridge")
    q, s, sm, qm = _episode(2, 2)
    out = model(q, s, sm, qm)
    assert out["prior_map"] is None and out["logits"].shape == (2, 2, 33, 33)
    n = sum(p.numel() for p in model.trainable_parameters())
    n_full = sum(p.numel() for p in tiny.trainable_parameters())
    down = sum(p.numel() for p in (*tiny.down_bridge.parameters(), *tiny.down_prior.parameters()))
    assert n_full - n == down + 4 * 16  # + one more input channel per init_merge conv


def test_custom_prior_extractor_module():
    torch.manual_seed(0)
    prior = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, stride=4, padding=1), torch.nn.BatchNorm2d(12))
    model = QGNet(prior_backbone=prior, **TINY)
    assert model.down_prior[0].in_channels == 12
    assert all(not p.requires_grad for p in prior.parameters())
    model.train()
    assert not prior.training
    q, s, sm, qm = _episode(1, 1)
    running = prior[1].running_mean.clone()
    out = model(q, s, sm, qm)
    out["loss"].backward()
    assert torch.equal(prior[1].running_mean, running)
    assert out["prior_map"].shape == (1, 1, 5, 5)


def test_prior_backbone_by_name_and_given_backbone():
    from fewshot_priors.models.backbone import create_backbone

    bb = create_backbone("test_resnet")
    model = QGNet(backbone=bb, prior_backbone="test_byobnet", bins=(2, 1), channels=8)
    assert model.backbone is bb
    assert isinstance(model.prior_extractor, FrozenBackbone) and model.prior_extractor.name == "test_byobnet"
    q, s, sm, _ = _episode(1, 1)
    assert model(q, s, sm)["prior_map"].shape == (1, 1, 5, 5)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_helpful_errors(tiny):
    q, s, sm, qm = _episode(2, 2)
    with pytest.raises(TypeError, match="query_image"):
        tiny(q.to(torch.uint8), s, sm)
    with pytest.raises(ValueError, match="query_image"):
        tiny(q[:, :1], s, sm)
    with pytest.raises(ValueError, match="batch size"):
        tiny(q[:1], s, sm)
    with pytest.raises(ValueError, match="support_images"):
        tiny(q, s[:, :, :2], sm)
    with pytest.raises(ValueError, match=r"support_masks.*K=2"):
        tiny(q, s, sm[:, :1])
    with pytest.raises(ValueError, match="spatial size"):
        tiny(q, s, sm[..., :-1])
    with pytest.raises(ValueError, match=r"support_masks.*\[0, 1\]"):
        tiny(q, s, sm * 3)
    with pytest.raises(ValueError, match="query_mask"):
        tiny(q, s, sm, qm[:, :-1])
    with pytest.raises(ValueError, match=r"query_mask.*found \[2\]"):
        tiny(q, s, sm, qm * 2)
    with pytest.raises(TypeError, match="support_masks"):
        tiny(q, s, sm.tolist())


def test_support_mask_with_255_but_no_foreground_warns(tiny):
    """A 0/255 binary mask image would silently become an empty shot (255 = ignore)."""
    import warnings

    q, s, sm, _ = _episode(1, 2)
    with pytest.warns(UserWarning, match=r"\(0, 1\).*mask / 255"):
        tiny(q, s, torch.stack([sm[:, 0], sm[:, 1] * 255], dim=1))
    boundary = sm.clone()
    boundary[..., 0, :] = 255  # a real mask: foreground plus an ignored border
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny(q, s, boundary)
        tiny(q, s, sm.bool())


def test_query_mask_with_255_but_no_foreground_warns(tiny):
    import warnings

    q, s, sm, qm = _episode(1, 1)
    with pytest.warns(UserWarning, match=r"query_mask.*mask // 255"):
        tiny(q, s, sm, qm * 255)
    qm[:, 0] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny(q, s, sm, qm)


def test_images_outside_unit_range_or_non_finite_are_rejected(tiny):
    """Images enter in [0, 1] (the backbones normalise them): float images still in 0-255, or
    already mean/std-normalised ones, would run and give a silently wrong answer; they must
    raise with a hint at the cause, as must NaN/inf."""
    q, s, sm, _ = _episode(1, 1)
    raw = torch.rand(1, 3, 33, 33) * 255
    with pytest.raises(ValueError, match=r"query_image.*\[0, 1\].*0-255"):
        tiny(raw, s, sm)
    with pytest.raises(ValueError, match=r"support_images.*\[0, 1\].*0-255"):
        tiny(q, raw[:, None], sm)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    normalised = (q - mean) / std
    with pytest.raises(ValueError, match=r"query_image.*\[0, 1\].*already normalised"):
        tiny(normalised, s, sm)
    bad = q.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"query_image.*non-finite"):
        tiny(bad, s, sm)
    # the extremes of the range (black and white pixels) pass
    extremes = torch.randint(0, 2, (1, 3, 33, 33)).float()
    assert tiny(extremes, s, sm)["logits"].shape == (1, 2, 33, 33)


def test_the_backbones_normalise_with_their_own_statistics():
    """QGNet's two backbones each normalise the [0, 1] input with their own mean/std: a model fed
    x equals the timm bodies fed (x - mean) / std; the statistics come from timm's pretrained_cfg
    unless given, and a save / load round trip keeps them."""
    m = QGNet(**TINY, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), prior_mean=(0.1, 0.2, 0.3)).eval()
    assert m.backbone.mean == (0.5, 0.5, 0.5) and m.backbone.std == (0.25, 0.25, 0.25)
    assert m.prior_extractor.mean == (0.1, 0.2, 0.3)
    import timm

    assert m.prior_extractor.std == tuple(timm.models.get_pretrained_cfg("test_resnet").std)  # timm's cfg
    x = torch.rand(1, 3, 33, 33)
    low, mid, high = m.backbone(x)
    body = m.backbone.body
    ref = body((x - 0.5) / 0.25)
    torch.testing.assert_close(low, ref[m.backbone.levels[0]])
    assert m.config["mean"] == [0.5, 0.5, 0.5] and m.config["prior_mean"] == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="std"):
        QGNet(**TINY, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="prior_mean"):
        QGNet(**{**TINY, "use_prior": False}, prior_mean=(0.1, 0.2, 0.3))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="region_map_backend"):
        QGNet(region_map_backend="fast", **TINY)
    with pytest.raises(ValueError, match="use_prior=False"):
        QGNet(use_prior=False, prior_backbone="test_resnet", **TINY)
    with pytest.raises(ValueError, match="unknown backbone"):
        QGNet(backbone="resnet5O", bins=(2, 1), channels=8)


def test_prior_from_global_local_moco_encoder():
    """A GlobalLocalMoCo becomes a frozen, dilated copy of its momentum (key) encoder,
    as the official QGNet release (MoCo's encoder_k); ``moco.encoder`` gives the query one."""
    from fewshot_priors.ssl.moco import GlobalLocalMoCo

    torch.manual_seed(0)
    moco = GlobalLocalMoCo(backbone="test_resnet", queue_size=64, local_queue_size=64)
    with torch.no_grad():  # make the two encoders differ (after init the key encoder is a copy)
        for p in moco.key_encoder.parameters():
            p.add_(torch.randn_like(p))
    model = QGNet(prior_backbone=moco, **TINY)
    prior = model.prior_extractor
    assert isinstance(prior, FrozenBackbone) and prior.name == "test_resnet" and prior.reductions == (8, 8, 8)
    for source, other in ((moco.key_encoder, moco.encoder), (moco.encoder, moco.key_encoder)):
        if source is moco.encoder:
            prior = QGNet(prior_backbone=moco.encoder, **TINY).prior_extractor
        want, unwanted = source.state_dict(), other.state_dict()
        got = prior.body.state_dict()
        assert got and all(torch.equal(v, want[k]) for k, v in got.items())
        assert not all(torch.equal(v, unwanted[k]) for k, v in got.items())
    assert all(p.requires_grad for p in moco.encoder.parameters())  # the MoCo model itself is untouched


@pytest.mark.parametrize("name", ["test_efficientnet", "test_mambaout"])
def test_other_timm_families(name):
    """A backbone that cannot be split into stages (EfficientNet features class) and one
    that cannot be dilated (MambaOut: stages resized to the stride-8 stage)."""
    torch.manual_seed(0)
    model = QGNet(name, bins=(4, 2, 1), channels=8)
    bb = model.backbone
    assert bb.can_split == (name != "test_efficientnet")
    assert (name == "test_mambaout") == bb.resize
    q, s, sm, qm = _episode(2, 2, 40, 40)
    out = model(q, s, sm, qm)
    out["loss"].backward()
    assert out["logits"].shape == (2, 2, 40, 40)
    assert out["guided_map"].shape == out["prior_map"].shape == (2, 1, 5, 5)
    assert all(p.grad is None for p in bb.parameters())


# --------------------------------------------------------------------------- hostile input


def test_empty_batch_gives_empty_outputs_of_the_right_shape(tiny):
    q, s, sm, qm = _episode(0, 2, 33, 41)
    out = tiny(q, s, sm, qm)
    assert out["logits"].shape == (0, 2, 33, 41)
    assert [a.shape for a in out["aux_logits"]] == [(0, 2, 33, 41)] * 4
    assert out["guided_map"].shape == out["prior_map"].shape == (0, 1, 5, 6)
    assert out["loss"].item() == 0.0
    assert tiny.predict(q, s, sm).shape == (0, 33, 41)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_image_dtype_other_than_the_models_is_a_clear_early_error(tiny, dtype):
    q, s, sm, _ = _episode(1, 1)
    with pytest.raises(TypeError, match=r"`query_image` has dtype .*float32.*bfloat16"):
        tiny(q.to(dtype), s.to(dtype), sm)
    with pytest.raises(TypeError, match=r"`support_images` has dtype torch.float32 but `query_image`"):
        tiny(q.to(dtype), s, sm)
    # under autocast the convolutions cast the images themselves: accepted
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tiny(q.bfloat16(), s.bfloat16(), sm)["logits"].shape == (1, 2, 33, 33)


def test_value_checks_can_be_switched_off_and_are_the_only_syncs(tiny, monkeypatch):
    """Every Python-level read of a tensor value (a GPU sync) in forward is a value check."""
    import fewshot_priors as fp

    q, s, sm, qm = _episode(2, 2, seed=8)
    reads = []
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "unique"):
        original = getattr(torch.Tensor, name)

        def counted(t, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    expected = tiny(q, s, sm, qm)
    assert reads  # the checks do read values...
    reads.clear()
    with fp.checks_disabled():
        out = tiny(q, s, sm, qm)
    assert reads == []  # ...and nothing else in forward + loss does
    torch.testing.assert_close(out["logits"], expected["logits"])
    torch.testing.assert_close(out["loss"], expected["loss"])
    monkeypatch.undo()
    # with the checks off a raw 0-255 image is not caught (documented), with them on it is
    raw = torch.rand(2, 3, 33, 33) * 255
    with fp.checks_disabled():
        tiny(raw, s, sm)
    with pytest.raises(ValueError, match="query_image"):
        tiny(raw, s, sm)


# --------------------------------------------------------------------------- composition
STATE_PREFIXES = {"backbone", "prior_extractor", "down_bridge", "down_prior", "query_head", "support_head", "decoder"}


def test_region_map_modules_add_no_state_dict_keys(tiny):
    from fewshot_priors.ops import GuidedRegionMap, PriorRegionMap

    assert isinstance(tiny.guided_map, GuidedRegionMap) and isinstance(tiny.prior_map, PriorRegionMap)
    assert {k.split(".")[0] for k in tiny.state_dict()} == STATE_PREFIXES
    ablation = QGNet(use_prior=False, **TINY)
    assert ablation.prior_map is None
    assert {k.split(".")[0] for k in ablation.state_dict()} == STATE_PREFIXES - {"prior_extractor", "down_bridge",
                                                                                   "down_prior"}


def test_backend_chunk_size_and_eps_reach_the_region_map_modules():
    model = QGNet(region_map_backend="reference", max_chunk_bytes=4096, eps=1e-5, **TINY)
    for part in (model.guided_map, model.prior_map):
        assert (part.backend, part.max_chunk_bytes, part.eps) == ("reference", 4096, 1e-5)
    assert model.region_map_backend == "reference"
    default = QGNet(**TINY)
    from fewshot_priors.ops import DEFAULT_MAX_CHUNK_BYTES

    assert default.guided_map.max_chunk_bytes == DEFAULT_MAX_CHUNK_BYTES and default.prior_map.eps == 1e-7
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        QGNet(max_chunk_bytes=0, **TINY)
    with pytest.raises(ValueError, match=r"region_map_backend.*did you mean 'chunked'"):
        QGNet(region_map_backend="chunkd", **TINY)


def test_eps_changes_the_maps_and_chunk_size_does_not(tiny):
    q, s, sm, _ = _episode(2, 2)
    ref = tiny(q, s, sm)
    state = tiny.state_dict()
    torch.manual_seed(0)
    small = QGNet(region_map_backend="chunked", max_chunk_bytes=256, **TINY).eval()
    small.load_state_dict(state)
    torch.testing.assert_close(small(q, s, sm)["guided_map"], ref["guided_map"])
    coarse = QGNet(eps=0.5, **TINY).eval()
    coarse.load_state_dict(state)
    assert not torch.allclose(coarse(q, s, sm)["guided_map"], ref["guided_map"])


def test_shots_is_not_an_argument():
    """K comes from the data: the 0.1.0 `shots=` is refused, and options after prior_backbone are keywords only."""
    with pytest.raises(TypeError, match="shots"):
        QGNet(shots=5, **TINY)
    with pytest.raises(TypeError, match="positional"):
        QGNet("resnet18", None, False)


def test_swap_region_maps_and_decoder_without_subclassing(tiny):
    calls = {}

    class ConstantGuided(torch.nn.Module):
        def forward(self, query, support, support_mask):
            calls["guided"] = (query.shape, support.shape, support_mask.shape, support_mask.max().item())
            return torch.full((query.shape[0], 1, *query.shape[-2:]), 0.25)

    class ZeroPrior(torch.nn.Module):
        def forward(self, bridge, prior):
            calls["prior"] = (bridge.shape, prior.shape)
            return torch.zeros(bridge.shape[0], 1, *bridge.shape[-2:])

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(16 + 2, 2, 1)

        def forward(self, query_feat, prototype, region_maps, size):
            calls["decoder"] = (query_feat.shape, prototype.shape, region_maps.shape, size)
            x = torch.cat([query_feat + prototype[..., None, None], region_maps], 1)
            return F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=False), []

    model = QGNet(guided_map=ConstantGuided(), prior_map=ZeroPrior(), decoder=Decoder(), **TINY).eval()
    q, s, sm, qm = _episode(2, 3, 33, 33)
    sm[0, 0, 0, 0] = 255  # cleaned before the custom module sees it
    out = model(q, s, sm, qm)
    assert out["logits"].shape == (2, 2, 33, 33) and out["aux_logits"] == [] and torch.isfinite(out["loss"])
    assert torch.equal(out["guided_map"], torch.full((2, 1, 5, 5), 0.25)) and out["prior_map"].abs().sum() == 0
    qs, ss, ms, mmax = calls["guided"]
    assert qs[0] == 2 and ss[:2] == (2, 3) and ms == (2, 3, 33, 33) and mmax == 1.0
    assert calls["decoder"][1:] == ((2, 16), (2, 2, 5, 5), (33, 33))
    assert {k.split(".")[0] for k in model.state_dict()} == STATE_PREFIXES
    assert model.config is None  # custom parts: not describable by a config
    with pytest.raises(TypeError, match="decoder"):
        QGNet(decoder=lambda *a: a, **TINY)
    with pytest.raises(ValueError, match="map_skip.*custom `decoder`"):
        QGNet(decoder=Decoder(), map_skip=1.0, **TINY)
    with pytest.raises(ValueError, match="prior_map.*use_prior=False"):
        QGNet(use_prior=False, prior_map=ZeroPrior(), **TINY)


class _SyncCounter:
    """Counts host reads of tensor values (``aten._local_scalar_dense``: .item(), bool(t), ...)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:
                    counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_per_call_check_inputs_switch(tiny):
    import fewshot_priors as fp

    q, s, sm, qm = _episode(2, 2)
    with _SyncCounter() as checked:
        ref = tiny(q, s, sm, qm)
    with _SyncCounter() as unchecked:
        out = tiny(q, s, sm, qm, check_inputs=False)
    assert checked.n > 0 and unchecked.n == 0  # the value checks are the only host reads of a forward
    assert torch.equal(out["logits"], ref["logits"]) and torch.equal(out["loss"], ref["loss"])
    raw = q * 100
    tiny(raw, s, sm, check_inputs=False)  # value check skipped for this call only
    with pytest.raises(ValueError, match=r"query_image.*\[0, 1\]"):
        tiny(raw, s, sm)
    with fp.checks_disabled():
        tiny(raw, s, sm)  # global flag off, check_inputs=None follows it
        with pytest.raises(ValueError, match=r"query_image.*\[0, 1\]"):
            tiny(raw, s, sm, check_inputs=True)  # per call on beats the global flag
        with pytest.raises(ValueError, match="support_masks.*values in"):
            tiny(q, s, sm * 3, check_inputs=True)
        assert not fp.checks_enabled()  # restored after the forced check
    with pytest.raises(ValueError, match="query_image"):  # shape checks stay on
        tiny(q[:, :2], s, sm, check_inputs=False)
    with pytest.raises(TypeError, match="check_inputs"):
        tiny(q, s, sm, check_inputs="no")
    assert tiny.predict(raw, s, sm, check_inputs=False).shape == (2, 33, 33)  # skipped for this call only
    with pytest.raises(ValueError, match=r"query_image.*\[0, 1\]"):
        tiny.predict(raw, s, sm)


def test_support_mask_is_cleaned_once(tiny, monkeypatch):
    from fewshot_priors.models import checks
    from fewshot_priors.ops import checks as op_checks
    from fewshot_priors.ops import pooling, region_maps

    seen = []

    def counting(name, mask, **kwargs):
        seen.append(name)
        return op_checks.clean_mask(name, mask, **kwargs)

    for module in (checks, pooling, region_maps):
        monkeypatch.setattr(module, "clean_mask", counting)
    q, s, sm, _ = _episode(2, 3)
    sm[:, :, 0] = 255
    out = tiny(q, s, sm)
    assert seen == ["support_masks"]
    monkeypatch.undo()
    # and the result is the ops' own, which clean the mask themselves
    with torch.no_grad():
        q_high = tiny._features(q)[2]
        s_high = tiny._features(s.flatten(0, 1), sm.flatten(0, 1)[:, None].clamp(max=1) * (sm.flatten(0, 1)[:, None] != 255))[2]
        ref = guided_region_map(q_high, s_high.unflatten(0, (2, 3)), sm)
    torch.testing.assert_close(out["guided_map"], F.interpolate(ref, size=out["guided_map"].shape[-2:],
                                                                mode="bilinear", align_corners=True))


@pytest.mark.parametrize("kw, name", [({"region_map_backend": "bogus"}, "region_map_backend"),
                                      ({"max_chunk_bytes": -5}, "max_chunk_bytes"), ({"eps": -1.0}, "eps")])
def test_region_map_options_are_checked_even_when_custom_parts_leave_them_unused(kw, name):
    class Guided(torch.nn.Module):
        def forward(self, query, support, mask):
            return torch.zeros(query.shape[0], 1, *query.shape[-2:])

    with pytest.raises(ValueError, match=f"`{name}`"):
        QGNet(backbone="resnet18", guided_map=Guided(), use_prior=False, bins=(2, 1), channels=8, **kw)
