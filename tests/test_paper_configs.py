"""Every shipped paper config builds the paper's networks (PFENet / QGNet official layout).

The paper's layout, written out from PFENet's ``model/resnet.py`` / ``model/vgg.py``
and QGNet's fork (``PFENet_QGNet.py``), independently of timm:

* supervised ResNet: deep stem, three 3x3 convs 3 -> 64 (stride 2) -> 64 -> 128, each
  followed by BN + ReLU, then a 3x3 stride-2 max-pool; layer1 takes 128 channels; the
  stride-2 downsample is a plain 1x1 strided conv + BN; layer3 / layer4 dilated 2 / 4
  in every block (output stride 8);
* supervised VGG: VGG16 with BatchNorm (13 3x3 convs), max-pools with ``ceil_mode``;
* prior extractor (QGNet's MoCo network): a plain ResNet-50, one 7x7 stride-2 conv
  3 -> 64, layer1 takes 64 channels, layer3 / layer4 dilated 2 / 4.

Models are built with ``pretrained=False`` and run on a tiny input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot_priors.config import load_config, zoo_configs
from fewshot_priors.engine.build import build_model

#: paper backbone -> (blocks per ResNet stage or None for VGG, channels (low, mid, high), stride)
PAPER_BACKBONES = {
    "resnet50": ((3, 4, 6, 3), (512, 1024, 2048), 8),
    "resnet101": ((3, 4, 23, 3), (512, 1024, 2048), 8),
    "vgg16": (None, (256, 512, 512), 16),
}
DEEP_STEM = [(3, 64, 2), (64, 64, 1), (64, 128, 1)]  # (in, out, stride) of the 3x3 stem convs
PRIOR_BLOCKS = (3, 4, 6, 3)  # ResNet-50


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _check_resnet(body: nn.Module, blocks, deep_stem: bool) -> None:
    stem = _convs(body.conv1)
    if deep_stem:
        assert [(c.in_channels, c.out_channels, c.stride[0]) for c in stem] == DEEP_STEM
        assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in stem)
        bns = [m for m in body.conv1 if isinstance(m, nn.BatchNorm2d)]
        acts = [m for m in body.conv1 if isinstance(m, nn.ReLU)]
        assert [b.num_features for b in bns] == [64, 64] and len(acts) == 2  # + bn1 / act1 after the 3rd conv
    else:
        assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == [(3, 64, (7, 7), (2, 2))]
    stem_out = 128 if deep_stem else 64
    assert body.bn1.num_features == stem_out
    assert isinstance(body.maxpool, nn.MaxPool2d) and body.maxpool.kernel_size == 3 and body.maxpool.stride == 2
    assert body.layer1[0].conv1.in_channels == stem_out  # channels into layer1
    assert tuple(len(getattr(body, f"layer{i}")) for i in range(1, 5)) == tuple(blocks)
    for i in range(1, 5):
        down = getattr(body, f"layer{i}")[0].downsample
        assert isinstance(down[0], nn.Conv2d) and down[0].kernel_size == (1, 1), "plain 1x1 downsample (no avg-down)"
        assert isinstance(down[1], nn.BatchNorm2d)
    for stage, dilation in (("layer1", 1), ("layer2", 1), ("layer3", 2), ("layer4", 4)):
        for block in getattr(body, stage):
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation)
            assert block.conv2.stride == ((2, 2) if stage == "layer2" and block is getattr(body, stage)[0] else (1, 1))
        assert getattr(body, stage)[0].downsample is None or getattr(body, stage)[0].downsample[0].stride == (
            (2, 2) if stage == "layer2" else (1, 1))


def _check_vgg(body: nn.Module) -> None:
    convs = _convs(body)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in body.modules()) == 13
    pools = [m for m in body.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) >= 4 and all(p.ceil_mode for p in pools)


def _unique_rows() -> dict[tuple, list[str]]:
    rows: dict[tuple, list[str]] = {}
    for name in zoo_configs():
        m = load_config(name)["model"]
        paper = name.split("/")[1].split("_")[0]
        rows.setdefault((paper, m["backbone"], m["prior_backbone"], m["use_prior"], m["output_stride"]), []).append(name)
    return rows


def test_every_paper_row_uses_the_papers_backbones():
    rows = _unique_rows()
    assert {key[0] for key in rows} == set(PAPER_BACKBONES)
    assert sum(len(v) for v in rows.values()) == len(zoo_configs())
    for (paper, backbone, prior, use_prior, stride), names in rows.items():
        assert use_prior and prior == "resnet50" and stride == 8, names
        assert backbone == {"resnet50": "resnet50s", "resnet101": "resnet101s", "vgg16": "vgg16_bn"}[paper], names


@pytest.mark.parametrize("key", sorted(_unique_rows()), ids=lambda k: f"{k[0]}-{k[1]}")
def test_paper_config_builds_the_papers_network(key):
    paper, *_ = key
    name = _unique_rows()[key][0]
    cfg = load_config(name)
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False, weights=None, prior_weights=None).eval()
    blocks, channels, stride = PAPER_BACKBONES[paper]
    bb, prior = model.backbone, model.prior_extractor
    assert bb.channels == channels
    if blocks is None:
        _check_vgg(bb.body)
        assert bb.pfenet_pool_layout
    else:
        _check_resnet(bb.body, blocks, deep_stem=True)
    _check_resnet(prior.body, PRIOR_BLOCKS, deep_stem=False)
    assert prior.channels == (512, 1024, 2048)

    x = torch.rand(1, 3, 65, 65)
    low, mid, high = bb(x)
    side = -(-65 // stride) if blocks is not None else 5  # VGG, ceil-mode pools: 65 -> 33 -> 17 -> 9 -> 5
    assert low.shape[-2:] == mid.shape[-2:] == high.shape[-2:] == (side, side)
    assert prior(x)[2].shape[-2:] == (9, 9)  # stride 8
    out = model(x, torch.rand(1, 1, 3, 65, 65), (torch.rand(1, 1, 65, 65) > 0.5).float())
    assert out["logits"].shape == (1, 2, 65, 65) and torch.isfinite(out["logits"]).all()
    assert out["prior_map"].shape[-2:] == mid.shape[-2:]
