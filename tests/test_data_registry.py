"""Dataset registry: custom datasets through a config, one constructor signature, create_dataset."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from _data_fixtures import write_image
from PIL import Image

import fewshot_priors.data as fsdata
from fewshot_priors.config import load_config
from fewshot_priors.data import (
    DATASETS,
    CocoFewShot,
    EpisodicDataset,
    FolderFewShot,
    PascalFewShot,
    available_datasets,
    create_dataset,
    generate_synthetic_dataset,
    register_dataset,
)
from fewshot_priors.data.episodes import SHARED_PARAMETERS
from fewshot_priors.data.registry import DATASET_OPTIONS, check_data_keys, dataset_keys
from fewshot_priors.data.transforms import TestTransform, TrainTransform

BUILTINS = (PascalFewShot, CocoFewShot, FolderFewShot)


@pytest.fixture
def registered():
    """Names registered by a test are removed afterwards (the registry is global)."""
    before = dict(DATASETS)
    yield
    DATASETS.clear()
    DATASETS.update(before)


# ------------------------------------------------------------------ fixtures on disk


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("syn") / "d", num_classes=4, images_per_class=12, image_size=96,
        min_pixels=2048, seed=3, progress=False,
    )


CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fss") / "fss"
    rng = np.random.default_rng(0)
    for ci, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(4):
            write_image(root / c / f"{i}.jpg", rng, hw=(40, 50))
            m = np.zeros((40, 50), np.uint8)
            m[5 : 15 + 3 * i, 10 : 30 + ci] = 255
            Image.fromarray(m).save(root / c / f"{i}.png")
    return root


def _pascal_cfg(root, *overrides):
    return load_config(None, [f"data.root={root}", "data.image_size=48", "data.min_pixels=600",
                              "data.test_episodes=6", "data.train_episodes=5", *overrides])


def _folder_cfg(root, *overrides):
    return load_config(None, ["data.dataset=folder", f"data.root={root}", "data.image_size=32",
                              "data.min_pixels=1", "data.test_episodes=6", "data.train_episodes=5", *overrides])


def _reference_build_dataset(cfg, split, *, shots=None, episodes=None, seed=None, **kwargs):
    """engine/build.py::build_dataset as it was before the registry (frozen copy)."""
    keys = ("num_classes", "num_folds", "test_ratio", "min_class_images", "split_seed", "min_model_pixels")
    d = cfg["data"]
    shots = int(shots if shots is not None else cfg["data"]["shots"])  # was model.shots (moved to data.shots)
    if episodes is None:
        episodes = d["train_episodes"] if split == "train" else d["test_episodes"]
    seed = int(seed if seed is not None else cfg["experiment"]["seed"])
    size = int(d["image_size"])
    resize_long = d.get("train_resize_long")
    if resize_long is None:
        resize_long = d["dataset"] == "folder"
    transform = (TrainTransform(size, scale=tuple(d["scale_range"]), resize_long=size if resize_long else None)
                 if split == "train" else TestTransform(size))
    common = {"fold": int(d["fold"]), "split": split, "shots": shots, "episodes": episodes, "transform": transform,
              "seed": seed, "min_pixels": int(d["min_pixels"])}
    if d.get("fold_classes") is not None:
        common["fold_classes"] = list(d["fold_classes"])
    common.update({k: d[k] for k in keys if d.get(k) is not None})
    if d["dataset"] == "folder":
        common["image_size"] = size
        if common.get("split_seed") is None:
            common["split_seed"] = int(cfg["experiment"]["seed"])
    common.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if d["dataset"] == "pascal":
            return PascalFewShot(d["root"], **common)
        return FolderFewShot(d["root"], **common)


def _same_episodes(a, b, epochs=(0,)):
    assert type(a) is type(b) and len(a) == len(b) > 0
    assert a.class_ids == b.class_ids and a.pairs == b.pairs
    assert repr(a.transform) == repr(b.transform)
    for epoch in epochs:
        for i in range(len(a)):
            ea, eb = a[(epoch, i)], b[(epoch, i)]
            assert ea.keys() == eb.keys()
            for k in ea:
                if isinstance(ea[k], torch.Tensor):
                    assert torch.equal(ea[k], eb[k]), (epoch, i, k)
                else:
                    assert ea[k] == eb[k], (epoch, i, k)


# ------------------------------------------------------------------ create_dataset == build_dataset


@pytest.mark.parametrize("split", ["train", "val"])
def test_create_dataset_matches_the_former_build_dataset_for_pascal(synthetic_root, split):
    cfg = _pascal_cfg(synthetic_root, "data.fold=1", "experiment.seed=7")
    new = create_dataset(cfg, split, progress=False)
    old = _reference_build_dataset(cfg, split, progress=False)
    assert isinstance(new, PascalFewShot) and new.test_class_ids == [2]
    assert isinstance(new.transform, TrainTransform if split == "train" else TestTransform)
    assert split != "train" or new.transform.resize_long is None  # PFENet's recipe for PASCAL
    _same_episodes(new, old, epochs=(0, 1) if split == "train" else (0,))
    # call arguments win over the config, as before
    k3 = create_dataset(cfg, split, shots=2, episodes=2, seed=11, progress=False)
    _same_episodes(k3, _reference_build_dataset(cfg, split, shots=2, episodes=2, seed=11, progress=False))
    assert k3.shots == 2 and len(k3) == 2 and k3.seed == 11


@pytest.mark.parametrize("split", ["train", "val"])
def test_create_dataset_matches_the_former_build_dataset_for_folders(folder_root, split):
    for overrides in (["data.fold_classes=[cat, eel]"], ["data.num_folds=3", "data.fold=2", "experiment.seed=4"]):
        cfg = _folder_cfg(folder_root, *overrides)
        new = create_dataset(cfg, split, progress=False)
        old = _reference_build_dataset(cfg, split, progress=False)
        assert isinstance(new, FolderFewShot)
        assert new.test_class_ids == old.test_class_ids
        assert split != "train" or new.transform.resize_long == 32  # photos: train at the test scale
        _same_episodes(new, old)
    # the class split follows data.split_seed (default experiment.seed), not the episode seed
    cfg = _folder_cfg(folder_root, "data.num_folds=3", "experiment.seed=4")
    held = {tuple(create_dataset(cfg, split, seed=s, progress=False).test_class_ids) for s in range(4)}
    assert len(held) == 1


def test_shots_come_from_data_shots(synthetic_root):
    cfg = _pascal_cfg(synthetic_root, "data.shots=2")
    assert create_dataset(cfg, "val", progress=False).shots == 2
    del cfg["data"]["shots"]
    cfg["model"]["shots"] = 3  # the 0.1.0 key is not read any more
    with pytest.raises(ValueError, match="set data.shots"):
        create_dataset(cfg, "val", progress=False)


# ------------------------------------------------------------------ the registry


def test_builtins_are_registered():
    assert {"pascal", "coco", "folder"} <= set(available_datasets())
    assert available_datasets() == sorted(DATASETS)
    assert DATASETS["pascal"] is PascalFewShot and DATASETS["coco"] is CocoFewShot
    assert DATASETS["folder"] is FolderFewShot and FolderFewShot.dataset_name == "folder"


def test_a_registered_custom_dataset_is_built_from_a_config(registered, folder_root):
    seen = {}

    @register_dataset("mine")
    class MyFewShot(FolderFewShot):
        """Folder layout whose masks are all read as the class (a user's own reader)."""

        options = ("split_seed",)  # no seeded folds besides the split seed

        def __init__(self, root, **kwargs):
            seen.update(kwargs)
            super().__init__(root, **kwargs)

    assert "mine" in available_datasets() and DATASETS["mine"] is MyFewShot
    cfg = _folder_cfg(folder_root, "data.fold_classes=[bee]", "data.shots=2", "experiment.seed=9")
    cfg["data"]["dataset"] = "mine"
    ds = create_dataset(cfg, "val", progress=False)
    assert type(ds) is MyFewShot and ds.test_class_ids == [2] and ds.shots == 2 and len(ds) == 6
    assert seen["fold_classes"] == ["bee"] and seen["split_seed"] == 9 and seen["image_size"] == 32
    assert isinstance(seen["transform"], TestTransform) and seen["transform"].size == 32
    assert ds[0]["support_images"].shape == (2, 3, 32, 32)
    # class attributes steer the config rules: not a photo dataset -> PFENet training crops
    assert create_dataset(cfg, "train", progress=False).transform.resize_long == 32  # inherited
    MyFewShot.train_resize_long = False
    assert create_dataset(cfg, "train", progress=False).transform.resize_long is None
    # an option the custom class does not list is refused, for the config and the class
    cfg["data"]["fold_classes"], cfg["data"]["num_folds"] = None, 2
    with pytest.raises(ValueError, match=r"data.num_folds does not apply to data.dataset='mine'"):
        create_dataset(cfg, "val")
    with pytest.raises(ValueError, match=r"`num_folds` does not apply to MyFewShot \(data.dataset='mine'\)"):
        MyFewShot(folder_root, num_folds=2)
    assert "mine" not in dataset_keys()["num_folds"] and dataset_keys()["split_seed"] == ("folder", "mine")


def test_duplicate_and_bad_registrations_are_refused(registered):
    with pytest.raises(ValueError, match="'folder' is already registered to FolderFewShot"):
        register_dataset("folder")(type("Other", (EpisodicDataset,), {}))
    assert DATASETS["folder"] is FolderFewShot
    replacement = register_dataset("folder", overwrite=True)(type("Other", (FolderFewShot,), {}))
    assert DATASETS["folder"] is replacement
    with pytest.raises(ValueError, match="non-empty string"):
        register_dataset("")
    with pytest.raises(ValueError, match=r"lists \['folds'\], which are not dataset options"):
        register_dataset("typo")(type("Typo", (EpisodicDataset,), {"options": ("folds",)}))
    assert "typo" not in DATASETS


def test_unknown_dataset_names_data_dataset_and_the_close_match(synthetic_root):
    cfg = _pascal_cfg(synthetic_root)
    cfg["data"]["dataset"] = "pascl"
    with pytest.raises(ValueError, match=r"data.dataset must be one of the registered datasets \(coco, folder, "
                                         r"pascal\), got 'pascl'. Did you mean 'pascal'\?"):
        create_dataset(cfg, "val")
    cfg["data"]["dataset"] = "imagenet"
    with pytest.raises(ValueError, match="data.dataset must be one of .*, got 'imagenet'") as err:
        create_dataset(cfg, "val")
    assert "Did you mean" not in str(err.value) and "register_dataset" in str(err.value)


def test_check_data_keys_raises_the_callers_error_class():
    class MyConfigError(ValueError):
        pass

    with pytest.raises(MyConfigError, match="data.num_classes does not apply to data.dataset='folder' "
                                            r"\(only to pascal\); remove it or set it to null"):
        check_data_keys({"dataset": "folder", "num_classes": 5}, error=MyConfigError)
    with pytest.raises(MyConfigError, match="data.num_folds does not apply to data.dataset='coco' "
                                            r"\(only to pascal, folder\)"):
        check_data_keys({"dataset": "coco", "num_folds": 2}, error=MyConfigError)
    with pytest.raises(ValueError, match="data.fold_classes must be a non-empty list of class ids"):
        check_data_keys({"dataset": "pascal", "fold_classes": ["cat"]})
    check_data_keys({"dataset": "folder", "fold_classes": ["cat", 2]})  # names allowed for folders
    with pytest.raises(ValueError, match="num_folds and data.test_ratio"):
        check_data_keys({"dataset": "folder", "num_folds": 3, "test_ratio": 0.3})
    check_data_keys({"dataset": "pascal", "fold_classes": [1], "num_folds": 2})  # pascal: no seeded folds


def test_dataset_keys_are_derived_from_the_registry():
    from fewshot_priors.data import registry

    assert registry.dataset_keys() == {
        "num_classes": ("pascal",),
        "num_folds": ("pascal", "folder"),
        "test_ratio": ("folder",),
        "min_class_images": ("folder",),
        "split_seed": ("folder",),
        "min_model_pixels": ("folder",),
    }


# ------------------------------------------------------------------ one constructor signature


def _shared_part(cls):
    params = list(inspect.signature(cls).parameters.values())
    return params[: len(SHARED_PARAMETERS)]


def test_builtins_share_one_constructor_signature():
    reference = _shared_part(PascalFewShot)
    assert [p.name for p in reference] == list(SHARED_PARAMETERS)
    assert reference[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD  # root
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in reference[1:])
    for cls in (CocoFewShot, FolderFewShot):
        shared = _shared_part(cls)
        assert [(p.name, p.kind, p.default) for p in shared] == [(p.name, p.kind, p.default) for p in reference], cls
        # the dataset-specific arguments follow, keyword-only
        rest = list(inspect.signature(cls).parameters.values())[len(SHARED_PARAMETERS):]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)
    assert set(DATASET_OPTIONS) <= set(SHARED_PARAMETERS)
    # the signature is the one documented on the base class
    assert "Dataset(root, *, fold=0, split=\"train\", shots=1" in EpisodicDataset.__doc__


@pytest.mark.parametrize("cls", BUILTINS)
def test_options_that_do_not_apply_are_refused_by_name(cls, tmp_path):
    for key in DATASET_OPTIONS:
        if key in cls.options:
            continue
        allowed = [n for n, c in DATASETS.items() if key in c.options]
        with pytest.raises(ValueError, match=rf"`{key}` does not apply to {cls.__name__} "
                                             rf"\(data.dataset='{cls.dataset_name}'\) \(only to {', '.join(allowed)}\)"):
            cls(tmp_path / "missing", **{key: 2})  # refused before the disk is touched


@pytest.mark.parametrize("cls", BUILTINS)
def test_shared_arguments_mean_the_same(cls, synthetic_root, folder_root, tmp_path):
    # every shared argument is accepted by keyword: failure is about the (missing) data, not the call
    kwargs = {"fold": 0, "split": "val", "shots": 1, "episodes": 2, "transform": None, "seed": 1, "image_size": 32,
              "min_pixels": 1, "fold_classes": [1], "strict": False, "cache": False, "query_sampling": "pairs",
              "progress": False}
    with pytest.raises(fsdata.DataLayoutError, match="does not exist"):
        cls(tmp_path / "missing", **kwargs)
    if cls is CocoFewShot:
        return
    root = synthetic_root if cls is PascalFewShot else folder_root
    ds = cls(root, **kwargs)
    assert ds.split == "test" and ds.shots == 1 and len(ds) == 2 and ds.seed == 1
    assert ds.class_ids == ds.test_class_ids == [1] and ds.min_pixels == 1
    assert ds[0]["query_image"].shape[-1] == 32
    # "val" and "test" are the same split for every dataset
    assert cls(root, **{**kwargs, "split": "test"}).split == "test"


def test_dataset_defaults_of_min_pixels_and_episodes(synthetic_root, folder_root):
    assert PascalFewShot(synthetic_root, split="val", fold=1, progress=False, cache=False).min_pixels == 2048
    fol = FolderFewShot(folder_root, split="val", fold_classes=["ant"], progress=False, cache=False)
    assert fol.min_pixels == 1 and fol.min_model_pixels == 1 and len(fol) == 1000 and fol.fold == 0


def test_positional_arguments_of_older_releases_warn_and_still_work(synthetic_root, folder_root):
    with pytest.warns(DeprecationWarning, match=r"passing fold, split by position is deprecated.*fold=\.\.\."):
        old = PascalFewShot(synthetic_root, 1, "val", progress=False, min_pixels=600, episodes=3)
    new = PascalFewShot(synthetic_root, fold=1, split="val", progress=False, min_pixels=600, episodes=3)
    _same_episodes(old, new)
    with pytest.warns(DeprecationWarning, match="passing shots, split by position"):
        f_old = FolderFewShot(folder_root, 2, "test", fold_classes=["ant"], episodes=3, progress=False)
    assert f_old.shots == 2 and f_old.split == "test"
    with pytest.raises(TypeError, match="multiple values for argument 'fold'"):
        PascalFewShot(synthetic_root, 1, fold=1)
    with pytest.raises(TypeError, match="positional arguments"):
        CocoFewShot("x", *range(17))
    # a keyword call does not warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        PascalFewShot(synthetic_root, fold=1, split="val", progress=False, min_pixels=600, episodes=1)


def test_registry_module_documents_the_signature_once():
    # the subclasses point to the base class instead of repeating the shared arguments
    for cls in BUILTINS:
        assert "shared dataset signature (see :class:`~fewshot_priors.data.EpisodicDataset`)" in cls.__doc__
