"""Dataset registry: ``data.dataset: NAME`` -> a few-shot dataset class, and the config -> dataset step.

* :data:`DATASETS` maps a name to its class; :func:`register_dataset` adds one (the
  built-ins ``pascal``, ``coco`` and ``folder`` register themselves),
* :func:`create_dataset` builds the dataset of a config's ``data`` section,
* :func:`check_data_keys` checks the dataset-specific ``data`` keys (the one place:
  ``fewshot_priors.config`` calls it with its ``ConfigError``).

Every registered class takes the shared constructor signature documented on
:class:`~fewshot_priors.data.EpisodicDataset` (``root, *, fold, split, shots,
episodes, transform, seed, image_size, min_pixels, fold_classes, ...``), so a
config key means the same for every dataset. Options of that signature that only
some datasets use (:data:`DATASET_OPTIONS`) are listed per class in its
``options`` attribute; the others are refused by name.

Example:
    A dataset of your own, selected with ``data.dataset: mine``::

        from fewshot_priors.data import FolderFewShot, register_dataset

        @register_dataset("mine")
        class MyFewShot(FolderFewShot):
            ...

        train = create_dataset(cfg, "train")
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from .._validate import is_int

__all__ = [
    "DATASETS",
    "DATASET_OPTIONS",
    "available_datasets",
    "check_data_keys",
    "check_options",
    "create_dataset",
    "dataset_keys",
    "get_dataset_class",
    "register_dataset",
]

#: name -> dataset class (``data.dataset`` selects one).
DATASETS: dict[str, type] = {}

#: Options of the shared constructor signature that apply to some datasets only: a
#: class lists those it uses in its ``options`` attribute and refuses the others
#: (when not None) by name. ``split_style`` has a non-null config default
#: (``interleaved``), so :func:`create_dataset` passes it only to the classes that
#: use it and :func:`check_data_keys` does not refuse it.
DATASET_OPTIONS: tuple[str, ...] = (
    "num_classes",
    "num_folds",
    "test_ratio",
    "min_class_images",
    "split_seed",
    "min_model_pixels",
    "split_style",
)
_NULL_DEFAULT_OPTIONS = DATASET_OPTIONS[:-1]  # the config keys whose null means "unset"


def _options(cls: type) -> tuple[str, ...]:
    return tuple(getattr(cls, "options", ()))


def register_dataset(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
    """Class decorator: make a dataset class selectable as ``data.dataset: name``.

    The class takes the shared constructor signature (see
    :class:`~fewshot_priors.data.EpisodicDataset`); its ``options`` attribute names
    the :data:`DATASET_OPTIONS` it uses. The decorator sets ``cls.dataset_name``.

    Args:
        name: the registry name (a non-empty string).
        overwrite: replace a class registered under the same name (default: error).

    Raises:
        ValueError: ``name`` is empty or already registered, or ``options`` lists an
            unknown option.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"`name` must be a non-empty string, got {name!r}")

    def decorator(cls: type) -> type:
        if not isinstance(cls, type):
            raise TypeError(f"register_dataset({name!r}) decorates a class, got {type(cls).__name__}")
        if name in DATASETS and not overwrite:
            raise ValueError(
                f"dataset name {name!r} is already registered to {DATASETS[name].__qualname__}; "
                "pick another name or pass overwrite=True"
            )
        unknown = [o for o in _options(cls) if o not in DATASET_OPTIONS]
        if unknown:
            raise ValueError(
                f"{cls.__qualname__}.options lists {unknown}, which are not dataset options; "
                f"known: {', '.join(DATASET_OPTIONS)} (other keyword arguments need no declaration)"
            )
        cls.dataset_name = name
        DATASETS[name] = cls
        return cls

    return decorator


def available_datasets() -> list[str]:
    """Names accepted as ``data.dataset``, sorted."""
    return sorted(DATASETS)


def get_dataset_class(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        ValueError: naming ``data.dataset``, the close matches and the registered names.
    """
    cls = DATASETS.get(name) if isinstance(name, str) else None
    if cls is None:
        names = available_datasets()
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"data.dataset must be one of the registered datasets ({', '.join(names)}), got {name!r}.{hint} "
            "Register your own with fewshot_priors.data.register_dataset."
        )
    return cls


def dataset_keys() -> dict[str, tuple[str, ...]]:
    """Dataset-specific ``data`` keys (null = unset) -> the registered datasets they apply to."""
    names = sorted(DATASETS, key=lambda n: (_BUILTIN_ORDER.index(n) if n in _BUILTIN_ORDER else len(_BUILTIN_ORDER), n))
    return {key: tuple(n for n in names if key in _options(DATASETS[n])) for key in _NULL_DEFAULT_OPTIONS}


#: Order of the built-in datasets in messages (independent of the order their modules were imported).
_BUILTIN_ORDER = ("pascal", "coco", "folder")


def check_options(cls: type, **values: Any) -> None:
    """Refuse the :data:`DATASET_OPTIONS` set (not None) that ``cls`` does not use.

    Called first by the constructors, with every dataset option they take.

    Raises:
        ValueError: naming the option, the class and the datasets it applies to.
    """
    used = _options(cls)
    for key, value in values.items():
        if value is not None and key not in used:
            allowed = [n for n, c in DATASETS.items() if key in _options(c)]
            name = getattr(cls, "dataset_name", None)
            which = f"{cls.__name__} (data.dataset={name!r})" if name else cls.__name__
            raise ValueError(
                f"`{key}` does not apply to {which} (only to {', '.join(allowed) or 'no registered dataset'}); "
                "remove it or pass None"
            )



def check_data_keys(data: Mapping, *, error: type[Exception] = ValueError) -> None:
    """Check a config's ``data`` section against its dataset: a registered ``data.dataset``,
    dataset-specific keys set only for a dataset they apply to, valid values.

    Args:
        data: the ``data`` section (``dataset`` defaults to ``"pascal"``).
        error: the exception class raised (``fewshot_priors.config`` passes ``ConfigError``).

    Raises:
        error: naming the key, the dataset and what is expected.
    """
    ds = data.get("dataset", "pascal")
    try:
        cls = get_dataset_class(ds)
    except ValueError as err:
        raise error(str(err)) from None
    for key, allowed in dataset_keys().items():
        if data.get(key) is not None and ds not in allowed:
            raise error(
                f"data.{key} does not apply to data.dataset={ds!r} (only to {', '.join(allowed)}); "
                f"remove it or set it to null"
            )
    fc = data.get("fold_classes")
    by_name = bool(getattr(cls, "fold_classes_by_name", False))
    if fc is not None:
        ok = isinstance(fc, (list, tuple)) and len(fc) > 0
        if by_name:
            ok = ok and all(is_int(v) or isinstance(v, str) for v in fc)
            want = "a non-empty list of class folder names (or class ids 1..N)"
        else:
            ok = ok and all(is_int(v) for v in fc)
            want = "a non-empty list of class ids"
        if not ok:
            raise error(f"data.fold_classes must be {want} for data.dataset={ds!r}, got {fc!r}")
    seeded = "test_ratio" in _options(cls)  # seeded class folds (folder): num_folds counts blocks of classes
    checks = {
        "num_classes": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        "num_folds": (lambda v: is_int(v) and v >= (2 if seeded else 1), "an int >= 2"),
        "test_ratio": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                       "a number in (0, 1)"),
        "min_class_images": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
        "split_seed": (lambda v: is_int(v) and v >= 0, "an int >= 0"),
        "min_model_pixels": (lambda v: is_int(v) and v >= 1, "an int >= 1"),
    }
    for key, (ok, want) in checks.items():
        v = data.get(key)
        if v is not None and not ok(v):
            raise error(f"data.{key} must be {want} or null, got {v!r}")
    if seeded:
        if data.get("num_folds") is not None and data.get("test_ratio") is not None:
            raise error("data.num_folds and data.test_ratio both set: the seeded folds take one of them")
        if fc is not None:
            clash = [k for k in ("num_folds", "test_ratio", "min_class_images") if data.get(k) is not None]
            if clash:
                raise error(
                    f"data.fold_classes names the held-out classes; data.{clash[0]} only shapes the "
                    "seeded folds and cannot be combined with it"
                )


def config_shots(cfg: Mapping) -> int:
    """K of a config's episodes: ``data.shots``."""
    shots = (cfg.get("data") or {}).get("shots")
    if shots is not None:
        return shots
    raise ValueError("the config sets no number of shots: set data.shots (or pass shots=)")


def create_dataset(
    cfg: Mapping,
    split: str,
    *,
    shots: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    **kwargs: Any,
):
    """The few-shot dataset of ``cfg["data"]`` for ``split`` ("train" or "val").

    The class is ``DATASETS[cfg["data"]["dataset"]]``; it receives the shared
    arguments (``fold``, ``split``, ``shots``, ``episodes``, ``transform``, ``seed``,
    ``image_size``, ``min_pixels``, ``fold_classes`` when set), the dataset options
    it uses (see :data:`DATASET_OPTIONS`) when set, and ``kwargs``.

    Args:
        cfg: full config (sections ``data``, ``experiment``; ``model`` for the
            ``model.shots`` fallback of configs without ``data.shots``).
        split: "train" (training classes, training augmentation) or "val"
            (held-out classes, test transform, labels at original resolution).
        shots: K (default ``data.shots``, else ``model.shots``).
        episodes: number of episodes (default: ``data.train_episodes`` for train,
            ``data.test_episodes`` for val).
        seed: episode seed (default ``experiment.seed``). A dataset with seeded
            class folds (``split_seed`` option: folder) splits its classes with
            ``data.split_seed`` (default ``experiment.seed``), so train and
            val/eval hold out the same classes whatever the episode seed.
        **kwargs: passed to the dataset class (they win over the config).

    Returns:
        the dataset (an :class:`~fewshot_priors.data.EpisodicDataset` for the built-ins).

    Raises:
        ValueError: unknown ``data.dataset`` (close matches named), or a
            dataset-specific ``data`` key set for a dataset it does not apply to
            (e.g. ``data.num_classes`` with ``dataset: folder``).

    Example:
        >>> from fewshot_priors.config import load_config  # doctest: +SKIP
        >>> cfg = load_config(None, ["data.root=/data/pascal", "data.fold=1"])  # doctest: +SKIP
        >>> val = create_dataset(cfg, "val", shots=5)  # doctest: +SKIP
    """
    from .transforms import TestTransform, TrainTransform

    d = cfg["data"]
    check_data_keys(d)
    cls = get_dataset_class(d.get("dataset", "pascal"))
    shots = int(shots if shots is not None else config_shots(cfg))
    if episodes is None:
        episodes = d["train_episodes"] if split == "train" else d["test_episodes"]
    seed = int(seed if seed is not None else cfg["experiment"]["seed"])
    size = int(d["image_size"])
    # photos of any size (folder) train at the test scale (longer side ~ image_size);
    # PASCAL/COCO follow PFENet. data.train_resize_long overrides either way.
    resize_long = d.get("train_resize_long")
    if resize_long is None:
        resize_long = bool(getattr(cls, "train_resize_long", False))
    transform = (TrainTransform(size, scale=tuple(d["scale_range"]), resize_long=size if resize_long else None)
                 if split == "train" else TestTransform(size))
    args: dict[str, Any] = {
        "fold": int(d["fold"]), "split": split, "shots": shots, "episodes": episodes, "transform": transform,
        "seed": seed, "image_size": size, "min_pixels": int(d["min_pixels"]),
    }
    if d.get("fold_classes") is not None:
        args["fold_classes"] = list(d["fold_classes"])
    used = _options(cls)
    # dataset options (check_data_keys refused those set for another dataset)
    args.update({k: d[k] for k in DATASET_OPTIONS if k in used and d.get(k) is not None})
    if "split_seed" in used and args.get("split_seed") is None:
        # the class split must not follow the episode seed (val/eval pass eval.seed)
        args["split_seed"] = int(cfg["experiment"]["seed"])
    args.update(kwargs)
    return cls(d["root"], **args)
