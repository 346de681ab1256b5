"""``export_model`` / ``fewshot-priors export``: the exported graph's logits equal the PyTorch model's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot_priors.app.cli import main
from fewshot_priors.config import load_config, save_config
from fewshot_priors.data import TestTransform
from fewshot_priors.data.io import read_binary_mask, read_image
from fewshot_priors.engine.build import build_model
from fewshot_priors.engine.checkpoint import save_checkpoint
from fewshot_priors.engine.export import InferenceGraph, example_inputs, export_model, run_exported
from fewshot_priors.models import QGNet

SIZE = 64
#: float32 logits of a graph run by another engine (onnxruntime) agree to rounding, not bit for bit
ATOL = 1e-4


def _real_photos() -> Path | None:
    env = os.environ.get("FEWSHOT_PRIORS_REAL_DATA")
    here = Path(__file__).resolve()
    candidates = [Path(env)] if env else [p / "shared" / "data" / "coco128_seg" for p in here.parents[1:4]]
    return next((c / "fss_layout" for c in candidates if (c / "fss_layout").is_dir()), None)


REAL = _real_photos()


def _model(backbone: str = "resnet18", use_prior: bool = True, bins=(4, 2), map_skip: float = 0.0) -> QGNet:
    torch.manual_seed(0)
    return QGNet(backbone, use_prior=use_prior, bins=bins, channels=16, map_skip=map_skip).eval()


#: the real-photo recipe's architecture (EfficientNet-Lite0: timm's "same" padding; bins as fractions of
#: the feature size; the guided map's skip to the logits), and a ResNet without prior map taking 2 shots
MODELS = {"lite0_prior_1shot": (dict(backbone="tf_efficientnet_lite0", bins=(1.0, 0.5), map_skip=4.0), 1),
          "resnet18_no_prior_2shot": (dict(use_prior=False), 2)}


def _random_inputs(shots: int, seed: int):
    """Other inputs than the ones the graph was traced with: masks of another shape, some 255."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(1, 3, SIZE, SIZE, generator=g)
    s = torch.rand(1, shots, 3, SIZE, SIZE, generator=g)
    m = (torch.rand(1, shots, SIZE, SIZE, generator=g) > 0.6).float()
    m[..., :4, :] = 255.0  # ignore, cleaned to 0 inside the graph as in QGNet.forward
    return q, s, m


def _real_inputs(shots: int):
    photos = sorted((REAL / "dog").glob("*.jpg"))[: shots + 1]
    t = TestTransform(SIZE)
    q = t(read_image(photos[0]), np.zeros(read_image(photos[0]).shape[:2], np.uint8))[0][None]
    pairs = [t(read_image(p), read_binary_mask(p.with_suffix(".png")))[:2] for p in photos[1:]]
    s = torch.stack([x for x, _ in pairs])[None]
    m = torch.stack([y for _, y in pairs])[None].float()  # 0 / 1 / 255 (the canvas padding)
    return q, s, m


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_exported_logits_equal_the_model(fmt, name, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    kwargs, shots = MODELS[name]
    model = _model(**kwargs)
    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    res = export_model(model, path, fmt=fmt, image_size=SIZE, shots=shots)
    assert res["max_abs_diff"] is not None and res["max_abs_diff"] < ATOL and path.is_file()
    cases = [_random_inputs(shots, seed) for seed in (1, 2)]
    if REAL is not None:
        cases.append(_real_inputs(shots))
    for q, s, m in cases:
        with torch.no_grad():
            expected = model(q, s, m)["logits"]
        got = run_exported(path, q, s, m)
        assert got.shape == expected.shape == (1, 2, SIZE, SIZE)
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
        assert (got.argmax(1) != expected.argmax(1)).float().mean() < 1e-3  # the same masks
    assert model.guided_map.backend == "auto"  # the model itself is unchanged


def test_inference_graph_and_inputs():
    model = _model()
    graph = InferenceGraph(model)
    assert graph.model is not model and graph.model.guided_map.backend == "reference"
    q, s, m = example_inputs(SIZE, shots=3)
    assert m.sum() > 0 and set(m.unique().tolist()) == {0.0, 1.0}
    with torch.no_grad():
        torch.testing.assert_close(graph(q, s, m), model(q, s, m)["logits"])
    with pytest.raises(ValueError, match="`fmt` must be one of"):
        export_model(model, "x.bin", fmt="tflite", image_size=SIZE)
    with pytest.raises(ValueError, match="`shots` must be an int >= 1"):
        export_model(model, "x.onnx", image_size=SIZE, shots=0)


def test_export_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = load_config("demo/quick", ["data.image_size=64", "model.bins=[4, 2]", "model.channels=16",
                                     "experiment.device=cpu"])
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "run" / "last", model=build_model(cfg))
    save_config(cfg, tmp_path / "run" / "config.yaml")
    out = tmp_path / "exported" / "qgnet.onnx"
    assert main(["export", "--model", str(tmp_path / "run"), "--output", str(out), "--shots", "2",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "2 shot(s), 64 x 64" in text and "largest logit difference to PyTorch" in text
    assert main(["export", "--model", str(tmp_path / "run"), "--output", str(tmp_path), "--device", "cpu"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "nothing"), "--output", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: no trained model at")
