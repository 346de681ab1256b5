"""fewshot_priors: few-shot semantic segmentation with self-supervised query priors.

The public building blocks are importable from the top level::

    import fewshot_priors as fp
    prior = fp.prior_region_map(bridge_feats, prior_feats)       # B,1,H,W
    guided = fp.guided_region_map(query_feats, support_feats, support_mask)
    model = fp.create_qgnet(backbone="resnet50")   # or fp.QGNet(...)
    fp.save_pretrained(model, "qgnet-tiny"); same = fp.from_pretrained("qgnet-tiny")

Heavy submodules (timm models, datasets) are imported lazily on first use.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

# public name -> module that defines it (imported on first attribute access: `import fewshot_priors`
# and `python -m fewshot_priors --help` do not import torch)
_LAZY = {
    "checks_disabled": "fewshot_priors.ops",
    "checks_enabled": "fewshot_priors.ops",
    "guided_region_map": "fewshot_priors.ops",
    "masked_average_pool": "fewshot_priors.ops",
    "max_cosine_similarity": "fewshot_priors.ops",
    "prior_region_map": "fewshot_priors.ops",
    "set_checks": "fewshot_priors.ops",
    "create_backbone": "fewshot_priors.models.backbone",
    "FrozenBackbone": "fewshot_priors.models.backbone",
    "FEMDecoder": "fewshot_priors.models.fem",
    "QGNet": "fewshot_priors.models.qgnet",
    "create_qgnet": "fewshot_priors.models.factory",
    "save_pretrained": "fewshot_priors.models.hub",
    "from_pretrained": "fewshot_priors.models.hub",
    "GuidedRegionMap": "fewshot_priors.ops.modules",
    "PriorRegionMap": "fewshot_priors.ops.modules",
    "InfoNCELoss": "fewshot_priors.ops.modules",
    "MaskedAveragePool": "fewshot_priors.ops.modules",
    "SuperpixelPool": "fewshot_priors.ops.modules",
    "GlobalLocalMoCo": "fewshot_priors.ssl.moco",
    "MemoryQueue": "fewshot_priors.ssl.queue",
    "SuperpixelPatchSampler": "fewshot_priors.ssl.superpixels",
    "FewShotSegMeter": "fewshot_priors.metrics",
    "PascalFewShot": "fewshot_priors.data",
    "CocoFewShot": "fewshot_priors.data",
    "FolderFewShot": "fewshot_priors.data",
    "PascalOptions": "fewshot_priors.data",
    "CocoOptions": "fewshot_priors.data",
    "FolderOptions": "fewshot_priors.data",
    "create_dataset": "fewshot_priors.data",
    "register_dataset": "fewshot_priors.data",
    "superpixel_pool": "fewshot_priors.ops.superpixel_pool",
    "info_nce": "fewshot_priors.ops.contrastive",
    "momentum_update": "fewshot_priors.ops.contrastive",
}

__all__ = ["__version__", *_LAZY]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .data import (
        CocoFewShot,
        CocoOptions,
        FolderFewShot,
        FolderOptions,
        PascalFewShot,
        PascalOptions,
        create_dataset,
        register_dataset,
    )
    from .metrics import FewShotSegMeter
    from .models.backbone import FrozenBackbone, create_backbone
    from .models.factory import create_qgnet
    from .models.fem import FEMDecoder
    from .models.hub import from_pretrained, save_pretrained
    from .models.qgnet import QGNet
    from .ops import (
        checks_disabled,
        checks_enabled,
        guided_region_map,
        masked_average_pool,
        max_cosine_similarity,
        prior_region_map,
        set_checks,
    )
    from .ops.contrastive import info_nce, momentum_update
    from .ops.modules import GuidedRegionMap, InfoNCELoss, MaskedAveragePool, PriorRegionMap, SuperpixelPool
    from .ops.superpixel_pool import superpixel_pool
    from .ssl.moco import GlobalLocalMoCo
    from .ssl.queue import MemoryQueue
    from .ssl.superpixels import SuperpixelPatchSampler

# the namespace holds the public API only (plus the subpackages, once imported)
del TYPE_CHECKING, lazy_exports
