"""Official PFENet / QGNet checkpoints <-> this library's :class:`~fewshot_priors.models.qgnet.QGNet`.

:func:`convert_official_checkpoint` turns

* an official **PFENet** checkpoint (``dvlab-research/PFENet``: a ``torch.save`` of
  ``{"state_dict": ...}`` with keys prefixed ``module.``) into the state dict of
  ``QGNet(use_prior=False)`` (PFENet is QGNet without the prior map);
* an official **QGNet** checkpoint (the authors' PFENet fork, ``PFENet_QGNet.py``)
  into the state dict of ``QGNet(use_prior=True)`` with its prior extractor;
* PFENet's backbone initialisation file (``initmodel/resnet50_v2.pth``: a deep-stem
  ResNet in the naming of PFENet's ``model/resnet.py``; ``vgg16_bn.pth``) into a timm
  state dict for ``create_backbone(name, weights=...)``,

and returns the matching model config. :func:`to_official_state_dict` is the
inverse. Every name is in the tables below (one place, easy to correct); anything a
table does not cover is reported by name.

Official layout (PFENet ``model/PFENet.py``; QGNet ``model/PFENet_QGNet.py``):

* ``layer0`` = ``Sequential(conv1, bn1, relu1, conv2, bn2, relu2, conv3, bn3, relu3,
  maxpool)`` of the deep-stem ResNet (indices 0 1 _ 3 4 _ 6 7 _ _); ``layer1..4`` keep
  the ResNet's block names (``conv1 bn1 conv2 bn2 conv3 bn3 downsample.0/1``), which
  are timm's. VGG: ``layerK = features[a:b]`` (``get_vgg16_layer``).
* ``down_query`` / ``down_supp`` = ``Conv2d(1024 + 512, 256, 1, bias=False)``, ReLU,
  Dropout2d, applied to ``cat([layer3, layer2])``; this library's heads take
  ``cat([layer2, layer3])``, so the two input-channel blocks are swapped.
* FEM decoder: ``init_merge alpha_conv beta_conv inner_cls res1 res2 cls``, the same
  names and Sequential indices as :class:`~fewshot_priors.models.fem.FEMDecoder`.
* QGNet adds the prior extractor ``layer0_unsuper`` (``Sequential(conv1, bn1, relu,
  maxpool)`` of a plain ResNet-50) and ``layer1_unsuper .. layer4_unsuper``, and the
  3x3 projections ``down_learn_super`` (bridge) / ``down_learn_unsuper`` (prior).

**Pyramid bins.** PFENet reads a bin ``<= 1`` as a fraction of the feature size (so
``1`` means the full size); :class:`~fewshot_priors.models.fem.FEMDecoder` reads an
``int`` as an absolute size (``1`` is ``1 x 1``) and a ``float`` as a fraction.
:func:`pfenet_bins` translates PFENet's ``ppm_scales`` (the ``bins`` argument here).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "KINDS",
    "OFFICIAL_NAMES",
    "convert_official_checkpoint",
    "official_name_map",
    "pfenet_bins",
    "to_official_state_dict",
]

#: What :func:`convert_official_checkpoint` converts.
KINDS = ("pfenet", "qgnet", "pfenet-backbone")

# --------------------------------------------------------------------------- the name tables

#: Official module name -> this library's module name (a key maps by its longest
#: matching module prefix; the parameter / buffer name after it is kept). Groups:
#: ``"resnet_deep_stem"`` / ``"resnet_plain_stem"`` / ``"vgg16_bn"``: the supervised
#: backbone (``{K}`` / ``{N}``: see :func:`official_name_map`); ``"prior_plain_stem"``
#: / ``"prior_deep_stem"``: QGNet's prior extractor; ``"heads"``: the 1x1 mid-level heads
#: (input blocks swapped, see :data:`SWAPPED_HEADS`) and QGNet's 3x3 projections;
#: ``"decoder"``: the FEM; ``"backbone_init"``: PFENet's ``resnet50_v2.pth`` -> timm.
OFFICIAL_NAMES: dict[str, dict[str, str]] = {
    "resnet_deep_stem": {
        "layer0.0": "backbone.body.conv1.0",  # conv1 3x3 3 -> 64, stride 2
        "layer0.1": "backbone.body.conv1.1",  # bn1
        "layer0.3": "backbone.body.conv1.3",  # conv2 3x3 64 -> 64
        "layer0.4": "backbone.body.conv1.4",  # bn2
        "layer0.6": "backbone.body.conv1.6",  # conv3 3x3 64 -> 128
        "layer0.7": "backbone.body.bn1",  # bn3
        "layer1": "backbone.body.layer1",
        "layer2": "backbone.body.layer2",
        "layer3": "backbone.body.layer3",
        "layer4": "backbone.body.layer4",
    },
    "resnet_plain_stem": {
        "layer0.0": "backbone.body.conv1",  # 7x7 3 -> 64, stride 2
        "layer0.1": "backbone.body.bn1",
        "layer1": "backbone.body.layer1",
        "layer2": "backbone.body.layer2",
        "layer3": "backbone.body.layer3",
        "layer4": "backbone.body.layer4",
    },
    # PFENet's get_vgg16_layer: layerK = features[start:stop] ("start:stop" below), so
    # "layerK.{j}" -> "backbone.body.features_{start + j}" (timm's features_only VGG names)
    "vgg16_bn": {"layer0": "0:7", "layer1": "7:14", "layer2": "14:24", "layer3": "24:34", "layer4": "34:43"},
    "prior_plain_stem": {
        "layer0_unsuper.0": "prior_extractor.body.conv1",
        "layer0_unsuper.1": "prior_extractor.body.bn1",
        "layer1_unsuper": "prior_extractor.body.layer1",
        "layer2_unsuper": "prior_extractor.body.layer2",
        "layer3_unsuper": "prior_extractor.body.layer3",
        "layer4_unsuper": "prior_extractor.body.layer4",
    },
    "prior_deep_stem": {
        "layer0_unsuper.0": "prior_extractor.body.conv1.0",
        "layer0_unsuper.1": "prior_extractor.body.conv1.1",
        "layer0_unsuper.3": "prior_extractor.body.conv1.3",
        "layer0_unsuper.4": "prior_extractor.body.conv1.4",
        "layer0_unsuper.6": "prior_extractor.body.conv1.6",
        "layer0_unsuper.7": "prior_extractor.body.bn1",
        "layer1_unsuper": "prior_extractor.body.layer1",
        "layer2_unsuper": "prior_extractor.body.layer2",
        "layer3_unsuper": "prior_extractor.body.layer3",
        "layer4_unsuper": "prior_extractor.body.layer4",
    },
    "heads": {
        "down_query": "query_head",
        "down_supp": "support_head",
        "down_learn_super": "down_bridge",
        "down_learn_unsuper": "down_prior",
    },
    "decoder": {name: f"decoder.{name}" for name in
                ("init_merge", "alpha_conv", "beta_conv", "inner_cls", "res1", "res2", "cls")},
    # PFENet's initmodel/resnet50_v2.pth (model/resnet.py, deep_base=True) -> timm resnet50s
    "backbone_init": {
        "conv1": "conv1.0",
        "bn1": "conv1.1",
        "conv2": "conv1.3",
        "bn2": "conv1.4",
        "conv3": "conv1.6",
        "bn3": "bn1",
        "layer1": "layer1",
        "layer2": "layer2",
        "layer3": "layer3",
        "layer4": "layer4",
        "fc": "fc",
    },
}

#: Heads whose official input is ``cat([layer3, layer2])`` (ours: ``cat([layer2, layer3])``).
SWAPPED_HEADS = ("down_query.0.weight", "down_supp.0.weight")

#: ResNet depth by the number of blocks in layer3.
_RESNET_DEPTH = {6: 50, 23: 101, 36: 152}


# --------------------------------------------------------------------------- helpers


def pfenet_bins(ppm_scales: Sequence[int | float]) -> list[int | float]:
    """PFENet's ``ppm_scales`` in :class:`~fewshot_priors.models.fem.FEMDecoder`'s convention.

    PFENet pools to ``int(feature_size * b)`` when ``b <= 1`` (so ``1`` is the full
    feature size) and to ``b x b`` otherwise; FEMDecoder takes ``int`` = absolute size,
    ``float`` = fraction. Values ``<= 1`` become floats, the others ints:
    ``[60, 30, 15, 8] -> [60, 30, 15, 8]``, ``[1, 0.5, 0.25, 0.125] -> [1.0, 0.5, 0.25, 0.125]``.

    Raises:
        ValueError: an empty list, a value ``<= 0`` or a non-integer value ``> 1``.
    """
    if isinstance(ppm_scales, (str, bytes)) or not isinstance(ppm_scales, Sequence) or not ppm_scales:
        raise ValueError(f"`bins` (PFENet's ppm_scales) must be a non-empty list of numbers, got {ppm_scales!r}")
    out: list[int | float] = []
    for b in ppm_scales:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
            raise ValueError(f"`bins` entries must be positive numbers, got {b!r} in {list(ppm_scales)}")
        if b <= 1:
            out.append(float(b))
        elif float(b).is_integer():
            out.append(int(b))
        else:
            raise ValueError(f"`bins` entries > 1 are absolute sizes and must be integers, got {b!r}")
    return out


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _read(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, Mapping):
        inner = source.get("state_dict")
        state = inner if isinstance(inner, Mapping) else source
        tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if not tensors:
            raise ValueError("the state dict to convert holds no tensors")
        return _strip_module(tensors), "<state dict>"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"`source` must be a path or a state dict, got {type(source).__name__}")
    from fewshot_priors.models.weights import _read_checkpoint

    state, _ = _read_checkpoint(source, what="official checkpoint")
    return _strip_module(state), os.fspath(source)


def _blocks(state: Mapping[str, Any], stage: str) -> int:
    pat = re.compile(rf"^{re.escape(stage)}\.(\d+)\.")
    return len({int(m.group(1)) for k in state if (m := pat.match(k))})


def _resnet_name(state: Mapping[str, torch.Tensor], suffix: str, where: str) -> str:
    """timm name of the ResNet stored under ``layer*{suffix}`` (``"resnet50s"``: deep stem)."""
    n3 = _blocks(state, f"layer3{suffix}")
    depth = _RESNET_DEPTH.get(n3)
    if depth is None:
        raise ValueError(f"{where}: layer3{suffix} has {n3} blocks; expected 6 (ResNet-50), 23 (ResNet-101) or 36")
    stem = state.get(f"layer0{suffix}.0.weight")
    if stem is None or stem.dim() != 4:
        raise ValueError(f"{where}: no stem convolution layer0{suffix}.0.weight")
    return f"resnet{depth}{'s' if stem.shape[-1] == 3 else ''}"


def _detect(state: Mapping[str, torch.Tensor], kind: str, where: str) -> dict[str, Any]:
    """Architecture of an official checkpoint: backbone / prior names and the name map."""
    has_prior = any(k.startswith("layer0_unsuper.") for k in state)
    has_model = any(k.startswith("layer0.") for k in state)
    if kind == "pfenet-backbone":
        if has_model:
            raise ValueError(f"{where}: this is a full PFENet/QGNet checkpoint (it has layer0.*), "
                             "not a backbone initialisation file: use kind='pfenet' or kind='qgnet'")
        if any(k.startswith("features.") for k in state):
            return {"backbone": "vgg16_bn", "vgg": True}
        if "conv2.weight" not in state:
            raise ValueError(f"{where}: not PFENet's deep-stem ResNet initialisation file (no conv2.weight); "
                             "a plain torchvision/timm ResNet state dict needs no conversion: pass it as "
                             "model.weights with backbone resnet50")
        n3 = _blocks(state, "layer3")
        if n3 not in _RESNET_DEPTH:
            raise ValueError(f"{where}: layer3 has {n3} blocks; expected 6, 23 or 36")
        return {"backbone": f"resnet{_RESNET_DEPTH[n3]}s", "vgg": False}
    if not has_model:
        raise ValueError(f"{where}: no layer0.* keys: not an official PFENet/QGNet checkpoint"
                         + (" (for PFENet's backbone file use kind='pfenet-backbone')" if "conv1.weight" in state
                            or "features.0.weight" in state else ""))
    if kind == "pfenet" and has_prior:
        raise ValueError(f"{where}: this checkpoint has a prior extractor (layer0_unsuper.*): use kind='qgnet'")
    if kind == "qgnet" and not has_prior:
        raise ValueError(f"{where}: this checkpoint has no prior extractor (layer0_unsuper.*): use kind='pfenet'")
    info: dict[str, Any] = {"vgg": "layer1.0.weight" in state and "layer1.0.conv1.weight" not in state}
    info["backbone"] = "vgg16_bn" if info["vgg"] else _resnet_name(state, "", where)
    if has_prior:
        info["prior"] = _resnet_name(state, "_unsuper", where)
    return info


def official_name_map(backbone: str, prior_backbone: str | None = None,
                      kind: str = "pfenet") -> dict[str, str]:
    """The official -> ours module-name map for one architecture (from :data:`OFFICIAL_NAMES`).

    Args:
        backbone: timm name of the supervised backbone (``"resnet50s"``, ``"resnet101s"``,
            ``"vgg16_bn"``; ``"resnet50"`` for a 7x7-stem variant).
        prior_backbone: timm name of QGNet's prior extractor (``"resnet50"``), or None.
        kind: one of :data:`KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")
    if kind == "pfenet-backbone":
        if backbone.startswith("vgg"):
            return {"features": "features"}
        return dict(OFFICIAL_NAMES["backbone_init"])
    names: dict[str, str] = {}
    if backbone.startswith("vgg"):
        for layer, span in OFFICIAL_NAMES["vgg16_bn"].items():
            start, stop = (int(i) for i in span.split(":"))
            for j in range(stop - start):
                names[f"{layer}.{j}"] = f"backbone.body.features_{start + j}"
    else:
        names.update(OFFICIAL_NAMES["resnet_deep_stem" if backbone.endswith("s") else "resnet_plain_stem"])
    if prior_backbone is not None:
        names.update(OFFICIAL_NAMES["prior_deep_stem" if prior_backbone.endswith("s") else "prior_plain_stem"])
    names.update({f"{k}.0": f"{v}.0" for k, v in OFFICIAL_NAMES["heads"].items()})
    names.update(OFFICIAL_NAMES["decoder"])
    return names


def _rename(key: str, names: Mapping[str, str]) -> str | None:
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in names:
            return names[prefix] + "." + ".".join(parts[i:])
    return None


def _swap_blocks(weight: torch.Tensor, first: int) -> torch.Tensor:
    """Swap the input-channel blocks ``[:first]`` and ``[first:]`` of a conv weight."""
    return torch.cat([weight[:, first:], weight[:, :first]], dim=1).contiguous()


def _target(config_model: Mapping[str, Any], n_bins: int, channels: int):
    """A meta-device model of the converted architecture: ``(state shapes, backbone channels)``."""
    from fewshot_priors.models.qgnet import QGNet

    with torch.device("meta"):
        model = QGNet(backbone=config_model["backbone"], prior_backbone=config_model["prior_backbone"],
                      use_prior=config_model["use_prior"], bins=tuple(range(n_bins, 0, -1)), channels=channels)
    return {k: v for k, v in model.state_dict().items()}, model.backbone.channels


def _check_complete(converted: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                    unmapped: list[str], where: str, what: str, optional: Sequence[str] = ()) -> None:
    from fewshot_priors.models.weights import _fmt_keys

    for k, v in target.items():  # BN counters are not used in eval; older checkpoints lack them
        if k not in converted and k.endswith("num_batches_tracked"):
            converted[k] = torch.zeros((), dtype=v.dtype)
    missing = [k for k in target if k not in converted and not k.startswith(tuple(optional))]
    unexpected = [k for k in converted if k not in target]
    shapes = [f"{k}: {tuple(converted[k].shape)} vs {tuple(target[k].shape)}"
              for k in converted if k in target and tuple(converted[k].shape) != tuple(target[k].shape)]
    if unmapped or missing or unexpected or shapes:
        parts = []
        if unmapped:
            parts.append(f"keys with no entry in the name table ({len(unmapped)}): {_fmt_keys(unmapped, 20)}")
        if missing:
            parts.append(f"missing ({len(missing)}): {_fmt_keys(missing, 20)}")
        if unexpected:
            parts.append(f"mapped to names the model does not have ({len(unexpected)}): {_fmt_keys(unexpected, 20)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_fmt_keys(shapes, 8)}")
        raise ValueError(
            f"cannot convert {where} to {what}: " + "; ".join(parts)
            + ". The names are in fewshot_priors.models.convert.OFFICIAL_NAMES."
        )


# --------------------------------------------------------------------------- public API


def convert_official_checkpoint(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    kind: str = "pfenet",
    bins: Sequence[int | float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Convert an official PFENet / QGNet checkpoint (or PFENet's backbone file).

    Args:
        source: a ``.pth`` file (``{"state_dict": {"module.layer0.0.weight": ...}}``,
            read with ``torch.load(weights_only=True)``) or the (wrapped) state dict.
        kind: ``"pfenet"`` (PFENet: ``QGNet(use_prior=False)``), ``"qgnet"`` (the
            official QGNet, with its prior extractor) or ``"pfenet-backbone"``
            (PFENet's ``initmodel/resnet50_v2.pth`` / ``resnet101_v2.pth`` /
            ``vgg16_bn.pth``).
        bins: PFENet's ``ppm_scales`` the checkpoint was trained with (values ``<= 1``
            are fractions, as in PFENet; see :func:`pfenet_bins`). None: not set in
            the returned config (the base config's ``model.bins`` apply).

    Returns:
        ``(state_dict, config)``. For ``"pfenet"`` / ``"qgnet"`` the state dict loads
        strictly into ``build_model(config)`` (:func:`fewshot_priors.engine.build.build_model`)
        and ``config`` is ``{"model": {backbone, prior_backbone, use_prior, channels,
        pretrained: False, weights: None, prior_weights: None[, bins]}}``; for
        ``"pfenet-backbone"`` the state dict has the timm model's names (load it with
        ``create_backbone(config["model"]["backbone"], weights=state_dict)``) and
        ``config`` is ``{"model": {"backbone": ..., "pretrained": False}}``.

    Raises:
        ValueError: a checkpoint of another kind (the message names the right one),
            keys that no table entry maps (listed), missing keys or shape mismatches.
        FileNotFoundError: ``source`` does not exist.
    """
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.{hint}")
    state, where = _read(source)
    info = _detect(state, kind, where)
    if kind == "pfenet-backbone":
        import timm

        names = official_name_map(info["backbone"], kind=kind)
        converted, unmapped = {}, []
        for k, v in state.items():
            if info["vgg"] and k.startswith("classifier."):
                continue  # the ImageNet classifier: not part of the feature extractor
            new = _rename(k, names)
            if new is None:
                unmapped.append(k)
            else:
                converted[new] = v
        with torch.device("meta"):
            full = timm.create_model(info["backbone"], pretrained=False)
        target = full.state_dict()
        head = full.pretrained_cfg.get("classifier", "fc")
        optional = [f"{head}.", "pre_logits.", "head."]
        _check_complete(converted, target, unmapped, where, f"timm {info['backbone']!r}", optional)
        return converted, {"model": {"backbone": info["backbone"], "pretrained": False}}

    model_cfg: dict[str, Any] = {
        "backbone": info["backbone"],
        "prior_backbone": info.get("prior"),
        "use_prior": kind == "qgnet",
        "pretrained": False,
        "weights": None,
        "prior_weights": None,
    }
    query_w = state.get("down_query.0.weight")
    if query_w is None:
        raise ValueError(f"{where}: no down_query.0.weight (the query head): not a PFENet/QGNet checkpoint")
    model_cfg["channels"] = int(query_w.shape[0])
    n_bins = _blocks(state, "init_merge")
    if bins is not None:
        model_cfg["bins"] = pfenet_bins(bins)
        if len(model_cfg["bins"]) != n_bins:
            raise ValueError(f"`bins` has {len(model_cfg['bins'])} entries but {where} has {n_bins} pyramid "
                             f"scales (init_merge.0 .. init_merge.{n_bins - 1})")
    target, channels = _target(model_cfg, n_bins, model_cfg["channels"])
    names = official_name_map(info["backbone"], info.get("prior"), kind)
    converted, unmapped = {}, []
    for k, v in state.items():
        new = _rename(k, names)
        if new is None:
            unmapped.append(k)
            continue
        if k in SWAPPED_HEADS:  # official cat([layer3, layer2]) -> ours cat([layer2, layer3])
            v = _swap_blocks(v, channels[1])
        converted[new] = v
    what = "QGNet(use_prior=True)" if kind == "qgnet" else "QGNet(use_prior=False)"
    _check_complete(converted, target, unmapped, where, f"{what} with backbone {info['backbone']!r}")
    return converted, {"model": model_cfg}


def to_official_state_dict(
    source: torch.nn.Module | Mapping[str, torch.Tensor],
    kind: str | None = None,
    prefix: str = "module.",
) -> dict[str, torch.Tensor]:
    """This library's weights in the official naming (inverse of :func:`convert_official_checkpoint`).

    Args:
        source: a :class:`~fewshot_priors.models.qgnet.QGNet` (``kind`` "pfenet" /
            "qgnet", default from its ``use_prior``), or for ``kind="pfenet-backbone"``
            a timm ResNet ``"resnet50s"`` / ``"resnet101s"`` (or VGG16-BN) model or its
            state dict.
        kind: one of :data:`KINDS` (default: from the model).
        prefix: prepended to every key (``"module."``: the official DataParallel
            checkpoints; ``""`` for none). Not applied to ``"pfenet-backbone"``.

    Returns:
        The state dict in the official names (``down_query`` / ``down_supp`` with their
        input blocks in the official ``[layer3, layer2]`` order).
    """
    if kind == "pfenet-backbone":
        state = source.state_dict() if isinstance(source, torch.nn.Module) else dict(source)
        vgg = any(k.startswith("features.") for k in state)
        inverse = {v: k for k, v in official_name_map("vgg16_bn" if vgg else "resnet50s", kind=kind).items()}
        out = {}
        for k, v in state.items():
            new = _rename(k, inverse)
            if new is not None:
                out[new] = v
        return out
    from fewshot_priors.models.backbone import FrozenBackbone
    from fewshot_priors.models.qgnet import QGNet

    if not isinstance(source, QGNet):
        raise TypeError(f"`source` must be a QGNet for kind {kind!r}, got {type(source).__name__}")
    if kind is None:
        kind = "qgnet" if source.use_prior else "pfenet"
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}")
    if (kind == "qgnet") != source.use_prior:
        raise ValueError(f"kind {kind!r} needs a QGNet with use_prior={kind == 'qgnet'}")
    paper_maps = ["guided", "prior"] if source.use_prior else ["guided"]
    if list(source.region_maps) != paper_maps or source.decoder.n_maps != len(paper_maps):
        raise ValueError(f"the official naming holds the paper's region maps only ({paper_maps}), "
                         f"this QGNet has {list(source.region_maps)}")
    prior = source.prior_extractor
    if prior is not None and not isinstance(prior, FrozenBackbone):
        raise ValueError("the prior extractor must be a timm FrozenBackbone to be written in the official naming")
    names = official_name_map(source.backbone.name, prior.name if prior is not None else None, kind)
    inverse = {v: k for k, v in names.items()}
    low = source.backbone.channels[0]
    out = {}
    for k, v in source.state_dict().items():
        new = _rename(k, inverse)
        if new is None:
            raise ValueError(f"no official name for {k!r} (backbone {source.backbone.name!r})")
        if new in SWAPPED_HEADS:  # ours cat([layer2, layer3]) -> official cat([layer3, layer2])
            v = _swap_blocks(v, low)
        out[prefix + new] = v.detach().clone()
    return out
