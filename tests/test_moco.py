"""MemoryQueue, GlobalLocalMoCo (losses at init, momentum, ablations, shuffle-BN) and the export."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

from fewshot_priors.ssl.export import export_prior_extractor, load_prior_extractor
from fewshot_priors.ssl.moco import GlobalLocalMoCo, dense_features
from fewshot_priors.ssl.queue import MemoryQueue


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run faster (and steadier on a shared 2-core box) single-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- MemoryQueue
def ref_ring(size, batches, init):
    """Plain reference: write keys one by one at ptr, ptr += 1 mod size."""
    q = init.clone()
    ptr = 0
    for b in batches:
        for key in b:
            q[ptr] = key
            ptr = (ptr + 1) % size
    return q, ptr


@pytest.mark.parametrize("sizes", [[3, 4], [5, 5, 5], [2, 7, 1], [0, 12, 3]])
def test_queue_fifo_matches_ring_reference(sizes):
    size, dim = 5, 3
    qm = MemoryQueue(dim, size, seed=0)
    init = qm.queue.clone()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, dim, generator=g) for n in sizes]
    for b in batches:
        qm.enqueue(b)
    exp_q, exp_ptr = ref_ring(size, batches, init)
    torch.testing.assert_close(qm.queue, exp_q)
    assert int(qm.ptr) == exp_ptr


def test_queue_init_state_dict_and_errors():
    a = MemoryQueue(16, 100, seed=3)
    b = MemoryQueue(16, 100, seed=3)
    assert torch.equal(a.queue, b.queue) and not torch.equal(a.queue, MemoryQueue(16, 100, seed=4).queue)
    torch.testing.assert_close(a.queue.norm(dim=1), torch.ones(100))
    a.enqueue(F.normalize(torch.randn(7, 16), dim=1))
    sd = a.state_dict()
    assert set(sd) == {"queue", "ptr"}
    c = MemoryQueue(16, 100, seed=9)
    c.load_state_dict(sd)
    assert torch.equal(c.queue, a.queue) and int(c.ptr) == 7
    with pytest.raises(ValueError, match="keys"):
        a.enqueue(torch.randn(3, 15))
    with pytest.raises(ValueError, match="size"):
        MemoryQueue(4, 0)


# ----------------------------------------------------------------------------- model
def tiny(**kw):
    torch.manual_seed(0)
    args = dict(backbone="resnet18", dim=32, queue_size=256, local_queue_size=256, mlp_hidden=64, max_patches=8)
    args.update(kw)
    return GlobalLocalMoCo(**args)


def batch(B=4, S=64, P=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, S, S, generator=g)
    y = x + 0.1 * torch.randn(B, 3, S, S, generator=g)
    # patches: a P-cell grid, identical in both views
    side = int(math.ceil(math.sqrt(P)))
    cell = torch.arange(side * side).view(side, side).clamp(max=P - 1)
    lab = F.interpolate(cell[None, None].float(), size=(S, S), mode="nearest")[0, 0].long()
    lab = lab.expand(B, S, S).clone()
    return x, y, lab, lab.clone()


def predicted_init_loss(s0: torch.Tensor, K: int, D: int, tau: float) -> float:
    """E[-log softmax_0] with a random queue: K negatives n ~ uniform on S^{D-1}.

    For such n, q.n ~ approx N(0, 1/D), so sum_i exp(q.n_i/tau) ~= K exp(1/(2 D tau^2))
    (law of large numbers, relative std ~ 1/sqrt(K)); the positive contributes exp(s0/tau).
    With s0 = 0 this is log(1 + K) up to the small Gaussian factor.
    """
    neg = K * math.exp(1 / (2 * D * tau**2))
    return float(torch.log1p(neg * torch.exp(-s0.double() / tau)).mean())


def test_loss_at_init_matches_log_queue_size():
    K, D, tau = 65536, 128, 0.2
    m = tiny(dim=D, queue_size=K, local_queue_size=K, shuffle_bn="none").eval()
    x, y, la, lb = batch()
    with torch.no_grad():
        out = m(x, y, la, lb)
        # positive similarities of the same (eval-mode, key == query) encoders
        fq, fk = dense_features(m.encoder, x), dense_features(m.key_encoder, y)
        s0 = (F.normalize(m.global_head(fq.mean((2, 3))), dim=1) * F.normalize(m.key_global_head(fk.mean((2, 3))), dim=1)).sum(1)
    # The loss must equal log(1 + K * e^{1/(2 D tau^2)} * e^{-s0/tau}); with K = 65536 the
    # random-queue sum concentrates to ~0.5 %, so 0.05 nats is a safe but tight tolerance.
    assert abs(float(out["loss_global"]) - predicted_init_loss(s0, K, D, tau)) < 0.05
    # and it sits between log(1+K) - 1/tau (perfectly aligned positive) and log(1+K)
    assert math.log1p(K) - 1 / tau - 0.2 < float(out["loss_global"]) < math.log1p(K) + 0.2
    assert math.log1p(K) - 1 / tau - 0.2 < float(out["loss_local"]) < math.log1p(K) + 0.2
    assert int(out["num_patches"]) == 4 * 8
    assert torch.isclose(out["loss"], out["loss_global"] + out["loss_local"])


def test_training_step_momentum_update_enqueue_and_gradients():
    m = tiny(momentum=0.9).train()
    with torch.no_grad():  # make query and key encoders differ
        for p in m.encoder.parameters():
            p.add_(0.01)
    q_before = {n: p.detach().clone() for n, p in m.encoder.named_parameters()}
    k_before = {n: p.detach().clone() for n, p in m.key_encoder.named_parameters()}
    x, y, la, lb = batch()
    out = m(x, y, la, lb)
    for n, p in m.key_encoder.named_parameters():
        torch.testing.assert_close(p, 0.9 * k_before[n] + 0.1 * q_before[n])
        assert not p.requires_grad
    assert int(m.queue.ptr) == 4 and int(m.local_queue.ptr) == int(out["num_patches"]) == 32
    out["loss"].backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
    assert all(p.grad is not None for p in m.global_head.parameters())
    assert all(p.grad is not None for p in m.local_head.parameters())
    assert all(p.grad is None for p in m.key_encoder.parameters())
    # eval mode: no update, no enqueue
    m.eval()
    snap = m.queue.queue.clone()
    m(x, y, la, lb)
    assert torch.equal(snap, m.queue.queue) and int(m.queue.ptr) == 4


def test_ablation_switches():
    x, y, la, lb = batch()
    g_only = tiny(local_weight=0.0)
    assert g_only.local_head is None and g_only.local_queue is None
    out = g_only(x, y)  # labels not needed
    assert float(out["loss_local"]) == 0 and math.isnan(float(out["acc_local"]))
    assert torch.isclose(out["loss"], out["loss_global"])
    l_only = tiny(global_weight=0.0)
    assert l_only.global_head is None and l_only.queue is None
    out = l_only(x, y, la, lb)
    assert float(out["loss_global"]) == 0 and torch.isclose(out["loss"], out["loss_local"])
    with pytest.raises(ValueError, match="labels_a"):
        l_only(x, y)
    with pytest.raises(ValueError, match="weight"):
        tiny(global_weight=0.0, local_weight=0.0)
    with pytest.raises(ValueError, match="shuffle_bn"):
        tiny(shuffle_bn="sync")


def test_vanished_patch_is_dropped_from_local_loss():
    m = tiny()
    x, y, la, lb = batch(B=2)
    lb[0][lb[0] == 3] = -1  # patch 3 of image 0 vanished in view b
    out = m(x, y, la, lb)
    assert int(out["num_patches"]) == 2 * 8 - 1


def test_split_shuffle_bn_is_exact_permutation_inverse():
    """With BN in eval mode the key features do not depend on batch composition,
    so shuffle -> chunked forward -> unshuffle must equal a plain forward."""
    m = tiny(shuffle_bn="split", bn_splits=2)
    m.eval()
    x = torch.randn(6, 3, 64, 64)
    assert m.resolved_shuffle_bn(6) == "split" and m.resolved_shuffle_bn(3) == "none"
    torch.testing.assert_close(m._key_features(x), dense_features(m.key_encoder, x), atol=1e-5, rtol=1e-5)
    # in train mode the BN statistics come from the chunks -> features differ from a plain forward
    m.train()
    assert not torch.allclose(m._key_features(x), dense_features(m.key_encoder, x), atol=1e-4)
    with pytest.raises(RuntimeError, match="distributed"):
        tiny(shuffle_bn="ddp").resolved_shuffle_bn(4)


def test_export_prior_extractor_keys_match_timm(tmp_path):
    m = tiny()
    path = m.export_prior_extractor(tmp_path / "sub" / "prior.safetensors")
    sd, meta = load_prior_extractor(path)
    # the input normalisation the encoder was trained with travels in the file (resnet18: timm's ImageNet cfg)
    assert meta == {"format": "fewshot_priors.prior_extractor", "backbone": "resnet18",
                    "mean": "[0.485, 0.456, 0.406]", "std": "[0.229, 0.224, 0.225]"}
    full = timm.create_model("resnet18", pretrained=False)
    head = full.pretrained_cfg["classifier"]
    expected = {k for k in full.state_dict() if not k.startswith(head + ".")}
    assert set(sd) == expected
    # loads strictly into a headless timm model and reproduces the encoder's features
    enc = timm.create_model("resnet18", pretrained=False, num_classes=0)
    enc.load_state_dict(sd, strict=True)
    enc.eval(), m.encoder.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(enc.forward_features(x), m.encoder.forward_features(x))
    # and into a full timm model once the head is ignored
    missing, unexpected = full.load_state_dict(sd, strict=False)
    assert set(missing) == {f"{head}.weight", f"{head}.bias"} and not unexpected
    with pytest.raises(ValueError, match="backbone"):
        export_prior_extractor(enc, tmp_path / "x.safetensors")


def test_export_writes_the_momentum_encoder_by_default(tmp_path):
    """The official QGNet takes MoCo's momentum encoder (encoder_k) as prior extractor."""
    m = tiny()
    with torch.no_grad():  # after init the key encoder is a copy of the query encoder
        for p in m.key_encoder.parameters():
            p.add_(torch.randn_like(p))
    default, _ = load_prior_extractor(m.export_prior_extractor(tmp_path / "k.safetensors"))
    query, _ = load_prior_extractor(m.export_prior_extractor(tmp_path / "q.safetensors", encoder="query"))
    key_sd, query_sd = m.key_encoder.state_dict(), m.encoder.state_dict()
    assert all(torch.equal(default[k], key_sd[k]) for k in key_sd)
    assert all(torch.equal(query[k], query_sd[k]) for k in query_sd)
    assert not torch.equal(default["conv1.weight"], query["conv1.weight"])
    assert m.prior_encoder() is m.key_encoder and m.prior_encoder("query") is m.encoder
    with pytest.raises(ValueError, match="encoder"):
        m.export_prior_extractor(tmp_path / "x.safetensors", encoder="momentum")


# ----------------------------------------------------------------------------- DDP (2 CPU processes, gloo)
def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        m = tiny(shuffle_bn="ddp", queue_size=16, local_queue_size=64)
        x, y, la, lb = batch(B=2, seed=rank)  # different data per rank
        # (1) shuffle-BN across ranks is an exact permutation inverse (BN in eval mode)
        m.eval()
        exact = torch.allclose(m._key_features(y), dense_features(m.key_encoder, y), atol=1e-5, rtol=1e-5)
        # (2) a training step enqueues the keys of *all* ranks, in rank order, on every rank
        m.train()
        lb[0][lb[0] == 1] = -1  # rank-dependent patch counts exercise the variable-size gather
        if rank == 1:
            lb[1][lb[1] == 2] = -1
        out_d = m(x, y, la, lb)
        sizes = [torch.zeros((), dtype=torch.long) for _ in range(world)]
        dist.all_gather(sizes, out_d["num_patches"])
        queues = [torch.empty_like(m.local_queue.queue) for _ in range(world)]
        dist.all_gather(queues, m.local_queue.queue)
        gq = [torch.empty_like(m.queue.queue) for _ in range(world)]
        dist.all_gather(gq, m.queue.queue)
        if rank == 0:
            torch.save(
                {
                    "exact": exact,
                    "same_local": torch.equal(queues[0], queues[1]),
                    "same_global": torch.equal(gq[0], gq[1]),
                    "local_ptr": int(m.local_queue.ptr),
                    "global_ptr": int(m.queue.ptr),
                    "sizes": [int(s) for s in sizes],
                },
                out,
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # spawns two processes (~10 s)
def test_ddp_shuffle_bn_and_queue_gather(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "res.pt")
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    r = torch.load(out)
    assert r["exact"] and r["same_local"] and r["same_global"]
    assert r["sizes"] == [15, 14]  # 2 images x 8 patches, minus the dropped ones
    assert r["global_ptr"] == 4 and r["local_ptr"] == (15 + 14) % 64


@pytest.mark.parametrize("bad_view", ["a", "b"])
def test_one_nan_batch_does_not_poison_the_queues_or_batchnorm(bad_view):
    m = tiny().train()
    x, y, la, lb = batch()
    m(x, y, la, lb)  # one clean step fills part of the queues
    q_snap, l_snap = m.queue.queue.clone(), m.local_queue.queue.clone()
    ptrs = (int(m.queue.ptr), int(m.local_queue.ptr))
    bn = {n: b.clone() for n, b in m.encoder.named_buffers()}
    xa, xb = x.clone(), y.clone()
    (xa if bad_view == "a" else xb)[0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        out = m(xa, xb, la, lb)
    assert not torch.isfinite(out["loss"])  # returned as is: the caller's NaN handling sees it
    assert torch.equal(m.queue.queue, q_snap) and torch.equal(m.local_queue.queue, l_snap)
    assert (int(m.queue.ptr), int(m.local_queue.ptr)) == ptrs
    for n, b in m.encoder.named_buffers():
        assert torch.equal(b, bn[n]), n
    # the next clean batch is finite again, and its keys are enqueued
    out = m(x, y, la, lb)
    assert torch.isfinite(out["loss"]) and torch.isfinite(out["loss_global"]) and torch.isfinite(out["loss_local"])
    assert torch.isfinite(m.queue.queue).all() and torch.isfinite(m.local_queue.queue).all()
    assert int(m.queue.ptr) == (ptrs[0] + 4) % m.queue.size
    m.eval()
    assert torch.isfinite(m(x, y, la, lb)["loss"])  # eval-mode BatchNorm statistics are finite too


def test_returns_detached_normalised_embeddings():
    m = tiny().train()
    x, y, la, lb = batch()
    out = m(x, y, la, lb)
    assert out["z_global_q"].shape == out["z_global_k"].shape == (4, m.dim)
    assert out["z_local_q"].shape == (int(out["num_patches"]), m.dim) == out["z_local_k"].shape
    for k in ("z_global_q", "z_global_k", "z_local_q", "z_local_k"):
        assert not out[k].requires_grad
        torch.testing.assert_close(out[k].norm(dim=1), torch.ones(out[k].shape[0]))


@pytest.mark.parametrize("which", ["labels_a", "labels_b"])
def test_wrong_size_superpixel_maps_are_rejected_by_name(which):
    m = tiny()
    x, y, la, lb = batch()
    small = {"labels_a": la, "labels_b": lb}
    small[which] = small[which][:, ::2, ::2]
    with pytest.raises(ValueError, match=f"`{which}` must be the B, S, S superpixel map"):
        m(x, y, small["labels_a"], small["labels_b"])
    small[which] = (la if which == "labels_a" else lb)[:2]  # wrong batch size
    with pytest.raises(ValueError, match=f"`{which}`"):
        m(x, y, small["labels_a"], small["labels_b"])


def test_empty_queue_yields_only_written_keys_and_keeps_the_state_dict():
    q = MemoryQueue(4, 6, init="empty")
    assert q.negatives().shape == (0, 4) and q.filled() == 0
    keys = [F.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(n)), dim=1) for n in (4, 3)]
    q.enqueue(keys[0])
    torch.testing.assert_close(q.negatives(), keys[0])
    q.enqueue(keys[1])  # wraps: full now, no NaN row left
    assert q.filled() == 6 and torch.isfinite(q.negatives()).all()
    torch.testing.assert_close(q.negatives()[0], keys[1][2])  # the oldest row was overwritten
    assert set(q.state_dict()) == {"queue", "ptr"}
    r = MemoryQueue(4, 6, init="empty")
    r.load_state_dict(q.state_dict())
    assert torch.equal(r.negatives(), q.negatives())
    with pytest.raises(ValueError, match="`init`"):
        MemoryQueue(4, 6, init="zeros")


def test_empty_queue_model_first_step_has_no_negatives_then_real_ones():
    m = tiny(queue_init="empty").train()
    x, y, la, lb = batch()
    out = m(x, y, la, lb)
    # no negatives yet: the positive is the only logit
    assert float(out["loss_global"].detach()) == pytest.approx(0.0, abs=1e-6) and float(out["acc_global"]) == 1.0
    assert m.queue.negatives().shape == (4, m.dim)
    out = m(x, y, la, lb)
    # now 4 real keys (the same images, one step older) compete with each positive
    assert 0 < float(out["loss_global"].detach()) <= math.log1p(4) + 1 / m.temperature + 1e-4
    assert torch.isfinite(out["loss"])
