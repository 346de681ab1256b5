"""QGNet: few-shot segmentation with a self-supervised prior region map (paper Fig. 2).

Data flow for a query image ``Q`` and K support images ``S_k`` with masks ``M_k``::

    backbone (frozen, supervised)          prior extractor (frozen, self-supervised)
    Q   -> low, mid, high                  Q -> high'
    S_k -> low, mid; high = f_high(mid*M)

    query feature  = head_q(cat(low, mid))            (1x1 -> 256, ReLU, Dropout2d .5)
    support feat.  = head_s(cat(low, mid))
    category guider = mean_k masked_average_pool(support feat., M_k)
    guided map     = guided_region_map(high_Q, high_S, M)           (PFENet's prior)
    prior map      = prior_region_map(down_b(high_Q), down_p(high'))  (eqs. 9-12)
    logits         = FEM(query feature, category guider, [guided, prior])

``down_b`` / ``down_p`` are 3x3 conv -> 256 + ReLU + Dropout2d(0.5). The prior map is
resized bilinearly to the mid-level size; it is *low* on objects (Sec. 4.3) and is
not inverted: the decoder learns its sign. ``use_prior=False`` is the PFENet
ablation (guided map only).

Images enter the model as RGB in ``[0, 1]``; each backbone normalises them with its own
``mean`` / ``std`` (from its weights or its timm ``pretrained_cfg``), so the supervised
backbone and the prior extractor may expect different statistics.

The model is composed from parts: ``backbone``, ``prior_extractor``, the region maps
(``region_maps``: by default ``"guided"``, :class:`~fewshot_priors.ops.GuidedRegionMap`, and
``"prior"``, :class:`~fewshot_priors.ops.PriorRegionMap`) and ``decoder``
(:class:`FEMDecoder`). The region maps are a list of modules that each declare what they
consume and how many channels they give (:mod:`fewshot_priors.models.region_maps`); add a
map, or replace one or the decoder, without subclassing. :func:`~fewshot_priors.models.create_qgnet` builds
a QGNet from the config's ``model`` section; :meth:`QGNet.save_pretrained` /
:meth:`QGNet.from_pretrained` share a trained model with its configuration.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fewshot_priors._validate import finite_number
from fewshot_priors.constants import DEFAULT_MAX_CHUNK_BYTES, IGNORE_INDEX
from fewshot_priors.models._pretrained import QGNET_FORMAT, PretrainedMixin
from fewshot_priors.models.backbone import FrozenBackbone, create_backbone
from fewshot_priors.models.checks import check_inputs as validate_inputs
from fewshot_priors.models.checks import resolve_check_inputs
from fewshot_priors.models.fem import FEMDecoder
from fewshot_priors.models.protocols import PriorEncoderSource
from fewshot_priors.models.qgnet_config import check_model_values, qgnet_kwargs
from fewshot_priors.models.region_maps import (
    PRIOR_INPUTS,
    SHIPPED,
    build_region_maps,
    check_region_map,
    region_map_entry,
)
from fewshot_priors.ops.modules import GuidedRegionMap
from fewshot_priors.ops.pooling import masked_average_pool, resize_mask

__all__ = ["FrozenModule", "QGNet", "soft_dice_loss"]


class FrozenModule(nn.Module):
    """Freeze an arbitrary feature extractor used as prior extractor.

    The wrapped module maps ``B, 3, H, W`` RGB images in ``[0, 1]`` to ``B, C, h, w``
    features (or a list/tuple of feature maps, of which the last is used); it normalises
    its input itself if it needs to. It gets no gradient and
    always runs in eval mode under ``torch.no_grad()``.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> FrozenModule:
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.module(x)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ValueError(
                "the prior extractor must map B, 3, H, W images to B, C, h, w features "
                f"(or a list of them), got {type(out).__name__} "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}"
            )
        return out


def _timm_architecture(module: nn.Module) -> str | None:
    """timm name of a timm model (timm's ``pretrained_cfg`` and ``forward_features``)."""
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str) and hasattr(module, "forward_features"):
        return cfg["architecture"]
    return None


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over the batch of ``1 - (2 |P T| + s) / (|P| + |T| + s)``: the soft Dice loss of the
    foreground probability ``P = softmax(logits)[:, 1]`` against ``T = (target == 1)``, over the
    pixels that are not ``IGNORE_INDEX`` (255).

    Args:
        logits: ``B, 2, H, W``.
        target: ``B, H, W`` labels 0 / 1 / 255.
        smooth: ``s``, keeps an image without foreground finite (its loss is then ``|P| / (|P| + s)``-like).

    Example:
        >>> t = torch.tensor([[[1, 0], [0, 255]]])
        >>> perfect = torch.tensor([[[[-9.0, 9.0], [9.0, 0.0]], [[9.0, -9.0], [-9.0, 0.0]]]])
        >>> round(float(soft_dice_loss(perfect, t)), 3)
        0.0
    """
    valid = (target != IGNORE_INDEX).to(logits.dtype)
    prob = logits.float().softmax(1)[:, 1] * valid
    truth = (target == 1).float()
    inter = (prob * truth).sum((1, 2))
    return (1 - (2 * inter + smooth) / (prob.sum((1, 2)) + truth.sum((1, 2)) + smooth)).mean()


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same keys and equal tensors."""
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k].to(a[k].device)) for k in a)


def _mid_head(in_channels: int, channels: int, dropout: float = 0.5) -> nn.Sequential:
    """concat(low, mid) -> 1x1 conv (no bias) -> ReLU -> Dropout2d(``dropout``, the paper's 0.5)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
    )


def _down(in_channels: int, channels: int, dropout: float = 0.5) -> nn.Sequential:
    """High-level projection before the prior map: 3x3 conv -> ReLU -> Dropout2d(``dropout``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
    )


class QGNet(PretrainedMixin, nn.Module):
    """QGNet (Fig. 2): guided + prior region maps, category guider, FEM decoder.

    Both region maps are computed outside autocast in float32 (or the features' dtype
    if wider); their outputs are resized bilinearly to the mid-level size. The
    region-map modules have no parameters, so the state-dict keys are the same whichever
    backend / chunk size / eps is chosen, or whichever parameter-free module replaces them.

    Args:
        backbone: timm model name of the frozen supervised backbone (``"resnet50"``,
            ``"vgg16_bn"``, ...) or a ready :class:`FrozenBackbone`.
        prior_backbone: the frozen prior extractor. ``None``: the same timm
            architecture as ``backbone``, random init unless ``prior_weights`` (a
            local checkpoint, e.g. the self-supervised encoder's export); a timm
            name; a :class:`FrozenBackbone` (its high stage is used); a timm model
            or a :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo` (a frozen copy
            of its momentum encoder, as the official QGNet, is built as a dilated
            FrozenBackbone; pass ``moco.encoder`` for the query encoder); or any other
            ``nn.Module`` mapping images to ``B, C, h, w`` features (frozen here).
        pretrained: load timm's pretrained weights into ``backbone`` (internet).
        weights: local checkpoint for ``backbone`` (see :func:`create_backbone`).
        prior_weights: local checkpoint for the prior extractor.
        use_prior: ``False`` builds the PFENet ablation: no prior extractor, the
            decoder sees only the guided map (``n_maps=1``).
        bins: FEM pyramid bins (ints = sizes, floats = fractions of the feature size).
        channels: width of the decoder (256).
        aux_weight: weight of the mean auxiliary (per-scale) loss.
        fg_weight: weight of the foreground class in the cross-entropy losses (1 = the
            paper's unweighted CE; > 1 counters a small foreground share, see
            ``docs/how-to/real-images.md``).
        dice_weight: weight of a soft Dice loss on the main prediction's foreground
            probability, added to the CE (0 = the paper's loss): it scores the overlap with
            the object whatever its size, so a small foreground cannot be ignored.
        dropout: Dropout2d probability after the query / support heads and the two prior
            projections (the paper's 0.5; less on tiny data lets the decoder learn faster).
        map_skip: initial gain of the default decoder's learnable skip from the first region map
            (the guided map) to the foreground logits (0: none, the paper; see
            :class:`~fewshot_priors.models.fem.FEMDecoder`). Not with a custom ``decoder``.
        mean, std: the per-channel RGB statistics the supervised backbone normalises its
            ``[0, 1]`` input with (default: its weights file's, else its timm
            ``pretrained_cfg``; see :func:`~fewshot_priors.models.backbone.input_normalisation`).
            Only for a backbone given by name.
        prior_mean, prior_std: the same for the prior extractor (default: its weights
            file's, e.g. the self-supervised export's, else its timm ``pretrained_cfg``; a
            GlobalLocalMoCo passed as ``prior_backbone`` brings its own).
        region_map_backend: backend of the region-map ops (``"auto"``, ``"chunked"``,
            ``"reference"``, ``"fused"``), checked by the region-map modules.
        output_stride: backbone output stride (8).
        max_chunk_bytes: memory budget of one similarity tile of the region-map ops
            (a positive int, default :data:`~fewshot_priors.ops.DEFAULT_MAX_CHUNK_BYTES`).
        eps: epsilon of the region maps' cosine and min-max normalisation.
        region_maps: the region maps, in the order the decoder sees them: a list of
            modules, registered names (``"guided"``, ``"prior"``, yours) or
            ``{"type": name, "name": key, "kwargs": {...}}`` entries, or a mapping key ->
            one of those (see :func:`~fewshot_priors.models.region_maps.build_region_maps`).
            Each module declares ``consumes`` (names of
            :data:`~fewshot_priors.models.region_maps.REGION_MAP_INPUTS`, passed to its
            ``forward`` in that order) and ``out_channels``; the shipped maps named here get
            ``region_map_backend`` / ``max_chunk_bytes`` / ``eps``. Default (``None``): the
            paper's ``["guided", "prior"]``, ``["guided"]`` with ``use_prior=False``. The
            maps consuming ``bridge`` / ``prior`` need ``use_prior=True``, and
            ``use_prior=True`` needs one of them.
        guided_map: replaces the default ``"guided"`` map of the default pair (not with
            ``region_maps``); without a ``consumes`` declaration it is called as
            ``guided_map(query, support, support_mask)`` and gives one channel.
        prior_map: replaces the default ``"prior"`` map (only with ``use_prior=True``, not
            with ``region_maps``); called as ``prior_map(bridge, prior)`` unless it declares
            otherwise.
        decoder: replaces the default ``FEMDecoder(channels, n_maps, bins)`` (``n_maps``:
            the sum of the maps' ``out_channels``). Called as
            ``decoder(query_feat, prototype, region_maps, size=(H, W))`` with
            ``query_feat`` ``B, channels, h, w``, ``prototype`` ``B, channels`` and
            ``region_maps`` ``B, n_maps, h, w`` (the maps' channels in order); returns
            ``(logits, aux_logits)``: ``B, 2, H, W`` and a list of ``B, 2, H, W``.
    """

    def __init__(
        self,
        backbone: str | FrozenBackbone = "resnet50",
        prior_backbone: str | nn.Module | None = None,
        *,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        prior_weights: str | os.PathLike | None = None,
        use_prior: bool = True,
        bins: Sequence[int | float] = (60, 30, 15, 8),
        channels: int = 256,
        aux_weight: float = 1.0,
        fg_weight: float = 1.0,
        dice_weight: float = 0.0,
        dropout: float = 0.5,
        map_skip: float = 0.0,
        region_map_backend: str = "auto",
        output_stride: int = 8,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        eps: float = 1e-7,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        prior_mean: Sequence[float] | None = None,
        prior_std: Sequence[float] | None = None,
        region_maps: Sequence | Mapping | None = None,
        guided_map: nn.Module | None = None,
        prior_map: nn.Module | None = None,
        decoder: nn.Module | None = None,
    ):
        super().__init__()
        if float(aux_weight) < 0:
            raise ValueError(f"`aux_weight` must be >= 0, got {aux_weight!r}")
        self.use_prior = bool(use_prior)
        self.aux_weight = float(aux_weight)
        self.fg_weight = finite_number("fg_weight", fg_weight, positive=True)
        self.dice_weight = finite_number("dice_weight", dice_weight)
        if isinstance(dropout, bool) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        for name, part in (("guided_map", guided_map), ("prior_map", prior_map), ("decoder", decoder)):
            if part is not None and not isinstance(part, nn.Module):
                raise TypeError(f"`{name}` must be an nn.Module (or None for the default), got {type(part).__name__}")
        if decoder is not None and map_skip:
            raise ValueError("`map_skip` configures the default FEMDecoder; a custom `decoder` adds its own skip")
        if prior_map is not None and not self.use_prior:
            raise ValueError("`prior_map` given with use_prior=False (the ablation has no prior map)")
        # the region maps first: the options are checked once (even when custom parts leave them
        # unused), and the shipped maps have no parameters, so building them draws no random numbers
        # before the backbone's init. The shipped maps' input checks are off: forward validates and
        # cleans the inputs once (models/checks.py) and passes them in canonical form.
        try:  # the checked options of the shipped maps
            self._map_options = GuidedRegionMap(region_map_backend, max_chunk_bytes, eps).get_config()
        except ValueError as exc:  # name QGNet's argument
            raise ValueError(str(exc).replace("`backend`", "`region_map_backend`")) from None
        maps = self._region_map_parts(region_maps, guided_map, prior_map)

        if isinstance(backbone, FrozenBackbone):
            if pretrained or weights is not None or mean is not None or std is not None:
                raise ValueError("`pretrained` / `weights` / `mean` / `std` apply to a backbone given by name, "
                                 "not to a module (build it with create_backbone(..., mean=, std=))")
            self.backbone = backbone
        elif isinstance(backbone, str):
            self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights,
                                            output_stride=output_stride, mean=mean, std=std)
        else:
            raise TypeError(f"`backbone` must be a timm model name or a FrozenBackbone, got {type(backbone).__name__}")
        low_c, mid_c, high_c = self.backbone.channels

        self.prior_extractor: nn.Module | None = None
        if self.use_prior:
            self.prior_extractor = self._build_prior(prior_backbone, prior_weights, output_stride,
                                                     prior_mean, prior_std)
            prior_c = self._prior_channels()
            self.down_bridge = _down(high_c, channels, self.dropout)
            self.down_prior = _down(prior_c, channels, self.dropout)
        elif any(v is not None for v in (prior_backbone, prior_weights, prior_mean, prior_std)):
            raise ValueError("`prior_backbone` / `prior_weights` / `prior_mean` / `prior_std` given with "
                             "use_prior=False (the ablation has no prior extractor)")

        self.query_head = _mid_head(low_c + mid_c, channels, self.dropout)
        self.support_head = _mid_head(low_c + mid_c, channels, self.dropout)
        n_maps = sum(channels_out for _, channels_out in self._map_io.values())
        self.decoder = (
            FEMDecoder(channels=channels, n_maps=n_maps, bins=bins, num_classes=2, map_skip=map_skip)
            if decoder is None else decoder
        )
        self.region_maps = nn.ModuleDict(maps)
        # decided now and after every weight load (never inside forward: a traced or exported forward
        # must not depend on the weights' values), see prior_shares_backbone
        self._prior_shares_backbone = self._same_frozen_weights()
        for part in (self, self.backbone, self.prior_extractor):
            if part is not None:
                part.register_load_state_dict_post_hook(self._refresh_sharing)
        self.config = self._describe(
            backbone=self.backbone.name, prior_backbone=prior_backbone, pretrained=bool(pretrained),
            weights=weights, prior_weights=prior_weights, bins=bins, channels=int(channels),
            output_stride=output_stride,
        )

    def _region_map_parts(self, region_maps, guided_map, prior_map) -> dict[str, nn.Module]:
        """``{key: module}`` of the region maps, with their declarations in ``self._map_io``."""
        slots = {"guided": guided_map, "prior": prior_map}
        if region_maps is not None and any(v is not None for v in slots.values()):
            raise ValueError("`guided_map` / `prior_map` replace a map of the default pair; with `region_maps` "
                             "put the modules in that list instead")
        if region_maps is None:
            region_maps = ["guided", "prior"] if self.use_prior else ["guided"]
            region_maps = {name: name if slots[name] is None else slots[name] for name in region_maps}
        maps = build_region_maps(region_maps, self._map_options)
        # a guided_map= / prior_map= module without a declaration is called as the shipped map it replaces
        self._map_io = {
            key: check_region_map(key, m, self.use_prior,
                                  (SHIPPED[key].consumes, SHIPPED[key].out_channels) if m is slots.get(key) else None)
            for key, m in maps.items()
        }
        if self.use_prior and not any(PRIOR_INPUTS & set(consumes) for consumes, _ in self._map_io.values()):
            raise ValueError("use_prior=True but no region map consumes 'bridge' / 'prior' (the prior "
                             "extractor would be unused): add the 'prior' map or pass use_prior=False")
        return maps

    @property
    def guided_map(self) -> nn.Module | None:
        """The ``"guided"`` region map (``None`` without one)."""
        return self.region_maps["guided"] if "guided" in self.region_maps else None  # noqa: SIM401 (a ModuleDict)

    @property
    def prior_map(self) -> nn.Module | None:
        """The ``"prior"`` region map (``None`` without one, e.g. with ``use_prior=False``)."""
        return self.region_maps["prior"] if "prior" in self.region_maps else None  # noqa: SIM401 (a ModuleDict)

    @property
    def region_map_backend(self) -> str | None:
        """Backend of the guided region map (``None`` for a custom one)."""
        return getattr(self.guided_map, "backend", None)

    def _describe(self, *, backbone, prior_backbone, pretrained, weights, prior_weights, bins, channels,
                  output_stride) -> dict | None:
        """The config ``model`` section that rebuilds this architecture, or ``None`` when a
        part is a custom module that a config cannot name (then :meth:`save_pretrained` refuses,
        saying why: ``self._config_problem``)."""
        self._config_problem = None
        try:
            entries = [region_map_entry(key, m, self._map_options) for key, m in self.region_maps.items()]
        except ValueError as exc:
            self._config_problem = str(exc)
            return None
        if type(self.decoder) is not FEMDecoder:
            return None
        if prior_backbone is not None and not isinstance(prior_backbone, str):
            if not isinstance(self.prior_extractor, FrozenBackbone):
                return None  # an arbitrary frozen module: not describable by a name
            prior_backbone = self.prior_extractor.name
            if self.prior_extractor.output_stride != self.backbone.output_stride:
                return None
        if self.backbone.output_stride != output_stride:
            output_stride = self.backbone.output_stride  # a FrozenBackbone passed in sets the stride
        prior = self.prior_extractor  # a FrozenBackbone here (any other module returned None above)
        prior_norm = {"prior_mean": list(prior.mean), "prior_std": list(prior.std)} if self.use_prior else {}
        return {
            "backbone": backbone,
            "prior_backbone": prior_backbone,
            "pretrained": pretrained,
            "weights": None if weights is None else str(weights),
            "prior_weights": None if prior_weights is None or not isinstance(prior_weights, (str, os.PathLike))
            else str(prior_weights),
            "use_prior": self.use_prior,
            "bins": list(self.decoder.bins),
            "channels": channels,
            "aux_weight": self.aux_weight,
            "fg_weight": self.fg_weight,
            "dice_weight": self.dice_weight,
            "dropout": self.dropout,
            "map_skip": self.decoder.map_skip,
            "output_stride": int(output_stride),
            "region_map_backend": self._map_options["backend"],
            "max_chunk_bytes": self._map_options["max_chunk_bytes"],
            "eps": self._map_options["eps"],
            "region_maps": None if entries == (["guided", "prior"] if self.use_prior else ["guided"]) else entries,
            "mean": list(self.backbone.mean),
            "std": list(self.backbone.std),
            **prior_norm,
        }

    PRETRAINED_FORMAT = QGNET_FORMAT

    def _pretrained_config(self) -> dict:
        if self.config is None:
            if self._config_problem is not None:
                raise ValueError("this QGNet cannot be saved with save_pretrained: it has a custom guided_map / "
                                 f"prior_map / region map a config cannot name: {self._config_problem}")
            raise ValueError(
                "this QGNet has a part a config cannot name (a custom decoder or an arbitrary prior-extractor "
                "module), so it cannot be saved with save_pretrained; save its state_dict() and rebuild it in "
                "code, or use the default parts"
            )
        return dict(self.config)

    @classmethod
    def _from_pretrained_config(cls, config: dict, overrides: dict) -> QGNet:
        # the same value rules as the config tree's `model` section (a hand-edited config.json)
        check_model_values(config)
        # the weights come from model.safetensors: never re-read weight files or download timm weights
        config.update(weights=None, prior_weights=None, pretrained=False)
        return cls(**qgnet_kwargs(config, **overrides))

    # ------------------------------------------------------------------ construction
    def _build_prior(self, prior_backbone, prior_weights, output_stride, mean, std) -> nn.Module:
        if prior_backbone is None or isinstance(prior_backbone, str):
            name = prior_backbone if prior_backbone is not None else self.backbone.name
            return create_backbone(name, weights=prior_weights, output_stride=output_stride, mean=mean, std=std)
        if prior_weights is not None:
            raise ValueError("`prior_weights` applies to a prior extractor given by name; load it into the module")
        source = getattr(prior_backbone, "module", prior_backbone)  # DDP
        arch = _timm_architecture(prior_backbone)
        if (mean is not None or std is not None) and not (arch or isinstance(source, PriorEncoderSource)):
            raise ValueError("`prior_mean` / `prior_std` apply to a prior extractor given by name or as a timm / "
                             "GlobalLocalMoCo encoder; a module normalises its input itself")
        if isinstance(prior_backbone, FrozenBackbone):
            return prior_backbone
        if isinstance(source, PriorEncoderSource):  # e.g. a GlobalLocalMoCo: its momentum encoder
            spec = source.prior_encoder_spec()
            arch, prior_backbone = spec.architecture, spec.encoder
            mean = mean if mean is not None else spec.mean
            std = std if std is not None else spec.std
        if isinstance(prior_backbone, nn.Module):
            if arch is not None:  # a (self-supervised) timm encoder: a frozen, dilated copy of it
                return create_backbone(arch, weights=prior_backbone.state_dict(), output_stride=output_stride,
                                       mean=mean, std=std)
            return FrozenModule(prior_backbone)
        raise TypeError(
            "`prior_backbone` must be None, a timm model name, a FrozenBackbone or an nn.Module, "
            f"got {type(prior_backbone).__name__}"
        )

    def _prior_channels(self) -> int:
        if isinstance(self.prior_extractor, FrozenBackbone):
            return self.prior_extractor.channels[2]
        param = next(self.prior_extractor.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        return int(self.prior_extractor(torch.zeros(1, 3, 64, 64, device=device, dtype=dtype)).shape[1])

    def _same_frozen_weights(self) -> bool:
        a, b = self.backbone, self.prior_extractor
        return bool(
            isinstance(b, FrozenBackbone) and a.frozen and b.frozen
            and (a.name, a.output_stride, a.mean, a.std, a.levels) == (b.name, b.output_stride, b.mean, b.std, b.levels)
            and _same_tensors(a.state_dict(), b.state_dict()))

    def _refresh_sharing(self, module: nn.Module, incompatible_keys) -> None:
        self._prior_shares_backbone = self._same_frozen_weights()

    @property
    def prior_shares_backbone(self) -> bool:
        """Whether the prior extractor is the supervised backbone again (the same architecture,
        output stride, input statistics and weights, e.g. both from one ImageNet file): then the
        query's high-level features serve both, and the prior extractor never runs (the same
        numbers, one backbone pass fewer per step). Decided when the model is built and again after
        weights are loaded into it or either part with ``load_state_dict`` (weights changed in place
        otherwise are not seen)."""
        return self._prior_shares_backbone

    @contextlib.contextmanager
    def feature_memo(self) -> Iterator[list]:
        """Within this context the frozen backbones compute each distinct input once (see
        :meth:`FrozenBackbone.feature_memo`): for evaluating many episodes over few photos.
        Yields the backbones' :class:`~fewshot_priors.models.feature_cache.FeatureMemo` objects.

        Example:
            >>> model = QGNet("resnet18", channels=32, bins=(8, 4))
            >>> q, s, m = torch.rand(1, 3, 64, 64), torch.rand(1, 1, 3, 64, 64), torch.ones(1, 1, 64, 64)
            >>> with model.feature_memo():
            ...     a = model.predict(q, s, m)
            ...     b = model.predict(q, s, m)  # the frozen features are remembered
            >>> bool(a.equal(b))
            True
        """
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(part.feature_memo()) for part in (self.backbone, self.prior_extractor)
                   if isinstance(part, FrozenBackbone)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive gradients (heads, down projections, decoder)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward
    def _features(self, image: torch.Tensor, mask: torch.Tensor | None = None):
        """``(low, mid, high)`` of the backbone; with ``mask`` (``N, 1, H, W``) the high
        stage runs on ``mid x mask`` (PFENet's support layer4). Backbones that cannot
        be split run whole on the image instead (the region-map op masks them)."""
        if not self.backbone.can_split:
            return self.backbone(image)
        low, mid = self.backbone.forward_low_mid(image)
        if mask is None:
            return low, mid, self.backbone.forward_high(mid)
        m = resize_mask(mask, tuple(mid.shape[-2:])).to(mid.dtype)
        return low, mid, self.backbone.forward_high(mid * m)

    def _prior_features(self, image: torch.Tensor) -> torch.Tensor:
        if isinstance(self.prior_extractor, FrozenBackbone):
            return self.prior_extractor(image)[2]
        return self.prior_extractor(image)

    def _region_maps_context(self, device: torch.device):
        # region maps are computed outside autocast: float16 norms of 2048-d features overflow
        return torch.autocast(device_type=device.type, enabled=False)

    def forward(
        self,
        query_image: torch.Tensor,
        support_images: torch.Tensor,
        support_masks: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        *,
        check_inputs: bool | None = None,
    ) -> dict:
        """Segment the query given K annotated supports.

        Args:
            query_image: ``B, 3, H, W`` float RGB query images in ``[0, 1]``; each backbone
                normalises them with its own mean/std (values outside ``[0, 1]``, e.g.
                raw 0-255 pixels or already-normalised images, and NaN/inf raise ``ValueError``).
            support_images: ``B, K, 3, H', W'`` (or ``B, 3, H', W'`` for one shot).
            support_masks: ``B, K, H', W'`` foreground masks in [0, 1] (255 = ignore,
                treated as background); ``B, H', W'`` or ``B, 1, H', W'`` for one shot.
            query_mask: optional ``B, H, W`` (or ``B, 1, H, W``) labels 0/1/255; when
                given the output holds the training ``loss``.

        Images must have the dtype and device of the model's parameters (``TypeError`` /
        ``ValueError`` naming the argument otherwise), except under ``torch.autocast``. The
        value checks (image range, mask values, 0/255 warnings) read tensor values, i.e.
        synchronise with the GPU; ``check_inputs=False`` turns them off for this call,
        :func:`fewshot_priors.set_checks` / :func:`fewshot_priors.checks_disabled` in the current
        thread or task (``check_inputs=None``, the default, follows that switch; ``True`` forces them
        on). Shape / dtype / device checks always run. An empty batch (``B = 0``)
        gives empty outputs of the shapes below (and a zero ``loss``).

        Returns:
            dict with ``logits`` (``B, 2, H, W``, bilinear to the input size),
            ``aux_logits`` (list of ``B, 2, H, W``, one per FEM scale),
            ``<key>_map`` for every region map (``B, M, h, w`` at the mid-level feature
            size): ``guided_map`` and ``prior_map`` by default (each ``None`` without
            that map, e.g. ``prior_map`` with ``use_prior=False``) and, with
            ``query_mask``, ``loss`` = CE(logits) + aux_weight * mean_i CE(aux_i)
            (ignore index 255).
        """
        # the support masks come back cleaned (255 -> 0) once: the ops below do not clean them again
        support_images, masks, query_mask = validate_inputs(
            self, query_image, support_images, support_masks, query_mask,
            value_checks=resolve_check_inputs(check_inputs),
        )
        b, k = support_images.shape[:2]
        size = tuple(query_image.shape[-2:])

        # query: mid-level feature for the decoder, high-level for the region maps
        q_low, q_mid, q_high = self._features(query_image)
        query_feat = self.query_head(torch.cat([q_low, q_mid], dim=1))
        feat_size = tuple(query_feat.shape[-2:])

        # supports (all K shots as one batch): masked high features and prototypes
        s_img = rearrange(support_images, "b k c h w -> (b k) c h w")
        s_mask = rearrange(masks, "b k h w -> (b k) 1 h w")
        s_low, s_mid, s_high = self._features(s_img, s_mask)
        support_feat = self.support_head(torch.cat([s_low, s_mid], dim=1))
        prototype = masked_average_pool(support_feat, s_mask, check=False)  # (b k), C; s_mask already clean
        prototype = rearrange(prototype, "(b k) c -> b k c", b=b, k=k).mean(dim=1)

        if self.use_prior:  # trainable projections run under the caller's autocast
            bridge = self.down_bridge(q_high)
            prior_high = q_high if self.prior_shares_backbone else self._prior_features(query_image)
            prior_feat = self.down_prior(prior_high)

        with self._region_maps_context(query_image.device):
            region_dtype = torch.float32 if q_high.dtype == torch.float16 else q_high.dtype
            inputs = {  # REGION_MAP_INPUTS, made when a map consumes them
                "query": lambda: q_high.to(region_dtype),
                "support": lambda: rearrange(s_high, "(b k) c h w -> b k c h w", b=b, k=k).to(region_dtype),
                "support_mask": lambda: masks,
                "bridge": lambda: bridge.to(region_dtype),
                "prior": lambda: prior_feat.to(region_dtype),
                "query_feat": lambda: query_feat.to(region_dtype),
                "prototype": lambda: prototype.to(region_dtype),
            }
            maps = self._run_region_maps(inputs, b, feat_size)
            region_maps = torch.cat(list(maps.values()), dim=1)

        logits, aux = self.decoder(
            query_feat, prototype.to(query_feat.dtype), region_maps.to(query_feat.dtype), size=size
        )
        out = {"logits": logits, "aux_logits": aux, "guided_map": None, "prior_map": None,
               **{f"{key}_map": m for key, m in maps.items()}}
        if query_mask is not None:
            out["loss"] = self.loss(logits, aux, query_mask)
        return out

    def _run_region_maps(self, inputs: dict, batch: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Every region map on the inputs it consumes, resized to ``size``: ``{key: B, M, h, w}``."""
        made: dict[str, torch.Tensor] = {}
        maps = {}
        for key, module in self.region_maps.items():
            consumes, channels = self._map_io[key]
            for name in consumes:
                if name not in made:
                    made[name] = inputs[name]()
            out = module(*(made[name] for name in consumes))
            if not isinstance(out, torch.Tensor) or out.dim() != 4 or tuple(out.shape[:2]) != (batch, channels):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"region map {key!r} must return a B, {channels}, h, w tensor (B = {batch}, "
                                 f"its out_channels), got {got}")
            maps[key] = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
        return maps

    def loss(self, logits: torch.Tensor, aux_logits: Sequence[torch.Tensor], query_mask: torch.Tensor) -> torch.Tensor:
        """CE(logits) + aux_weight * mean_i CE(aux_i), ignore index 255 (0 if all pixels are ignored),
        plus ``dice_weight`` x :func:`soft_dice_loss` (logits) when set.

        Each CE is the (class-weighted, weights ``(1, fg_weight)``) mean over the non-ignored
        pixels, computed as sum / total weight so that the all-ignored case (and an empty
        batch) needs no host-device sync to give 0.
        """
        weight = None
        if self.fg_weight == 1.0:
            total = (query_mask != IGNORE_INDEX).sum().clamp(min=1)
        else:
            weight = torch.tensor([1.0, self.fg_weight], device=logits.device)
            total = (query_mask == 0).sum() + self.fg_weight * (query_mask == 1).sum()
            total = total.clamp(min=torch.finfo(torch.float32).tiny)  # 0 / tiny = 0 when all are ignored

        def ce(x: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(x.float(), query_mask, weight=weight, ignore_index=IGNORE_INDEX,
                                   reduction="sum") / total

        main = ce(logits)
        if self.dice_weight:
            main = main + self.dice_weight * soft_dice_loss(logits, query_mask)
        if not aux_logits or self.aux_weight == 0:
            return main
        aux = torch.stack([ce(a) for a in aux_logits])
        return main + self.aux_weight * aux.mean()

    @torch.no_grad()
    def predict(
        self,
        query_image: torch.Tensor,
        support_images: torch.Tensor,
        support_masks: torch.Tensor,
        *,
        check_inputs: bool | None = None,
    ) -> torch.Tensor:
        """``B, H, W`` long predictions (0 background, 1 foreground), computed in eval mode.

        The module's train/eval mode is restored afterwards.

        Args:
            query_image: ``B, 3, H, W`` RGB in ``[0, 1]``.
            support_images: ``B, K, 3, H', W'`` RGB in ``[0, 1]``.
            support_masks: ``B, K, H', W'`` with 0 / 1 (255 = ignore).
            check_inputs: as :meth:`forward`.

        Returns:
            ``B, H, W`` long: the argmax of the logits.
        """
        was_training = self.training
        self.eval()
        try:
            logits = self.forward(query_image, support_images, support_masks, check_inputs=check_inputs)["logits"]
        finally:
            self.train(was_training)
        return logits.argmax(dim=1)
