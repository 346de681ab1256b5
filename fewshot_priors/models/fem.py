"""FEM decoder: PFENet's Feature Enrichment Module (as in the official PFENet code).

Per pyramid scale (bin), the query feature is adaptive-average-pooled to the bin,
concatenated with the expanded support prototype and the region maps resized to
the bin, merged by a 1x1 conv; from the second scale on the previous scale's
output (resized to this bin) is mixed in residually (``alpha``); two 3x3 convs
refine it residually (``beta``); an inner classifier gives the scale's auxiliary
logits. The scales are upsampled to the feature size, concatenated, merged
(``res1``), refined (``res2``, residual) and classified (``cls``).

Only the final 1x1 classifier convs have biases, as in PFENet. With 256 channels,
one region map (``n_maps=1``), four bins and two classes the module has exactly
10,030,602 parameters: PFENet's ``init_merge``, ``alpha_conv``, ``beta_conv``,
``inner_cls``, ``res1``, ``res2`` and ``cls`` (its ``down_query`` / ``down_supp``
1x1 convs are *not* part of the decoder; QGNet's mid-level heads play that role).

``map_skip > 0`` (not in the paper; 0 by default) adds a learnable skip from the first
region map to the foreground logits (main and auxiliary): ``fg += g * (map - 0.5)``, ``g``
initialised at ``map_skip``. The decoder then starts from the map's answer (foreground where
the min-max normalised map is above 0.5) and learns a correction to it, instead of starting
from a constant answer it leaves only once its random convs have learned to read the map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from fewshot_priors.ops.checks import check_float, check_rank, check_same

from .._validate import finite_number, is_int

__all__ = ["FEMDecoder"]

Bin = int | float


def _conv3x3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)


def _refine(channels: int) -> nn.Sequential:
    """Two 3x3 conv + ReLU (PFENet's ``beta_conv`` / ``res2``)."""
    return nn.Sequential(_conv3x3(channels), nn.ReLU(inplace=True), _conv3x3(channels), nn.ReLU(inplace=True))


def _classifier(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """3x3 conv, ReLU, Dropout2d, 1x1 conv with bias (PFENet's ``inner_cls`` / ``cls``)."""
    return nn.Sequential(
        _conv3x3(channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(channels, num_classes, kernel_size=1),
    )


def _check_bins(bins: object) -> tuple[Bin, ...]:
    if isinstance(bins, (int, float)) or not isinstance(bins, Sequence) or len(bins) == 0:
        raise ValueError(f"`bins` must be a non-empty sequence of ints or fractions, got {bins!r}")
    out: list[Bin] = []
    for b in bins:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f"`bins` entries must be int (absolute size) or float (fraction), got {b!r}")
        if isinstance(b, int) and b < 1:
            raise ValueError(f"`bins` int entries are absolute sizes and must be >= 1, got {b}")
        if isinstance(b, float) and not 0.0 < b <= 1.0:
            raise ValueError(f"`bins` float entries are fractions of the feature size in (0, 1], got {b}")
        out.append(b)
    return tuple(out)


def _check_size(size: object) -> tuple[int, int]:
    if torch.jit.is_tracing() and isinstance(size, Sequence):  # a traced shape holds 0-dim tensors
        size = tuple(int(v) if isinstance(v, torch.Tensor) and v.dim() == 0 else v for v in size)
    if (isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2
            or not all(is_int(v) and v >= 1 for v in size)):
        raise ValueError(f"`size` must be a pair of positive ints (H, W), got {size!r}")
    return int(size[0]), int(size[1])


class FEMDecoder(nn.Module):
    """PFENet's Feature Enrichment Module with ``n_maps`` region maps.

    Args:
        channels: feature channels of the query feature and the prototype (256).
        n_maps: number of region maps concatenated at every scale (QGNet: 2, the
            guided and the prior map; PFENet: 1).
        bins: pyramid sizes, largest first. ``int`` entries are absolute sizes (PASCAL
            at 473: ``(60, 30, 15, 8)``); ``float`` entries in ``(0, 1]`` are fractions
            of the feature size (COCO at 641: ``(1.0, 0.5, 0.25, 0.125)``). Note: PFENet
            reads any bin ``<= 1`` as a fraction, so its integer ``1`` is the full
            feature size; here ``1`` is ``1 x 1`` and the full size is ``1.0``
            (:func:`fewshot_priors.models.convert.pfenet_bins` translates PFENet's
            ``ppm_scales``).
        num_classes: output classes (2: background / foreground).
        dropout: Dropout2d probability inside the classifiers (0.1).
        map_skip: initial gain of a learnable skip from the first region map (QGNet's guided
            map) to the foreground logits, ``fg += gain * (map - 0.5)`` (0: no skip, the
            paper; > 0 adds the parameter ``map_gain``; needs ``num_classes=2``).

    Example:
        >>> fem = FEMDecoder(channels=8, n_maps=2, bins=(4, 2), map_skip=4.0)
        >>> logits, aux = fem(torch.rand(1, 8, 6, 6), torch.rand(1, 8), torch.rand(1, 2, 6, 6))
        >>> tuple(logits.shape), len(aux), fem.map_gain.item()
        ((1, 2, 6, 6), 2, 4.0)
    """

    def __init__(
        self,
        channels: int = 256,
        n_maps: int = 2,
        bins: Sequence[Bin] = (60, 30, 15, 8),
        num_classes: int = 2,
        dropout: float = 0.1,
        map_skip: float = 0.0,
    ):
        super().__init__()
        for arg, value in (("channels", channels), ("n_maps", n_maps), ("num_classes", num_classes)):
            if not is_int(value) or value < 1:
                raise ValueError(f"`{arg}` must be a positive int, got {value!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        map_skip = finite_number("map_skip", map_skip, note=" (0: no skip)")
        if map_skip and num_classes != 2:
            raise ValueError(f"`map_skip` adds to the foreground logit: it needs num_classes=2, got {num_classes}")
        self.channels = channels
        self.n_maps = n_maps
        self.bins = _check_bins(bins)
        self.num_classes = num_classes
        c = channels
        n = len(self.bins)
        self.init_merge = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * c + n_maps, c, kernel_size=1, bias=False), nn.ReLU(inplace=True))
            for _ in range(n)
        )
        self.alpha_conv = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * c, c, kernel_size=1, bias=False), nn.ReLU(inplace=True))
            for _ in range(n - 1)
        )
        self.beta_conv = nn.ModuleList(_refine(c) for _ in range(n))
        self.inner_cls = nn.ModuleList(_classifier(c, num_classes, dropout) for _ in range(n))
        self.res1 = nn.Sequential(nn.Conv2d(n * c, c, kernel_size=1, bias=False), nn.ReLU(inplace=True))
        self.res2 = _refine(c)
        self.cls = _classifier(c, num_classes, dropout)
        self.map_skip = map_skip
        if self.map_skip:
            self.map_gain = nn.Parameter(torch.tensor(self.map_skip))

    def extra_repr(self) -> str:
        skip = f", map_skip={self.map_skip}" if self.map_skip else ""
        return (f"channels={self.channels}, n_maps={self.n_maps}, bins={self.bins}, "
                f"num_classes={self.num_classes}{skip}")

    def bin_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The pooled size of every scale for a ``height x width`` feature map."""
        sizes = []
        for b in self.bins:
            if isinstance(b, float):
                sizes.append((max(1, int(height * b)), max(1, int(width * b))))
            else:
                sizes.append((b, b))
        return sizes

    def _check(self, query_feat, prototype, region_maps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_float("query_feat", query_feat)
        check_float("prototype", prototype)
        check_float("region_maps", region_maps)
        check_rank("query_feat", query_feat, (4,), "B, C, H, W")
        check_rank("prototype", prototype, (2, 4), "B, C or B, C, 1, 1")
        check_rank("region_maps", region_maps, (4,), f"B, {self.n_maps}, h, w")
        b, c = query_feat.shape[:2]
        check_same("channel count", "query_feat", c, "FEMDecoder(channels)", self.channels)
        check_same("batch size", "query_feat", b, "prototype", prototype.shape[0])
        check_same("batch size", "query_feat", b, "region_maps", region_maps.shape[0])
        check_same("channel count", "query_feat", c, "prototype", prototype.shape[1])
        if prototype.dim() == 4:
            if prototype.shape[2:] != (1, 1):
                raise ValueError(f"`prototype` must have shape B, C or B, C, 1, 1, got {tuple(prototype.shape)}")
            prototype = prototype.flatten(1)
        check_same("region map count", "region_maps", region_maps.shape[1], "FEMDecoder(n_maps)", self.n_maps)
        return query_feat, prototype, region_maps

    def forward(
        self,
        query_feat: torch.Tensor,
        prototype: torch.Tensor,
        region_maps: torch.Tensor,
        size: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the query.

        Args:
            query_feat: ``B, C, H, W`` query (bridge) features.
            prototype: ``B, C`` or ``B, C, 1, 1`` support prototype (category guider).
            region_maps: ``B, n_maps, h, w`` region maps (any size; resized
                bilinearly to every bin). QGNet's order: ``[guided, prior]``.
            size: output ``(H_out, W_out)`` (e.g. the input image size); default
                the feature size ``H, W``. As in PFENet, the final logits are
                computed at the feature size and then resized, while every
                auxiliary map is resized from its bin straight to ``size`` (one
                bilinear resize, not two).

        Returns:
            ``(logits, aux_logits)``: ``B, num_classes, H_out, W_out`` final logits,
            and one ``B, num_classes, H_out, W_out`` auxiliary logit map per bin,
            largest bin first.
        """
        query_feat, prototype, region_maps = self._check(query_feat, prototype, region_maps)
        height, width = query_feat.shape[-2:]
        feat_size = (height, width)
        out_size = feat_size if size is None else _check_size(size)
        region_maps = region_maps.to(query_feat.dtype)
        prototype = prototype.to(query_feat.dtype)
        pyramid: list[torch.Tensor] = []
        aux: list[torch.Tensor] = []
        for idx, size in enumerate(self.bin_sizes(height, width)):
            q = F.adaptive_avg_pool2d(query_feat, size)
            s = repeat(prototype, "b c -> b c h w", h=size[0], w=size[1])
            maps = F.interpolate(region_maps, size=size, mode="bilinear", align_corners=True)
            merged = self.init_merge[idx](torch.cat([q, s, maps], dim=1))
            if idx >= 1:
                prev = F.interpolate(pyramid[idx - 1], size=size, mode="bilinear", align_corners=True)
                merged = self.alpha_conv[idx - 1](torch.cat([merged, prev], dim=1)) + merged
            merged = self.beta_conv[idx](merged) + merged
            aux.append(F.interpolate(self.inner_cls[idx](merged), size=out_size, mode="bilinear",
                                     align_corners=True))
            pyramid.append(F.interpolate(merged, size=feat_size, mode="bilinear", align_corners=True))
        x = self.res1(torch.cat(pyramid, dim=1))
        x = self.res2(x) + x
        logits = self.cls(x)
        if out_size != feat_size:
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=True)
        if self.map_skip:  # every output is at out_size: one resized map, one shift for all
            first = F.interpolate(region_maps[:, :1], size=out_size, mode="bilinear", align_corners=True)
            shift = (self.map_gain * (first - 0.5)).to(logits.dtype)
            logits, aux = _add_to_foreground(logits, shift), [_add_to_foreground(a, shift) for a in aux]
        return logits, aux


def _add_to_foreground(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``logits`` (``B, 2, H, W``) with ``shift`` (``B, 1, H, W``) added to the foreground logit."""
    return torch.cat([logits[:, :1], logits[:, 1:] + shift], dim=1)
