"""Official PFENet / QGNet checkpoints -> this library (models/convert.py, engine/convert.py, CLI).

No official file is needed: a state dict in the official naming is made from one of our
models (the inverse map), then converted back. Round trips alone cannot catch a wrong
table (a wrong name maps back the same way), so the official semantics are checked
independently: PFENet's ``layer0`` / ``get_vgg16_layer`` / ``down_query`` built here
from their definition in PFENet's code and run on the official-named tensors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_priors.app.cli import main
from fewshot_priors.config import load_config
from fewshot_priors.engine.build import build_model
from fewshot_priors.engine.checkpoint import load_checkpoint
from fewshot_priors.engine.convert import write_converted_checkpoint
from fewshot_priors.models.backbone import create_backbone
from fewshot_priors.models.convert import (
    OFFICIAL_NAMES,
    convert_official_checkpoint,
    pfenet_bins,
    to_official_state_dict,
)
from fewshot_priors.models.qgnet import QGNet

BINS = (6, 3, 2, 0.5)  # the same in PFENet's and FEMDecoder's conventions


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights *and* BatchNorm statistics, so every tensor's place matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * (0.05 if t.dim() > 1 else 0.2))
    return model.eval()


def _episode(size=41, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(1, 3, size, size, generator=g)
    s = torch.rand(1, 1, 3, size, size, generator=g)
    m = torch.zeros(1, 1, size, size)
    m[..., size // 4: 3 * size // 4, size // 3: 3 * size // 4] = 1
    return q, s, m


def _outputs(model, episode):
    with torch.no_grad():
        return model(*episode)


def _assert_same_outputs(a, b, episode):
    oa, ob = _outputs(a, episode), _outputs(b, episode)
    for key in ("logits", "guided_map", "prior_map"):
        if oa[key] is None:
            assert ob[key] is None
        else:
            torch.testing.assert_close(oa[key], ob[key], rtol=0, atol=0)


@pytest.fixture(scope="module")
def qgnet():
    torch.manual_seed(0)
    return _randomise(QGNet("resnet50s", prior_backbone="resnet50", bins=BINS), 1)


@pytest.fixture(scope="module")
def pfenet_vgg():
    torch.manual_seed(0)
    return _randomise(QGNet("vgg16_bn", use_prior=False, bins=BINS), 2)


# ----------------------------------------------------------------------------- official semantics


def _pfenet_layer0() -> nn.Sequential:
    """PFENet's ``layer0`` (model/PFENet.py): conv1 bn1 relu1 conv2 bn2 relu2 conv3 bn3 relu3 maxpool."""
    def conv(i, o, s=1):
        return nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False)

    return nn.Sequential(conv(3, 64, 2), nn.BatchNorm2d(64), nn.ReLU(), conv(64, 64), nn.BatchNorm2d(64), nn.ReLU(),
                         conv(64, 128), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(3, 2, 1)).eval()


def _sub(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_official_names_follow_pfenet_and_qgnet_code(qgnet):
    """layer0 / layer0_unsuper / down_query built as in the official code reproduce our modules."""
    off = to_official_state_dict(qgnet, prefix="")
    body, prior = qgnet.backbone.body, qgnet.prior_extractor.body
    x = torch.randn(2, 3, 37, 37)
    ref = _pfenet_layer0()
    ref.load_state_dict(_sub(off, "layer0."), strict=True)
    with torch.no_grad():
        ours = body.maxpool(body.act1(body.bn1(body.conv1(x))))
        torch.testing.assert_close(ref(x), ours)
        # QGNet's layer0_unsuper: Sequential(conv1 7x7, bn1, relu, maxpool) of a plain ResNet-50
        ref_u = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1)).eval()
        ref_u.load_state_dict(_sub(off, "layer0_unsuper."), strict=True)
        torch.testing.assert_close(ref_u(x), prior.maxpool(prior.act1(prior.bn1(prior.conv1(x)))))
        # down_query runs on cat([layer3, layer2]) officially, query_head on cat([layer2, layer3])
        low, mid, _ = qgnet.backbone(x)
        official = F.relu(F.conv2d(torch.cat([mid, low], 1), off["down_query.0.weight"]))
        torch.testing.assert_close(official, qgnet.query_head[:2](torch.cat([low, mid], 1)))
        official = F.relu(F.conv2d(torch.cat([mid, low], 1), off["down_supp.0.weight"]))
        torch.testing.assert_close(official, qgnet.support_head[:2](torch.cat([low, mid], 1)))
    # module shapes of PFENet_QGNet.py (reduce_dim 256, fea_dim 1024 + 512, 4 bins, 2 maps)
    shapes = {"down_query.0.weight": (256, 1536, 1, 1), "down_supp.0.weight": (256, 1536, 1, 1),
              "down_learn_super.0.weight": (256, 2048, 3, 3), "down_learn_unsuper.0.weight": (256, 2048, 3, 3),
              "init_merge.0.0.weight": (256, 514, 1, 1), "alpha_conv.2.0.weight": (256, 512, 1, 1),
              "beta_conv.3.2.weight": (256, 256, 3, 3), "inner_cls.1.3.bias": (2,), "res1.0.weight": (256, 1024, 1, 1),
              "res2.2.weight": (256, 256, 3, 3), "cls.3.weight": (2, 256, 1, 1), "layer0.7.running_mean": (128,),
              "layer1.0.conv1.weight": (64, 128, 1, 1), "layer1_unsuper.0.conv1.weight": (64, 64, 1, 1)}
    assert {k: tuple(off[k].shape) for k in shapes} == shapes
    assert not any(k.startswith(("backbone.", "prior_extractor.", "decoder.", "query_head")) for k in off)


def test_official_vgg_layers_follow_get_vgg16_layer(pfenet_vgg):
    """PFENet's VGG16-BN (ceil-mode pools) split by get_vgg16_layer reproduces our three stages."""
    off = to_official_state_dict(pfenet_vgg, prefix="")
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    features, c = [], 3
    for v in cfg:
        if v == "M":
            features.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            features += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    bounds = [(0, 7), (7, 14), (14, 24), (24, 34), (34, 43)]
    layers = [nn.Sequential(*features[a:b]).eval() for a, b in bounds]
    for i, layer in enumerate(layers):
        layer.load_state_dict(_sub(off, f"layer{i}."), strict=True)
    x = torch.rand(1, 3, 65, 65)
    with torch.no_grad():
        f2 = layers[2](layers[1](layers[0](pfenet_vgg.backbone.normalize(x))))  # PFENet's input is normalised
        f3 = layers[3](f2)
        f4 = layers[4](f3)
        f2 = F.interpolate(f2, size=f3.shape[-2:], mode="bilinear", align_corners=True)
        low, mid, high = pfenet_vgg.backbone(x)
    for ref, ours in ((f2, low), (f3, mid), (f4, high)):
        torch.testing.assert_close(ref, ours)
    assert off["down_query.0.weight"].shape == (256, 512 + 256, 1, 1)
    assert off["init_merge.0.0.weight"].shape == (256, 513, 1, 1)  # PFENet: one region map


# ----------------------------------------------------------------------------- round trips


def test_qgnet_round_trip_through_a_file_gives_identical_outputs(qgnet, tmp_path):
    state = to_official_state_dict(qgnet)
    assert all(k.startswith("module.") for k in state)
    path = tmp_path / "qgnet_official.pth"
    torch.save({"epoch": 200, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    _, cfg = convert_official_checkpoint(path, kind="qgnet", bins=BINS)
    assert cfg["model"]["backbone"] == "resnet50s" and cfg["model"]["prior_backbone"] == "resnet50"
    assert cfg["model"]["use_prior"] is True and cfg["model"]["bins"] == list(BINS)
    out = write_converted_checkpoint(path, tmp_path / "conv" / "qgnet_fold0", kind="qgnet",
                                     config="pascal/resnet50_473_fold0", bins=BINS)
    loaded = load_config(out["config"])
    assert loaded["data"]["dataset"] == "pascal" and loaded["model"]["pretrained"] is False
    model = build_model(loaded)
    load_checkpoint(out["checkpoint"], model=model)
    _assert_same_outputs(qgnet, model.eval(), _episode())
    # the prior extractor is the official network's, not a fresh one
    p = model.prior_extractor.body.state_dict()["layer4.2.conv3.weight"]
    assert torch.equal(p, qgnet.prior_extractor.body.state_dict()["layer4.2.conv3.weight"])


def test_pfenet_vgg_round_trip_gives_identical_outputs(pfenet_vgg):
    sd, cfg = convert_official_checkpoint({"state_dict": to_official_state_dict(pfenet_vgg)}, kind="pfenet")
    assert cfg["model"]["backbone"] == "vgg16_bn" and cfg["model"]["use_prior"] is False
    assert "bins" not in cfg["model"] and cfg["model"]["prior_backbone"] is None
    model = QGNet("vgg16_bn", use_prior=False, bins=BINS)
    model.load_state_dict(sd, strict=True)
    _assert_same_outputs(pfenet_vgg, model.eval(), _episode(size=49, seed=1))


def test_pfenet_backbone_file(tmp_path):
    """PFENet's initmodel/resnet50_v2.pth naming (model/resnet.py, deep_base) -> timm resnet50s."""
    torch.manual_seed(0)
    import timm

    net = _randomise(timm.create_model("resnet50s"), 3)
    semseg = to_official_state_dict(net, kind="pfenet-backbone")
    shapes = {"conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "conv2.weight": (64, 64, 3, 3),
              "bn2.weight": (64,), "conv3.weight": (128, 64, 3, 3), "bn3.bias": (128,),
              "layer1.0.conv1.weight": (64, 128, 1, 1), "layer1.0.downsample.0.weight": (256, 128, 1, 1),
              "fc.weight": (1000, 2048)}
    assert {k: tuple(semseg[k].shape) for k in shapes} == shapes
    path = tmp_path / "resnet50_v2.pth"
    torch.save(semseg, path)
    out = write_converted_checkpoint(path, tmp_path / "r50_v2", kind="pfenet-backbone")
    cfg = load_config(out["config"])
    assert cfg["model"]["backbone"] == "resnet50s" and cfg["model"]["weights"] == out["weights"]
    bb = create_backbone("resnet50s", weights=out["weights"])
    ref = create_backbone("resnet50s", weights=net.state_dict())
    x = torch.randn(1, 3, 41, 41)
    for a, b in zip(bb(x), ref(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exported for backbone 'resnet50s'"):
        create_backbone("resnet101s", weights=out["weights"])
    # without the classifier it still converts (features_only does not use it)
    sd, _ = convert_official_checkpoint({k: v for k, v in semseg.items() if not k.startswith("fc.")},
                                        kind="pfenet-backbone")
    assert "conv1.6.weight" in sd and "fc.weight" not in sd


# ----------------------------------------------------------------------------- errors and bins


def test_unmappable_and_missing_keys_are_listed(qgnet):
    off = to_official_state_dict(qgnet)
    bad = dict(off)
    bad["module.layer5.0.conv1.weight"] = torch.zeros(1)
    bad["module.down_extra.0.weight"] = torch.zeros(1)
    del bad["module.layer4_unsuper.2.bn3.weight"]
    bad["module.res1.0.weight"] = torch.zeros(256, 999, 1, 1)
    with pytest.raises(ValueError) as info:
        convert_official_checkpoint(bad, kind="qgnet")
    msg = str(info.value)
    assert "layer5.0.conv1.weight" in msg and "down_extra.0.weight" in msg and "no entry in the name table" in msg
    assert "prior_extractor.body.layer4.2.bn3.weight" in msg and "missing" in msg
    assert "decoder.res1.0.weight" in msg and "shape" in msg
    assert "OFFICIAL_NAMES" in msg


def test_wrong_kind_is_named(qgnet, pfenet_vgg):
    with pytest.raises(ValueError, match="use kind='qgnet'"):
        convert_official_checkpoint(to_official_state_dict(qgnet), kind="pfenet")
    with pytest.raises(ValueError, match="use kind='pfenet'"):
        convert_official_checkpoint(to_official_state_dict(pfenet_vgg), kind="qgnet")
    with pytest.raises(ValueError, match="kind='pfenet' or kind='qgnet'"):
        convert_official_checkpoint(to_official_state_dict(pfenet_vgg), kind="pfenet-backbone")
    with pytest.raises(ValueError, match="Did you mean 'qgnet'"):
        convert_official_checkpoint({}, kind="qgnt")
    with pytest.raises(ValueError, match="4 pyramid scales"):
        convert_official_checkpoint(to_official_state_dict(pfenet_vgg), kind="pfenet", bins=[60, 30])


def test_missing_batch_counters_are_filled(pfenet_vgg):
    off = {k: v for k, v in to_official_state_dict(pfenet_vgg).items() if not k.endswith("num_batches_tracked")}
    sd, _ = convert_official_checkpoint(off, kind="pfenet")
    assert sd["backbone.body.features_1.num_batches_tracked"].item() == 0


def test_pfenet_bins_read_values_up_to_one_as_fractions():
    assert pfenet_bins([60, 30, 15, 8]) == [60, 30, 15, 8]
    assert all(isinstance(b, int) for b in pfenet_bins([60.0, 30, 15, 8]))
    got = pfenet_bins([1, 0.5, 0.25, 0.125])
    assert got == [1.0, 0.5, 0.25, 0.125] and all(isinstance(b, float) for b in got)
    for bad in ([], [0], [-1], [1.5], "60"):
        with pytest.raises(ValueError):
            pfenet_bins(bad)


def test_table_is_the_single_source():
    """Every official prefix of the heads / decoder is in OFFICIAL_NAMES."""
    assert OFFICIAL_NAMES["heads"]["down_learn_unsuper"] == "down_prior"
    assert set(OFFICIAL_NAMES["decoder"]) == {"init_merge", "alpha_conv", "beta_conv", "inner_cls", "res1",
                                              "res2", "cls"}


# ----------------------------------------------------------------------------- CLI


def test_cli_convert(pfenet_vgg, tmp_path, capsys):
    path = tmp_path / "pfenet_vgg.pth"
    torch.save({"state_dict": to_official_state_dict(pfenet_vgg)}, path)
    out = tmp_path / "out" / "pfenet_vgg16_fold1"
    # the options may come before the positional source: no list flag swallows it
    rc = main(["convert", "--set", "data.shots=5", "--bins", "6", "--bins", "3", "--bins", "2", "--bins", "1",
               str(path), "--kind", "pfenet", "--output", f"{out}.safetensors", "--config", "pascal/vgg16_473_fold1"])
    assert rc == 0, capsys.readouterr()
    cfg = load_config(f"{out}.yaml")
    assert cfg["model"]["bins"] == [6, 3, 2, 1.0] and cfg["model"]["use_prior"] is False
    assert cfg["data"]["shots"] == 5 and cfg["data"]["fold"] == 1
    model = build_model(cfg)
    load_checkpoint(out, model=model)
    # PFENet's bin 1 is the full feature size (1.0 here), not FEMDecoder's int 1 (1 x 1)
    full, one = (QGNet("vgg16_bn", use_prior=False, bins=(6, 3, 2, last)) for last in (1.0, 1))
    for ref in (full, one):
        ref.load_state_dict(pfenet_vgg.state_dict())
    episode = _episode(size=49, seed=2)
    _assert_same_outputs(full.eval(), model.eval(), episode)
    assert not torch.allclose(_outputs(one.eval(), episode)["logits"], _outputs(model, episode)["logits"])
    capsys.readouterr()
    assert main(["convert", str(path), "--kind", "qgnet", "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "use kind='pfenet'" in capsys.readouterr().err
    # --output names the checkpoint file (its .json and .yaml go beside it), not a stem
    assert main(["convert", str(path), "--kind", "pfenet", "--output", str(tmp_path / "x")]) == 2
    assert "x.safetensors" in capsys.readouterr().err
