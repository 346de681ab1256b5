"""``Predictor`` / ``fewshot-priors predict``: your own images in, masks at their size out."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from fewshot_priors.app.cli import main
from fewshot_priors.config import load_config, save_config
from fewshot_priors.data import BadDataError, generate_synthetic_dataset, restore_prediction
from fewshot_priors.data.io import AmbiguousMaskWarning, binary_mask, write_palette_png
from fewshot_priors.engine.build import build_dataset, build_model
from fewshot_priors.engine.checkpoint import save_checkpoint
from fewshot_priors.engine.predict import Predictor, load_trained_model
from fewshot_priors.engine.support_check import SupportCheck

SIZE = 64
OVERRIDES = ["data.image_size=64", "model.bins=[4, 2]", "model.channels=16", "experiment.device=cpu"]


def _coco128() -> Path | None:
    env = os.environ.get("FEWSHOT_PRIORS_REAL_DATA")
    here = Path(__file__).resolve()
    candidates = [Path(env)] if env else [p / "shared" / "data" / "coco128_seg" for p in here.parents[1:4]]
    return next((c / "fss_layout" for c in candidates if (c / "fss_layout").is_dir()), None)


REAL = _coco128()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `train` leaves it: config.yaml + last checkpoint. Random weights, with the
    foreground logit shifted so that about half of the pixels are foreground (no trivial masks)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config("demo/quick", OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 1, 3, SIZE, SIZE), torch.ones(1, 1, SIZE, SIZE))
        model.decoder.cls[-1].bias[1] += (logits["logits"][:, 0] - logits["logits"][:, 1]).median()
    save_checkpoint(root / "last", model=model, meta={"config": cfg})
    save_config(cfg, root / "config.yaml")
    return root


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor.from_trained(run_dir, device="cpu")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_classes=4, images_per_class=24,
                                      image_size=72, min_pixels=200, progress=False)


def _photo(h=40, w=56, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
    return image, mask


def _episodes_as_files(run_dir, root, shots, n):
    """``n`` test episodes of the generated set: ``(item, query file, [(support image, label file)], class id)``."""
    cfg = load_config(run_dir / "config.yaml", [f"data.root={root}", "data.min_pixels=200"])
    ds = build_dataset(cfg, "val", shots=shots, episodes=n, seed=5, progress=False)
    for i in range(n):
        qi, c, sup = ds.episode(i)
        yield ds[i], ds.entries[qi].image, [(ds.entries[s].image, ds.entries[s].label) for s in sup], c


@torch.no_grad()
def _as_evaluated(model, ep):
    """``(model output on the item, its logits restored as the evaluation scores them)``."""
    out = model(ep["query_image"][None], ep["support_images"][None], ep["support_masks"][None])
    return out, restore_prediction(out["logits"][0], ep["query_valid_hw"], ep["query_mask_orig"].shape).numpy()


def test_predictor_gives_the_evaluation_protocols_prediction(predictor, synthetic, run_dir):
    """On a dataset episode the predictor (files in, label maps read with class_id) returns exactly
    what the evaluation scores: the model on the test canvas, restored to the original size."""
    shares = []
    for ep, query, supports, c in _episodes_as_files(run_dir, synthetic, shots=2, n=3):
        out = predictor(query, supports, class_id=c)
        assert out.mask.shape == tuple(ep["query_mask_orig"].shape)
        np.testing.assert_array_equal(out.mask, _as_evaluated(predictor.model, ep)[1])
        assert out.foreground.shape == out.mask.shape and out.prior_map.shape == out.mask.shape
        np.testing.assert_array_equal(out.mask, (out.foreground > 0.5).astype(np.uint8))
        shares.append(out.mask.mean())
    assert 0.0 < min(shares) and max(shares) < 1.0  # neither empty nor full: the comparison means something


def test_the_support_check_answers_as_in_the_evaluation(run_dir, synthetic, predictor):
    """With ``eval.support_check`` the predictor answers as :class:`SupportCheck` does in the evaluation
    (the model, or its guided map where the map did better on the supports) and says which answered."""
    checked = Predictor.from_trained(run_dir, device="cpu", overrides=["eval.support_check=true"])
    assert checked.support_check and not predictor.support_check  # the key of the model's config
    answers = []
    for ep, query, supports, c in _episodes_as_files(run_dir, synthetic, shots=3, n=4):
        out = checked(query, supports, class_id=c)
        ref, expected = _as_evaluated(SupportCheck(checked.model), ep)
        np.testing.assert_array_equal(out.mask, expected)
        assert out.support_check["model_iou"] == pytest.approx(float(ref["support_check"]["model"][0]))
        assert out.support_check["guided_map_iou"] == pytest.approx(float(ref["support_check"]["guided_map"][0]))
        answers.append(out.support_check["answer"])
        assert answers[-1] == ("guided_map" if bool(ref["support_check"]["use_map"][0]) else "model")
    assert "guided_map" in answers  # the map's path is exercised (the model has random weights)
    assert checked(query, supports[:1], class_id=c).support_check is None  # one support: nothing to check it on


def test_every_input_form_gives_the_same_mask(predictor, tmp_path):
    image, mask = _photo()
    q_image, _ = _photo(50, 30, seed=1)
    Image.fromarray(image).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "s_mask.png")
    Image.fromarray(q_image).save(tmp_path / "q.png")
    ref = predictor(tmp_path / "q.png", [(tmp_path / "s.png", tmp_path / "s_mask.png")])
    assert ref.mask.shape == (50, 30) and ref.mask.dtype == np.uint8 and set(np.unique(ref.mask)) <= {0, 1}
    forms = [
        (str(tmp_path / "q.png"), [(Image.open(tmp_path / "s.png"), Image.open(tmp_path / "s_mask.png"))]),
        (Image.fromarray(q_image), [(image, mask // 255)]),  # a 0/1 array
        (q_image.astype(np.float32) / 255, [(image.astype(np.float64) / 255, mask > 0)]),  # floats, bools
    ]
    for query, supports in forms:
        out = predictor(query, supports)
        np.testing.assert_array_equal(out.mask, ref.mask)
        np.testing.assert_allclose(out.foreground, ref.foreground, atol=1e-6)
    many = list(predictor.predict([q_image, q_image[::-1]], [(image, mask)]))
    np.testing.assert_array_equal(many[0].mask, ref.mask)
    assert many[1].mask.shape == (50, 30)


def test_masks_as_stored_on_disk(tmp_path):
    label = np.zeros((6, 8), dtype=np.uint8)
    label[1:3, 1:4], label[4:, 5:], label[0, :] = 15, 3, 255
    write_palette_png(tmp_path / "voc.png", label)
    with pytest.raises(BadDataError, match=r"palette label map holding class ids \[3, 15\].*class"):
        binary_mask(tmp_path / "voc.png")
    m = binary_mask(tmp_path / "voc.png", class_id=15)
    assert m.sum() == 6 + 255 * 8 and (m[0] == 255).all() and (m[1:3, 1:4] == 1).all() and m[4:, 5:].max() == 0
    with pytest.raises(BadDataError, match=r"no pixel of class id 7; the class ids in it: \[3, 15\]"):
        binary_mask(tmp_path / "voc.png", class_id=7)
    grey = np.where(label == 15, 255, 0).astype(np.uint8)  # a 0/255 mask, grey or palette
    Image.fromarray(grey).save(tmp_path / "grey.png")
    write_palette_png(tmp_path / "pal255.png", grey)
    for path in ("grey.png", "pal255.png"):
        np.testing.assert_array_equal(binary_mask(tmp_path / path), (label == 15).astype(np.uint8))
    with pytest.raises(ValueError, match="class_id"):
        binary_mask(grey, class_id=0)


def test_bad_supports_fail_early_and_name_the_problem(predictor):
    image, mask = _photo()
    with pytest.raises(ValueError, match="support 0 has no foreground"):
        predictor(image, [(image, np.zeros_like(mask))])
    with pytest.raises(ValueError, match=r"support 1: the image is 40x56 but its mask is 40x55"):
        predictor(image, [(image, mask), (image, mask[:, :55])])
    with pytest.raises(ValueError, match="non-empty sequence"):
        predictor(image, [])
    with pytest.raises(ValueError, match=r"support 0 must be an \(image, mask\) pair"):
        predictor(image, ["s.jpg"])
    with pytest.raises(ValueError, match="raw 0-255|uint8"):
        predictor(image.astype(np.float32), [(image, mask)])  # floats must be in [0, 1]


def test_every_form_of_a_trained_model_loads_the_same_weights(run_dir, tmp_path):
    model, cfg = load_trained_model(run_dir, device="cpu")
    assert cfg["data"]["image_size"] == SIZE
    model.save_pretrained(tmp_path / "shared")
    x = (torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 1, 3, SIZE, SIZE), torch.ones(1, 1, SIZE, SIZE))
    ref = model(*x)["logits"]
    for source, kwargs in ((run_dir / "last", {}), (run_dir / "last.safetensors", {}),
                           (tmp_path / "shared", {}), (run_dir / "last", {"config": run_dir / "config.yaml"})):
        other, _ = load_trained_model(source, device="cpu", **kwargs)
        torch.testing.assert_close(other(*x)["logits"], ref, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        load_trained_model(tmp_path)
    with pytest.raises(ValueError, match="save_pretrained folder.*--config / --set do not apply"):
        load_trained_model(tmp_path / "shared", overrides=["model.eps=1e-6"])
    lonely = tmp_path / "lonely"
    save_checkpoint(lonely / "ckpt", model=model)
    with pytest.raises(FileNotFoundError, match="no config for checkpoint.*--config"):
        load_trained_model(lonely / "ckpt")


@pytest.mark.skipif(REAL is None, reason="shared/data/coco128_seg is absent")
def test_predict_command_on_real_photos(run_dir, tmp_path, capsys):
    photos = sorted((REAL / "dog").glob("*.jpg"))
    assert len(photos) >= 4
    (tmp_path / "queries").mkdir()
    for p in photos[2:4]:  # with their masks beside them, as in the dataset: those are not queries
        (tmp_path / "queries" / p.name).symlink_to(p)
        (tmp_path / "queries" / p.with_suffix(".png").name).symlink_to(p.with_suffix(".png"))
    support = [arg for p in photos[:2] for arg in ("--support", str(p), str(p.with_suffix(".png")))]
    out = tmp_path / "out"
    assert main(["predict", "--model", str(run_dir), *support, "--query", str(tmp_path / "queries"),
                 "--output-dir", str(out), "--maps", "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [Path(r["query"]).name for r in summary["queries"]] == [p.name for p in photos[2:4]]
    assert len(summary["supports"]) == 2 and summary["image_size"] == SIZE
    for row, photo in zip(summary["queries"], photos[2:4]):
        size = Image.open(photo).size
        mask = Image.open(out / row["mask"])
        assert mask.size == size and mask.mode == "L" and set(np.unique(np.asarray(mask))) <= {0, 255}
        assert row["foreground"] == pytest.approx((np.asarray(mask) == 255).mean())
        assert 0.0 < row["foreground"] < 1.0
        for kind in ("overlay", "guided", "prior"):
            im = Image.open(out / row[kind])
            assert im.size == size and im.mode == "RGB", kind
    # the API gives the same mask for the same files
    pred = Predictor.from_trained(run_dir, device="cpu")(photos[2], [(p, p.with_suffix(".png")) for p in photos[:2]])
    np.testing.assert_array_equal(pred.mask * 255, np.asarray(Image.open(out / summary["queries"][0]["mask"])))
    assert summary["support_check"] is None  # eval.support_check is off in the model's config
    capsys.readouterr()
    assert main(["predict", "--model", str(run_dir), *support, "--query", str(photos[2]), "--output-dir",
                 str(out), "--no-progress", "--device", "cpu", "--set", "eval.support_check=true"]) == 0
    check = json.loads((out / "predictions.json").read_text())["support_check"]
    assert set(check) == {"model_iou", "guided_map_iou", "answer"}
    assert f"model IoU {100 * check['model_iou']:.1f} %" in capsys.readouterr().out


def test_predict_command_reports_bad_input_in_one_line(run_dir, tmp_path, capsys):
    image, mask = _photo()
    Image.fromarray(image).save(tmp_path / "s.png")
    label = np.where(mask > 0, 15, 0).astype(np.uint8)
    label[0] = 3
    write_palette_png(tmp_path / "label.png", label)
    base = ["predict", "--model", str(run_dir), "--query", str(tmp_path / "s.png"), "--output-dir",
            str(tmp_path / "out"), "--no-progress", "--device", "cpu"]
    cases = [(["--support", str(tmp_path / "s.png"), str(tmp_path / "nope.png")], "--support mask"),
             (["--support", str(tmp_path / "s.png"), str(tmp_path / "label.png")], "--class-id"),
             (["--support", str(tmp_path / "s.png"), str(tmp_path / "label.png"), "--query", str(tmp_path / "x")],
              "--query")]
    for extra, needle in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1, err
    assert main([*base, "--support", str(tmp_path / "s.png"), str(tmp_path / "label.png"), "--class-id", "15"]) == 0
    assert Image.open(tmp_path / "out" / "s_mask.png").size == (56, 40)


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12))), st.integers(1, 254))
def test_binary_mask_of_any_array(values, class_id):
    """Any uint8 array is a mask of its own shape holding 0 / 1 / 255; with a class, exactly its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AmbiguousMaskWarning)
        m = binary_mask(values)
    assert m.shape == values.shape and set(np.unique(m).tolist()) <= {0, 1, 255}
    if set(np.unique(values).tolist()) <= {0, 255}:  # a 0/255 mask: 255 is the object
        np.testing.assert_array_equal(m, (values == 255).astype(np.uint8))
    if (values == class_id).any():
        m = binary_mask(values, class_id=class_id)
        np.testing.assert_array_equal(m == 1, values == class_id)
        np.testing.assert_array_equal(m == 255, values == 255)
    else:
        with pytest.raises(BadDataError, match=f"no pixel of class id {class_id}"):
            binary_mask(values, class_id=class_id)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 90), st.integers(1, 90), st.integers(0, 2**16))
def test_a_query_of_any_size_gets_a_mask_of_its_size(predictor, h, w, seed):
    image, mask = _photo()
    query = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = predictor(query, [(image, mask)])
    assert out.mask.shape == out.foreground.shape == out.guided_map.shape == (h, w)
    assert np.isfinite(out.foreground).all() and np.isfinite(out.guided_map).all()
