"""The contract between a self-supervised model and QGNet's prior extractor.

:class:`QGNet(prior_backbone=...) <fewshot_priors.models.qgnet.QGNet>` accepts any object
that implements :class:`PriorEncoderSource`: it asks it for a :class:`PriorEncoderSpec`
(the timm architecture, the encoder whose weights become the prior extractor, and the
encoder's input statistics) and builds a frozen, dilated copy of that encoder.
:class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` implements it (its momentum encoder by
default, as the official QGNet release). The protocol lives here, in the layer that reads
it, so the dependency is an explicit import, not attribute names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

__all__ = ["PriorEncoderSource", "PriorEncoderSpec"]


@dataclass(frozen=True)
class PriorEncoderSpec:
    """What QGNet needs to build a prior extractor from a self-supervised model.

    Attributes:
        architecture: timm model name of ``encoder`` (e.g. ``"resnet50"``).
        encoder: the timm encoder whose ``state_dict()`` the prior extractor loads.
        mean, std: the per-channel RGB statistics the encoder normalises ``[0, 1]`` images
            with (``None``: timm's ``pretrained_cfg``).
    """

    architecture: str
    encoder: nn.Module
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None


@runtime_checkable
class PriorEncoderSource(Protocol):
    """An object that can provide QGNet's prior extractor (e.g. a ``GlobalLocalMoCo``).

    Example:
        >>> class MySSL(nn.Module):
        ...     def prior_encoder_spec(self) -> PriorEncoderSpec:
        ...         return PriorEncoderSpec("resnet50", self.encoder)
        >>> model = QGNet(prior_backbone=MySSL())  # doctest: +SKIP
    """

    def prior_encoder_spec(self) -> PriorEncoderSpec:
        """The encoder (and its architecture and input statistics) to freeze as prior extractor."""
        ...
