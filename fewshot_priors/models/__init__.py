"""Models: frozen timm backbones, the FEM decoder, QGNet, ``save_pretrained`` /
``from_pretrained`` and the official-checkpoint converter.

The prior extractor's pretraining model, ``GlobalLocalMoCo``, is in
:mod:`fewshot_priors.ssl` (a layer that builds on this one).
"""

from __future__ import annotations

from .backbone import FrozenBackbone, create_backbone
from .convert import convert_official_checkpoint, to_official_state_dict
from .factory import create_qgnet
from .fem import FEMDecoder
from .hub import from_pretrained, save_pretrained
from .qgnet import QGNet
from .weights import load_backbone_state_dict

__all__ = [
    "FEMDecoder",
    "FrozenBackbone",
    "QGNet",
    "convert_official_checkpoint",
    "create_backbone",
    "create_qgnet",
    "from_pretrained",
    "load_backbone_state_dict",
    "save_pretrained",
    "to_official_state_dict",
]
