"""Tests for fewshot_priors.models.backbone: stages, freezing, local weight loading."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from fewshot_priors.models.backbone import FrozenBackbone, create_backbone
from fewshot_priors.models.weights import PRIOR_EXTRACTOR_FORMAT


@pytest.fixture(scope="module")
def r18() -> FrozenBackbone:
    torch.manual_seed(0)
    return create_backbone("resnet18")


def _timm_sd(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A full timm state dict (classifier head included) with random values."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():  # make BN running stats non-default so loading them is visible
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(backbone: FrozenBackbone, sd: dict[str, torch.Tensor]) -> None:
    got = backbone.body.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(got[key], sd[key], rtol=0, atol=0)


# --------------------------------------------------------------------------- stages


@pytest.mark.parametrize(
    "name, channels",
    [("resnet18", (128, 256, 512)), ("resnet50", (512, 1024, 2048)), ("vgg11", (256, 512, 512))],
)
def test_channels_and_common_stride(name, channels):
    torch.manual_seed(0)
    bb = create_backbone(name)
    assert bb.channels == channels
    assert bb.name == name
    x = torch.randn(1, 3, 65, 65)
    low, mid, high = bb(x)
    assert (low.shape[1], mid.shape[1], high.shape[1]) == channels
    # one common spatial size: output stride 8 for a dilated ResNet (ceil(65 / 8) = 9);
    # VGG at stride 16 with ceil-mode pools as PFENet (65 -> 33 -> 17 -> 9 -> 5)
    assert low.shape[-2:] == mid.shape[-2:] == high.shape[-2:]
    expected = 9 if name.startswith("resnet") else 5
    assert tuple(low.shape[-2:]) == (expected, expected)
    # the staged API composes to the same result as forward
    low2, mid2 = bb.forward_low_mid(x)
    torch.testing.assert_close(low2, low)
    torch.testing.assert_close(bb.forward_high(mid2), high)


def _pfenet_dilate(model):
    """PFENet's resnet surgery: every 3x3 conv (stride 1) of layer3 / layer4 gets
    dilation = padding = 2 / 4 (the first block included)."""
    for stage, d in (("layer3", 2), ("layer4", 4)):
        for m in getattr(model, stage).modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1):
                m.dilation, m.padding = (d, d), (d, d)


def test_resnet_stages_match_pfenet_dilated_layers(r18):
    """low/mid/high are timm's layer2/layer3/layer4 at stride 8, dilated as PFENet."""
    ref = timm.create_model("resnet18", features_only=True, out_indices=(2, 3, 4), output_stride=8)
    ref.load_state_dict(r18.body.state_dict())
    _pfenet_dilate(ref)
    ref.eval()
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        expected = ref(r18.normalize(x))  # the backbone normalises its [0, 1] input itself
    for got, want in zip(r18(x), expected):
        torch.testing.assert_close(got, want)


def test_every_dilated_block_uses_the_stage_dilation():
    """timm's output_stride=8 leaves layer3.0 at dilation 1 and layer4.0 at 2; PFENet
    (REFERENCE §3) dilates all of layer3 by 2 and all of layer4 by 4."""
    with torch.device("meta"):
        bb = create_backbone("resnet50")
    seen = {"layer3": set(), "layer4": set()}
    for name, m in bb.body.named_modules():
        stage = name.split(".")[0]
        if stage in seen and isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
            assert m.stride == (1, 1), name
            assert m.padding == m.dilation, name
            seen[stage].add(m.dilation)
    assert seen == {"layer3": {(2, 2)}, "layer4": {(4, 4)}}
    with torch.device("meta"):
        os16 = create_backbone("resnet50", output_stride=16)
    l4 = {m.dilation for m in os16.body.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
    l3 = {m.dilation for m in os16.body.layer3.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)}
    assert l4 == {(2, 2)} and l3 == {(1, 1)}
    # the public helper does the same to a full timm model (e.g. a MoCo encoder dilated for pretraining)
    from fewshot_priors.models.backbone import pfenet_dilation

    with torch.device("meta"):
        full = timm.create_model("resnet50", output_stride=8)
    pfenet_dilation(full, 8)
    assert {m.dilation for m in full.layer3.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)} == {(2, 2)}
    assert {m.dilation for m in full.layer4.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)} == {(4, 4)}


def test_vgg_stages_match_pfenet_layers():
    """VGG as PFENet's get_vgg16_layer: layer2 = block3 + pool, layer3 = block4 + pool,
    layer4 = block5 (ceil-mode pools); layer2 resized to layer3's size; the support
    layer4 is computed from layer3 x mask."""
    torch.manual_seed(0)
    bb = create_backbone("vgg11")
    assert bb.pfenet_pool_layout and bb.reductions == (8, 16, 16)
    ref = timm.create_model("vgg11", features_only=True)  # timm's plain (floor-mode) layers
    ref.load_state_dict(bb.body.state_dict())
    feats = torch.nn.Sequential(*[ref[f"features_{i}"] for i in range(20)]).eval()
    for m in feats:
        if isinstance(m, torch.nn.MaxPool2d):
            assert not m.ceil_mode
            m.ceil_mode = True
    # vgg11 (cfg A): block3 + pool = features[6:11], block4 + pool = [11:16], block5 = [16:20]
    layer01, layer2, layer3, layer4 = feats[:6], feats[6:11], feats[11:16], feats[16:20]
    x = torch.randn(2, 3, 73, 89)
    with torch.no_grad():
        f2 = layer2(layer01(bb.normalize(x)))  # the backbone normalises its [0, 1] input itself
        f3 = layer3(f2)
        f4 = layer4(f3)
        f2 = F.interpolate(f2, size=f3.shape[-2:], mode="bilinear", align_corners=True)
        mask = torch.zeros(2, 1, *f3.shape[-2:])
        mask[..., 1:4, 2:5] = 1
        f4_masked = layer4(f3 * mask)
    assert tuple(f3.shape[-2:]) == (5, 6)  # ceil: 73 -> 37 -> 19 -> 10 -> 5, 89 -> 45 -> 23 -> 12 -> 6
    low, mid, high = bb(x)
    for got, want in zip((low, mid, high), (f2, f3, f4)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(bb.forward_high(mid * mask), f4_masked)


def test_forward_high_on_masked_mid_differs(r18):
    x = torch.randn(1, 3, 49, 49)
    _, mid = r18.forward_low_mid(x)
    mask = torch.zeros(1, 1, *mid.shape[-2:])
    mask[..., 2:5, 2:5] = 1
    high_full = r18.forward_high(mid)
    high_masked = r18.forward_high(mid * mask)
    assert not torch.allclose(high_full, high_masked)
    with pytest.raises(ValueError, match="mid"):
        r18.forward_high(torch.randn(1, 7, 5, 5))


# --------------------------------------------------------------------------- freezing


def test_frozen_no_grad_and_bn_stays_eval(r18):
    parent = torch.nn.Sequential(r18)
    parent.train()
    assert parent.training and r18.training
    assert not r18.body.training
    assert all(not m.training for m in r18.body.modules())
    assert all(not p.requires_grad for p in r18.parameters())
    before = {k: v.clone() for k, v in r18.body.state_dict().items()}
    x = torch.randn(2, 3, 33, 33, requires_grad=True)
    low, mid, high = r18(x)
    assert not high.requires_grad  # ran under no_grad
    after = r18.body.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_unfrozen_backbone_trains():
    bb = create_backbone("resnet18", frozen=False)
    bb.train()
    assert bb.body.training
    _, _, high = bb(torch.randn(2, 3, 33, 33))
    high.mean().backward()
    assert bb.body.conv1.weight.grad is not None


# --------------------------------------------------------------------------- weights


def test_load_plain_timm_state_dict(tmp_path):
    sd = _timm_sd("resnet18", 1)
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    bb = create_backbone("resnet18", weights=path)
    _assert_loaded(bb, sd)
    # wrapped in {"state_dict": ...}, head removed
    path2 = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": {k: v for k, v in sd.items() if not k.startswith("fc.")}}, path2)
    _assert_loaded(create_backbone("resnet18", weights=str(path2)), sd)


def test_load_moco_checkpoint(tmp_path):
    """MoCo v2 layout: module.encoder_q.* (with MLP head), module.encoder_k.*, queue."""
    q = _timm_sd("resnet18", 2)
    k = _timm_sd("resnet18", 3)
    state = {}
    for key, value in q.items():
        if not key.startswith("fc."):
            state[f"module.encoder_q.{key}"] = value
            state[f"module.encoder_k.{key}"] = k[key]
    for key, shape in (("fc.0.weight", (512, 512)), ("fc.0.bias", (512,)), ("fc.2.weight", (128, 512))):
        state[f"module.encoder_q.{key}"] = torch.randn(shape)
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)
    bb = create_backbone("resnet18", weights=path)
    _assert_loaded(bb, k)  # the momentum (key) encoder by default, as the official QGNet release
    _assert_loaded(create_backbone("resnet18", weights=path, moco_encoder="query"), q)
    with pytest.raises(ValueError, match="moco_encoder"):
        create_backbone("resnet18", weights=path, moco_encoder="momentum")
    # a checkpoint holding only one encoder gives that one, whichever is asked for
    only_q = {key: v for key, v in state.items() if "encoder_k" not in key}
    _assert_loaded(create_backbone("resnet18", weights=only_q), q)


def test_load_global_local_moco_state_dict():
    """This project's GlobalLocalMoCo naming: encoder.* (query) and key_encoder.* (momentum)."""
    from fewshot_priors.ssl.moco import GlobalLocalMoCo

    torch.manual_seed(0)
    moco = GlobalLocalMoCo(backbone="resnet18", queue_size=64, local_queue_size=64)
    with torch.no_grad():
        for p in moco.key_encoder.parameters():
            p.add_(1.0)
    state = moco.state_dict()
    _assert_loaded(create_backbone("resnet18", weights=state), moco.key_encoder.state_dict())
    _assert_loaded(create_backbone("resnet18", weights=state, moco_encoder="query"), moco.encoder.state_dict())


def test_load_prior_extractor_safetensors(tmp_path):
    sd = {k: v.contiguous() for k, v in _timm_sd("resnet18", 4).items() if not k.startswith("fc.")}
    path = tmp_path / "prior.safetensors"
    save_file(sd, str(path), metadata={"format": PRIOR_EXTRACTOR_FORMAT, "backbone": "resnet18"})
    bb = create_backbone("resnet18", weights=path)
    _assert_loaded(bb, sd)
    x = torch.randn(1, 3, 33, 33)
    assert not torch.allclose(bb(x)[2], create_backbone("resnet18")(x)[2])
    with pytest.raises(ValueError, match="exported for backbone 'resnet18'"):
        create_backbone("resnet34", weights=path)


def test_mismatched_weights_list_keys(tmp_path):
    sd = _timm_sd("resnet18", 5)
    bad = dict(sd)
    del bad["layer3.0.conv1.weight"]
    bad["layer9.extra.weight"] = torch.zeros(3)
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as info:
        create_backbone("resnet18", weights=path)
    msg = str(info.value)
    assert "layer3.0.conv1.weight" in msg and "missing" in msg
    assert "layer9.extra.weight" in msg and "unexpected" in msg
    assert "conv1.weight" in msg and "shape" in msg
    # a whole other architecture
    path50 = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in _timm_sd("resnet50", 6).items()}, str(path50))
    with pytest.raises(ValueError, match="do not match timm model 'resnet18'"):
        create_backbone("resnet18", weights=path50)


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_backbone("resnet18", weights=path)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match=r"'resnt50'.*resnet50"):
        create_backbone("resnt50")
    with pytest.raises(TypeError, match="name"):
        create_backbone(50)
    with pytest.raises(ValueError, match="output_stride"):
        create_backbone("resnet18", output_stride=7)
    with pytest.raises(ValueError, match="either"):
        create_backbone("resnet18", pretrained=True, weights="x.pth")


def test_pretrained_offline_error_points_to_weights(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("no internet")
        return real(*args, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    import fewshot_priors.models.backbone as bb  # a network that fails mid-download (not detected offline)

    monkeypatch.setattr(bb, "check_timm_download", lambda name: None)
    with pytest.raises(RuntimeError, match="weights=PATH"):
        create_backbone("resnet18", pretrained=True)


def test_bad_input_images(r18):
    with pytest.raises(TypeError, match="floating point"):
        r18(torch.zeros(1, 3, 33, 33, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        r18(torch.zeros(3, 33, 33))


def test_load_in_memory_state_dict():
    sd = _timm_sd("resnet18", 7)
    _assert_loaded(create_backbone("resnet18", weights=sd), sd)
    with pytest.raises(TypeError, match="weights"):
        create_backbone("resnet18", weights=3)


def test_weight_parsing_lives_in_models_weights_only():
    from fewshot_priors.models import backbone, weights

    for name in ("_read_checkpoint", "_fmt_keys", "MOCO_ENCODERS",
                 "PRIOR_EXTRACTOR_FORMAT", "BACKBONE_WEIGHTS_FORMAT", "CHECKPOINT_PREFIXES", "HEAD_NAMES"):
        assert hasattr(weights, name) and not hasattr(backbone, name), name  # one home, no re-export
    assert weights.load_backbone_state_dict.__module__ == "fewshot_priors.models.weights"
    assert not any(isinstance(v, type) and issubclass(v, torch.nn.Module) for v in vars(weights).values()
                   if getattr(v, "__module__", None) == weights.__name__)


@pytest.mark.parametrize("name, output_stride", [("resnet18", 8), ("resnet18", 16), ("mobilenetv2_100", 8),
                                                 ("vgg16_bn", 8)])
def test_feature_stride_is_the_measured_stride(name, output_stride):
    """``feature_stride`` is what the features' size shows (VGG stays at 16 whatever was requested);
    ``output_stride`` keeps the requested value."""
    b = create_backbone(name, output_stride=output_stride)
    with torch.no_grad():
        feats = b(torch.zeros(1, 3, 96, 96))
    assert {tuple(f.shape[-2:]) for f in feats} == {(96 // b.feature_stride,) * 2}
    assert b.output_stride == output_stride
    assert b.feature_stride == (16 if name.startswith("vgg") else output_stride)
