"""The pretraining loop: learning signal vs. an untrained control, exact resume, export, config."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from fewshot_priors.data.unlabeled import UnlabeledImages, list_images
from fewshot_priors.engine.checkpoint import load_checkpoint
from fewshot_priors.engine.pretrain import PretrainConfig, cosine_scheduler, pretrain
from fewshot_priors.superpixels import SuperpixelPatchSampler, build_superpixel_cache


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
    progress=False,
    tensorboard=False,
)


def last_window(history, key):
    return history[-1][key]


@pytest.mark.slow  # two 30-step CPU runs, ~15-25 s in all: the smallest run that shows learning
def test_short_pretraining_beats_untrained_control(images, tmp_path):
    """30 SGD steps lift the positive-pair accuracy of both losses far above chance (1/(1+K))
    and far above the same pipeline with lr = 0 (a random encoder's features already beat
    chance, so that control is the honest baseline)."""
    kw = dict(TINY, images=str(images), max_steps=30, log_every=10)
    trained = pretrain(lr=0.05, output_dir=str(tmp_path / "trained"), **kw)
    control = pretrain(lr=0.0, output_dir=str(tmp_path / "control"), **kw)
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
    full = pretrain(output_dir=str(tmp_path / "full"), max_steps=5, **kw)
    part = pretrain(output_dir=str(tmp_path / "part"), max_steps=2, **kw)
    assert part["step"] == 2
    resumed = pretrain(output_dir=str(tmp_path / "part"), max_steps=5, resume=True, **kw)
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


def test_config_validation_and_cosine_schedule(images):
    with pytest.raises(ValueError, match="unknown pretrain option"):
        pretrain(images=str(images), bogus=1)
    with pytest.raises(ValueError, match="images"):
        pretrain(PretrainConfig())
    with pytest.raises(ValueError, match="batch_size"):
        pretrain(images=str(images), batch_size=64, progress=False, tensorboard=False, output_dir="/tmp/unused-x")
    with pytest.raises(ValueError, match="export_encoder"):
        pretrain(images=str(images), export_encoder="momentum")
    assert PretrainConfig(batch_size=512).base_lr == pytest.approx(0.06)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = cosine_scheduler(opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.5) and all(x > y for x, y in zip(lrs, lrs[1:]))
