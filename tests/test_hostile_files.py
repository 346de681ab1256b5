"""Hostile files: images and masks in every PIL mode, corrupt / renamed / code-running
weights files, hand-edited ``config.json`` of a saved model. Each is read right, or refused with an
error naming the file (and the key); never a silently wrong result, never code run."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fewshot_priors._tensorfile import read_tensor_file
from fewshot_priors.data.io import BadDataError, read_binary_mask, read_image, read_label

# ----------------------------------------------------------------------------- images


def test_a_16_bit_grey_png_is_rescaled_by_its_bit_depth(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(16000, 42000, (9, 7)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = read_image(tmp_path / "g16.png")
    assert rgb.shape == (9, 7, 3) and rgb.dtype == np.uint8
    want = np.rint(a / 257.0)
    assert np.abs(rgb[..., 0].astype(float) - want).max() <= 0.5  # not all 255 (the old reader clipped)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_a_16_bit_tiff_and_a_float_tiff_in_0_1_are_rescaled(tmp_path):
    a = np.linspace(0, 65535, 12).reshape(3, 4).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.tif")
    assert np.array_equal(read_image(tmp_path / "g16.tif")[..., 0], np.rint(a / 257.0).astype(np.uint8))
    f = np.linspace(0, 1, 12).reshape(3, 4).astype(np.float32)
    Image.fromarray(f).save(tmp_path / "f.tif")
    assert np.array_equal(read_image(tmp_path / "f.tif")[..., 0], np.rint(f * 255.0).astype(np.uint8))


@pytest.mark.parametrize("make, why", [
    (lambda: Image.fromarray(np.full((4, 4), 300.0, dtype=np.float32)), "mode F"),
    (lambda: Image.fromarray(np.array([[np.nan, 0.5]], dtype=np.float32)), "non-finite"),
    (lambda: Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)), "mode I"),
])
def test_an_image_whose_values_have_no_defined_range_is_refused_naming_the_file(tmp_path, make, why):
    path = tmp_path / "odd.tif"
    make().save(path)
    with pytest.raises(BadDataError, match=why) as e:
        read_image(path)
    assert str(path) in str(e.value)


def _modes(tmp_path):
    """One small file per PIL mode an image may come in, with the RGB it must read as."""
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [40, 80, 120]]], dtype=np.uint8)
    base = Image.fromarray(rgb)
    out = {}
    for mode in ("RGB", "RGBA", "L", "LA", "1", "CMYK", "P"):
        im = base.convert(mode)
        path = tmp_path / f"{mode}.{'jpg' if mode == 'CMYK' else 'png'}"
        im.save(path)
        out[mode] = (path, np.asarray(Image.open(path).convert("RGB")))
    p = base.convert("P")
    p.info["transparency"] = 0
    p.save(tmp_path / "Pt.png", transparency=0)
    out["P+transparency"] = (tmp_path / "Pt.png", np.asarray(Image.open(tmp_path / "Pt.png").convert("RGBA"))[..., :3])
    return out


def test_every_mode_reads_as_its_rgb_colours(tmp_path):
    for mode, (path, want) in _modes(tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no PIL transparency warning either
            got = read_image(path)
        assert got.shape == want.shape and got.dtype == np.uint8, mode
        assert np.array_equal(got, want), mode


def test_a_non_raster_format_is_never_decoded(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    with pytest.raises(BadDataError, match=str(path)):
        read_image(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=256), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"BM"]))
def test_random_bytes_as_an_image_label_or_mask_are_refused_naming_the_file(tmp_path, data, magic):
    path = tmp_path / "random.png"
    path.write_bytes(magic + data)
    for reader in (read_image, read_label, read_binary_mask):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = reader(path)
        except BadDataError as e:
            assert str(path) in str(e)
        else:  # decodable by chance: a valid array
            assert isinstance(out, np.ndarray) and out.dtype == np.uint8


# ----------------------------------------------------------------------------- masks


def test_a_16_bit_mask_is_read_on_its_own_scale(tmp_path):
    m = np.zeros((8, 8), dtype=np.uint16)
    m[2:6, 2:6] = 65535
    m[0, 0] = 20000  # an anti-aliased edge below half: background
    Image.fromarray(m).save(tmp_path / "m16.png")
    out = read_binary_mask(tmp_path / "m16.png")
    assert out[2:6, 2:6].all() and out.sum() == 16 and out[0, 0] == 0


@pytest.mark.parametrize("arr", [np.full((4, 4), -3, dtype=np.int32), np.full((4, 4), 2**20, dtype=np.int32)])
def test_a_mask_with_impossible_values_is_refused_naming_the_file(tmp_path, arr):
    path = tmp_path / "m.tif"
    Image.fromarray(arr).save(path)
    with pytest.raises(BadDataError, match=str(path)):
        read_binary_mask(path)


def test_a_label_with_fractional_float_ids_is_refused_not_truncated(tmp_path):
    path = tmp_path / "l.tif"
    Image.fromarray(np.full((4, 4), 2.6, dtype=np.float32)).save(path)
    with pytest.raises(BadDataError, match="fractional"):
        read_label(path)


# ----------------------------------------------------------------------------- weights files


def _good(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(path), metadata={"format": "x"})
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


@pytest.mark.parametrize("case", ["garbage", "truncated", "renamed_pickle", "empty", "header_only"])
def test_a_corrupt_safetensors_file_is_a_clean_error_naming_the_file(tmp_path, case):
    from fewshot_priors.models import create_backbone

    good = _good(tmp_path).read_bytes()
    path = tmp_path / "w.safetensors"
    if case == "garbage":
        path.write_bytes(os.urandom(1000))
    elif case == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif case == "renamed_pickle":
        torch.save({"w": torch.ones(2)}, path)
    elif case == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(good[:8 + 20])
    with pytest.raises(ValueError) as e:
        create_backbone("resnet10t", weights=path)
    assert str(path) in str(e.value)


def test_a_code_running_pickle_never_runs_and_is_a_clean_error(tmp_path):
    flag = tmp_path / "PWNED"
    evil = _Evil()
    evil.flag = flag
    for name in ("evil.pth", "evil.safetensors", "evil.bin"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"state_dict": {"w": evil}}))
        with pytest.raises(ValueError, match=str(path)):
            read_tensor_file(path)
        torch.save({"w": evil}, path)
        with pytest.raises(ValueError, match=str(path)):
            read_tensor_file(path)
    assert not flag.exists()


def test_a_safetensors_file_under_another_name_is_read_by_its_content(tmp_path):
    good = _good(tmp_path)
    other = tmp_path / "weights.pth"
    other.write_bytes(good.read_bytes())
    tensors, meta = read_tensor_file(other)
    assert torch.equal(tensors["w"], torch.arange(64, dtype=torch.float32)) and meta == {"format": "x"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.sampled_from(["w.safetensors", "w.pth", "w.bin"]), st.booleans())
def test_random_bytes_as_a_weights_file_are_a_clean_error(tmp_path, data, name, with_header):
    path = tmp_path / name
    if with_header:  # a plausible safetensors length prefix and '{' before the noise
        data = len(data).to_bytes(8, "little") + b"{" + data
    path.write_bytes(data)
    try:
        read_tensor_file(path)
    except ValueError as e:
        assert str(path) in str(e)


def test_the_other_weights_readers_give_the_same_clean_errors(tmp_path):
    import fewshot_priors as fp
    from fewshot_priors.ssl.export import load_prior_extractor

    bad = tmp_path / "p.safetensors"
    bad.write_bytes(os.urandom(200))
    with pytest.raises(ValueError, match=str(bad)):
        load_prior_extractor(bad)
    model = fp.create_qgnet(backbone="resnet10t", bins=[4, 2], channels=16, use_prior=False)
    folder = model.save_pretrained(tmp_path / "saved")
    (folder / "model.safetensors").write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match="model.safetensors"):
        fp.QGNet.from_pretrained(folder)


def test_cli_train_with_a_garbage_weights_file_is_one_error_line(tmp_path, capsys):
    from fewshot_priors.app.cli import main

    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(os.urandom(500))
    root = tmp_path / "data"
    root.mkdir()
    rc = main(["train", "--config", "demo", "--no-progress", "--set", f"model.weights={bad}",
               "--set", f"data.root={root}", "--set", f"experiment.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and str(bad) in err and "Traceback" not in err


# ----------------------------------------------------------------------------- a saved model's config.json


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import fewshot_priors as fp

    model = fp.create_qgnet(backbone="resnet10t", bins=[4, 2], channels=16)
    return model.save_pretrained(tmp_path_factory.mktemp("qgnet") / "saved")


def _edit(saved, tmp_path, **model):
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    doc = json.loads((folder / "config.json").read_text())
    doc["model"].update(model)
    (folder / "config.json").write_text(json.dumps(doc))
    return folder


@pytest.mark.parametrize("key, value", [("channels", "sixteen"), ("channels", [16]), ("aux_weight", "heavy"),
                                        ("use_prior", "false"), ("use_prior", 0), ("bins", ["a"]), ("bins", []),
                                        ("output_stride", True), ("fg_weight", None), ("eps", -1.0),
                                        ("backbone", 3), ("weights", 5), ("max_chunk_bytes", "big")])
def test_a_hand_edited_config_json_is_refused_naming_the_key_and_the_file(saved, tmp_path, key, value):
    import fewshot_priors as fp

    folder = _edit(saved, tmp_path, **{key: value})
    with pytest.raises(ValueError) as e:
        fp.QGNet.from_pretrained(folder)
    assert f"model.{key}" in str(e.value) and str(folder / "config.json") in str(e.value)


def test_the_same_values_are_refused_in_the_config_tree():
    from fewshot_priors.config import ConfigError, load_config

    for text in ("model.channels=sixteen", "model.use_prior=\"false\"", "model.bins=[a]", "model.eps=-1"):
        with pytest.raises(ConfigError, match=text.split("=")[0]):
            load_config(None, [text])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["channels", "use_prior", "aux_weight", "fg_weight", "bins", "output_stride", "eps",
                        "backbone", "pretrained", "max_chunk_bytes"]),
       st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True),
                 st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=2)), max_size=3), st.integers(-5, 5)))
def test_any_hostile_config_json_value_loads_or_is_a_clean_error(saved, tmp_path_factory, key, value):
    import fewshot_priors as fp

    folder = _edit(saved, tmp_path_factory.mktemp("h"), **{key: value})
    try:
        fp.QGNet.from_pretrained(folder)
    except ValueError as e:
        assert str(folder / "config.json") in str(e) or "model.safetensors" in str(e)
