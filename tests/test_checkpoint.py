"""Checkpoint format: round trips, exact optimizer state, corruption detection, atomicity."""

from __future__ import annotations

import json
import os
import random
import stat
import time

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_priors.engine import checkpoint as ckpt
from fewshot_priors.engine.checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_paths,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def _train_steps(model, opt, sched=None, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.rand(2, 3, 8, 8, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_model_round_trip_and_meta(tmp_path):
    m = _model()
    _train_steps(m, torch.optim.SGD(m.parameters(), lr=0.1))  # also changes BN buffers
    meta = {"config": {"lr": 0.025, "bins": [60, 30]}, "step": 7, "tensor_in_meta": torch.arange(3)}
    path = save_checkpoint(tmp_path / "run" / "last", model=m, meta=meta, extra_tensors={"queue": torch.ones(4, 2)})
    assert path.name == "last.safetensors" and (tmp_path / "run" / "last.json").is_file()

    m2 = _model(seed=5)
    out = load_checkpoint(tmp_path / "run" / "last.json", model=m2)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    assert out["meta"]["config"] == {"lr": 0.025, "bins": [60, 30]} and out["meta"]["step"] == 7
    assert torch.equal(out["meta"]["tensor_in_meta"], torch.arange(3))
    assert torch.equal(out["extra_tensors"]["queue"], torch.ones(4, 2))


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.8, 0.95)),
])
def test_optimizer_and_scheduler_round_trip_is_exact(tmp_path, make_opt):
    """Saving mid-training and resuming gives bit-identical parameters to continuing."""
    m = _model()
    opt = make_opt(m.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / 10) ** 0.9)
    _train_steps(m, opt, sched, n=3)
    save_checkpoint(tmp_path / "c", model=m, optimizer=opt, scheduler=sched)

    m2 = _model(seed=9)
    opt2 = make_opt(m2.parameters())
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: (1 - s / 10) ** 0.9)
    load_checkpoint(tmp_path / "c", model=m2, optimizer=opt2, scheduler=sched2)
    assert sched2.last_epoch == sched.last_epoch
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]

    _train_steps(m, opt, sched, n=3, seed=2)
    _train_steps(m2, opt2, sched2, n=3, seed=2)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_rng_state_round_trip(tmp_path):
    m = _model()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    state = capture_rng_state()
    json.dumps(state)  # JSON-serialisable
    save_checkpoint(tmp_path / "c", model=m, rng_state=state)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng_state(load_checkpoint(tmp_path / "c")["rng_state"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_truncated_file_is_reported(tmp_path):
    save_checkpoint(tmp_path / "c", model=_model())
    f = tmp_path / "c.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*truncated"):
        load_checkpoint(tmp_path / "c", model=_model())


def test_hash_mismatch_is_reported(tmp_path):
    save_checkpoint(tmp_path / "c", model=_model())
    f = tmp_path / "c.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*SHA-256"):
        load_checkpoint(tmp_path / "c", model=_model())


def test_corrupt_sidecar_and_missing_files(tmp_path):
    save_checkpoint(tmp_path / "c", model=_model())
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"c\.json.*JSON"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")


def test_mismatched_model_is_reported(tmp_path):
    save_checkpoint(tmp_path / "c", model=_model())
    with pytest.raises(CheckpointError, match=r"c\.safetensors.*does not fit"):
        load_checkpoint(tmp_path / "c", model=nn.Linear(2, 2))
    # non-strict partial loading works
    out = load_checkpoint(tmp_path / "c", model=nn.Linear(2, 2), strict=False)
    assert "0.weight" in out["model_state"]


def test_failure_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = _model()
    save_checkpoint(tmp_path / "c", model=m, meta={"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_fsync = ckpt.os.fsync
    calls = {"n": 0}

    def failing_fsync(fd):
        calls["n"] += 1
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", failing_fsync)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c", model=m, meta={"step": 2})
    monkeypatch.setattr(ckpt.os, "fsync", real_fsync)
    assert calls["n"] == 1
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # old files untouched, no temp files left behind
    assert load_checkpoint(tmp_path / "c", model=_model())["meta"]["step"] == 1


def test_interrupt_between_renames_completes_the_pair(tmp_path, monkeypatch):
    """An exception after the tensors' rename still moves the sidecar into place: never a mixed pair."""
    save_checkpoint(tmp_path / "c", model=_model(), meta={"step": 1})
    real = ckpt.os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the sidecar's rename, first attempt
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c", model=_model(seed=4), meta={"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c", model=_model())["meta"]["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_killed_between_renames_is_detected_then_completed(tmp_path, monkeypatch):
    """New tensors + old sidecar + the new sidecar as a temp (what SIGKILL between the renames
    leaves): loading refuses the mix, clean_stale_temp_files moves the sidecar into place."""
    save_checkpoint(tmp_path / "c", model=_model(), meta={"step": 1})
    real = ckpt.os.replace

    def replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("killed")  # the sidecar rename never happens (the retry fails too)
        real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError, match="killed"):
        save_checkpoint(tmp_path / "c", model=_model(seed=4), meta={"step": 2})
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="SHA-256|size"):
        load_checkpoint(tmp_path / "c")
    (temp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert ckpt.clean_stale_temp_files(tmp_path) == []  # written by this (live) process: kept
    dead = temp.with_name(temp.name.replace(f".{os.getpid()}-", ".999999999-"))
    temp.rename(dead)
    assert ckpt.clean_stale_temp_files(tmp_path) == [dead]
    assert load_checkpoint(tmp_path / "c", model=_model())["meta"]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.safetensors"]


def test_stale_temp_files_of_dead_writers_are_removed_and_nothing_else(tmp_path):
    save_checkpoint(tmp_path / "last", model=_model(), meta={"step": 1})
    blob = b"x" * 100
    dead = tmp_path / ".last.safetensors.999999999-abc123_x.tmp"
    legacy_old = tmp_path / ".last.safetensors.k2j3h4g5.tmp"  # earlier versions: no pid
    legacy_new = tmp_path / ".best.json.q9w8e7r6.tmp"
    live = tmp_path / f".last.safetensors.{os.getpid()}-zzz.tmp"
    bad_sidecar = tmp_path / ".last.json.999999999-abc.tmp"  # does not match the tensors: deleted
    others = [tmp_path / "notes.tmp", tmp_path / ".hidden.tmp", tmp_path / "last.safetensors.tmp"]
    for p in (dead, legacy_old, legacy_new, live, bad_sidecar, *others):
        p.write_bytes(blob)
    bad_sidecar.write_text('{"format": "fewshot_priors.checkpoint", "tensors_file": "last.safetensors", '
                           '"bytes": 1, "sha256": "0"}')
    old = time.time() - 3600
    os.utime(legacy_old, (old, old))
    removed = ckpt.clean_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([dead, legacy_old, bad_sidecar])
    for p in (legacy_new, live, *others):
        assert p.exists(), p
    assert load_checkpoint(tmp_path / "last", model=_model())["meta"]["step"] == 1


def test_checkpoint_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        tensors = save_checkpoint(tmp_path / "c", model=_model(), meta={"step": 1})
    finally:
        os.umask(previous)
    for p in checkpoint_paths(tensors):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
    previous = os.umask(0o002)
    try:
        save_checkpoint(tmp_path / "c", model=_model(), meta={"step": 2})
    finally:
        os.umask(previous)
    for p in checkpoint_paths(tensors):
        assert stat.S_IMODE(p.stat().st_mode) == 0o664, p


def test_unserialisable_meta_is_rejected(tmp_path):
    with pytest.raises(CheckpointError, match="meta/fn"):
        save_checkpoint(tmp_path / "c", model=_model(), meta={"fn": object()})


def test_read_checkpoint_meta_reads_the_sidecar_alone(tmp_path):
    from fewshot_priors.engine.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint

    save_checkpoint(tmp_path / "ck", model=torch.nn.Linear(2, 2), meta={"step": 3, "total_steps": 9})
    (tmp_path / "ck.safetensors").unlink()  # the tensors are not read
    assert read_checkpoint_meta(tmp_path / "ck") == {"step": 3, "total_steps": 9}
    with pytest.raises(CheckpointError, match="tensor file not found"):
        load_checkpoint(tmp_path / "ck", model=torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="sidecar not found"):
        read_checkpoint_meta(tmp_path / "nope")
