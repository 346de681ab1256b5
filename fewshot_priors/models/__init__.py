"""Models: frozen timm backbones, the FEM decoder and QGNet.

Names are imported lazily so that ``import fewshot_priors.models.<module>`` stays
light and independent of the other model modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "create_backbone": "fewshot_priors.models.backbone",
    "FrozenBackbone": "fewshot_priors.models.backbone",
    "FEMDecoder": "fewshot_priors.models.fem",
    "QGNet": "fewshot_priors.models.qgnet",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fewshot_priors.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover
    from .backbone import FrozenBackbone, create_backbone
    from .fem import FEMDecoder
    from .qgnet import QGNet
