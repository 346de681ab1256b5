"""The pretraining loop: learning signal vs. an untrained control, exact resume, export, config."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fewshot_priors.data.unlabeled import list_images
from fewshot_priors.ssl.dataset import UnlabeledImages
from fewshot_priors.engine.checkpoint import checkpoint_paths, load_checkpoint
from fewshot_priors.engine.pretrain import cosine_scheduler, pretrain
from fewshot_priors.ssl.moco import GlobalLocalMoCo
from fewshot_priors.ssl.superpixels import SuperpixelPatchSampler, build_superpixel_cache


def make_images(folder, n=32, size=64, seed=0):
    """Colour-gradient backgrounds with 4 random flat ellipses/rectangles each (JPEG)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, size)[None, :, None]
        im = Image.fromarray((c0 * (1 - t) + c1 * t).repeat(size, 0).astype(np.uint8))
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = rng.integers(0, size - 16, 2)
            w, h = rng.integers(10, size // 2, 2)
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=fill)
        im.save(folder / f"img_{i:03d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("unlabeled") / "JPEGImages")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = dict(
    backbone="resnet10t",
    backbone_kwargs={"output_stride": 8},
    size=48,
    batch_size=8,
    epochs=10,
    dim=32,
    mlp_hidden=64,
    queue_size=8,
    local_queue_size=64,
    moco_momentum=0.9,
    max_patches=16,
    n_segments=16,
)


def run(out, resume=None, seed=0, **fields):
    """pretrain() with the config tree: ``fields`` is the pretrain section, out/seed the experiment's."""
    cfg = {"experiment": {"output_dir": str(out), "seed": seed}, "pretrain": fields}
    return pretrain(cfg, resume=resume, progress=False, tensorboard=False)


def last_window(history, key):
    return history[-1][key]


@pytest.mark.slow  # two 30-step CPU runs, ~15-25 s in all: the smallest run that shows learning
def test_short_pretraining_beats_untrained_control(images, tmp_path):
    """30 SGD steps lift the positive-pair accuracy of both losses far above chance (1/(1+K))
    and far above the same pipeline with lr = 0 (a random encoder's features already beat
    chance, so that control is the honest baseline)."""
    kw = dict(TINY, images=str(images), max_steps=30, log_every=10)
    trained = run(tmp_path / "trained", lr=0.05, **kw)
    control = run(tmp_path / "control", lr=0.0, **kw)
    tg, tl = last_window(trained["history"], "acc_global"), last_window(trained["history"], "acc_local")
    cg, cl = last_window(control["history"], "acc_global"), last_window(control["history"], "acc_local")
    chance_g, chance_l = 1 / (1 + TINY["queue_size"]), 1 / (1 + TINY["local_queue_size"])
    assert tg > max(0.6, 5 * chance_g) and tl > max(0.4, 20 * chance_l), (tg, tl)
    assert tg > cg + 0.3 and tl > cl + 0.3, (tg, cg, tl, cl)
    assert trained["prior_extractor"] and (tmp_path / "trained" / "scalars.csv").exists()


def _scalars(path):
    with open(path) as f:
        return [r for r in csv.reader(f) if r[1] != "pretrain/steps_per_s"]


def test_resume_is_bit_exact(images, tmp_path):
    kw = dict(TINY, images=str(images), size=32, batch_size=4, epochs=1, log_every=1, lr=0.05)
    full = run(tmp_path / "full", max_steps=5, **kw)
    part = run(tmp_path / "part", max_steps=2, **kw)
    assert part["step"] == 2
    resumed = run(tmp_path / "part", max_steps=5, resume=True, **kw)
    assert resumed["step"] == full["step"] == 5
    a = load_checkpoint(full["last"])["model_state"]
    b = load_checkpoint(resumed["last"])["model_state"]
    assert a.keys() == b.keys() and any(k.endswith("local_queue.queue") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the queues really moved (the comparison above is not between two untouched inits)
    assert int(a["queue.ptr"]) == (5 * 4) % TINY["queue_size"]
    assert _scalars(tmp_path / "full" / "scalars.csv") == _scalars(tmp_path / "part" / "scalars.csv")
    from safetensors.torch import load_file

    ea, eb = load_file(full["prior_extractor"]), load_file(resumed["prior_extractor"])
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # the export is the momentum (key) encoder, as the official QGNet's prior extractor
    assert all(torch.equal(ea[k], a[f"key_encoder.{k}"]) for k in ea)
    assert not all(torch.equal(ea[k], a[f"encoder.{k}"]) for k in ea)
    # the export plugs into the QGNet backbone factory
    from fewshot_priors.models.backbone import create_backbone

    bb = create_backbone("resnet10t", weights=full["prior_extractor"])
    assert bb is not None


def test_dataset_items_seeded_and_cache_used(images, tmp_path):
    sampler = SuperpixelPatchSampler("slic", n_segments=16)
    ds = UnlabeledImages(images, size=32, sampler=sampler, max_patches=8)
    a, b = ds[(3, 11)], ds[(3, 11)]
    assert all(torch.equal(a[k], b[k]) for k in ("view_a", "view_b", "labels_a", "labels_b"))
    assert a["view_a"].shape == (3, 32, 32) and a["labels_a"].shape == (32, 32)
    assert int(a["labels_a"].max()) < 8 and int(a["labels_b"].max()) < 8
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["view_a"], (ds.set_epoch(0), ds[3])[1]["view_a"])
    # with a cache the dataset reads label maps instead of segmenting (poisoned segment() proves it)
    build_superpixel_cache(list_images(images)[:4], tmp_path / "cache", sampler, progress=False)
    cached = UnlabeledImages(images, size=32, sampler=SuperpixelPatchSampler("slic", n_segments=16), max_patches=8,
                             cache_dir=tmp_path / "cache")
    assert cached.cache is not None
    cached.sampler.segment = None  # type: ignore[assignment]
    c = cached[(2, 11)]
    assert torch.equal(c["labels_a"], ds[(2, 11)]["labels_a"])
    with pytest.raises(TypeError):
        cached[(10, 11)]  # not in the cache -> would need segment()


def test_config_validation_and_cosine_schedule(images, tmp_path):
    with pytest.raises(ValueError, match="unknown pretrain option.*'bach_size': did you mean 'batch_size'"):
        pretrain({"pretrain": {"images": str(images), "bach_size": 1}})
    with pytest.raises(ValueError, match="'seed' is experiment.seed"):
        pretrain({"pretrain": {"images": str(images), "seed": 1}})
    with pytest.raises(ValueError, match="images"):
        pretrain({"pretrain": {}})
    with pytest.raises(ValueError, match="batch_size"):
        run(tmp_path / "unused", images=str(images), batch_size=64)
    with pytest.raises(ValueError, match="export_encoder"):
        pretrain({"pretrain": {"images": str(images), "export_encoder": "momentum"}})
    with pytest.raises(TypeError, match="config tree"):
        pretrain("runs/pretrain")
    # the 0.1.0 forms are gone: a flat mapping of settings or field=value keywords are refused
    with pytest.raises(ValueError, match=r"unknown pretrain option\(s\) \['images', 'output_dir'\] in the config tree"):
        pretrain({"images": str(images), "output_dir": str(tmp_path / "flat")})
    with pytest.raises(TypeError, match="images"):
        pretrain(images=str(images))
    from fewshot_priors.engine.pretrain import base_lr

    assert base_lr({"lr": None, "batch_size": 512}) == pytest.approx(0.06)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = cosine_scheduler(opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5) and all(x > y for x, y in zip(lrs, lrs[1:]))


def make_probe(folder, n_per_class=4, size=48):
    """Two class folders of FSS-layout pairs: <stem>.jpg + <stem>.png (255 = the class)."""
    rng = np.random.default_rng(1)
    for c, name in enumerate(("disc", "square")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            bg = tuple(int(v) for v in rng.integers(0, 256, 3))
            im, m = Image.new("RGB", (size, size), bg), Image.new("L", (size, size), 0)
            box = [8 + i, 8, size - 8, size - 8 - i]
            (ImageDraw.Draw(im).ellipse if c == 0 else ImageDraw.Draw(im).rectangle)(box, fill=(250, 20, 20))
            (ImageDraw.Draw(m).ellipse if c == 0 else ImageDraw.Draw(m).rectangle)(box, fill=255)
            im.save(folder / name / f"{name}_{i}.jpg", quality=95)
            m.save(folder / name / f"{name}_{i}.png")
    return folder


def test_diagnostics_and_probe_are_logged_and_do_not_change_training(images, tmp_path):
    probe = make_probe(tmp_path / "probe")
    kw = dict(TINY, images=str(images), size=32, batch_size=4, epochs=1, max_steps=2, log_every=1, lr=0.05)
    plain = run(tmp_path / "plain", **kw)
    diag = run(tmp_path / "diag", diag_every=1, probe_root=str(probe), probe_every=1, **kw)
    # diagnostics read the model, they never change it (eval-mode probing restores train mode)
    a, b = load_checkpoint(plain["last"])["model_state"], load_checkpoint(diag["last"])["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain["diagnostics"] == [] and not any(r[1].startswith(("diag/", "probe/")) for r in _scalars(
        tmp_path / "plain" / "scalars.csv"))
    rows = _scalars(tmp_path / "diag" / "scalars.csv")
    steps = lambda tag: [int(r[0]) for r in rows if r[1] == tag]  # noqa: E731
    assert steps("probe/knn_global") == [0, 1, 2]  # 0 = the random-init encoder
    assert steps("probe/knn_local") == [0, 1, 2]
    assert steps("diag/std_global") == steps("diag/unif_local") == steps("diag/queue_fill") == [1, 2]
    last = diag["diagnostics"][-1]
    assert last["step"] == 2
    assert 0 < last["diag/std_global"] <= 1 and last["diag/unif_global"] <= 0 and 0 <= last["diag/align_global"] <= 4
    assert 0 <= last["probe/knn_global"] <= 1 and 0 <= last["probe/majority_local"] <= 1
    assert last["diag/queue_fill"] == 1.0  # 2 steps x 4 keys fill the queue of 8
    # the global queue of 8 random-normal rows: std ~ 1/sqrt(dim) (it is full of keys now)
    assert last["diag/std_queue"] > 0


def test_queue_longer_than_an_epoch_warns_or_is_capped(images):
    from fewshot_priors.engine.pretrain import queue_sizes_for

    from fewshot_priors.config import DEFAULTS

    c = {**DEFAULTS["pretrain"], "images": str(images), "batch_size": 8, "queue_size": 2048, "local_queue_size": 64,
         "max_patches": 16}
    with pytest.warns(UserWarning, match="stale copies of its own image"):
        assert queue_sizes_for(c, 32) == (2048, 64)
    c["cap_queues"] = True
    with pytest.warns(UserWarning, match="capped to 24"):
        assert queue_sizes_for(c, 32) == (24, 64)  # 32 - 8 images, a multiple of the batch
    c["local_queue_size"] = 10_000
    with pytest.warns(UserWarning, match="local_queue_size"):
        assert queue_sizes_for(c, 32) == (24, 24 * 16)
    c["queue_size"], c["local_queue_size"] = 16, 64
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert queue_sizes_for(c, 32) == (16, 64)  # short enough: untouched, silent
        assert queue_sizes_for(c, 32, total_steps=20) == (16, 64)  # fills in 2 of 20 steps
    with pytest.warns(UserWarning, match="fills only after 2 of 10 steps"):
        queue_sizes_for(c, 32, total_steps=10)
    c["queue_init"] = "empty"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert queue_sizes_for(c, 32, total_steps=10) == (16, 64)  # an empty queue has no random negatives


def test_config_json_is_what_ran_and_repeats_the_run(images, tmp_path):
    """config.json holds the experiment and pretrain sections that ran; passed back to pretrain() it repeats the run."""
    kw = dict(TINY, images=str(images), size=32, batch_size=4, epochs=1, max_steps=2, log_every=1, lr=0.05)
    new = run(tmp_path / "new", **kw)
    ref = load_checkpoint(new["last"])["model_state"]
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["experiment"]["seed"] == 0 and saved["experiment"]["output_dir"] == str(tmp_path / "new")
    assert saved["pretrain"]["batch_size"] == 4 and "seed" not in saved["pretrain"]
    # config.json is what ran: passed back to pretrain() it repeats the run
    again = pretrain({**saved, "experiment": {**saved["experiment"], "output_dir": str(tmp_path / "again")}},
                     progress=False, tensorboard=False)
    got = load_checkpoint(again["last"])["model_state"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def _global_rng_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_killed_pretraining_resumes_to_the_uninterrupted_result(images, tmp_path, monkeypatch):
    """Killed inside step 4 (checkpoints after every step), resumed with other global RNG states:
    same weights, queues, loss log and RNG state as the uninterrupted run, and the checkpoints
    hold the RNG state (pretraining did not save it before)."""
    kw = dict(TINY, images=str(images), size=32, batch_size=4, epochs=1, max_steps=5, log_every=1, lr=0.05,
              ckpt_every_steps=1)
    _global_rng_seed(0)
    full = run(tmp_path / "full", **kw)

    _global_rng_seed(0)
    real, calls = GlobalLocalMoCo.forward, {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed after the forward of step 4 started
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GlobalLocalMoCo, "forward", dying)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", **kw)
    monkeypatch.setattr(GlobalLocalMoCo, "forward", real)
    ck = load_checkpoint(tmp_path / "run" / "last")
    assert ck["meta"]["step"] == 3 and ck["rng_state"] is not None

    _global_rng_seed(99)  # the resumed run must take its RNG streams from the checkpoint
    resumed = run(tmp_path / "run", resume=True, **kw)
    assert resumed["step"] == full["step"] == 5
    a, b = load_checkpoint(full["last"]), load_checkpoint(resumed["last"])
    assert a["model_state"].keys() == b["model_state"].keys()
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert _scalars(tmp_path / "full" / "scalars.csv") == _scalars(tmp_path / "run" / "scalars.csv")
    assert a["rng_state"] == b["rng_state"]  # python/numpy streams were restored, not re-seeded to 99


def test_a_checkpoint_without_rng_state_still_resumes_with_a_warning(images, tmp_path):
    """Checkpoints of the old pretraining loop hold no RNG state (and no epoch in the meta): they
    resume with a warning, and exactly, since every random draw of a step is seeded by (seed, step)."""
    kw = dict(TINY, images=str(images), size=32, batch_size=4, epochs=1, log_every=1, lr=0.05)
    full = run(tmp_path / "full", max_steps=4, **kw)
    run(tmp_path / "old", max_steps=2, **kw)
    sidecar = checkpoint_paths(tmp_path / "old" / "last")[1]
    side = json.loads(sidecar.read_text())
    del side["rng_state"]
    for key in ("epoch", "steps_per_epoch"):
        del side["meta"][key]
    sidecar.write_text(json.dumps(side))
    assert load_checkpoint(tmp_path / "old" / "last")["rng_state"] is None
    with pytest.warns(UserWarning, match="holds no RNG state"):
        resumed = run(tmp_path / "old", max_steps=4, resume=True, **kw)
    a, b = load_checkpoint(full["last"])["model_state"], load_checkpoint(resumed["last"])["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _scalars(tmp_path / "full" / "scalars.csv") == _scalars(tmp_path / "old" / "scalars.csv")


def test_resume_into_another_schedule_fails_before_the_superpixel_cache_is_built(tmp_path, monkeypatch):
    """The schedule check reads the checkpoint's sidecar first: no cache work for a run that cannot resume."""
    import fewshot_priors.engine.pretrain as pre_mod
    from fewshot_priors.engine.checkpoint import save_checkpoint

    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(8):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(images / f"{i}.jpg")
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(out / "last", model=torch.nn.Linear(1, 1), meta={"step": 1, "total_steps": 999,
                                                                      "steps_per_epoch": 4})

    def no_cache(*args, **kwargs):
        raise AssertionError("the superpixel cache was built before the resume check")

    monkeypatch.setattr(pre_mod, "build_superpixel_cache", no_cache)
    cfg = {"experiment": {"output_dir": str(out), "seed": 0, "device": "cpu"},
           "pretrain": {"images": str(images), "batch_size": 2, "epochs": 1, "cache_dir": str(tmp_path / "cache"),
                        "build_cache": True, "backbone": "resnet10t", "num_workers": 0}}
    with pytest.raises(ValueError, match="total_steps=999"):
        pre_mod.pretrain(cfg, resume=True, progress=False, tensorboard=False)
