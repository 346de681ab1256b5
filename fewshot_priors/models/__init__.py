"""Models: frozen timm backbones, the FEM decoder, QGNet and its region-map registry,
``save_pretrained`` / ``from_pretrained`` and the official-checkpoint converter.

The prior extractor's pretraining model, ``GlobalLocalMoCo``, is in
:mod:`fewshot_priors.ssl` (a layer that builds on this one).
"""

from __future__ import annotations

from .backbone import FrozenBackbone, create_backbone
from .convert import convert_official_checkpoint, to_official_state_dict
from .factory import create_qgnet
from .fem import FEMDecoder
from .hub import from_pretrained, save_pretrained
from .protocols import PriorEncoderSource, PriorEncoderSpec
from .qgnet import QGNet
from .region_maps import REGION_MAP_INPUTS, create_region_map, list_region_maps, register_region_map
from .weights import load_backbone_state_dict

__all__ = [
    "REGION_MAP_INPUTS",
    "FEMDecoder",
    "FrozenBackbone",
    "PriorEncoderSource",
    "PriorEncoderSpec",
    "QGNet",
    "convert_official_checkpoint",
    "create_backbone",
    "create_qgnet",
    "create_region_map",
    "from_pretrained",
    "list_region_maps",
    "load_backbone_state_dict",
    "register_region_map",
    "save_pretrained",
    "to_official_state_dict",
]
