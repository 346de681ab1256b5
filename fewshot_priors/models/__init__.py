"""Models: frozen timm backbones, the FEM decoder, QGNet, the official-checkpoint converter
and (from :mod:`fewshot_priors.ssl`) the prior extractor's pretraining model ``GlobalLocalMoCo``.

Names are imported lazily so that ``import fewshot_priors.models.<module>`` stays
light and independent of the other model modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewshot_priors._lazy import lazy_exports

_LAZY = {
    "create_backbone": "fewshot_priors.models.backbone",
    "FrozenBackbone": "fewshot_priors.models.backbone",
    "FEMDecoder": "fewshot_priors.models.fem",
    "QGNet": "fewshot_priors.models.qgnet",
    # defined in fewshot_priors.ssl (pretraining); listed here too because it is a model
    "GlobalLocalMoCo": "fewshot_priors.ssl.moco",
    "create_qgnet": "fewshot_priors.models.factory",
    "save_pretrained": "fewshot_priors.models.hub",
    "from_pretrained": "fewshot_priors.models.hub",
    "load_backbone_state_dict": "fewshot_priors.models.weights",
    "convert_official_checkpoint": "fewshot_priors.models.convert",
    "to_official_state_dict": "fewshot_priors.models.convert",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)


if TYPE_CHECKING:  # pragma: no cover
    from ..ssl.moco import GlobalLocalMoCo
    from .backbone import FrozenBackbone, create_backbone
    from .convert import convert_official_checkpoint, to_official_state_dict
    from .factory import create_qgnet
    from .fem import FEMDecoder
    from .hub import from_pretrained, save_pretrained
    from .qgnet import QGNet
    from .weights import load_backbone_state_dict
