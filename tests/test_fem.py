"""Tests for the FEM decoder (PFENet's Feature Enrichment Module, REFERENCE §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot_priors.models.fem import FEMDecoder


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_matches_pfenet_head():
    """n_maps=1, 256 channels, 2 classes, 4 bins: PFENet's init_merge + alpha_conv +
    beta_conv + inner_cls + res1 + res2 + cls = 10,030,602 parameters (PFENet's
    down_query/down_supp 1x1 convs are not counted: they are not part of the decoder)."""
    fem = FEMDecoder(channels=256, n_maps=1, bins=(60, 30, 15, 8), num_classes=2)
    assert _count(fem) == 10_030_602
    # the same number from PFENet's layer shapes, module by module
    c, k = 256, 3 * 3
    pfenet = {
        "init_merge": 4 * (2 * c + 1) * c,
        "alpha_conv": 3 * 2 * c * c,
        "beta_conv": 4 * 2 * c * c * k,
        "inner_cls": 4 * (c * c * k + c * 2 + 2),
        "res1": 4 * c * c,
        "res2": 2 * c * c * k,
        "cls": c * c * k + c * 2 + 2,
    }
    for name, expected in pfenet.items():
        assert _count(getattr(fem, name)) == expected, name
    # QGNet's second region map adds one input channel to each init_merge conv
    assert _count(FEMDecoder(n_maps=2)) == 10_030_602 + 4 * 256


def test_biases_only_on_final_classifiers():
    fem = FEMDecoder(channels=8, n_maps=2, bins=(4, 2))
    with_bias = sorted(n for n, m in fem.named_modules() if isinstance(m, torch.nn.Conv2d) and m.bias is not None)
    assert with_bias == ["cls.3", "inner_cls.0.3", "inner_cls.1.3"]
    for name in with_bias:
        conv = fem.get_submodule(name)
        assert conv.kernel_size == (1, 1) and conv.out_channels == 2


def _reference(fem: FEMDecoder, q, proto, maps, out_size=None):
    """Plain transcription of PFENet's FEM loop (REFERENCE §3), eval mode.

    ``out_size`` (PFENet: the input size): the final logits are resized from the
    feature size, each auxiliary map straight from its bin."""
    def seq(mods, x):
        for m in mods:
            x = m(x)
        return x

    h, w = q.shape[-2:]
    out_size = out_size or (h, w)
    outs, aux = [], []
    for i, b in enumerate(fem.bins):
        size = (max(1, int(h * b)), max(1, int(w * b))) if isinstance(b, float) else (b, b)
        qb = F.adaptive_avg_pool2d(q, size)
        sb = proto.view(*proto.shape[:2], 1, 1).expand(-1, -1, *size)
        mb = F.interpolate(maps, size=size, mode="bilinear", align_corners=True)
        x = F.relu(F.conv2d(torch.cat([qb, sb, mb], 1), fem.init_merge[i][0].weight))
        if i > 0:
            prev = F.interpolate(outs[-1], size=size, mode="bilinear", align_corners=True)
            x = F.relu(F.conv2d(torch.cat([x, prev], 1), fem.alpha_conv[i - 1][0].weight)) + x
        beta = fem.beta_conv[i]
        x = F.relu(F.conv2d(F.relu(F.conv2d(x, beta[0].weight, padding=1)), beta[2].weight, padding=1)) + x
        aux.append(F.interpolate(seq(fem.inner_cls[i], x), size=out_size, mode="bilinear", align_corners=True))
        outs.append(F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True))
    x = F.relu(F.conv2d(torch.cat(outs, 1), fem.res1[0].weight))
    x = seq(fem.res2, x) + x
    logits = F.interpolate(seq(fem.cls, x), size=out_size, mode="bilinear", align_corners=True)
    return logits, aux


@pytest.mark.parametrize("bins", [(8, 4, 2, 1), (1.0, 0.5, 0.25, 0.125), (12, 3)])
def test_matches_plain_reference(bins):
    torch.manual_seed(0)
    fem = FEMDecoder(channels=16, n_maps=2, bins=bins).double().eval()
    q = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    proto = torch.randn(2, 16, dtype=torch.float64)
    maps = torch.rand(2, 2, 5, 7, dtype=torch.float64)
    logits, aux = fem(q, proto, maps)
    ref_logits, ref_aux = _reference(fem, q, proto, maps)
    assert logits.shape == (2, 2, 9, 11)
    assert len(aux) == len(bins) and all(a.shape == (2, 2, 9, 11) for a in aux)
    torch.testing.assert_close(logits, ref_logits)
    for a, r in zip(aux, ref_aux):
        torch.testing.assert_close(a, r)
    # prototype given as B, C, 1, 1 is the same thing
    torch.testing.assert_close(fem(q, proto[..., None, None], maps)[0], logits)


def test_output_size_resizes_aux_straight_from_each_bin():
    """PFENet upsamples every inner_cls output from its bin directly to the input
    size; resizing bin -> feature size -> input size (two bilinear steps) gives other
    aux logits and so another auxiliary loss."""
    torch.manual_seed(0)
    fem = FEMDecoder(channels=16, n_maps=2, bins=(8, 4, 2, 1)).double().eval()
    q = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    proto = torch.randn(2, 16, dtype=torch.float64)
    maps = torch.rand(2, 2, 9, 11, dtype=torch.float64)
    size = (65, 81)
    logits, aux = fem(q, proto, maps, size=size)
    ref_logits, ref_aux = _reference(fem, q, proto, maps, out_size=size)
    assert logits.shape == (2, 2, *size) and all(a.shape == (2, 2, *size) for a in aux)
    torch.testing.assert_close(logits, ref_logits)
    for a, r in zip(aux, ref_aux):
        torch.testing.assert_close(a, r)
    # the two-step route is measurably different (so the check above can fail)
    feat_aux = fem(q, proto, maps)[1]
    two_step = F.interpolate(feat_aux[0], size=size, mode="bilinear", align_corners=True)
    assert (two_step - aux[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="size"):
        fem(q, proto, maps, size=(0, 5))
    with pytest.raises(ValueError, match="size"):
        fem(q, proto, maps, size=65)


def test_fraction_bins_follow_feature_size():
    fem = FEMDecoder(channels=8, n_maps=1, bins=(1.0, 0.5, 0.25, 0.125))
    assert fem.bin_sizes(81, 81) == [(81, 81), (40, 40), (20, 20), (10, 10)]
    assert fem.bin_sizes(9, 17) == [(9, 17), (4, 8), (2, 4), (1, 2)]  # never 0
    assert FEMDecoder(channels=8, bins=(60, 30)).bin_sizes(9, 17) == [(60, 60), (30, 30)]


def test_every_parameter_gets_gradient_and_inputs_matter():
    torch.manual_seed(0)
    fem = FEMDecoder(channels=8, n_maps=2, bins=(6, 3, 2, 1))
    q = torch.randn(2, 8, 7, 7)
    proto = torch.randn(2, 8, requires_grad=True)
    maps = torch.rand(2, 2, 7, 7, requires_grad=True)
    logits, aux = fem(q, proto, maps)
    (logits.square().mean() + sum(a.square().mean() for a in aux)).backward()
    for name, p in fem.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert proto.grad.abs().sum() > 0 and maps.grad.abs().sum() > 0


def test_eval_is_deterministic_and_train_uses_dropout():
    torch.manual_seed(0)
    fem = FEMDecoder(channels=8, n_maps=1, bins=(4, 2), dropout=0.5)
    args = (torch.randn(1, 8, 6, 6), torch.randn(1, 8), torch.rand(1, 1, 6, 6))
    fem.eval()
    torch.testing.assert_close(fem(*args)[0], fem(*args)[0])
    fem.train()
    assert not torch.allclose(fem(*args)[0], fem(*args)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="bins"):
        FEMDecoder(bins=())
    with pytest.raises(ValueError, match="fraction"):
        FEMDecoder(bins=(1.5,))
    with pytest.raises(ValueError, match="bins"):
        FEMDecoder(bins=(0, 2))
    with pytest.raises(ValueError, match="n_maps"):
        FEMDecoder(n_maps=0)
    fem = FEMDecoder(channels=8, n_maps=2, bins=(2, 1))
    q, p, m = torch.randn(2, 8, 5, 5), torch.randn(2, 8), torch.rand(2, 2, 5, 5)
    with pytest.raises(ValueError, match="region_maps"):
        fem(q, p, m[:, :1])
    with pytest.raises(ValueError, match="channel count"):
        fem(torch.randn(2, 4, 5, 5), p, m)
    with pytest.raises(ValueError, match="batch size"):
        fem(q, p[:1], m)
    with pytest.raises(ValueError, match="prototype"):
        fem(q, torch.randn(2, 8, 2, 2), m)
    with pytest.raises(TypeError, match="query_feat"):
        fem(q.long(), p, m)


def test_map_skip_adds_the_first_maps_answer_to_the_foreground_logits():
    """Known answer: the same weights without the skip, plus gain * (map - 0.5) on the foreground
    logit of the main and every auxiliary output (the map resized to the output size)."""
    torch.manual_seed(0)
    plain = FEMDecoder(channels=8, n_maps=2, bins=(4, 2), dropout=0.0).double().eval()
    skip = FEMDecoder(channels=8, n_maps=2, bins=(4, 2), dropout=0.0, map_skip=3.0).double().eval()
    missing = skip.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["map_gain"]
    q, p, maps = torch.randn(2, 8, 6, 6).double(), torch.randn(2, 8).double(), torch.rand(2, 2, 6, 6).double()
    (lp, ap), (ls, as_) = plain(q, p, maps, size=(11, 13)), skip(q, p, maps, size=(11, 13))
    shift = 3.0 * (F.interpolate(maps[:, :1], size=(11, 13), mode="bilinear", align_corners=True) - 0.5)
    for a, b in ((lp, ls), *zip(ap, as_, strict=True)):
        torch.testing.assert_close(b[:, :1], a[:, :1])
        torch.testing.assert_close(b[:, 1:], a[:, 1:] + shift)


def test_map_skip_gain_learns_and_zero_means_no_parameter():
    fem = FEMDecoder(channels=8, n_maps=1, bins=(4, 2), map_skip=4.0)
    logits, aux = fem(torch.randn(2, 8, 6, 6), torch.randn(2, 8), torch.rand(2, 1, 6, 6))
    (logits[:, 1].mean() + sum(a[:, 1].mean() for a in aux)).backward()
    assert fem.map_gain.grad is not None and fem.map_gain.grad.abs() > 0
    assert "map_skip=4.0" in repr(fem)
    assert "map_gain" not in dict(FEMDecoder(channels=8, n_maps=1, bins=(4, 2)).named_parameters())


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True])
def test_map_skip_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="map_skip"):
        FEMDecoder(channels=8, bins=(2, 1), map_skip=bad)


def test_map_skip_needs_two_classes():
    with pytest.raises(ValueError, match="num_classes=2"):
        FEMDecoder(channels=8, bins=(2, 1), num_classes=3, map_skip=1.0)
