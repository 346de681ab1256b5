"""Training engine: exact resume, deterministic data order, poly schedule, logging, evaluation protocol."""

from __future__ import annotations

import copy
import csv

import pytest
import torch
from torch import nn

from fewshot_priors.config import load_config
from fewshot_priors.engine.checkpoint import load_checkpoint
from fewshot_priors.engine.evaluate import collate_eval
from fewshot_priors.engine.runtime import StepBatchSampler
from fewshot_priors.engine.train import make_poly_scheduler, train


class ToyEpisodes(torch.utils.data.Dataset):
    """Random episodes; the 'augmentation' draws from the global torch RNG (like real transforms)."""

    class_ids = [1, 2]

    def __init__(self, n=12, size=8, shots=1):
        self.n, self.size, self.shots = n, size, shots

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        img = torch.randn(3, self.size, self.size, generator=g)
        mask = (img[0] > 0).long()
        img = img + 0.1 * torch.randn_like(img)  # global-RNG augmentation
        if torch.rand(()) < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        sup = torch.rand(self.shots, 3, self.size, self.size, generator=g)
        return {"query_image": img, "query_mask": mask, "support_images": sup,
                "support_masks": (sup[:, 0] > 0).long(), "class_id": 1 + i % 2}


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Conv2d(3, 4, 1)
        self.frozen.requires_grad_(False)
        self.head = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 2, 1))

    def trainable_parameters(self):
        return list(self.head.parameters())

    def forward(self, query_image, support_images, support_masks, query_mask=None):
        proto = (self.frozen(support_images[:, 0]) * support_masks[:, :1].float()).mean((2, 3), keepdim=True)
        q = self.frozen(query_image)
        sim = torch.cosine_similarity(q, proto, dim=1).unsqueeze(1)
        logits = self.head(torch.cat([q, sim], 1))
        out = {"logits": logits}
        if query_mask is not None:
            out["loss"] = nn.functional.cross_entropy(logits, query_mask, ignore_index=255)
        return out


def _cfg(tmp_path, **train):
    cfg = load_config(None, {"train.epochs": 3, "train.batch_size": 4, "train.lr": 0.05, "train.log_every": 1,
                             "train.val_every": 0, "data.num_workers": 0, "experiment.seed": 5})
    cfg["train"].update(train)
    cfg["experiment"]["output_dir"] = str(tmp_path)
    return cfg


def _run(cfg, out, **kw):
    torch.manual_seed(kw.pop("init_seed", 0))
    model = ToyModel()
    res = train(cfg, model=model, train_set=ToyEpisodes(), collate_fn=collate_eval, output_dir=out,
                progress=False, **kw)
    return model, res


def _losses(path):
    with open(path) as f:
        return [(int(r["step"]), r["value"]) for r in csv.DictReader(f) if r["tag"] == "train/loss"]


def test_resume_matches_uninterrupted_run_bit_for_bit(tmp_path):
    cfg = _cfg(tmp_path)  # 12 episodes / batch 4 -> 3 steps per epoch, 9 steps in all
    full, res_full = _run(cfg, tmp_path / "full", max_steps=8)
    assert res_full["step"] == 8

    _run(cfg, tmp_path / "split", max_steps=4)  # stops mid-epoch 2 (step 4 of 9)
    meta = load_checkpoint(tmp_path / "split" / "last")["meta"]
    assert meta["step"] == 4
    # a different init proves the weights come from the checkpoint
    resumed, res = _run(cfg, tmp_path / "split", resume=True, max_steps=8, init_seed=123)
    assert res["step"] == 8
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert _losses(tmp_path / "full" / "scalars.csv") == _losses(tmp_path / "split" / "scalars.csv")
    assert (tmp_path / "full" / "loss_curve.png").stat().st_size > 0


def test_data_order_is_independent_of_workers(tmp_path):
    cfg = _cfg(tmp_path)
    m0, _ = _run(cfg, tmp_path / "w0", max_steps=3)
    cfg2 = copy.deepcopy(cfg)
    cfg2["data"]["num_workers"] = 2
    m2, _ = _run(cfg2, tmp_path / "w2", max_steps=3)
    for (k, a), (_, b) in zip(m0.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_sampler_covers_each_epoch_once_and_changes_order():
    s = StepBatchSampler(n=10, batch_size=3, seed=1, start_step=0, end_step=6)
    batches = [[i for i, _, _ in b] for b in s]
    ep0, ep1 = sum(batches[:3], []), sum(batches[3:], [])
    assert len(set(ep0)) == 9 and len(set(ep1)) == 9  # no repeats within an epoch, last partial dropped
    assert ep0 != ep1
    # resuming mid-way yields the same batches
    s2 = StepBatchSampler(n=10, batch_size=3, seed=1, start_step=4, end_step=6)
    assert [[i for i, _, _ in b] for b in s2] == batches[4:]
    # two ranks split the global batch without overlap
    from fewshot_priors.distributed import DistInfo

    r0 = StepBatchSampler(10, 4, 1, 0, 2, DistInfo(0, 2)).batch(1)
    r1 = StepBatchSampler(10, 4, 1, 0, 2, DistInfo(1, 2)).batch(1)
    single = StepBatchSampler(10, 4, 1, 0, 2, DistInfo(0, 1)).batch(1)
    assert sorted(r0 + r1) == sorted(single)



def test_sampler_draws_one_k_per_step_from_the_range():
    from fewshot_priors.distributed import DistInfo

    s = StepBatchSampler(n=12, batch_size=4, seed=3, start_step=0, end_step=60, shots=(1, 5))
    batches = list(s)
    per_step = [{item[3] for item in b} for b in batches]
    assert all(len(ks) == 1 for ks in per_step)  # one K per step: the batch stacks
    ks = [next(iter(k)) for k in per_step]
    assert set(ks) == {1, 2, 3, 4, 5} and ks == [s.step_shots(i) for i in range(60)]
    # the triples are those of the sampler without shots; resumed and per-rank samplers draw the same K
    plain = StepBatchSampler(n=12, batch_size=4, seed=3, start_step=0, end_step=60)
    assert [[it[:3] for it in b] for b in batches] == list(plain)
    assert [b[0][3] for b in StepBatchSampler(12, 4, 3, 40, 60, shots=(1, 5))] == ks[40:]
    r1 = StepBatchSampler(12, 4, 3, 0, 60, DistInfo(1, 2), shots=(1, 5))
    assert [b[0][3] for b in r1] == ks
    assert {b[0][3] for b in StepBatchSampler(12, 4, 3, 0, 20, shots=(2, 2))} == {2}
    assert ks != [b[0][3] for b in StepBatchSampler(12, 4, 4, 0, 60, shots=(1, 5))]  # the run seed decides
    for bad in [(0, 3), (3, 2), (1,), 5, (1.5, 3)]:
        with pytest.raises(ValueError, match="shots"):
            StepBatchSampler(12, 4, 3, 0, 5, shots=bad)
    with pytest.raises(ValueError, match="no K"):
        plain.step_shots(0)


class _RecordShots(ToyModel):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, query_image, support_images, support_masks, query_mask=None):
        self.seen.append(support_images.shape[1])
        return super().forward(query_image, support_images, support_masks, query_mask)


def test_train_max_shots_feeds_each_step_its_k(tmp_path):
    from fewshot_priors.data import FolderFewShot, FolderOptions
    from test_data_folder import _make

    root = _make(tmp_path / "fss", n=3)  # 2 other images per class: K 3 repeats one
    ds = FolderFewShot(root, split="train", image_size=16, options=FolderOptions(fold_classes=["eel"]))
    cfg = _cfg(tmp_path)
    cfg["train"].update(max_shots=3, batch_size=2, epochs=2)
    model = _RecordShots()
    res = train(cfg, model=model, train_set=ds, output_dir=tmp_path / "ms", progress=False)
    sampler = StepBatchSampler(len(ds), 2, cfg["experiment"]["seed"], 0, res["step"], shots=(1, 3))
    assert model.seen == [sampler.step_shots(s) for s in range(res["step"])] and set(model.seen) > {1}
    with pytest.raises(ValueError, match="max_shots=3 needs an episodic"):
        train(cfg, model=ToyModel(), train_set=ToyEpisodes(), output_dir=tmp_path / "toy", progress=False)
    assert not (tmp_path / "toy").exists()  # refused before the run folder is made


def test_poly_schedule_matches_formula():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.025)
    sched = make_poly_scheduler(opt, total_steps=10, power=0.9)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.025 * (1 - s / 10) ** 0.9 for s in range(10)])


def test_grad_clip_and_best_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, grad_clip=1e-6, val_every=1, epochs=2)
    scores = iter([0.3, 0.1])
    torch.manual_seed(0)
    model = ToyModel()
    before = [p.clone() for p in model.trainable_parameters()]
    res = train(cfg, model=model, train_set=ToyEpisodes(), collate_fn=collate_eval, output_dir=tmp_path,
                progress=False, val_fn=lambda m: {"miou": next(scores), "fbiou": 0.5})
    # with a 1e-6 gradient-norm clip SGD moves each parameter by at most lr * 1e-6 per step (+ decay)
    delta = max((a - b).abs().max().item() for a, b in zip(model.trainable_parameters(), before))
    assert delta < 1e-3
    assert res["best_miou"] == 0.3
    assert load_checkpoint(tmp_path / "best")["meta"]["epoch"] == 1
    assert [v["miou"] for v in res["val"]] == [0.3, 0.1]


def test_resume_is_exact_through_the_real_loader_and_augmentation(tmp_path):
    """Same check with PascalFewShot episodes (seeded sampling + the paper's train augmentation)."""
    from fewshot_priors.data import (
        PascalFewShot,
        PascalOptions,
        collate_episodes,
        generate_synthetic_dataset,
    )

    root = generate_synthetic_dataset(tmp_path / "data", num_classes=4, images_per_class=8, image_size=64,
                                      min_pixels=400, progress=False)
    ds = PascalFewShot(root, fold=0, split="train", image_size=48, seed=1, options=PascalOptions(min_pixels=400))
    cfg = _cfg(tmp_path, batch_size=2, epochs=4)  # two epochs cross: set_epoch-style fresh episodes

    def run(out, steps, resume=None, init_seed=0):
        torch.manual_seed(init_seed)
        model = ToyModel()
        train(cfg, model=model, train_set=ds, collate_fn=collate_episodes, output_dir=out, progress=False,
              max_steps=steps, resume=resume)
        return model

    n = len(ds) // 2 + 1  # steps per epoch + 1: the runs cross the first epoch boundary
    full = run(tmp_path / "full", n + 2)
    run(tmp_path / "split", n - 1)
    resumed = run(tmp_path / "split", n + 2, resume=True, init_seed=7)
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_evaluate_scores_logits_at_original_resolution_like_pfenet():
    """Logits are resized bilinearly to the original label before the argmax (PFENet's
    protocol); an integer prediction is resized with nearest neighbour."""
    from fewshot_priors.data import restore_prediction
    from fewshot_priors.engine.evaluate import evaluate
    from fewshot_priors.metrics import FewShotSegMeter

    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(3):
        orig = (torch.rand(13, 9, generator=g) > 0.5).long()
        items.append(
            {
                "query_image": torch.zeros(3, 8, 8),
                "support_images": torch.zeros(1, 3, 8, 8),
                "support_masks": torch.zeros(1, 8, 8, dtype=torch.long),
                "class_id": 1,
                "query_mask_orig": orig,
                "query_valid_hw": torch.tensor([8, 6]),
            }
        )
    logits = torch.randn(3, 2, 8, 8, generator=g)

    class Episodes(torch.utils.data.Dataset):
        class_ids = [1]

        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            return {**items[i], "index": i}

    def predict(batch):
        return logits[batch["index"]]

    res = evaluate(None, Episodes(), predict_fn=predict, progress=False)
    meter = FewShotSegMeter([1])
    for i, item in enumerate(items):
        pred = restore_prediction(logits[i], [8, 6], tuple(item["query_mask_orig"].shape))
        meter.update(pred, item["query_mask_orig"], 1)
    assert res["miou"] == pytest.approx(float(meter.compute()["miou"]))
    # and it is not what the argmax-then-nearest path gives on this data
    hard = evaluate(None, Episodes(), predict_fn=lambda b: logits[b["index"]].argmax(1), progress=False)
    assert hard["miou"] != pytest.approx(res["miou"])


def test_runtime_reads_experiment_device():
    import contextlib

    from fewshot_priors.engine.runtime import Runtime, config_device

    assert config_device({"experiment": {"device": "cpu"}, "train": {"device": "cuda"}}) == "cpu"
    assert config_device({"experiment": {"seed": 1}, "train": {"device": "cpu"}}) == "auto"  # train.device: not read
    assert config_device({"experiment": {}}) == "auto"
    rt = Runtime.from_config({"experiment": {"seed": 3, "device": "cpu"}}, amp=True)
    assert rt.device == torch.device("cpu") and rt.seed == 3 and rt.dist.world_size == 1
    assert isinstance(rt.autocast(), contextlib.nullcontext)  # bf16 autocast only on CUDA
    rt.seed_step(4)
    a = torch.rand(3)
    rt.seed_step(4)
    assert torch.equal(a, torch.rand(3))
    rt.seed_step(5)
    assert not torch.equal(a, torch.rand(3))
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        Runtime.from_config({"experiment": {"seed": 0, "device": "gpu"}})


class _RecordsChecks(ToyModel):
    """ToyModel that records whether the value checks were on when it ran (as QGNet reads the flag)."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, *args, **kwargs):
        from fewshot_priors.ops import checks_enabled

        self.seen.append(checks_enabled())
        return super().forward(*args, **kwargs)


@pytest.mark.parametrize("check_inputs", [False, True])
def test_training_step_value_checks_follow_train_check_inputs(tmp_path, check_inputs):
    from fewshot_priors.ops import checks_enabled

    torch.manual_seed(0)
    model = _RecordsChecks()
    cfg = _cfg(tmp_path, epochs=1, check_inputs=check_inputs)
    train(cfg, model=model, train_set=ToyEpisodes(), collate_fn=collate_eval, progress=False)
    assert model.seen and set(model.seen) == {check_inputs}
    assert checks_enabled()  # the global flag is restored after the step


def test_qgnet_training_step_skips_value_checks_unless_asked(tmp_path):
    """Raw 0-255 query pixels: QGNet's value check raises only when train.check_inputs is on."""
    from fewshot_priors.models import create_qgnet

    class Raw(ToyEpisodes):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            item["query_image"] = item["query_image"] * 0 + 128.0
            item["support_masks"] = item["support_masks"].clamp(max=1)
            return item

    def run(check):
        torch.manual_seed(0)
        model = create_qgnet(backbone="resnet18", use_prior=False, bins=[2, 1], channels=8)
        cfg = _cfg(tmp_path / str(check), epochs=1, batch_size=2, check_inputs=check)
        return train(cfg, model=model, train_set=Raw(n=2, size=32), collate_fn=collate_eval, progress=False)

    assert run(False)["step"] == 1
    with pytest.raises(ValueError, match="query_image"):
        run(True)


def test_runtime_wraps_in_ddp_only_in_a_multi_process_run():
    from fewshot_priors.distributed import DistInfo
    from fewshot_priors.engine.runtime import Runtime

    cfg = load_config(None, {"experiment.device": "cpu"})
    model = nn.Linear(2, 2)
    rt = Runtime.from_config(cfg, dist=DistInfo(rank=0, world_size=1, local_rank=0))
    assert rt.device == torch.device("cpu") and rt.wrap_ddp(model) is None


def test_resume_refuses_a_checkpoint_with_another_epoch_length(tmp_path):
    """Same total steps, different steps per epoch (other data order and epoch ends): not the same run."""
    cfg = _cfg(tmp_path, epochs=2, batch_size=4)  # 12 episodes: 3 steps x 2 epochs = 6 steps
    _run(cfg, tmp_path / "a", max_steps=2)
    other = _cfg(tmp_path, epochs=1, batch_size=2)  # 6 steps x 1 epoch = 6 steps
    with pytest.raises(ValueError, match="steps_per_epoch"):
        _run(other, tmp_path / "a", resume=True)
