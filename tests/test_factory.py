"""create_qgnet: the config ``model`` section -> QGNet, every key consumed, bad keys named."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import fewshot_priors as fp
from fewshot_priors.config import DEFAULTS
from fewshot_priors.models import create_qgnet
from fewshot_priors.models.qgnet import QGNet
from fewshot_priors.models.qgnet_config import MODEL_KEYS

TINY = {"backbone": "test_resnet", "bins": [6, 3, 2, 1], "channels": 16}


def _section(**kw):
    m = copy.deepcopy(DEFAULTS["model"])
    m.update(TINY)
    m.update(kw)
    return m


def test_every_model_config_key_is_a_qgnet_argument():
    import inspect

    params = inspect.signature(QGNet).parameters
    assert set(DEFAULTS["model"]) <= set(MODEL_KEYS)
    assert set(MODEL_KEYS) <= set(params)
    # QGNet's defaults are the config defaults, so a missing key means the same in both
    for key in MODEL_KEYS:
        default = params[key].default
        assert (list(default) if isinstance(default, tuple) else default) == DEFAULTS["model"][key], key


def test_section_and_full_tree_build_the_same_model_as_qgnet():
    torch.manual_seed(0)
    ref = QGNet(backbone="test_resnet", bins=(6, 3, 2, 1), channels=16, eps=1e-6, max_chunk_bytes=2048,
                region_map_backend="chunked", fg_weight=2.0)
    section = _section(eps=1e-6, max_chunk_bytes=2048, region_map_backend="chunked", fg_weight=2)
    for cfg in (section, {"model": section, "train": {"lr": 1.0}}):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # `shots` in the section is ignored silently
            model = create_qgnet(cfg)
        assert isinstance(model, QGNet) and model.fg_weight == 2.0
        assert list(model.state_dict()) == list(ref.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
        assert (model.guided_map.eps, model.prior_map.max_chunk_bytes, model.region_map_backend) == (
            1e-6, 2048, "chunked")
    assert fp.create_qgnet is create_qgnet


def test_overrides_win_and_the_ablation_drops_prior_weights(tmp_path):
    model = create_qgnet(_section(prior_weights=str(tmp_path / "missing.safetensors")), use_prior=False)
    assert model.prior_extractor is None and model.prior_map is None
    model = create_qgnet(None, **TINY, aux_weight=0)
    assert model.aux_weight == 0.0 and isinstance(model.aux_weight, float)


def test_parts_can_be_passed_as_overrides():
    class Guided(torch.nn.Module):
        def forward(self, query, support, mask):
            return torch.zeros(query.shape[0], 1, *query.shape[-2:])

    model = create_qgnet(_section(), guided_map=Guided())
    assert isinstance(model.guided_map, Guided)


@pytest.mark.parametrize(
    "cfg, kw, match",
    [
        ({"backbon": "resnet18"}, {}, r"unknown model config key 'backbon'; did you mean 'backbone'"),
        ({}, {"max_chunk_byte": 8}, r"unknown model keyword 'max_chunk_byte'; did you mean 'max_chunk_bytes'"),
        ({"lr": 0.1}, {}, r"unknown model config key 'lr'"),
    ],
)
def test_unknown_keys_are_named_with_a_suggestion(cfg, kw, match):
    with pytest.raises(ValueError, match=match):
        create_qgnet(cfg, **kw)


def test_bad_values_reach_qgnet_errors():
    with pytest.raises(ValueError, match="region_map_backend"):
        create_qgnet(_section(region_map_backend="fast"))
    with pytest.raises(TypeError, match="model_cfg"):
        create_qgnet(["backbone"])


def test_a_models_config_names_every_model_key_and_rebuilds_it():
    """QGNet.config (what save_pretrained writes) and MODEL_KEYS must not drift apart."""
    from fewshot_priors.models import create_qgnet

    model = create_qgnet(backbone="resnet18", bins=[2, 1], channels=8, eps=1e-6, max_chunk_bytes=1 << 20)
    assert set(model.config) == set(MODEL_KEYS)
    again = create_qgnet(model.config)
    assert again.config == model.config
