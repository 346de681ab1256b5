"""superpixel_pool, info_nce and momentum_update against plain references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fewshot_priors.ops.contrastive import info_nce, momentum_update
from fewshot_priors.ops.superpixel_pool import superpixel_pool


# ----------------------------------------------------------------------------- superpixel_pool
def ref_pool_nearest(feats, labels, P):
    B, C, h, w = feats.shape
    H, W = labels.shape[-2:]
    out = torch.zeros(B, P, C, dtype=torch.float64)
    valid = torch.zeros(B, P, dtype=torch.bool)
    for b in range(B):
        for j in range(P):
            acc, n = torch.zeros(C, dtype=torch.float64), 0
            for y in range(h):
                for x in range(w):
                    if int(labels[b, (y * H) // h, (x * W) // w]) == j:  # nearest = floor(dst * in / out)
                        acc += feats[b, :, y, x].double()
                        n += 1
            if n:
                out[b, j], valid[b, j] = acc / n, True
    return out, valid


def ref_pool_area(feats, labels, P):
    """Upsample features to label size by cell replication (area partition) and average per id."""
    B, C, h, w = feats.shape
    H, W = labels.shape[-2:]
    out = torch.zeros(B, P, C, dtype=torch.float64)
    valid = torch.zeros(B, P, dtype=torch.bool)
    for b in range(B):
        for j in range(P):
            ys, xs = torch.nonzero(labels[b] == j, as_tuple=True)
            if len(ys):
                cells = feats[b][:, (ys * h) // H, (xs * w) // W].double()
                out[b, j], valid[b, j] = cells.mean(1), True
    return out, valid


@pytest.mark.parametrize("mode,ref", [("nearest", ref_pool_nearest), ("area", ref_pool_area)])
@pytest.mark.parametrize("size", [(12, 16), (13, 17)])
def test_superpixel_pool_matches_loop_reference(mode, ref, size):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 7, (2, *size), generator=g)
    labels[1][labels[1] == 3] = 4  # id 3 absent in image 1 -> invalid
    got, valid = superpixel_pool(feats, labels, 9, mode=mode)
    exp, exp_valid = ref(feats, labels, 9)
    assert torch.equal(valid, exp_valid)
    assert not valid[1, 3] and not valid[:, 7:].any()
    torch.testing.assert_close(got, exp)
    assert (got[~valid] == 0).all()


def test_superpixel_pool_gradient():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(-1, 5, (1, 6, 8), generator=g)
    torch.autograd.gradcheck(lambda f: superpixel_pool(f, labels, 5, "area")[0], (feats,))
    torch.autograd.gradcheck(lambda f: superpixel_pool(f, labels, 5, "nearest")[0], (feats,))


def test_superpixel_pool_constant_patch_gives_its_value():
    feats = torch.zeros(1, 2, 2, 2)
    feats[0, :, 0, 0] = torch.tensor([1.0, 2.0])
    labels = torch.full((1, 4, 4), 1)
    labels[0, :2, :2] = 0  # exactly the top-left feature cell
    pooled, valid = superpixel_pool(feats, labels, 2, "area")
    assert valid.all()
    torch.testing.assert_close(pooled[0, 0], torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(pooled[0, 1], torch.tensor([1.0, 2.0]) * 0)


def test_superpixel_pool_bad_input():
    f = torch.randn(1, 2, 3, 3)
    with pytest.raises(TypeError, match="labels"):
        superpixel_pool(f, torch.zeros(1, 3, 3), 2)
    with pytest.raises(ValueError, match="num_segments"):
        superpixel_pool(f, torch.full((1, 3, 3), 5), 2)
    with pytest.raises(ValueError, match="labels"):
        superpixel_pool(f, torch.zeros(3, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="batch size"):
        superpixel_pool(f, torch.zeros(2, 3, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="mode"):
        superpixel_pool(f, torch.zeros(1, 3, 3, dtype=torch.long), 2, mode="bilinear")


# ----------------------------------------------------------------------------- info_nce
def ref_info_nce(q, k, neg, t):
    q, k, neg = (torch.nn.functional.normalize(x.double(), dim=-1) for x in (q, k, neg))
    losses = []
    for n in range(q.shape[0]):
        negs = neg if neg.dim() == 2 else neg[n]
        pos = math.exp(float(q[n] @ k[n]) / t)
        den = pos + sum(math.exp(float(q[n] @ v) / t) for v in negs)
        losses.append(-math.log(pos / den))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("per_query", [False, True])
def test_info_nce_matches_reference(per_query):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    neg = torch.randn(6, 10, 8, generator=g) if per_query else torch.randn(10, 8, generator=g)
    got = info_nce(q, k, neg, 0.2)
    assert abs(float(got) - ref_info_nce(q, k, neg, 0.2)) < 1e-4


def test_info_nce_details_and_gradient():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 4, generator=g, requires_grad=True)
    k = q.detach().clone()  # positive identical -> similarity 1, always the winner vs random negatives?
    neg = -k.repeat(3, 1)  # antipodal negatives -> positive strictly wins
    res = info_nce(q, k, neg, 0.5, return_details=True)
    assert float(res.accuracy) == 1.0 and res.logits.shape == (5, 16)
    torch.testing.assert_close(res.logits[:, 0], torch.full((5,), 2.0))
    res.loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # swap roles: the positive is the worst -> accuracy 0
    res2 = info_nce(q.detach(), -k, k, 0.5, return_details=True)
    assert float(res2.accuracy) == 0.0


def test_info_nce_uniform_logits_is_log_one_plus_k():
    q = torch.tensor([[1.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0]]).repeat(31, 1)
    k = torch.tensor([[0.0, 1.0]])  # orthogonal like all negatives -> all logits equal
    assert abs(float(info_nce(q, k, neg, 0.07)) - math.log(32)) < 1e-5


def test_info_nce_bad_input_and_empty():
    with pytest.raises(ValueError, match="embedding dim"):
        info_nce(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(2, 3), torch.randn(2, 3), torch.randn(4, 3), 0.0)
    with pytest.raises(ValueError, match="number of queries"):
        info_nce(torch.randn(2, 3), torch.randn(3, 3), torch.randn(4, 3))
    q = torch.randn(0, 3, requires_grad=True)
    loss = info_nce(q, torch.randn(0, 3), torch.randn(4, 3))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


# ----------------------------------------------------------------------------- momentum_update
def test_momentum_update_math_and_buffers():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # move BN running stats
    before = {n: p.detach().clone() for n, p in target.named_parameters()}
    momentum_update(online, target, 0.9)
    for n, p in target.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * dict(online.named_parameters())[n])
    for (n, b), (_, bo) in zip(target.named_buffers(), online.named_buffers()):
        assert torch.equal(b, bo), n
    momentum_update(online, target, 0.0)
    for p, po in zip(target.parameters(), online.parameters()):
        assert torch.equal(p, po)
    snap = [p.clone() for p in target.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    momentum_update(online, target, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(snap, target.parameters()))


def test_momentum_update_rejects_mismatch():
    with pytest.raises(ValueError, match="m"):
        momentum_update(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)
    with pytest.raises(ValueError, match="parameter"):
        momentum_update(nn.Linear(2, 2), nn.Linear(2, 3), 0.5)
    with pytest.raises(ValueError, match="different parameters"):
        momentum_update(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)
