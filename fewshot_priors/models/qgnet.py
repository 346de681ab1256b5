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
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fewshot_priors.models.backbone import FrozenBackbone, create_backbone
from fewshot_priors.models.fem import FEMDecoder
from fewshot_priors.ops._checks import (
    IGNORE_INDEX,
    check_float,
    check_same,
    checks_enabled,
    clean_mask,
)
from fewshot_priors.ops.pooling import masked_average_pool, resize_mask
from fewshot_priors.ops.region_maps import guided_region_map, prior_region_map
from fewshot_priors.ops.similarity import BACKENDS

__all__ = ["FrozenModule", "QGNet"]

#: Largest absolute value accepted in an input image. ImageNet-normalised pixels lie
#: in about [-2.2, 2.7]; raw 0-255 pixels (a silent wrong answer otherwise) exceed it.
MAX_NORMALISED_ABS = 10.0


class FrozenModule(nn.Module):
    """Freeze an arbitrary feature extractor used as prior extractor.

    The wrapped module maps ``B, 3, H, W`` images to ``B, C, h, w`` features (or a
    list/tuple of feature maps, of which the last is used). It gets no gradient and
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
    """timm name of a timm model, or of the ``encoder`` of a GlobalLocalMoCo-like wrapper."""
    module = getattr(module, "module", module)  # DDP
    name = getattr(module, "backbone_name", None)
    if isinstance(name, str) and isinstance(getattr(module, "encoder", None), nn.Module):
        return name
    cfg = getattr(module, "pretrained_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str) and hasattr(module, "forward_features"):
        return cfg["architecture"]
    return None


def _mid_head(in_channels: int, channels: int) -> nn.Sequential:
    """concat(low, mid) -> 1x1 conv (no bias) -> ReLU -> Dropout2d(0.5)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=0.5),
    )


def _down(in_channels: int, channels: int) -> nn.Sequential:
    """High-level projection before the prior map: 3x3 conv -> ReLU -> Dropout2d(0.5)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=0.5),
    )


class QGNet(nn.Module):
    """QGNet (Fig. 2): guided + prior region maps, category guider, FEM decoder.

    Args:
        backbone: timm model name of the frozen supervised backbone (``"resnet50"``,
            ``"vgg16_bn"``, ...) or a ready :class:`FrozenBackbone`.
        prior_backbone: the frozen prior extractor. ``None``: the same timm
            architecture as ``backbone``, random init unless ``prior_weights`` (a
            local checkpoint, e.g. the self-supervised encoder's export); a timm
            name; a :class:`FrozenBackbone` (its high stage is used); a timm model
            or a :class:`~fewshot_priors.models.moco.GlobalLocalMoCo` (a frozen copy
            of its momentum encoder, as the official QGNet, is built as a dilated
            FrozenBackbone; pass ``moco.encoder`` for the query encoder); or any other
            ``nn.Module`` mapping images to ``B, C, h, w`` features (frozen here).
        shots: the default number of shots K (any K is accepted at run time).
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
        region_map_backend: backend of the region-map ops (``"auto"``, ``"chunked"``,
            ``"reference"``, ``"fused"``).
        output_stride: backbone output stride (8).
    """

    def __init__(
        self,
        backbone: str | FrozenBackbone = "resnet50",
        prior_backbone: str | nn.Module | None = None,
        shots: int = 1,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        prior_weights: str | os.PathLike | None = None,
        use_prior: bool = True,
        bins: Sequence[int | float] = (60, 30, 15, 8),
        channels: int = 256,
        aux_weight: float = 1.0,
        fg_weight: float = 1.0,
        region_map_backend: str = "auto",
        output_stride: int = 8,
    ):
        super().__init__()
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
            raise ValueError(f"`shots` must be a positive int, got {shots!r}")
        if region_map_backend not in BACKENDS:
            raise ValueError(f"`region_map_backend` must be one of {BACKENDS}, got {region_map_backend!r}")
        if float(aux_weight) < 0:
            raise ValueError(f"`aux_weight` must be >= 0, got {aux_weight!r}")
        self.shots = shots
        self.use_prior = bool(use_prior)
        self.aux_weight = float(aux_weight)
        if isinstance(fg_weight, bool) or not float(fg_weight) > 0 or not math.isfinite(float(fg_weight)):
            raise ValueError(f"`fg_weight` must be a finite number > 0, got {fg_weight!r}")
        self.fg_weight = float(fg_weight)
        self.region_map_backend = region_map_backend

        if isinstance(backbone, FrozenBackbone):
            if pretrained or weights is not None:
                raise ValueError("`pretrained` / `weights` apply to a backbone given by name, not to a module")
            self.backbone = backbone
        elif isinstance(backbone, str):
            self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights,
                                            output_stride=output_stride)
        else:
            raise TypeError(f"`backbone` must be a timm model name or a FrozenBackbone, got {type(backbone).__name__}")
        low_c, mid_c, high_c = self.backbone.channels

        self.prior_extractor: nn.Module | None = None
        if self.use_prior:
            self.prior_extractor = self._build_prior(prior_backbone, prior_weights, output_stride)
            prior_c = self._prior_channels()
            self.down_bridge = _down(high_c, channels)
            self.down_prior = _down(prior_c, channels)
        elif prior_backbone is not None or prior_weights is not None:
            raise ValueError("`prior_backbone` / `prior_weights` given with use_prior=False")

        self.query_head = _mid_head(low_c + mid_c, channels)
        self.support_head = _mid_head(low_c + mid_c, channels)
        self.decoder = FEMDecoder(channels=channels, n_maps=2 if self.use_prior else 1, bins=bins, num_classes=2)

    # ------------------------------------------------------------------ construction
    def _build_prior(self, prior_backbone, prior_weights, output_stride) -> nn.Module:
        if prior_backbone is None or isinstance(prior_backbone, str):
            name = prior_backbone if prior_backbone is not None else self.backbone.name
            return create_backbone(name, weights=prior_weights, output_stride=output_stride)
        if prior_weights is not None:
            raise ValueError("`prior_weights` applies to a prior extractor given by name; load it into the module")
        if isinstance(prior_backbone, FrozenBackbone):
            return prior_backbone
        if isinstance(prior_backbone, nn.Module):
            arch = _timm_architecture(prior_backbone)
            if arch is not None:  # a (self-supervised) timm encoder: a frozen, dilated copy of it
                wrapped = getattr(prior_backbone, "module", prior_backbone)
                picker = getattr(wrapped, "prior_encoder", None)  # GlobalLocalMoCo: the momentum encoder
                encoder = picker() if callable(picker) else getattr(wrapped, "encoder", prior_backbone)
                return create_backbone(arch, weights=encoder.state_dict(), output_stride=output_stride)
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

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive gradients (heads, down projections, decoder)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _check_normalised(name: str, images: torch.Tensor) -> None:
        """Reject raw 0-255 pixels and NaN/inf: ImageNet-normalised images lie in about [-2.2, 2.7]."""
        if images.numel() == 0:
            return
        peak = float(images.detach().abs().amax())
        if not peak <= MAX_NORMALISED_ABS:
            what = "non-finite values" if peak != peak or peak == float("inf") else f"max |value| {peak:.4g}"
            raise ValueError(
                f"`{name}` must hold normalised images (ImageNet mean/std: values within about "
                f"[-2.2, 2.7]), got {what}; convert raw pixels with (x / 255 - mean) / std, "
                "e.g. fewshot_priors.data.transforms.normalize_image"
            )

    def _check_dtype_device(self, name: str, images: torch.Tensor) -> None:
        """Images must match the trainable parameters' dtype (unless autocast casts them) and device."""
        param = next((p for p in self.parameters() if p.is_floating_point()), None)
        if param is None:
            return
        if images.device != param.device:
            raise ValueError(
                f"`{name}` is on {images.device} but the model is on {param.device}; "
                f"move the inputs with `.to({str(param.device)!r})` (or the model with `.to(...)`)"
            )
        if images.dtype != param.dtype and not torch.is_autocast_enabled(images.device.type):
            hint = (
                "on CPU use float32, or bfloat16 for mixed precision (`model.to(torch.bfloat16)` or "
                "`torch.autocast('cpu', dtype=torch.bfloat16)`)"
                if images.device.type == "cpu"
                else "use `torch.autocast` for mixed precision"
            )
            raise TypeError(
                f"`{name}` has dtype {images.dtype} but the model's parameters are {param.dtype}; pass "
                f"{param.dtype} images or convert the model with `.to(dtype)`; {hint}"
            )

    @staticmethod
    def _warn_ignore_only_masks(masks: torch.Tensor) -> None:
        """Warn about support masks with no foreground but some 255: most likely a 0/255
        binary image, whose 255 means "ignore" here (so the shot would be silently empty)."""
        if masks.dtype == torch.bool or masks.numel() == 0:
            return
        flat = masks.flatten(2)
        no_fg = ~((flat > 0) & (flat != IGNORE_INDEX)).any(dim=-1)
        ignore = (flat == IGNORE_INDEX).any(dim=-1)
        bad = (no_fg & ignore).nonzero().tolist()
        if bad:
            warnings.warn(
                f"`support_masks` (batch, shot) {[tuple(i) for i in bad[:5]]} have no foreground pixel but "
                "contain 255, which means 'ignore' (treated as background): these shots are empty. Either "
                "the object was cropped out or shrunk away by the augmentation / resize (the 255 is then "
                "padding or boundary; the datasets' eligibility rules avoid most such episodes), or your "
                "masks are 0/255 binary images: then pass `mask / 255` or `mask > 127`.",
                stacklevel=4,
            )

    def _check_inputs(self, query_image, support_images, support_masks, query_mask):
        """Shape / dtype / device checks (always) and value checks (unless
        :func:`~fewshot_priors.ops.set_checks` turned them off: they synchronise with the GPU)."""
        cls = type(self)
        value_checks = checks_enabled()
        check_float("query_image", query_image)
        if query_image.dim() != 4 or query_image.shape[1] != 3:
            raise ValueError(f"`query_image` must have shape B, 3, H, W, got {tuple(query_image.shape)}")
        check_float("support_images", support_images)
        b = query_image.shape[0]
        if support_images.dim() == 4:
            support_images = support_images.unsqueeze(1)
        if support_images.dim() != 5 or support_images.shape[2] != 3:
            raise ValueError(
                "`support_images` must have shape B, K, 3, H, W (or B, 3, H, W for 1 shot), "
                f"got {tuple(support_images.shape)}"
            )
        check_same("batch size", "query_image", b, "support_images", support_images.shape[0])
        k = support_images.shape[1]
        if k < 1:
            raise ValueError("`support_images` must hold at least one shot (K >= 1)")
        for name, t in (("query_image", query_image), ("support_images", support_images)):
            if t.shape[-1] == 0 or t.shape[-2] == 0:
                raise ValueError(f"`{name}` must have a non-zero spatial size H, W, got {tuple(t.shape)}")
        if support_images.dtype != query_image.dtype:
            raise TypeError(
                f"`support_images` has dtype {support_images.dtype} but `query_image` has {query_image.dtype}; "
                "pass both in the model's dtype"
            )
        self._check_dtype_device("query_image", query_image)
        self._check_dtype_device("support_images", support_images)
        if value_checks:
            cls._check_normalised("query_image", query_image)
            cls._check_normalised("support_images", support_images)
        if not isinstance(support_masks, torch.Tensor):
            raise TypeError(f"`support_masks` must be a torch.Tensor, got {type(support_masks).__name__}")
        m = support_masks
        if m.dim() == 5 and m.shape[2] == 1:
            m = m.squeeze(2)
        if m.dim() == 3:
            m = m.unsqueeze(1)
        if m.dim() != 4 or (m.shape[1] != k and not (k == 1 and m.shape[1] == 1)):
            raise ValueError(
                f"`support_masks` must have shape B, K, H, W with K={k} (or B, H, W / B, 1, H, W for 1 shot), "
                f"got {tuple(support_masks.shape)}"
            )
        check_same("batch size", "query_image", b, "support_masks", m.shape[0])
        if tuple(m.shape[-2:]) != tuple(support_images.shape[-2:]):
            raise ValueError(
                f"`support_masks` spatial size {tuple(m.shape[-2:])} must match `support_images` "
                f"{tuple(support_images.shape[-2:])}"
            )
        raw = m
        m = clean_mask("support_masks", m).to(device=support_images.device, dtype=support_images.dtype)
        if value_checks:
            cls._warn_ignore_only_masks(raw)
        if query_mask is not None:
            if not isinstance(query_mask, torch.Tensor):
                raise TypeError(f"`query_mask` must be a torch.Tensor, got {type(query_mask).__name__}")
            qm = query_mask.squeeze(1) if query_mask.dim() == 4 and query_mask.shape[1] == 1 else query_mask
            if qm.dim() != 3 or qm.shape[0] != b or tuple(qm.shape[-2:]) != tuple(query_image.shape[-2:]):
                raise ValueError(
                    f"`query_mask` must have shape B, H, W = {(b, *query_image.shape[-2:])} "
                    f"(or B, 1, H, W), got {tuple(query_mask.shape)}"
                )
            if query_mask.dtype == torch.bool or query_mask.is_complex():
                raise TypeError(
                    f"`query_mask` must hold integer labels 0, 1 and 255 (ignore), got dtype {query_mask.dtype}"
                )
            if value_checks and qm.is_floating_point() and not bool((qm == qm.round()).all()):
                raise ValueError("`query_mask` must hold integer labels 0, 1 (and 255 = ignore)")
            qm = qm.long()
            if value_checks:
                bad = ~((qm == 0) | (qm == 1) | (qm == IGNORE_INDEX))
                if bool(bad.any()):
                    raise ValueError(
                        f"`query_mask` must hold labels 0 (background), 1 (foreground) or 255 (ignore), "
                        f"found {qm[bad].unique()[:5].tolist()}"
                    )
                flat = qm.flatten(1)
                binary_image = (flat == IGNORE_INDEX).any(1) & (flat == 0).any(1) & ~(flat == 1).any(1)
                if bool(binary_image.any()):
                    warnings.warn(
                        f"`query_mask` items {binary_image.nonzero().flatten().tolist()[:5]} hold 0 and 255 but "
                        "no foreground pixel (1); 255 means 'ignore'. Either the object was cropped out or "
                        "shrunk away by the augmentation / resize (the 255 is then padding or boundary), "
                        "or it is a 0/255 binary image: then pass `mask // 255` (labels 0 / 1, 255 = ignore)",
                        stacklevel=3,
                    )
            query_mask = qm.to(query_image.device)
        return support_images, m, query_mask

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
    ) -> dict:
        """Segment the query given K annotated supports.

        Args:
            query_image: ``B, 3, H, W`` float query images, ImageNet-normalised
                (raw 0-255 pixels, i.e. ``|value| > 10``, or NaN/inf raise ``ValueError``).
            support_images: ``B, K, 3, H', W'`` (or ``B, 3, H', W'`` for one shot).
            support_masks: ``B, K, H', W'`` foreground masks in [0, 1] (255 = ignore,
                treated as background); ``B, H', W'`` or ``B, 1, H', W'`` for one shot.
            query_mask: optional ``B, H, W`` (or ``B, 1, H, W``) labels 0/1/255; when
                given the output holds the training ``loss``.

        Images must have the dtype and device of the model's parameters (``TypeError`` /
        ``ValueError`` naming the argument otherwise), except under ``torch.autocast``. The
        value checks (image range, mask values, 0/255 warnings) read tensor values, i.e.
        synchronise with the GPU; :func:`fewshot_priors.set_checks` /
        :func:`fewshot_priors.checks_disabled` turn them off. An empty batch (``B = 0``)
        gives empty outputs of the shapes below (and a zero ``loss``).

        Returns:
            dict with ``logits`` (``B, 2, H, W``, bilinear to the input size),
            ``aux_logits`` (list of ``B, 2, H, W``, one per FEM scale),
            ``guided_map`` and ``prior_map`` (``B, 1, h, w`` at the mid-level feature
            size; ``prior_map`` is ``None`` when ``use_prior=False``) and, with
            ``query_mask``, ``loss`` = CE(logits) + aux_weight * mean_i CE(aux_i)
            (ignore index 255).
        """
        support_images, masks, query_mask = self._check_inputs(
            query_image, support_images, support_masks, query_mask
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
        prototype = masked_average_pool(support_feat, s_mask)  # (b k), C
        prototype = rearrange(prototype, "(b k) c -> b k c", b=b, k=k).mean(dim=1)

        if self.use_prior:  # trainable projections run under the caller's autocast
            bridge = self.down_bridge(q_high)
            prior_feat = self.down_prior(self._prior_features(query_image))

        with self._region_maps_context(query_image.device):
            region_dtype = torch.float32 if q_high.dtype == torch.float16 else q_high.dtype
            s_high_k = rearrange(s_high, "(b k) c h w -> b k c h w", b=b, k=k).to(region_dtype)
            guided = guided_region_map(
                q_high.to(region_dtype), s_high_k, rearrange(s_mask, "(b k) 1 h w -> b k h w", b=b, k=k),
                backend=self.region_map_backend,
            )
            guided = F.interpolate(guided, size=feat_size, mode="bilinear", align_corners=True)
            maps = [guided]
            prior = None
            if self.use_prior:
                prior = prior_region_map(
                    bridge.to(region_dtype), prior_feat.to(region_dtype), backend=self.region_map_backend
                )
                prior = F.interpolate(prior, size=feat_size, mode="bilinear", align_corners=True)
                maps.append(prior)
            region_maps = torch.cat(maps, dim=1)

        logits, aux = self.decoder(
            query_feat, prototype.to(query_feat.dtype), region_maps.to(query_feat.dtype), size=size
        )
        out = {"logits": logits, "aux_logits": aux, "guided_map": guided, "prior_map": prior}
        if query_mask is not None:
            out["loss"] = self.loss(logits, aux, query_mask)
        return out

    def loss(self, logits: torch.Tensor, aux_logits: Sequence[torch.Tensor], query_mask: torch.Tensor) -> torch.Tensor:
        """CE(logits) + aux_weight * mean_i CE(aux_i), ignore index 255 (0 if all pixels are ignored).

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
        if not aux_logits or self.aux_weight == 0:
            return main
        aux = torch.stack([ce(a) for a in aux_logits])
        return main + self.aux_weight * aux.mean()

    @torch.no_grad()
    def predict(
        self, query_image: torch.Tensor, support_images: torch.Tensor, support_masks: torch.Tensor
    ) -> torch.Tensor:
        """``B, H, W`` long predictions (0 background, 1 foreground), computed in eval mode.

        The module's train/eval mode is restored afterwards.
        """
        was_training = self.training
        self.eval()
        try:
            logits = self.forward(query_image, support_images, support_masks)["logits"]
        finally:
            self.train(was_training)
        return logits.argmax(dim=1)
