"""Frozen timm feature extractors with the low / mid / high stages QGNet needs.

:func:`create_backbone` wraps any timm model that supports ``features_only`` in a
:class:`FrozenBackbone` that returns three stages (PFENet's layer2 / layer3 /
layer4 for a ResNet) at a common output stride, can run its high stage alone on
given mid-level features (PFENet computes the support layer4 from
``layer3 x mask``), and stays frozen: no gradients, BatchNorm and dropout in eval
mode even when the parent model is in ``train()``.

**Input normalisation travels with the weights.** Images enter a backbone as RGB in
``[0, 1]``; the backbone normalises them itself with its own ``mean`` / ``std``
(:attr:`FrozenBackbone.mean`), as torchvision's weight transforms and Hugging Face image
processors attach the preprocessing to the weights. They come, in this order, from the
``mean=`` / ``std=`` arguments, from the weights file (this project's prior-extractor
export records the statistics its encoder was trained with), or from the timm
``pretrained_cfg`` of the model (ImageNet mean/std for most models, ``0.5`` / ``0.5`` for
the TF EfficientNet-Lite family, ...); :func:`input_normalisation` resolves them.

Weights come from timm (``pretrained=True``, needs internet) or from a local
file (``weights=PATH``): a timm state dict, a checkpoint dict holding one under
``"state_dict"`` / ``"model"``, a MoCo-style checkpoint whose query encoder is
picked out by its key prefix (``module.encoder_q.`` ...), or this project's
prior-extractor export (a ``.safetensors`` file with metadata
``{"format": "fewshot_priors.prior_extractor", "backbone": <timm name>}``).

A MoCo checkpoint holds two encoders: the query encoder (``encoder_q`` in MoCo's
code, ``encoder`` in :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo`) and the
momentum (key) encoder (``encoder_k`` / ``key_encoder``). The momentum encoder is
loaded by default (``moco_encoder="key"``), as the official QGNet release does for
its prior extractor; ``moco_encoder="query"`` picks the query encoder.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import import_timm
from .._typecheck import type_error
from .._validate import is_int
from ._pretrained import BACKBONE_FORMAT, PretrainedMixin
from .download import check_timm_download
from .feature_cache import FeatureMemo
from .weights import _check_moco_encoder, _norm_key, load_backbone_state_dict

timm = import_timm()  # ``import timm`` minus tqdm's notebook warning (see fewshot_priors._progress)

__all__ = ["FrozenBackbone", "create_backbone", "input_normalisation", "pfenet_dilation"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


# --------------------------------------------------------------------------- helpers


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a timm model name (str), got {type(name).__name__}")
    if not timm.is_model(name):
        all_names = timm.list_models()
        close = difflib.get_close_matches(name, all_names, n=5, cutoff=0.6)
        stem = name.split("_")[0].rstrip("0123456789")
        if stem and len(close) < 5:
            close += [n for n in timm.list_models(f"*{stem}*") if n not in close][: 5 - len(close)]
        hint = f" Did you mean one of: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown backbone `name` {name!r}: not a timm model name.{hint} "
            "See `timm.list_models(pattern)` for the available names."
        )
    return name


def _check_stats(name: str, value: object) -> tuple[float, float, float]:
    """A per-channel RGB statistic: three finite floats (``std``: each > 0)."""
    try:
        vals = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        vals = ()
    if (len(vals) != 3 or isinstance(value, (str, bytes)) or any(isinstance(v, bool) for v in value)  # type: ignore[union-attr]
            or not all(math.isfinite(v) for v in vals) or (name.endswith("std") and not all(v > 0 for v in vals))):
        need = "three finite numbers > 0" if name.endswith("std") else "three finite numbers"
        raise ValueError(f"`{name}` must be {need} (one per RGB channel, for images in [0, 1]), got {value!r}")
    return vals  # type: ignore[return-value]


def input_normalisation(
    name: str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weights_meta: Mapping[str, str] | None = None,
    pretrained_cfg: Mapping | None = None,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The ``(mean, std)`` a backbone normalises its ``[0, 1]`` RGB input with.

    Each of ``mean`` / ``std`` is taken, in this order, from the argument, from the weights
    file's metadata ``weights_meta`` (``"mean"`` / ``"std"`` as JSON lists, written by the
    prior-extractor export), or from the timm ``pretrained_cfg`` (default: timm's for
    ``name``; ``"resnet50"`` -> ImageNet's, ``"tf_efficientnet_lite0"`` -> ``0.5`` / ``0.5``).

    Raises:
        ValueError: a statistic that is not three finite numbers (``std``: > 0).
    """
    import json

    meta = dict(weights_meta or {})
    cfg = pretrained_cfg
    if cfg is None and (mean is None or std is None):
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:  # noqa: BLE001  (an unregistered name: timm's defaults below)
            cfg = None
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else (cfg or {})
    cfg = dict(cfg or {})
    out = []
    for key, given, default in (("mean", mean, timm.data.IMAGENET_DEFAULT_MEAN),
                                ("std", std, timm.data.IMAGENET_DEFAULT_STD)):
        if given is None and key in meta:
            try:
                given = json.loads(meta[key])
            except (TypeError, ValueError) as e:
                raise ValueError(f"the weights file's `{key}` metadata is not a JSON list: {meta[key]!r}") from e
        if given is None:
            given = cfg.get(key) or default
        out.append(_check_stats(key, given))
    return out[0], out[1]


def _select_levels(body: nn.Module) -> tuple[int, int, int]:
    """Indices of the (low, mid, high) levels among the body's feature levels.

    The last three levels, after dropping a trailing level that is only a pooling
    of the one before (VGG's final max-pool): ResNet -> layer2/3/4, VGG -> the
    256/512/512-channel blocks (PFENet's VGG layer2/3/4).
    """
    info = body.feature_info
    n = len(info.channels())
    if n < 3:
        raise ValueError(f"backbone exposes only {n} feature levels; QGNet needs three (low, mid, high)")
    last = n - 1
    names = info.module_name()
    if isinstance(body, nn.ModuleDict) and last >= 3:
        mod = body[_norm_key(names[last])] if _norm_key(names[last]) in body else None
        if isinstance(mod, _POOLS):
            last -= 1
    return last - 2, last - 1, last


# --------------------------------------------------------------------------- module


class FrozenBackbone(PretrainedMixin, nn.Module):
    """Three-stage (low, mid, high) feature extractor around a timm ``features_only`` model.

    Stages (ResNet): ``low`` = layer2, ``mid`` = layer3, ``high`` = layer4, all at
    output stride 8 (dilated, via timm's ``output_stride``). VGG follows PFENet's
    layering exactly: ``low`` = block 3 + max-pool, ``mid`` = block 4 + max-pool,
    ``high`` = block 5 (pools with ``ceil_mode=True``), all at stride 16 (30 x 30 at
    473; VGG cannot be dilated, so ``output_stride`` does not apply), ``low``
    resized to ``mid``'s size. Other models that cannot be dilated are run as they
    are and their three stages are resized bilinearly (``align_corners=True``) to
    the size of the deepest stage whose stride is ``<= output_stride``, so ``low``,
    ``mid`` and ``high`` always share one spatial size.

    The input is an RGB batch in ``[0, 1]``: the module normalises it with its own
    :attr:`mean` / :attr:`std` (non-persistent buffers: the state-dict keys are those of the
    timm body) before the first stage. ``mean`` / ``std`` default to the timm
    ``pretrained_cfg`` of ``body`` (see :func:`input_normalisation`).

    When ``frozen`` (the default) every parameter has ``requires_grad=False``, the
    body is always in eval mode (BatchNorm statistics and dropout never change, even
    after the parent calls ``.train()``) and the forward passes run under
    ``torch.no_grad()``.

    Attributes:
        name: the timm model name.
        channels: ``(low, mid, high)`` channel counts.
        reductions: native strides of the three stages.
        output_stride: the requested common stride of the returned features (see
            :attr:`feature_stride` for the actual one: VGG cannot be dilated and stays at 16).
        frozen: whether the module is frozen.
        can_split: whether :meth:`forward_high` is available (timm FeatureListNet /
            FeatureDictNet bodies, i.e. ResNets, VGG, ConvNeXt, ...).
        pfenet_pool_layout: whether PFENet's VGG layering is used (see above).
        mean, std: the per-channel RGB statistics the ``[0, 1]`` input is normalised with.
    """

    def __init__(self, body: nn.Module, name: str, output_stride: int = 8, frozen: bool = True,
                 levels: Sequence[int] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        super().__init__()
        self.body = body
        self.name = name
        self.mean, self.std = input_normalisation(name, mean, std, pretrained_cfg=getattr(body, "pretrained_cfg", None))
        self.register_buffer("_mean", torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.frozen = bool(frozen)
        self.output_stride = int(output_stride)
        lv = tuple(levels) if levels is not None else _select_levels(body)
        if len(lv) != 3:
            raise ValueError(f"`levels` must name three feature levels (low, mid, high), got {lv}")
        self.levels = lv
        info = body.feature_info
        self.channels: tuple[int, int, int] = tuple(int(info.channels()[i]) for i in lv)  # type: ignore[assignment]
        self.reductions: tuple[int, int, int] = tuple(int(info.reduction()[i]) for i in lv)  # type: ignore[assignment]
        fmt = getattr(body, "output_fmt", "NCHW")
        self._nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"
        self.resize = len(set(self.reductions)) > 1
        small = [i for i, r in enumerate(self.reductions) if r <= self.output_stride]
        self._anchor = small[-1] if small else 0
        self._stages: list[list[str]] | None = None
        if isinstance(body, nn.ModuleDict) and hasattr(body, "return_layers"):
            by_index = {int(v): k for k, v in body.return_layers.items()}
            names = list(body.keys())
            cut = [names.index(by_index[i]) for i in lv]
            self._stages = [names[: cut[0] + 1], names[cut[0] + 1: cut[1] + 1], names[cut[1] + 1: cut[2] + 1]]
        self.pfenet_pool_layout = False
        if self._stages is not None and self.resize and self._pool_led(body, self._stages):
            self._use_pfenet_pool_layout(body)
        self.can_split = self._stages is not None
        self._memo: FeatureMemo | None = None  # see feature_memo()
        if self.frozen:
            for p in self.body.parameters():
                p.requires_grad_(False)
            self.body.eval()

    @property
    def feature_stride(self) -> int:
        """The actual stride of the returned features: ``output_stride`` for models that can be
        dilated (ResNets, EfficientNets, MobileNets), 16 for VGG (PFENet's layout, which
        ``output_stride`` does not change), the anchor stage's for other models. ``output_stride``
        stays the requested value (what a config records)."""
        return int(self.reductions[self._anchor] if self.resize else self.reductions[0])

    @staticmethod
    def _pool_led(body: nn.Module, stages: list[list[str]]) -> bool:
        """Whether the mid and high stages start with a max-pool (VGG: timm taps the
        features just before each pool)."""
        return all(stage and isinstance(body[stage[0]], nn.MaxPool2d) for stage in stages[1:])

    def _use_pfenet_pool_layout(self, body: nn.Module) -> None:
        """PFENet's VGG layering (its ``get_vgg16_layer``): low = block 3 + pool (stride 8),
        mid = block 4 + pool (stride 16), high = block 5 without its pool (stride 16);
        max-pools with ``ceil_mode=True`` (PFENet's VGG: 473 -> 237 -> 119 -> 60 -> 30);
        low resized to mid's size. So the support high stage runs on ``pool(block4) x mask``
        exactly as PFENet's ``layer4(layer3 * mask)``."""
        s0, s1, s2 = self._stages
        self._stages = [s0 + s1[:1], s1[1:] + s2[:1], s2[1:]]
        r = self.reductions
        self.reductions = (2 * r[0], 2 * r[1], 2 * r[1])
        for m in body.modules():
            if isinstance(m, nn.MaxPool2d):
                m.ceil_mode = True
        self._anchor = 1
        self.pfenet_pool_layout = True

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, channels={self.channels}, output_stride={self.output_stride}, "
                f"frozen={self.frozen}, resize={self.resize}, mean={self.mean}, std={self.std}")

    PRETRAINED_FORMAT = BACKBONE_FORMAT

    def _pretrained_config(self) -> dict:
        return {"backbone": self.name, "output_stride": self.output_stride, "frozen": self.frozen,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def _from_pretrained_config(cls, config: dict, overrides: dict) -> FrozenBackbone:
        config.update(overrides)
        valid = {"backbone", "output_stride", "frozen", "mean", "std"}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise ValueError(f"unknown backbone setting(s) {unknown} (valid: {', '.join(sorted(valid))})")
        for key, default in (("backbone", "resnet50"), ("output_stride", 8), ("frozen", True)):
            error = type_error(f"model.{key}", config.get(key, default), default)
            if error is not None:
                raise ValueError(error)
        return create_backbone(config["backbone"], output_stride=int(config.get("output_stride", 8)),
                               frozen=bool(config.get("frozen", True)), mean=config.get("mean"),
                               std=config.get("std"))

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Set train mode; a frozen body always stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    # -- internals
    def _check_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`x` must be a torch.Tensor image batch B, 3, H, W, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"`x` must be a floating point image batch (RGB in [0, 1]), got dtype {x.dtype}")
        in_chans = getattr(self.body, "in_chans", 3)
        if x.dim() != 4 or x.shape[1] != in_chans:
            raise ValueError(f"`x` must have shape B, {in_chans}, H, W, got {tuple(x.shape)}")
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``B, 3, H, W`` RGB in ``[0, 1]`` -> ``(x - mean) / std`` in ``x``'s dtype."""
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def _fmt(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, (tuple, list)):
            t = t[0]
        return t.permute(0, 3, 1, 2).contiguous() if self._nhwc else t

    def _run(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        assert self._stages is not None
        if self._nhwc and stage > 0:
            x = x.permute(0, 2, 3, 1).contiguous()
        for n in self._stages[stage]:
            x = self.body[n](x)
        return self._fmt(x)

    def _context(self):
        return torch.no_grad() if self.frozen else torch.enable_grad()

    @staticmethod
    def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(t.shape[-2:]) == tuple(size):
            return t
        return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

    # -- public API
    def forward_low_mid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low and mid stages of an image batch.

        Args:
            x: ``B, 3, H, W`` RGB images in ``[0, 1]`` (normalised here with :attr:`mean` / :attr:`std`).

        Returns:
            ``(low B, C_low, h, w, mid B, C_mid, h, w)`` at the common output stride.
        """
        x = self._check_input(x)
        if self._memo is not None:
            low, mid = self._memo("low_mid", x, self._low_mid)
            return low, mid
        return self._low_mid(x)

    def _low_mid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self._context():
            x = self.normalize(x)
            if self._stages is not None:
                low = self._run(0, x)
                mid = self._run(1, low)
            else:
                feats = self.body(x)
                low, mid = (self._fmt(feats[i]) for i in self.levels[:2])
            if self.resize:  # the anchor is low or mid (reductions grow, not all equal)
                size = tuple((low, mid)[min(self._anchor, 1)].shape[-2:])
                low, mid = self._resize(low, size), self._resize(mid, size)
        return low, mid

    def forward_high(self, mid: torch.Tensor) -> torch.Tensor:
        """Run the high stage alone on (possibly masked) mid-level features.

        This is how PFENet gets the support layer4: ``layer4(layer3 x mask)``.

        Args:
            mid: ``B, C_mid, h, w`` mid-level features (as from :meth:`forward_low_mid`).

        Returns:
            ``B, C_high, h, w`` high-level features (resized back to ``h, w`` for
            backbones that are not dilated).

        Raises:
            NotImplementedError: the timm body cannot be split into stages
                (see :attr:`can_split`).
        """
        if self._stages is None:
            raise NotImplementedError(
                f"backbone {self.name!r} ({type(self.body).__name__}) cannot run its high stage alone; "
                "use forward(x) instead"
            )
        if not isinstance(mid, torch.Tensor) or not mid.is_floating_point():
            raise TypeError("`mid` must be a floating point tensor B, C_mid, h, w")
        if mid.dim() != 4 or mid.shape[1] != self.channels[1]:
            raise ValueError(f"`mid` must have shape B, {self.channels[1]}, h, w, got {tuple(mid.shape)}")
        if self._memo is not None:
            return self._memo("high", mid, lambda m: (self._high(m),))[0]
        return self._high(mid)

    def _high(self, mid: torch.Tensor) -> torch.Tensor:
        with self._context():
            high = self._run(2, mid)
            if self.resize:
                high = self._resize(high, tuple(mid.shape[-2:]))
        return high

    @contextlib.contextmanager
    def feature_memo(self, memo: FeatureMemo | None = None) -> Iterator[FeatureMemo | None]:
        """Within this context, remember the features of every sample seen (a
        :class:`~fewshot_priors.models.feature_cache.FeatureMemo`, new unless ``memo`` is given) and
        compute each distinct input once: for evaluating many episodes over few photos. Only a
        frozen backbone memoises (yields ``None`` otherwise); the results equal the uncached ones up
        to float rounding.

        Example:
            >>> bb = create_backbone("resnet18")
            >>> x = torch.rand(2, 3, 64, 64)
            >>> with bb.feature_memo() as memo:
            ...     a = bb(x)[2]
            ...     b = bb(x)[2]  # no backbone pass: both samples are remembered
            >>> memo.hits, bool(a.equal(b))
            (4, True)
        """
        if not self.frozen:
            yield None
            return
        previous, self._memo = self._memo, memo if memo is not None else FeatureMemo()
        try:
            yield self._memo
        finally:
            self._memo = previous

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All three stages.

        Args:
            x: ``B, 3, H, W`` RGB images in ``[0, 1]`` (normalised here with :attr:`mean` / :attr:`std`).

        Returns:
            ``(low, mid, high)``, each ``B, C_i, h, w`` with ``h = ceil(H / 8)`` for a
            dilated ResNet (all three share one spatial size).
        """
        x = self._check_input(x)
        if self._stages is not None:
            low, mid = self.forward_low_mid(x)
            return low, mid, self.forward_high(mid)
        if self._memo is not None:
            low, mid, high = self._memo("all", x, self._all_stages)
            return low, mid, high
        return self._all_stages(x)

    def _all_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with self._context():
            feats = [self._fmt(feats) for feats in self.body(self.normalize(x))]
            low, mid, high = (feats[i] for i in self.levels)
            if self.resize:
                size = tuple((low, mid, high)[self._anchor].shape[-2:])
                low, mid, high = (self._resize(t, size) for t in (low, mid, high))
        return low, mid, high


# --------------------------------------------------------------------------- factory


def _build_body(name: str, pretrained: bool, output_stride: int) -> nn.Module:
    if pretrained:  # offline and not cached: one clear error now, not timm's retried downloads
        check_timm_download(name)

    def build(**kw):
        if not pretrained:
            return timm.create_model(name, pretrained=False, features_only=True, **kw)
        try:
            return timm.create_model(name, pretrained=True, features_only=True, **kw)
        except (TypeError, AssertionError):
            raise
        except Exception as e:  # network / hub errors: explain the offline route
            raise RuntimeError(
                f"could not load timm's pretrained weights for {name!r} ({type(e).__name__}: {e}). "
                "Offline? Download the checkpoint elsewhere and pass `weights=PATH` "
                "(a .safetensors/.pth timm state dict) with `pretrained=False`."
            ) from e

    if output_stride != 32:
        try:
            return build(output_stride=output_stride)
        except (TypeError, AssertionError, ValueError, NotImplementedError):
            pass  # the architecture cannot be dilated: run it as is and resize its stages
    try:
        return build()
    except (TypeError, AssertionError) as e:
        raise ValueError(
            f"timm model {name!r} does not support features_only feature extraction: {e}"
        ) from e


def pfenet_dilation(body: nn.Module, output_stride: int) -> None:
    """Dilate every block of a timm ResNet's layer3 / layer4 uniformly, as PFENet (in place).

    Call it on any timm ResNet (full model or ``features_only``) built with
    ``output_stride=8`` / ``16`` so that it matches :func:`create_backbone`.

    timm's ``output_stride`` gives the *first* block of a dilated stage the previous
    stage's dilation (layer3.0: 1, layer4.0: 2 at stride 8). PFENet (and REFERENCE
    §3: "layer3 dilation 2, layer4 dilation 4") sets dilation = padding = 2 / 4 on
    every 3x3 conv of layer3 / layer4, the first block's included.
    """
    from timm.models.resnet import BasicBlock, Bottleneck

    for stage, dilation in (("layer3", max(1, 16 // output_stride)), ("layer4", 32 // output_stride)):
        if dilation == 1 or not isinstance(getattr(body, stage, None), nn.Module):
            continue
        for block in getattr(body, stage).children():
            if not isinstance(block, (BasicBlock, Bottleneck)):
                return  # not a plain timm ResNet stage: leave the model as timm builds it
            for conv in block.modules():
                if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1):
                    conv.dilation = (dilation, dilation)
                    conv.padding = (dilation, dilation)


def create_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    output_stride: int = 8,
    frozen: bool = True,
    moco_encoder: str = "key",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> FrozenBackbone:
    """Build a (frozen) three-stage backbone from a timm model name.

    Args:
        name: any timm model name whose model supports ``features_only`` (e.g.
            ``"resnet50"``, ``"resnet101"``, ``"vgg16_bn"``, ``"convnext_tiny"``).
        pretrained: load timm's pretrained weights (downloads; fails offline with a
            message pointing to ``weights=PATH``).
        weights: local checkpoint to load instead (see module docstring for the
            accepted formats), or an in-memory state dict with the same keys.
            Mutually exclusive with ``pretrained``.
        output_stride: common stride of the returned features (8 as in PFENet).
            Dilated via timm where the model supports it (ResNets: every block of
            layer3 / layer4 dilated by 2 / 4 as PFENet, the first included),
            otherwise the stages are resized (see :class:`FrozenBackbone`).
        frozen: freeze the backbone (no grad, BatchNorm/dropout always in eval).
        moco_encoder: which encoder of a MoCo checkpoint ``weights`` holds is loaded:
            ``"key"`` (the momentum encoder, default, as the official QGNet release)
            or ``"query"``.
        mean, std: the per-channel RGB statistics its ``[0, 1]`` input is normalised with
            (default: the weights file's, else timm's ``pretrained_cfg``; see
            :func:`input_normalisation`).

    Returns:
        A :class:`FrozenBackbone` with ``.channels == (low, mid, high)``
        (resnet50: ``(512, 1024, 2048)``; resnet18: ``(128, 256, 512)``;
        vgg: ``(256, 512, 512)``).

    Raises:
        ValueError: unknown model name (with close matches), bad ``output_stride``,
            or weights that do not match the model.
        FileNotFoundError: ``weights`` does not exist.
        OSError: ``pretrained=True`` offline with the weights not in the local cache
            (decided in seconds, :func:`fewshot_priors.models.download.check_timm_download`).
        RuntimeError: ``pretrained=True`` could not download the weights.
    """
    name = _check_name(name)
    if not is_int(output_stride) or output_stride not in (8, 16, 32):
        raise ValueError(f"`output_stride` must be 8, 16 or 32, got {output_stride!r}")
    if weights is not None and pretrained:
        raise ValueError("pass either `pretrained=True` (timm download) or `weights=PATH` (local file), not both")
    if weights is not None and not isinstance(weights, (str, os.PathLike, Mapping)):
        raise TypeError(f"`weights` must be a path (str or os.PathLike) or a state dict, got {type(weights).__name__}")
    moco_encoder = _check_moco_encoder(moco_encoder)
    body = _build_body(name, bool(pretrained), output_stride)
    if output_stride < 32:
        pfenet_dilation(body, output_stride)
    meta: dict[str, str] = {}
    if weights is not None:
        meta = load_backbone_state_dict(body, name, weights, moco_encoder=moco_encoder)
    mean, std = input_normalisation(name, mean, std, weights_meta=meta, pretrained_cfg=getattr(body, "pretrained_cfg", None))
    return FrozenBackbone(body, name, output_stride=output_stride, frozen=frozen, mean=mean, std=std)
