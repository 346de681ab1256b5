"""Dataset registry: custom datasets through a config, one constructor signature, create_dataset."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch
from _data_fixtures import write_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import fewshot_priors.data as fsdata
from fewshot_priors.config import load_config
from fewshot_priors.data import (
    DATASETS,
    SPLITS,
    CocoFewShot,
    CocoOptions,
    DatasetOptions,
    EpisodicDataset,
    FolderFewShot,
    FolderOptions,
    PascalFewShot,
    PascalOptions,
    available_datasets,
    create_dataset,
    generate_synthetic_dataset,
    register_dataset,
)
from fewshot_priors.data.registry import (
    DATASET_OPTIONS,
    check_data_keys,
    dataset_keys,
    dataset_options,
)
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


def _reference_build_dataset(cfg, split, *, shots=None, episodes=None, seed=None, **options):
    """What create_dataset must build: the constructor called with every argument spelled out."""
    d = cfg["data"]
    if episodes is None:
        episodes = d["train_episodes"] if split == "train" else d["test_episodes"]
    size = int(d["image_size"])
    folder = d["dataset"] == "folder"
    transform = (TrainTransform(size, scale=tuple(d["scale_range"]), resize_long=size if folder else None)
                 if split == "train" else TestTransform(size))
    opts = {"min_pixels": int(d["min_pixels"])}
    if d.get("fold_classes") is not None:
        opts["fold_classes"] = tuple(d["fold_classes"])
    keys = ("num_folds", "test_ratio", "min_class_images", "split_seed", "min_model_pixels") if folder else (
        "num_classes", "num_folds")
    opts.update({k: d[k] for k in keys if d.get(k) is not None})
    if folder and opts.get("split_seed") is None:
        opts["split_seed"] = int(cfg["experiment"]["seed"])
    cls, options_class = (FolderFewShot, FolderOptions) if folder else (PascalFewShot, PascalOptions)
    return cls(d["root"], split=split, fold=int(d["fold"]), shots=int(shots or d["shots"]), episodes=episodes,
               seed=int(cfg["experiment"]["seed"] if seed is None else seed), transform=transform, image_size=size,
               options=options_class(**opts, **options), progress=False)


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
    old = _reference_build_dataset(cfg, split)
    assert isinstance(new, PascalFewShot) and new.test_class_ids == [2]
    assert isinstance(new.transform, TrainTransform if split == "train" else TestTransform)
    assert split != "train" or new.transform.resize_long is None  # PFENet's recipe for PASCAL
    _same_episodes(new, old, epochs=(0, 1) if split == "train" else (0,))
    # call arguments win over the config, as before
    k3 = create_dataset(cfg, split, shots=2, episodes=2, seed=11, progress=False)
    _same_episodes(k3, _reference_build_dataset(cfg, split, shots=2, episodes=2, seed=11))
    assert k3.shots == 2 and len(k3) == 2 and k3.seed == 11


@pytest.mark.parametrize("split", ["train", "val"])
def test_create_dataset_matches_the_former_build_dataset_for_folders(folder_root, split):
    for overrides in (["data.fold_classes=[cat, eel]"], ["data.num_folds=3", "data.fold=2", "experiment.seed=4"]):
        cfg = _folder_cfg(folder_root, *overrides)
        new = create_dataset(cfg, split, progress=False)
        old = _reference_build_dataset(cfg, split)
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
    assert create_dataset(cfg, "val", shots=3, progress=False).shots == 3
    cfg["model"]["shots"] = 3  # 0.2.0: no model.shots fallback
    del cfg["data"]["shots"]
    with pytest.raises(KeyError, match="shots"):
        create_dataset(cfg, "val", progress=False)


def test_overrides_go_to_the_constructor_or_the_options(synthetic_root):
    cfg = _pascal_cfg(synthetic_root, "data.fold=1")
    ds = create_dataset(cfg, "val", progress=False, cache=False, query_sampling="images", image_size=40)
    assert ds.options == PascalOptions(min_pixels=600, cache=False, query_sampling="images")
    assert ds.image_size == 40 and ds.transform.size == 40 and ds.progress is False
    with pytest.raises(TypeError, match=r"'min_pixel' is not an option of PascalOptions \(data.dataset='pascal'\).*"
                                        r"Did you mean 'min_pixels'\?"):
        create_dataset(cfg, "val", min_pixel=3)
    with pytest.raises(TypeError, match="'crowd' is not an option of PascalOptions"):
        create_dataset(cfg, "val", crowd="ignore")  # a COCO option


def test_the_data_keys_are_checked_once_per_build_dataset(synthetic_root, monkeypatch):
    from fewshot_priors.data import registry
    from fewshot_priors.engine.build import build_dataset

    cfg = _pascal_cfg(synthetic_root, "data.fold=1")  # load_config checks the tree once, at load
    calls = []
    real = registry.dataset_options
    monkeypatch.setattr(registry, "dataset_options", lambda *a, **k: calls.append(1) or real(*a, **k))
    build_dataset(cfg, "val", progress=False)
    assert len(calls) == 1


# ------------------------------------------------------------------ the registry


def test_builtins_are_registered():
    assert {"pascal", "coco", "folder"} <= set(available_datasets())
    assert available_datasets() == sorted(DATASETS)
    assert DATASETS["pascal"] is PascalFewShot and DATASETS["coco"] is CocoFewShot
    assert DATASETS["folder"] is FolderFewShot and FolderFewShot.dataset_name == "folder"


@dataclasses.dataclass(frozen=True)
class MyOptions(FolderOptions):
    """A user's options class: the folder options plus one of its own."""

    flip_masks: bool = False


def test_a_registered_custom_dataset_is_built_from_a_config(registered, folder_root):
    seen = {}

    @register_dataset("mine")
    class MyFewShot(FolderFewShot):
        """Folder layout with options of its own."""

        options_class = MyOptions

        def __init__(self, root, **kwargs):
            seen.update(kwargs)
            super().__init__(root, **kwargs)

    assert "mine" in available_datasets() and DATASETS["mine"] is MyFewShot
    cfg = _folder_cfg(folder_root, "data.fold_classes=[bee]", "data.shots=2", "experiment.seed=9")
    cfg["data"]["dataset"] = "mine"
    ds = create_dataset(cfg, "val", progress=False, flip_masks=True)
    assert type(ds) is MyFewShot and ds.test_class_ids == [2] and ds.shots == 2 and len(ds) == 6
    assert seen["options"] == MyOptions(min_pixels=1, fold_classes=("bee",), split_seed=9, flip_masks=True)
    assert seen["image_size"] == 32 and seen["split"] == "val"
    assert isinstance(seen["transform"], TestTransform) and seen["transform"].size == 32
    assert ds[0]["support_images"].shape == (2, 3, 32, 32)
    # class attributes steer the config rules: not a photo dataset -> PFENet training crops
    assert create_dataset(cfg, "train", progress=False).transform.resize_long == 32  # inherited
    MyFewShot.train_resize_long = False
    assert create_dataset(cfg, "train", progress=False).transform.resize_long is None
    # an option the custom class does not have is refused, for the config and the class
    cfg["data"]["fold_classes"], cfg["data"]["num_classes"] = None, 2
    with pytest.raises(ValueError, match=r"data.num_classes does not apply to data.dataset='mine' \(only to pascal\)"):
        create_dataset(cfg, "val")
    with pytest.raises(TypeError, match=r"MyFewShot: `options` must be a MyOptions \(or None\), got FolderOptions"):
        MyFewShot(folder_root, options=FolderOptions())
    assert "mine" not in dataset_keys()["num_classes"] and dataset_keys()["split_seed"] == ("folder", "mine")


def test_duplicate_and_bad_registrations_are_refused(registered):
    with pytest.raises(ValueError, match="'folder' is already registered to FolderFewShot"):
        register_dataset("folder")(type("Other", (EpisodicDataset,), {}))
    assert DATASETS["folder"] is FolderFewShot
    replacement = register_dataset("folder", overwrite=True)(type("Other", (FolderFewShot,), {}))
    assert DATASETS["folder"] is replacement
    with pytest.raises(ValueError, match="non-empty string"):
        register_dataset("")
    with pytest.raises(TypeError, match=r"Typo.options_class must be a dataclass derived from DatasetOptions"):
        register_dataset("typo")(type("Typo", (EpisodicDataset,), {"options_class": dict}))
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
    with pytest.raises(ValueError, match=r"data.fold_classes must be a non-empty list of class ids, got \['cat'\] "
                                         r"\(data.dataset='pascal'\)"):
        check_data_keys({"dataset": "pascal", "fold_classes": ["cat"]})
    check_data_keys({"dataset": "folder", "fold_classes": ["cat", 2]})  # names allowed for folders
    with pytest.raises(ValueError, match="data.num_folds and data.test_ratio both set"):
        check_data_keys({"dataset": "folder", "num_folds": 3, "test_ratio": 0.3})
    with pytest.raises(ValueError, match="data.fold_classes names the held-out classes; data.num_folds only shapes"):
        check_data_keys({"dataset": "folder", "fold_classes": ["cat"], "num_folds": 3})
    with pytest.raises(MyConfigError, match=r"data.num_folds must be an int >= 2, got 1"):
        check_data_keys({"dataset": "folder", "num_folds": 1}, error=MyConfigError)
    check_data_keys({"dataset": "pascal", "fold_classes": [1], "num_folds": 2})  # pascal: no seeded folds


def test_the_dataset_keys_table_is_derived_from_the_options_classes():
    assert dataset_keys() == {
        "num_classes": ("pascal",),
        "num_folds": ("pascal", "folder"),
        "test_ratio": ("folder",),
        "min_class_images": ("folder",),
        "split_seed": ("folder",),
        "min_model_pixels": ("folder",),
    }


# ------------------------------------------------------------------ one constructor signature

SIGNATURE = ["root", "split", "fold", "shots", "episodes", "seed", "transform", "image_size", "options", "progress"]


def test_builtins_share_one_small_constructor_signature():
    reference = inspect.signature(EpisodicDataset)
    assert list(reference.parameters) == SIGNATURE
    params = list(reference.parameters.values())
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD  # root
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    for cls in BUILTINS:
        assert inspect.signature(cls) == reference, cls
        assert "__init__" not in vars(cls)  # one constructor, not three copies
        assert issubclass(cls.options_class, DatasetOptions) and dataclasses.is_dataclass(cls.options_class)
    # every dataset-specific config key is a field of some options class
    fields = {f.name for c in BUILTINS for f in dataclasses.fields(c.options_class)}
    assert set(DATASET_OPTIONS) <= fields
    # the signature is the one documented on the base class
    assert 'Dataset(root, *, split="train", fold=0, shots=1, episodes=None, seed=321,' in EpisodicDataset.__doc__


@pytest.mark.parametrize("cls", BUILTINS)
def test_config_keys_that_do_not_apply_are_refused_by_name(cls):
    fields = {f.name for f in dataclasses.fields(cls.options_class)}
    for key in DATASET_OPTIONS[:-1]:  # split_style has a non-null config default: never refused
        if key in fields:
            continue
        allowed = ", ".join(dataset_keys()[key])
        with pytest.raises(ValueError, match=rf"data.{key} does not apply to data.dataset='{cls.dataset_name}' "
                                             rf"\(only to {allowed}\)"):
            check_data_keys({"dataset": cls.dataset_name, key: 2})
        with pytest.raises(TypeError, match=key):  # and the options class has no such field
            cls.options_class(**{key: 2})


@pytest.mark.parametrize("cls", BUILTINS)
def test_shared_arguments_mean_the_same(cls, synthetic_root, folder_root, tmp_path):
    # every shared argument is accepted by keyword: failure is about the (missing) data, not the call
    opts = cls.options_class(min_pixels=1, fold_classes=[1], strict=False, cache=False, query_sampling="pairs")
    kwargs = {"split": "val", "fold": 0, "shots": 1, "episodes": 2, "seed": 1, "transform": None, "image_size": 32,
              "options": opts, "progress": False}
    with pytest.raises(fsdata.DataLayoutError, match="does not exist"):
        cls(tmp_path / "missing", **kwargs)
    if cls is CocoFewShot:
        return
    root = synthetic_root if cls is PascalFewShot else folder_root
    ds = cls(root, **kwargs)
    assert ds.split == "val" and ds.shots == 1 and len(ds) == 2 and ds.seed == 1 and ds.options is opts
    assert ds.class_ids == ds.test_class_ids == [1] and ds.min_pixels == 1
    assert ds[0]["query_image"].shape[-1] == 32 and "query_mask_orig" in ds[0]
    # one name per split at every level: "test" is refused (it was an alias of "val" in 0.1.0)
    with pytest.raises(ValueError, match=r"`split` must be 'train' or 'val', got 'test' \(0.2.0 calls"):
        cls(root, **{**kwargs, "split": "test"})
    assert SPLITS == ("train", "val")


@pytest.mark.parametrize("cls", BUILTINS)
def test_arguments_after_root_are_keyword_only(cls, tmp_path):
    with pytest.raises(TypeError, match="positional argument"):
        cls(tmp_path, "val")  # 0.1.0's legacy_positional is gone


def test_dataset_defaults_of_min_pixels_and_episodes(synthetic_root, folder_root):
    assert PascalOptions().min_pixels == CocoOptions().min_pixels == 2048 and FolderOptions().min_pixels == 1
    pas = PascalFewShot(synthetic_root, split="val", fold=1, progress=False, options=PascalOptions(cache=False))
    assert pas.min_pixels == 2048 and len(pas) == 5000
    fol = FolderFewShot(folder_root, split="val", options=FolderOptions(fold_classes=["ant"], cache=False),
                        progress=False)
    assert fol.min_pixels == 1 and fol.min_model_pixels == 1 and len(fol) == 1000 and fol.fold == 0


def test_one_transform_builder(synthetic_root, folder_root):
    # the constructor's default and create_dataset's transform come from default_transform
    assert repr(PascalFewShot.default_transform("train", 48)) == repr(TrainTransform(48, scale=(0.9, 1.1)))
    assert repr(CocoFewShot.default_transform("train", 48)) == repr(TrainTransform(48, scale=(0.8, 1.25)))
    assert repr(FolderFewShot.default_transform("train", 48)) == repr(TrainTransform(48, resize_long=48))
    assert repr(FolderFewShot.default_transform("train", 48, resize_long=False)) == repr(TrainTransform(48))
    assert repr(PascalFewShot.default_transform("val", 48)) == repr(TestTransform(48))
    tr = PascalFewShot(synthetic_root, split="train", image_size=48, options=PascalOptions(min_pixels=600),
                       progress=False)
    assert repr(tr.transform) == repr(PascalFewShot.default_transform("train", 48))


def test_registry_module_documents_the_signature_once():
    # the subclasses point to the base class instead of repeating the shared arguments
    for cls in BUILTINS:
        assert "shared dataset signature (see :class:`~fewshot_priors.data.EpisodicDataset`)" in cls.__doc__


# ------------------------------------------------------------------ hostile option values

_HOSTILE = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3),
                     st.lists(st.integers(-2, 3), max_size=2), st.just(float("inf")))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["pascal", "coco", "folder"]),
       key=st.sampled_from(["min_pixels", "fold_classes", "num_classes", "num_folds", "test_ratio",
                            "min_class_images", "split_seed", "min_model_pixels", "split_style"]),
       value=_HOSTILE)
def test_hostile_data_values_are_refused_by_name_or_kept_exactly(name, key, value):
    data = {"dataset": name, key: value}
    try:
        cls, options = dataset_options(data)
    except ValueError as err:
        assert f"data.{key}" in str(err)  # the message names the key
        return
    except TypeError as err:
        assert key in str(err)
        return
    # accepted: the value reached the options unchanged (or the key is unset / not used by this dataset)
    fields = {f.name for f in dataclasses.fields(cls.options_class)}
    if value is not None and key in fields:
        got = getattr(options, key)
        assert got == (tuple(value) if isinstance(value, list) else value)
        if key != "fold_classes":
            assert not isinstance(got, bool) or key == "split_style"
