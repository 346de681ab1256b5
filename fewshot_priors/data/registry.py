"""Dataset registry: ``data.dataset: NAME`` -> a few-shot dataset class, and the config -> dataset step.

* :data:`DATASETS` maps a name to its class; :func:`register_dataset` adds one (the
  built-ins ``pascal``, ``coco`` and ``folder`` register themselves),
* :func:`create_dataset` builds the dataset of a config's ``data`` section,
* :func:`dataset_options` turns the ``data`` section into the dataset's typed options
  object: the one place the ``data`` keys are checked against their dataset
  (:func:`check_data_keys` is it with the caller's error class; ``fewshot_priors.config``
  uses it with its ``ConfigError``).

Every registered class takes the one constructor signature of
:class:`~fewshot_priors.data.EpisodicDataset` (``root, *, split, fold, shots, episodes,
seed, transform, image_size, options, progress``); what is specific to a dataset is in
its options dataclass (``options_class``). The ``data`` keys of the config that apply
to some datasets only (:data:`DATASET_OPTIONS`) are fields of the options classes of
those datasets and refused by name for the others.

Example:
    A dataset of your own, selected with ``data.dataset: mine``::

        from fewshot_priors.data import FolderFewShot, register_dataset

        @register_dataset("mine")
        class MyFewShot(FolderFewShot):
            ...

        train = create_dataset(cfg, "train")
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from .episodes import DatasetOptions, check_split

__all__ = [
    "DATASETS",
    "DATASET_OPTIONS",
    "available_datasets",
    "check_data_keys",
    "create_dataset",
    "dataset_keys",
    "dataset_options",
    "get_dataset_class",
    "register_dataset",
]

#: name -> dataset class (``data.dataset`` selects one).
DATASETS: dict[str, type] = {}

#: The ``data`` keys that apply to some datasets only: each is a field of the options
#: class of the datasets it applies to. All but ``split_style`` default to null (=
#: unset) and are refused by name when set for another dataset; ``split_style`` has a
#: non-null config default (``interleaved``), so it is passed only to the classes that
#: have it and never refused.
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
#: ``data`` keys every options class has (fields of DatasetOptions)
_COMMON_OPTIONS = ("min_pixels", "fold_classes", "val_class_ratio", "exclude_novel_images")


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls.options_class))


def register_dataset(name: str, *, overwrite: bool = False) -> Callable[[type], type]:
    """Class decorator: make a dataset class selectable as ``data.dataset: name``.

    The class takes the shared constructor signature of
    :class:`~fewshot_priors.data.EpisodicDataset` (subclass it and implement ``_index``
    and ``read_label``); its ``options_class`` (a dataclass derived from
    :class:`~fewshot_priors.data.DatasetOptions`) holds its own options. The decorator
    sets ``cls.dataset_name``.

    Args:
        name: the registry name (a non-empty string).
        overwrite: replace a class registered under the same name (default: error).

    Raises:
        ValueError: ``name`` is empty or already registered.
        TypeError: not a class, or its ``options_class`` is not a DatasetOptions dataclass.
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
        opts = getattr(cls, "options_class", None)
        if not (isinstance(opts, type) and issubclass(opts, DatasetOptions) and dataclasses.is_dataclass(opts)):
            raise TypeError(
                f"{cls.__qualname__}.options_class must be a dataclass derived from DatasetOptions, got {opts!r}"
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


#: Order of the built-in datasets in messages (independent of the order their modules were imported).
_BUILTIN_ORDER = ("pascal", "coco", "folder")


def dataset_keys() -> dict[str, tuple[str, ...]]:
    """Dataset-specific ``data`` keys (null = unset) -> the registered datasets they apply to."""
    names = sorted(DATASETS, key=lambda n: (_BUILTIN_ORDER.index(n) if n in _BUILTIN_ORDER else len(_BUILTIN_ORDER), n))
    return {key: tuple(n for n in names if key in _fields(DATASETS[n])) for key in _NULL_DEFAULT_OPTIONS}


def dataset_options(data: Mapping, **overrides: Any) -> tuple[type, Any]:
    """The dataset class of a ``data`` section and its options object (the one place
    where the ``data`` keys are checked against their dataset).

    ``data.min_pixels`` and ``data.fold_classes`` go to every options class; the keys of
    :data:`DATASET_OPTIONS` to the classes that have them as fields (a null-default one set
    for another dataset is refused by name); ``overrides`` are further fields of the
    options class (e.g. ``cache=False``).

    Raises:
        ValueError: an unknown ``data.dataset``, a key that does not apply to the dataset,
            a bad value (naming ``data.KEY``), or an override that is not an option.
    """
    ds = data.get("dataset", "pascal")
    cls = get_dataset_class(ds)
    fields = _fields(cls)
    for key, allowed in dataset_keys().items():
        if data.get(key) is not None and ds not in allowed:
            raise ValueError(
                f"data.{key} does not apply to data.dataset={ds!r} (only to {', '.join(allowed) or 'no dataset'}); "
                f"remove it or set it to null"
            )
    values = {k: data[k] for k in (*_COMMON_OPTIONS, *DATASET_OPTIONS) if k in fields and data.get(k) is not None}
    unknown = [k for k in overrides if k not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(
            f"{unknown[0]!r} is not an option of {cls.options_class.__name__} (data.dataset={ds!r}); "
            f"options: {', '.join(fields)}.{hint}"
        )
    try:
        options = cls.options_class(**values)
    except (TypeError, ValueError) as err:
        msg = str(err)
        for key in values:
            msg = msg.replace(f"`{key}`", f"data.{key}")
        raise ValueError(f"{msg} (data.dataset={ds!r})") from None
    if overrides:
        options = dataclasses.replace(options, **overrides)
    return cls, options


def check_data_keys(data: Mapping, *, error: type[Exception] = ValueError) -> None:
    """Check a config's ``data`` section against its dataset (:func:`dataset_options`):
    a registered ``data.dataset``, dataset-specific keys set only for a dataset they apply
    to, valid values.

    Args:
        data: the ``data`` section (``dataset`` defaults to ``"pascal"``).
        error: the exception class raised (``fewshot_priors.config`` passes ``ConfigError``).

    Raises:
        error: naming the key, the dataset and what is expected.
    """
    try:
        dataset_options(data)
    except ValueError as err:
        raise error(str(err)) from None


_SIGNATURE = ("fold", "shots", "episodes", "seed", "transform", "image_size", "progress")  # besides root, split, options


def create_dataset(
    cfg: Mapping,
    split: str,
    *,
    shots: int | None = None,
    episodes: int | None = None,
    seed: int | None = None,
    error: type[Exception] = ValueError,
    **overrides: Any,
):
    """The few-shot dataset of ``cfg["data"]`` for ``split`` (``"train"`` or ``"val"``).

    The class is ``DATASETS[cfg["data"]["dataset"]]``. It receives the shared arguments
    (``fold``, ``shots``, ``episodes``, ``seed``, ``image_size`` from the config, the
    transform of :meth:`~fewshot_priors.data.EpisodicDataset.default_transform` with
    ``data.scale_range`` and ``data.train_resize_long``) and its options object
    (:func:`dataset_options`).

    Args:
        cfg: full config (sections ``data``, ``experiment``).
        split: ``"train"`` (training classes, training augmentation) or ``"val"``
            (held-out classes, test transform, labels at original resolution).
        shots: K (default ``data.shots``).
        episodes: number of episodes (default: ``data.train_episodes`` for train,
            ``data.test_episodes`` for val).
        seed: episode seed (default ``experiment.seed``). A dataset with seeded
            class folds (``split_seed`` option: folder) splits its classes with
            ``data.split_seed`` (default ``experiment.seed``), so train and
            val/eval hold out the same classes whatever the episode seed.
        error: the exception class of a bad ``data`` key (``fewshot_priors.engine.build_dataset``
            passes ``ConfigError``).
        **overrides: constructor arguments (``transform``, ``image_size``, ``progress``, ...)
            or fields of the dataset's options class (``cache``, ``strict``, ``query_sampling``,
            ...); they win over the config.

    Returns:
        the dataset (an :class:`~fewshot_priors.data.EpisodicDataset`).

    Raises:
        error: unknown ``data.dataset`` (close matches named), a dataset-specific ``data``
            key set for a dataset it does not apply to (e.g. ``data.num_classes`` with
            ``dataset: folder``), or a bad value.
        TypeError: an override that is neither a constructor argument nor an option.

    Example:
        >>> from fewshot_priors.config import load_config  # doctest: +SKIP
        >>> cfg = load_config(None, ["data.root=/data/pascal", "data.fold=1"])  # doctest: +SKIP
        >>> val = create_dataset(cfg, "val", shots=5)  # doctest: +SKIP
    """
    check_split(split)
    d = cfg["data"]
    args = {k: overrides.pop(k) for k in _SIGNATURE if k in overrides}
    try:
        cls, options = dataset_options(d, **overrides)
    except ValueError as err:
        raise error(str(err)) from None
    if "split_seed" in _fields(cls) and options.split_seed is None:
        # the class split must not follow the episode seed (val/eval pass eval.seed)
        options = dataclasses.replace(options, split_seed=int(cfg["experiment"]["seed"]))
    size = int(args.pop("image_size", d["image_size"]))
    if "transform" not in args or args["transform"] is None:
        args["transform"] = cls.default_transform(
            split, size, scale=d["scale_range"], resize_long=d.get("train_resize_long")
        )
    if episodes is None:
        episodes = d["train_episodes"] if split == "train" else d["test_episodes"]
    args = {
        "fold": d["fold"], "shots": d["shots"] if shots is None else shots, "episodes": episodes,
        "seed": int(cfg["experiment"]["seed"]) if seed is None else seed, **args,
    }
    return cls(d["root"], split=split, image_size=size, options=options, **args)
