"""Region maps as parts of QGNet: declarations, the decoder width, the registry, save / load.

Uses timm's tiny ``test_resnet`` (as tests/test_qgnet.py) so the file runs in seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot_priors.models import (
    REGION_MAP_INPUTS,
    PriorEncoderSource,
    PriorEncoderSpec,
    QGNet,
    create_qgnet,
    create_region_map,
    list_region_maps,
    register_region_map,
)
from fewshot_priors.ops import GuidedRegionMap, PriorRegionMap

TINY = {"backbone": "test_resnet", "bins": (6, 3, 2, 1), "channels": 16}


def _episode(b=2, k=2, h=33, w=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, s = torch.rand(b, 3, h, w, generator=g), torch.rand(b, k, 3, h, w, generator=g)
    sm = torch.zeros(b, k, h, w)
    sm[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    qm = torch.zeros(b, h, w, dtype=torch.long)
    qm[:, h // 3: 2 * h // 3] = 1
    return q, s, sm, qm


@register_region_map("test_prototype_cosine")
class PrototypeCosine(nn.Module):
    consumes = ("query_feat", "prototype")
    out_channels = 1

    def forward(self, query_feat, prototype):
        return F.cosine_similarity(query_feat, prototype[..., None, None], dim=1).unsqueeze(1)


@register_region_map("test_scaled_query")
class ScaledQuery(nn.Module):
    """Two channels, a parameter and a constructor argument (recorded by get_config)."""

    consumes = ("query",)
    out_channels = 2

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.mix = nn.Conv2d(1, 2, 1)

    def forward(self, query):
        return self.mix(self.scale * query.mean(dim=1, keepdim=True))

    def get_config(self):
        return {"scale": self.scale}


class Zeros(nn.Module):
    consumes = ("query",)
    out_channels = 1

    def forward(self, query):
        return query.new_zeros(query.shape[0], 1, *query.shape[-2:])


def _built(**kw) -> QGNet:
    torch.manual_seed(0)
    return QGNet(**TINY, **kw).eval()


def test_the_paper_pair_is_the_default_and_can_be_named():
    """``region_maps=None``, the names and a mapping of the shipped modules all build the same model."""
    q, s, sm, _ = _episode()
    ref = _built()
    assert list(ref.region_maps) == ["guided", "prior"] and ref.decoder.n_maps == 2
    assert ref.config["region_maps"] is None
    for maps in (["guided", "prior"], {"guided": GuidedRegionMap(), "prior": PriorRegionMap()}):
        model = _built(region_maps=maps)
        assert model.config["region_maps"] is None  # recorded as the default
        torch.testing.assert_close(model(q, s, sm)["logits"], ref(q, s, sm)["logits"], rtol=0, atol=0)
    ablation = _built(use_prior=False)
    assert list(ablation.region_maps) == ["guided"] and ablation.config["region_maps"] is None


def test_a_third_map_widens_the_decoder_and_a_zero_map_changes_nothing():
    """A constant-zero third map whose decoder weights are zero gives the two-map model's logits
    exactly: the maps reach the decoder in order, the extra channel only adds columns."""
    q, s, sm, _ = _episode(seed=1)
    ref = _built()
    model = _built(region_maps=["guided", "prior", Zeros()])
    assert model.decoder.n_maps == 3 and model.decoder.init_merge[0][0].in_channels == 2 * 16 + 3
    state = ref.state_dict()
    for i in range(len(ref.decoder.init_merge)):
        w = state[f"decoder.init_merge.{i}.0.weight"]
        state[f"decoder.init_merge.{i}.0.weight"] = torch.cat([w, torch.zeros_like(w[:, :1])], dim=1)
    model.load_state_dict(state)
    out, want = model(q, s, sm), ref(q, s, sm)
    torch.testing.assert_close(out["logits"], want["logits"])
    assert torch.equal(out["zeros_map"], torch.zeros(2, 1, 5, 5))  # key: the class name in snake case
    torch.testing.assert_close(out["guided_map"], want["guided_map"])
    from fewshot_priors.models import to_official_state_dict

    assert to_official_state_dict(ref)  # the paper's pair converts; a third map has no official name
    with pytest.raises(ValueError, match="official naming holds the paper's region maps"):
        to_official_state_dict(model)


def test_a_map_gets_the_inputs_it_declares():
    seen = {}

    class Spy(nn.Module):
        consumes = tuple(REGION_MAP_INPUTS)
        out_channels = 1

        def forward(self, *tensors):
            seen.update({n: tuple(t.shape) for n, t in zip(self.consumes, tensors)})
            return tensors[0][:, :1]

    q, s, sm, _ = _episode(b=2, k=3)
    model = _built(region_maps={"guided": "guided", "prior": "prior", "spy": Spy()})
    out = model(q, s, sm)
    c = model.backbone.channels[2]
    assert seen["query"] == (2, c, 5, 5) and seen["support"] == (2, 3, c, 5, 5)
    assert seen["support_mask"] == (2, 3, 33, 33) and seen["bridge"] == seen["query_feat"] == (2, 16, 5, 5)
    assert seen["prior"][:2] == (2, 16) and seen["prototype"] == (2, 16)
    assert out["spy_map"].shape == (2, 1, 5, 5)


def test_prototype_cosine_map_trains_on_the_synthetic_data(tmp_path):
    """The how-to's third map: trained on a synthetic batch, the loss drops and the decoder's
    weights for the new channel move."""
    from torch.utils.data import DataLoader

    from fewshot_priors.data import (
        PascalFewShot,
        PascalOptions,
        collate_episodes,
        generate_synthetic_dataset,
    )

    root = generate_synthetic_dataset(tmp_path, num_classes=4, images_per_class=8, image_size=48,
                                      min_pixels=100, progress=False)
    data = PascalFewShot(root, fold=0, split="train", shots=1, image_size=48, options=PascalOptions(min_pixels=100))
    batch = next(iter(DataLoader(data, batch_size=4, collate_fn=collate_episodes)))
    args = (batch["query_image"], batch["support_images"], batch["support_masks"], batch["query_mask"])
    model = _built(region_maps=["guided", "prior", "test_prototype_cosine"])
    assert isinstance(model.region_maps["test_prototype_cosine"], PrototypeCosine)
    with torch.no_grad():
        before = model(*args)["loss"].item()
    column = model.decoder.init_merge[0][0].weight[:, -1].detach().clone()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        model(*args)["loss"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(*args)
    assert out["loss"].item() < 0.7 * before
    assert not torch.equal(model.decoder.init_merge[0][0].weight[:, -1], column)
    assert out["test_prototype_cosine_map"].shape == (4, 1, 6, 6)
    assert out["test_prototype_cosine_map"].abs().max() <= 1 + 1e-6


def test_registered_maps_are_saved_by_name_and_reload_equal(tmp_path):
    q, s, sm, _ = _episode(seed=2)
    model = _built(region_maps=["guided", "prior", PrototypeCosine(), ScaledQuery(scale=2.5)])
    assert model.decoder.n_maps == 5
    folder = model.save_pretrained(tmp_path / "m")
    recorded = json.loads((folder / "config.json").read_text())["model"]["region_maps"]
    assert recorded == ["guided", "prior", "test_prototype_cosine",
                        {"type": "test_scaled_query", "kwargs": {"scale": 2.5}}]
    again = QGNet.from_pretrained(folder)
    assert again.region_maps["test_scaled_query"].scale == 2.5
    torch.testing.assert_close(again(q, s, sm)["logits"], model(q, s, sm)["logits"], rtol=0, atol=0)
    # the config route builds the same architecture
    rebuilt = create_qgnet({**model.config, "weights": None})
    assert list(rebuilt.region_maps) == list(model.region_maps)


def test_shipped_maps_with_other_options_record_them(tmp_path):
    model = _built(region_maps={"guided": "guided", "prior": PriorRegionMap(eps=1e-3), "fine": "guided"})
    assert model.config["region_maps"] == ["guided", {"type": "prior", "kwargs": {"eps": 1e-3}},
                                           {"type": "guided", "name": "fine"}]
    again = QGNet.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.region_maps["prior"].eps == 1e-3 and list(again.region_maps) == ["guided", "prior", "fine"]


def test_unregistered_maps_work_but_are_refused_by_save_pretrained(tmp_path):
    model = _built(region_maps=["guided", "prior", Zeros()])
    assert model(*_episode()[:3])["zeros_map"].shape == (2, 1, 5, 5)
    with pytest.raises(ValueError, match=r"'zeros'.*not registered.*register_region_map\('a_name'\)"):
        model.save_pretrained(tmp_path / "m")

    @register_region_map("test_needs_args")
    class NeedsArgs(Zeros):
        def __init__(self, size):
            super().__init__()

    with pytest.raises(ValueError, match=r"takes arguments \(size\).*get_config"):
        _built(region_maps=["guided", "prior", NeedsArgs(3)]).save_pretrained(tmp_path / "n")


def test_bad_region_maps_are_clear_early_errors():
    class Undeclared(nn.Module):
        def forward(self, query):
            return query[:, :1]

    class Typo(Zeros):
        consumes = ("query_fet",)

    class NeedsPrior(Zeros):
        consumes = ("bridge",)

    class WrongShape(Zeros):
        out_channels = 2

    with pytest.raises(TypeError, match="must declare `consumes`.*`out_channels`"):
        _built(region_maps=["guided", "prior", Undeclared()])
    with pytest.raises(ValueError, match="unknown input 'query_fet'; did you mean 'query_feat'"):
        _built(region_maps=["guided", "prior", Typo()])
    with pytest.raises(ValueError, match="consumes 'bridge'.*use_prior=True"):
        _built(use_prior=False, region_maps=["guided", NeedsPrior()])
    with pytest.raises(ValueError, match="use_prior=True but no region map consumes"):
        _built(region_maps=["guided"])
    with pytest.raises(ValueError, match="unknown region map 'guidd'; did you mean 'guided'"):
        _built(region_maps=["guidd", "prior"])
    with pytest.raises(ValueError, match="two region maps named 'guided'"):
        _built(region_maps=["guided", "guided", "prior"])
    with pytest.raises(ValueError, match="with `region_maps`"):
        _built(region_maps=["guided", "prior"], guided_map=Zeros())
    with pytest.raises(ValueError, match="at least one"):
        _built(use_prior=False, region_maps=[])
    with pytest.raises(TypeError, match="a registered name or a mapping"):
        _built(region_maps=["guided", "prior", 3])
    with pytest.raises(ValueError, match=r"region map 'wrong_shape' must return a B, 2, h, w tensor"):
        _built(region_maps=["guided", "prior", WrongShape()])(*_episode()[:3])


def test_registry():
    assert {"guided", "prior", "test_prototype_cosine"} <= set(list_region_maps())
    assert isinstance(create_region_map("test_scaled_query", scale=3.0), ScaledQuery)
    register_region_map("test_prototype_cosine")(PrototypeCosine)  # the same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        register_region_map("guided")(Zeros)
    with pytest.raises(ValueError, match="identifier"):
        register_region_map("not a name")
    with pytest.raises(TypeError, match="nn.Module class"):
        register_region_map("test_function")(lambda x: x)


def test_config_values_of_region_maps_are_checked():
    from fewshot_priors.config import ConfigError, load_config, validate

    cfg = load_config("demo/quick")
    validate({**cfg, "model": {**cfg["model"], "region_maps": ["guided", {"type": "prior", "kwargs": {"eps": 0.1}}]}})
    for bad in ([], "guided", [3], [{"name": "x"}], [{"type": "prior", "extra": 1}]):
        with pytest.raises(ConfigError, match="model.region_maps must be null"):
            validate({**cfg, "model": {**cfg["model"], "region_maps": bad}})


def test_a_prior_encoder_source_is_frozen_as_the_prior_extractor():
    """The models <-> ssl contract: any PriorEncoderSource (GlobalLocalMoCo is one) gives the prior."""
    import timm

    from fewshot_priors.ssl.moco import GlobalLocalMoCo

    encoder = timm.create_model("test_resnet", num_classes=0)

    class MySSL(nn.Module):
        def prior_encoder_spec(self):
            return PriorEncoderSpec("test_resnet", encoder, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))

    assert isinstance(MySSL(), PriorEncoderSource)
    assert isinstance(GlobalLocalMoCo(backbone="test_resnet", queue_size=8, local_queue_size=8), PriorEncoderSource)
    model = _built(prior_backbone=MySSL())
    assert model.prior_extractor.mean == (0.1, 0.2, 0.3)
    got = model.prior_extractor.body.state_dict()
    assert got and all(torch.equal(v, encoder.state_dict()[k]) for k, v in got.items())
