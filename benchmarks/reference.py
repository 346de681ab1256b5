"""Plain reference implementations, written the way the PFENet / MoCo code bases write them
(plus the plain bf16 PyTorch version a user would write for the region maps).

Only for comparison in the benchmarks (speed, memory and, where cheap, the
numbers): the library's versions live in :mod:`fewshot_priors.ops`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

COSINE_EPS = 1e-7


def pfenet_prior(query_feat: torch.Tensor, supp_feat: torch.Tensor) -> torch.Tensor:
    """PFENet's prior for one shot: full ``B, M, N`` cosine matrix, max over support, min-max.

    ``query_feat`` ``B, C, H, W``; ``supp_feat`` ``B, C, h, w`` (already masked) -> ``B, 1, H, W``.
    """
    bsize, ch_sz, sp_h, sp_w = query_feat.size()
    tmp_query = query_feat.contiguous().view(bsize, ch_sz, -1)
    tmp_query_norm = torch.norm(tmp_query, 2, 1, True)
    tmp_supp = supp_feat.contiguous().view(bsize, ch_sz, -1).contiguous().permute(0, 2, 1)
    tmp_supp_norm = torch.norm(tmp_supp, 2, 2, True)
    similarity = torch.bmm(tmp_supp, tmp_query) / (torch.bmm(tmp_supp_norm, tmp_query_norm) + COSINE_EPS)
    similarity = similarity.max(1)[0].view(bsize, sp_h * sp_w)
    lo = similarity.min(1)[0].unsqueeze(1)
    hi = similarity.max(1)[0].unsqueeze(1)
    similarity = (similarity - lo) / (hi - lo + COSINE_EPS)
    return similarity.view(bsize, 1, sp_h, sp_w)


def pfenet_guided_map(query_feat: torch.Tensor, supp_feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """PFENet's K-shot prior mask: loop over shots, mask the support, average the per-shot maps.

    ``query_feat`` ``B, C, H, W``; ``supp_feats`` ``B, K, C, h, w``; ``masks`` ``B, K, h', w'``.
    """
    maps = []
    for k in range(supp_feats.shape[1]):
        supp = supp_feats[:, k]
        mask = F.interpolate(masks[:, k : k + 1], size=supp.shape[-2:], mode="bilinear", align_corners=True)
        maps.append(pfenet_prior(query_feat, supp * mask))
    return torch.cat(maps, 1).mean(1, keepdim=True)


def bf16_prior(query_feat: torch.Tensor, supp_feat: torch.Tensor) -> torch.Tensor:
    """What a user would write with bf16 tensor cores: normalise in fp32, cast, ``bmm``, ``amax``.

    The second reference next to :func:`pfenet_prior` (five lines of plain PyTorch): unit vectors
    (``F.normalize``, fp32) cast to bfloat16, one batched matmul writing the ``B, M, N`` bf16
    similarity matrix, max over the support, min-max in fp32. ``B, C, H, W`` and ``B, C, h, w``
    (already masked) -> ``B, 1, H, W``.
    """
    b, _, h, w = query_feat.shape
    q = F.normalize(query_feat.flatten(2), dim=1).to(torch.bfloat16)  # B, C, N
    s = F.normalize(supp_feat.flatten(2), dim=1).to(torch.bfloat16)  # B, C, M
    sim = torch.bmm(s.transpose(1, 2), q).amax(dim=1).float()  # B, N
    lo, hi = sim.amin(1, keepdim=True), sim.amax(1, keepdim=True)
    return ((sim - lo) / (hi - lo + COSINE_EPS)).view(b, 1, h, w)


def bf16_guided_map(query_feat: torch.Tensor, supp_feats: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """:func:`pfenet_guided_map` with :func:`bf16_prior` per shot (same masking, same average)."""
    maps = []
    for k in range(supp_feats.shape[1]):
        supp = supp_feats[:, k]
        mask = F.interpolate(masks[:, k : k + 1], size=supp.shape[-2:], mode="bilinear", align_corners=True)
        maps.append(bf16_prior(query_feat, supp * mask))
    return torch.cat(maps, 1).mean(1, keepdim=True)


def weighted_gap(supp_feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PFENet's ``Weighted_GAP`` (mask resized to the features first): ``B, C, 1, 1``."""
    mask = F.interpolate(mask, size=supp_feat.shape[-2:], mode="bilinear", align_corners=True)
    supp_feat = supp_feat * mask
    feat_h, feat_w = supp_feat.shape[-2:]
    area = F.avg_pool2d(mask, (feat_h, feat_w)) * feat_h * feat_w + 0.0005
    return F.avg_pool2d(input=supp_feat, kernel_size=supp_feat.shape[-2:]) * feat_h * feat_w / area


def loop_superpixel_pool(features: torch.Tensor, labels: torch.Tensor, num_segments: int) -> torch.Tensor:
    """One masked mean per superpixel (a Python loop over images and patches), ``B, P, C``.

    Labels (``B, H, W``) are resized to the feature size by nearest neighbour, as a
    straightforward implementation would.
    """
    b, c, h, w = features.shape
    small = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    out = features.new_zeros(b, num_segments, c)
    for i in range(b):
        for j in range(num_segments):
            mask = (small[i] == j).to(features.dtype)
            area = mask.sum()
            if area > 0:
                out[i, j] = (features[i] * mask).sum(dim=(1, 2)) / area
    return out


def moco_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v2's loss: ``q``, ``k`` ``N, D`` normalised; ``queue`` ``D, K`` (MoCo's layout)."""
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue.clone().detach()])
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def random_image(seed: int, size: int = 473) -> np.ndarray:
    """A smooth random RGB ``size x size`` uint8 image (blobs of colour, not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(12, 12, 3)).astype(np.float32)
    t = torch.from_numpy(coarse).permute(2, 0, 1)[None]
    img = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    img = img + rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
