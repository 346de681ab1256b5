"""Fault injection: training killed at random points (inside a step, inside a checkpoint write,
between the two renames of a save, by a real SIGKILL) and restarted the way a user would
(``resume`` if a ``last`` checkpoint exists, else ``overwrite``) ends bit-for-bit where an
uninterrupted run ends: same final weights, optimizer state and loss log."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from fewshot_priors.engine.checkpoint import load_checkpoint

CHILD = r'''
import os, sys, time
from pathlib import Path

import torch
from torch import nn

import fewshot_priors.engine.checkpoint as ckpt
from fewshot_priors.config import load_config
from fewshot_priors.engine.evaluate import collate_eval
from fewshot_priors.engine.train import train

torch.set_num_threads(1)
out, fault = Path(sys.argv[1]), sys.argv[2]
kind, _, arg = fault.partition(":")


class Episodes(torch.utils.data.Dataset):
    class_ids = [1, 2]

    def __len__(self):
        return 12

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        img = torch.randn(3, 8, 8, generator=g) + 0.1 * torch.randn(3, 8, 8)  # global-RNG "augmentation"
        sup = torch.rand(1, 3, 8, 8, generator=g)
        return {"query_image": img, "query_mask": (img[0] > 0).long(), "support_images": sup,
                "support_masks": (sup[:, 0] > 0).long(), "class_id": 1 + i % 2}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 2, 1))
        self.calls = 0

    def forward(self, query_image, support_images, support_masks, query_mask=None):
        self.calls += 1
        if kind == "step" and self.calls == int(arg):
            os._exit(137)  # killed inside a step (after the forward pass started)
        if kind == "slow":
            time.sleep(0.05)
        proto = (support_images[:, 0] * support_masks[:, :1]).mean((2, 3), keepdim=True)
        sim = torch.cosine_similarity(query_image, proto, dim=1).unsqueeze(1)
        logits = self.head(torch.cat([query_image, sim], 1))
        out = {"logits": logits}
        if query_mask is not None:
            out["loss"] = nn.functional.cross_entropy(logits, query_mask)
        return out


count = {"n": 0}
if kind == "write":  # killed while writing a checkpoint's temp file (half of it on disk)
    import fewshot_priors._io as fio

    real_write = fio.write_temp

    def write(path, data):
        count["n"] += 1
        if count["n"] == int(arg):
            import tempfile
            fd, _ = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
            os.write(fd, data[: len(data) // 2])
            os._exit(137)
        return real_write(path, data)

    fio.write_temp = write
if kind == "replace":  # killed just before a rename: odd = before the tensors', even = between the two
    real_replace = os.replace

    def replace(src, dst):
        count["n"] += 1
        if count["n"] == int(arg):
            os._exit(137)
        return real_replace(src, dst)

    ckpt.os.replace = replace

cfg = load_config(None, {"train.epochs": 4, "train.batch_size": 4, "train.lr": 0.05, "train.log_every": 1,
                         "train.val_every": 0, "train.ckpt_every_steps": 1, "data.num_workers": 0,
                         "experiment.seed": 5})
resume = (out / "last.json").is_file()
torch.manual_seed(0 if not resume else 99)  # a resumed run must take its weights from the checkpoint
model = Model()
print("ready", flush=True)
res = train(cfg, model=model, train_set=Episodes(), collate_fn=collate_eval, output_dir=out, progress=False,
            resume=True if resume else None, overwrite=not resume)
print("done", res["step"], flush=True)
'''


def _child(script: Path, out: Path, fault: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(script), str(out), fault], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _run(script: Path, out: Path, fault: str) -> int:
    p = _child(script, out, fault)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode in (0, 137), stderr
    if p.returncode == 0:
        assert "done 12" in stdout, stdout + stderr
    return p.returncode


def _losses(path: Path) -> list[tuple[str, str]]:
    with open(path) as f:
        return [(r["step"], r["value"]) for r in csv.DictReader(f) if r["tag"] == "train/loss"]


def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    assert _run(script, tmp_path / "ref", "none") == 0

    rng = random.Random(13)  # seeded "random" kill points; 12 steps, a save after every step
    # inside a step; inside a checkpoint's temp file; between the tensors' and the sidecar's rename
    faults = [f"step:{rng.randint(2, 5)}", f"write:{rng.randint(1, 4)}", f"replace:{2 * rng.randint(1, 3)}"]
    out = tmp_path / "run"
    for fault in faults:
        assert _run(script, out, fault) == 137, fault
    # and a real SIGKILL after a seeded delay once the child is running
    p = _child(script, out, "slow")
    assert p.stdout.readline().strip() == "ready"
    time.sleep(rng.uniform(0.2, 1.0))
    p.kill()
    p.communicate(timeout=60)
    while _run(script, out, "none") != 0:  # pragma: no cover - "none" never exits 137
        pass

    ref, got = load_checkpoint(tmp_path / "ref" / "last"), load_checkpoint(out / "last")
    assert got["meta"]["step"] == ref["meta"]["step"] == 12
    assert ref["model_state"].keys() == got["model_state"].keys()
    for k, v in ref["model_state"].items():
        assert torch.equal(v, got["model_state"][k]), k
    assert (out / "last.safetensors").read_bytes() == (tmp_path / "ref" / "last.safetensors").read_bytes()
    assert _losses(out / "scalars.csv") == _losses(tmp_path / "ref" / "scalars.csv")
    assert not [f.name for f in out.iterdir() if f.name.endswith(".tmp")]  # no temp file left behind
