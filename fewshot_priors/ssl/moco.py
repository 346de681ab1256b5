"""GlobalLocalMoCo: the self-supervised prior extractor (paper Sec. 4.1, Fig. 3, Table 6).

A MoCo v2 pair of encoders (query encoder trained by SGD, key encoder an
exponential moving average of it) with two InfoNCE losses:

* global (Eq. 1): image embeddings of two views, negatives from a queue of
  ``queue_size`` keys;
* local (Eq. 2): superpixel-patch embeddings (dense features -> 1x1-conv MLP ->
  mean per superpixel), positive = the same superpixel in the other view,
  negatives from a second queue of ``local_queue_size`` patch keys.

``loss = global_weight * L_global + local_weight * L_local`` (Eq. 3 with both 1).
After pretraining, :meth:`GlobalLocalMoCo.export_prior_extractor` writes the
momentum (key) encoder -- as the official QGNet release, which takes MoCo's
``encoder_k`` as prior extractor -- (or, with ``encoder="query"``, the query
encoder) as a safetensors file loadable by ``create_backbone(name,
weights=path)`` / ``QGNet(prior_weights=path)``.

The memory queue lives in :mod:`fewshot_priors.ssl.queue`, the export in
:mod:`fewshot_priors.ssl.export` and the all-gathers in :mod:`fewshot_priors.distributed`.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import (
    all_reduce_min,
    broadcast,
    concat_all_gather,
    dist_info,
    world_size,
)
from ..models.backbone import input_normalisation, pfenet_dilation
from ..models.protocols import PriorEncoderSpec
from ..models.weights import MOCO_ENCODERS, load_backbone_state_dict
from ..ops.contrastive import info_nce, momentum_update
from ..ops.superpixel_pool import POOL_MODES, superpixel_pool
from .export import export_prior_extractor
from .queue import MemoryQueue

__all__ = ["SHUFFLE_BN_MODES", "GlobalLocalMoCo", "create_encoder", "dense_features"]

SHUFFLE_BN_MODES = ("auto", "ddp", "split", "none")
#: Projection-head normalisation: "none" (MoCo v2, the paper) or "bn".
HEAD_NORMS = ("none", "bn")


# ----------------------------------------------------------------------------- model
def create_encoder(backbone: str, **kwargs: Any) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), random init.

    Its ``state_dict()`` keys are those of ``timm.create_model(backbone)`` minus the
    classifier head, which is what :func:`export_prior_extractor` writes.
    """
    from .._progress import import_timm

    timm = import_timm()

    kwargs.setdefault("pretrained", False)
    encoder = timm.create_model(backbone, num_classes=0, **kwargs)
    if kwargs.get("output_stride") in (8, 16):
        # dilate as QGNet's frozen prior extractor will (create_backbone), so the
        # features seen in pretraining are the ones the prior region map uses
        pfenet_dilation(encoder, kwargs["output_stride"])
    return encoder


def dense_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last-stage dense feature map ``B, C, h, w`` of a timm encoder.

    CNNs return ``B, C, h, w`` from ``forward_features``; channels-last outputs
    (``B, h, w, C``) are permuted and ViT token sequences (``B, N, C``) lose their
    prefix tokens and are reshaped to a square grid.
    """
    f = encoder.forward_features(x)
    c = getattr(encoder, "num_features", None)
    if f.dim() == 4:
        if c is not None and f.shape[1] != c and f.shape[-1] == c:
            f = f.permute(0, 3, 1, 2)
        return f.contiguous()
    if f.dim() == 3:
        f = f[:, getattr(encoder, "num_prefix_tokens", 0) :]
        side = int(math.isqrt(f.shape[1]))
        if side * side != f.shape[1]:
            raise ValueError(f"cannot reshape {f.shape[1]} tokens to a square grid")
        return f.transpose(1, 2).reshape(f.shape[0], f.shape[2], side, side)
    raise ValueError(f"unsupported forward_features output shape {tuple(f.shape)}")


class GlobalLocalMoCo(nn.Module):
    """MoCo v2 with a global and a local (superpixel-patch) InfoNCE loss.

    Args:
        backbone: any timm model name (dense last-stage features are used).
        dim: embedding dimension of both heads (128).
        queue_size: global negatives ``K`` (65536).
        local_queue_size: patch negatives ``M`` (65536).
        momentum: key-encoder EMA momentum ``m`` (0.999).
        temperature: InfoNCE temperature ``tau`` (0.2).
        global_weight: weight of the global loss; ``0`` disables it (no head, no
            computation) -> "local only" ablation of Table 6.
        local_weight: weight of the local loss; ``0`` disables it -> "global only".
        mlp_hidden: hidden width of both MLP heads (default: the encoder's
            feature width, i.e. 2048 -> 2048 -> ReLU -> 128 for resnet50).
        head_norm: ``"none"`` (MoCo v2, the paper) or ``"bn"``: BatchNorm after the
            first head layer (SimCLR / MoCo v3 style), which spreads the embeddings
            of a random-init network and speeds up short runs.
        max_patches: ``P``, patch slots per image; label ids must be ``< P``
            (``SuperpixelPatchSampler(max_patches=P)`` guarantees it).
        pool_mode: ``"area"`` or ``"nearest"`` (see ``superpixel_pool``).
        shuffle_bn: key-encoder BatchNorm de-leaking. ``"ddp"``: MoCo's shuffle-BN
            across processes (needs ``torch.distributed``). ``"split"``: one-process
            alternative: shuffle the key batch and run the key encoder on
            ``bn_splits`` chunks separately, so its BN statistics come from
            different sample subsets than the query's. ``"none"``: plain forward.
            ``"auto"``: ``"ddp"`` when a process group with > 1 rank is initialised,
            else ``"split"`` (falls back to ``"none"`` for batches below
            ``2 * bn_splits``).
        bn_splits: chunks for ``"split"`` (2).
        seed: seed of the queues' random initialisation (the encoder/heads use the
            global RNG: call ``torch.manual_seed`` before construction).
        queue_init: ``"random"`` (MoCo: random unit vectors serve as negatives until
            real keys replace them) or ``"empty"`` (only real keys are negatives; see
            :class:`MemoryQueue`). With ``"random"`` and a queue that takes many steps
            to fill, the random negatives exert no repulsion among real embeddings, so
            the encoder is pushed toward collapse until the queue is full.
        weights: initial weights of the encoder (a local file or a state dict, as
            :func:`~fewshot_priors.models.backbone.create_backbone` reads; e.g. ImageNet
            weights to continue self-supervised); default random init.
        mean, std: the per-channel RGB statistics the ``[0, 1]`` views are normalised
            with before both encoders (default: the weights file's, else the timm
            ``pretrained_cfg`` of ``backbone``); the export records them, so QGNet's prior
            extractor normalises as in pretraining.
        **backbone_kwargs: passed to ``timm.create_model``.

    ``forward(view_a, view_b, labels_a, labels_b)`` returns a dict with ``loss``,
    ``loss_global``, ``loss_local``, ``acc_global``, ``acc_local`` (fraction of
    queries whose positive beats every negative) and ``num_patches`` (valid local
    pairs). In training mode it also momentum-updates the key encoder and
    enqueues the keys; in eval mode it only computes the losses.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        dim: int = 128,
        queue_size: int = 65536,
        local_queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        global_weight: float = 1.0,
        local_weight: float = 1.0,
        mlp_hidden: int | None = None,
        head_norm: str = "none",
        max_patches: int = 64,
        pool_mode: str = "area",
        shuffle_bn: str = "auto",
        bn_splits: int = 2,
        seed: int | None = 0,
        queue_init: str = "random",
        weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if global_weight < 0 or local_weight < 0 or (global_weight == 0 and local_weight == 0):
            raise ValueError(
                f"`global_weight` and `local_weight` must be >= 0 and not both 0, got {global_weight}, {local_weight}"
            )
        if shuffle_bn not in SHUFFLE_BN_MODES:
            raise ValueError(f"`shuffle_bn` must be one of {SHUFFLE_BN_MODES}, got {shuffle_bn!r}")
        if pool_mode not in POOL_MODES:
            raise ValueError(f"`pool_mode` must be one of {POOL_MODES}, got {pool_mode!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1], got {momentum}")
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        if int(max_patches) < 1:
            raise ValueError(f"`max_patches` must be >= 1, got {max_patches}")
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.global_weight = float(global_weight)
        self.local_weight = float(local_weight)
        self.max_patches = int(max_patches)
        self.pool_mode = pool_mode
        self.shuffle_bn = shuffle_bn
        self.bn_splits = int(bn_splits)

        self.encoder = create_encoder(backbone, **backbone_kwargs)
        meta: dict[str, str] = {}
        if weights is not None:
            meta = load_backbone_state_dict(self.encoder, backbone, weights, moco_encoder="query")
        self.mean, self.std = input_normalisation(backbone, mean, std, weights_meta=meta,
                                                  pretrained_cfg=getattr(self.encoder, "pretrained_cfg", None))
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        width = int(self.encoder.num_features)
        hidden = int(mlp_hidden or width)
        if head_norm not in HEAD_NORMS:
            raise ValueError(f"`head_norm` must be one of {HEAD_NORMS}, got {head_norm!r}")
        bn = head_norm == "bn"
        self.global_head = (
            nn.Sequential(
                nn.Linear(width, hidden, bias=not bn),
                *([nn.BatchNorm1d(hidden)] if bn else []),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, dim),
            )
            if global_weight > 0
            else None
        )
        self.local_head = (
            nn.Sequential(
                nn.Conv2d(width, hidden, 1, bias=not bn),
                *([nn.BatchNorm2d(hidden)] if bn else []),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, dim, 1),
            )
            if local_weight > 0
            else None
        )
        self.key_encoder = copy.deepcopy(self.encoder)
        self.key_global_head = copy.deepcopy(self.global_head)
        self.key_local_head = copy.deepcopy(self.local_head)
        for p in self._key_modules().parameters():
            p.requires_grad_(False)
        self.queue = MemoryQueue(dim, queue_size, seed=seed, init=queue_init) if global_weight > 0 else None
        self.local_queue = (
            MemoryQueue(dim, local_queue_size, seed=None if seed is None else seed + 1, init=queue_init)
            if local_weight > 0
            else None
        )

    # -- helpers -----------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``B, 3, H, W`` RGB in ``[0, 1]`` -> ``(x - mean) / std``: what both encoders see."""
        return (x - self._mean.to(x.dtype)) / self._std.to(x.dtype)

    def _query_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {k: m for k, m in (("enc", self.encoder), ("g", self.global_head), ("l", self.local_head)) if m is not None}
        )

    def _key_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                k: m
                for k, m in (("enc", self.key_encoder), ("g", self.key_global_head), ("l", self.key_local_head))
                if m is not None
            }
        )

    def resolved_shuffle_bn(self, batch: int) -> str:
        """The shuffle-BN mode actually used for a key batch of ``batch`` images."""
        mode = self.shuffle_bn
        if mode == "auto":
            mode = "ddp" if world_size() > 1 else "split"
        if mode == "ddp" and world_size() == 1:
            raise RuntimeError("shuffle_bn='ddp' needs an initialised torch.distributed process group")
        if mode == "split" and batch < 2 * self.bn_splits:
            mode = "none"
        return mode

    @torch.no_grad()
    def _key_features(self, x: torch.Tensor) -> torch.Tensor:
        mode = self.resolved_shuffle_bn(x.shape[0])
        if mode == "none":
            return dense_features(self.key_encoder, x)
        if mode == "split":
            perm = torch.randperm(x.shape[0], device=x.device)
            chunks = [dense_features(self.key_encoder, c) for c in x[perm].chunk(self.bn_splits)]
            return torch.cat(chunks)[torch.argsort(perm)]
        # MoCo's shuffle-BN across ranks
        bs = x.shape[0]
        x_all = concat_all_gather(x)
        world = x_all.shape[0] // bs
        perm = broadcast(torch.randperm(x_all.shape[0], device=x.device), src=0)
        rank = dist_info().rank
        f = dense_features(self.key_encoder, x_all[perm.view(world, -1)[rank]])
        f_all = concat_all_gather(f)
        return f_all[torch.argsort(perm).view(world, -1)[rank]]

    # -- forward -------------------------------------------------------------------
    def forward(
        self,
        view_a: torch.Tensor,
        view_b: torch.Tensor,
        labels_a: torch.Tensor | None = None,
        labels_b: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses for query view ``view_a`` against key view ``view_b``.

        Args:
            view_a: ``B, 3, S, S`` RGB images in ``[0, 1]`` (query view; normalised here
                with :attr:`mean` / :attr:`std`).
            view_b: ``B, 3, S, S`` (key view).
            labels_a: ``B, S, S`` int64 superpixel ids of view a (``-1`` = ignored);
                required when the local loss is on.
            labels_b: same for view b (id ``j`` = the same patch as in ``labels_a``).

        Returns:
            dict of 0-dim tensors: ``loss``, ``loss_global``, ``loss_local``,
            ``acc_global``, ``acc_local``, ``num_patches`` (disabled terms: loss 0,
            accuracy NaN); plus the detached L2-normalised embeddings (for collapse
            diagnostics, see :mod:`fewshot_priors.ssl.diagnostics`): ``z_global_q``,
            ``z_global_k`` (``B, dim``) when the global loss is on, ``z_local_q``,
            ``z_local_k`` (``num_patches, dim``) when the local loss is on.

        In training mode a non-finite loss (e.g. a NaN view) is returned as is with a
        ``RuntimeWarning``, but neither queue is updated and the query encoder's
        BatchNorm buffers are restored, so later finite batches are unaffected.
        """
        if view_a.shape != view_b.shape or view_a.dim() != 4:
            raise ValueError(
                f"`view_a` and `view_b` must both be B, 3, S, S, got {tuple(view_a.shape)} and {tuple(view_b.shape)}"
            )
        if self.local_head is not None and (labels_a is None or labels_b is None):
            raise ValueError("`labels_a` and `labels_b` are required when the local loss is on (local_weight > 0)")
        if self.local_head is not None:
            want = (view_a.shape[0], *view_a.shape[2:])
            for name, lab in (("labels_a", labels_a), ("labels_b", labels_b)):
                if not isinstance(lab, torch.Tensor) or tuple(lab.shape) != want:
                    got = tuple(lab.shape) if isinstance(lab, torch.Tensor) else type(lab).__name__
                    raise ValueError(
                        f"`{name}` must be the B, S, S superpixel map of its view, i.e. shape {want}, got {got}"
                    )
        # BatchNorm buffers before this batch touches them (a non-finite batch is undone below)
        saved = [b.clone() for b in self._query_modules().buffers()] if self.training else []
        view_a, view_b = self.normalize(view_a), self.normalize(view_b)
        feat_q = dense_features(self.encoder, view_a)
        with torch.no_grad():
            if self.training:
                momentum_update(self._query_modules(), self._key_modules(), self.momentum)
            feat_k = self._key_features(view_b)

        zero = feat_q.new_zeros((), dtype=torch.float32)
        nan = torch.full((), float("nan"), device=feat_q.device)
        out = {"loss_global": zero, "loss_local": zero, "acc_global": nan, "acc_local": nan}
        out["num_patches"] = torch.zeros((), dtype=torch.long, device=feat_q.device)
        loss = zero
        k_global = k_local = None
        if self.global_head is not None:
            q = F.normalize(self.global_head(feat_q.mean(dim=(2, 3))).float(), dim=1)
            with torch.no_grad():
                k_global = F.normalize(self.key_global_head(feat_k.mean(dim=(2, 3))).float(), dim=1)
            r = info_nce(q, k_global, self.queue.negatives(), self.temperature, normalize=False, return_details=True)
            out["loss_global"], out["acc_global"] = r.loss, r.accuracy
            out["z_global_q"], out["z_global_k"] = q.detach(), k_global
            loss = loss + self.global_weight * r.loss
        if self.local_head is not None:
            P = self.max_patches
            qp, valid_a = superpixel_pool(self.local_head(feat_q).float(), labels_a, P, self.pool_mode)
            with torch.no_grad():
                kp, valid_b = superpixel_pool(self.key_local_head(feat_k).float(), labels_b, P, self.pool_mode)
            valid = valid_a & valid_b
            q_l = F.normalize(qp[valid], dim=1)
            k_local = F.normalize(kp[valid], dim=1)
            r = info_nce(q_l, k_local, self.local_queue.negatives(), self.temperature, normalize=False, return_details=True)
            out["loss_local"], out["acc_local"] = r.loss, r.accuracy
            out["num_patches"] = valid.sum()
            out["z_local_q"], out["z_local_k"] = q_l.detach(), k_local
            loss = loss + self.local_weight * r.loss
        out["loss"] = loss
        finite = torch.isfinite(loss.detach()).float()
        if self.training and world_size() > 1:
            all_reduce_min(finite)  # every rank skips together (queues are gathered)
        if self.training and not bool(finite):
            # one non-finite batch must not poison the model for good: NaN keys in the
            # queues would make every later loss NaN, and NaN BatchNorm running stats would
            # break the exported encoder. Skip the enqueue, restore the query encoder's
            # buffers, and return the loss as is (the key encoder gets them back at the next EMA).
            with torch.no_grad():
                for b, old in zip(self._query_modules().buffers(), saved):
                    b.copy_(old)
            warnings.warn(
                f"GlobalLocalMoCo: non-finite loss ({float(loss.detach())}); this batch's keys were not enqueued "
                "and the BatchNorm statistics were restored",
                RuntimeWarning,
                stacklevel=2,
            )
            return out
        if self.training:
            if k_global is not None:
                self.queue.enqueue(k_global)
            if k_local is not None:
                self.local_queue.enqueue(k_local)
        return out

    # -- export --------------------------------------------------------------------
    def export_prior_extractor(self, path: str | os.PathLike, encoder: str = "key") -> str:
        """Write the momentum (``"key"``, default) or ``"query"`` encoder for QGNet;
        see :func:`export_prior_extractor`."""
        return export_prior_extractor(self, path, encoder=encoder)

    def prior_encoder(self, encoder: str = "key") -> nn.Module:
        """The encoder used as prior extractor: the momentum encoder (``"key"``, the
        default, as the official QGNet release) or the ``"query"`` encoder."""
        if encoder not in MOCO_ENCODERS:
            raise ValueError(f"`encoder` must be one of {tuple(MOCO_ENCODERS)}, got {encoder!r}")
        return self.key_encoder if encoder == "key" else self.encoder

    def prior_encoder_spec(self, encoder: str = "key") -> PriorEncoderSpec:
        """The prior extractor QGNet builds from this model
        (:class:`~fewshot_priors.models.protocols.PriorEncoderSource`): the ``encoder``
        picked by :meth:`prior_encoder`, its timm name and this model's input statistics."""
        return PriorEncoderSpec(self.backbone_name, self.prior_encoder(encoder), self.mean, self.std)

