"""Region maps as parts of :class:`~fewshot_priors.models.qgnet.QGNet`: what a map consumes,
how many channels it gives, and the registry that names map classes (timm's
``register_model`` style).

A region map is an ``nn.Module`` with two class attributes:

* ``consumes``: the names (from :data:`REGION_MAP_INPUTS`) of the tensors its ``forward``
  takes, in order: QGNet calls ``module(*[inputs[name] for name in module.consumes])``;
* ``out_channels``: the channel count ``M`` of its ``B, M, h, w`` output.

QGNet concatenates the maps in order (resized to the mid-level feature size) and gives the
decoder ``sum(out_channels)`` map channels. The shipped maps are registered as ``"guided"``
(:class:`~fewshot_priors.ops.GuidedRegionMap`) and ``"prior"``
(:class:`~fewshot_priors.ops.PriorRegionMap`); ``["guided", "prior"]`` is the paper's pair.

A map class of your own is registered so that ``save_pretrained`` can record it by name and
``from_pretrained`` can rebuild it::

    @register_region_map("prototype_cosine")
    class PrototypeCosineMap(nn.Module):
        consumes = ("query_feat", "prototype")
        out_channels = 1

        def forward(self, query_feat, prototype):
            return F.cosine_similarity(query_feat, prototype[..., None, None], dim=1)[:, None]

A registered class is rebuilt as ``cls(**module.get_config())``, or ``cls()`` when it has
no ``get_config`` (then its ``__init__`` must take no arguments).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from torch import nn

from fewshot_priors.ops.modules import GuidedRegionMap, PriorRegionMap

__all__ = ["REGION_MAP_INPUTS", "build_region_maps", "check_region_map", "create_region_map", "list_region_maps",
           "region_map_entry", "region_map_name", "register_region_map"]

REGION_MAP_INPUTS: dict[str, str] = {
    "query": "B, C, h, w: the query's high-level backbone features",
    "support": "B, K, C, hs, ws: the supports' high-level backbone features (of the masked mid level)",
    "support_mask": "B, K, H', W': float support masks in [0, 1] at the support image size (255 mapped to 0)",
    "bridge": "B, channels, h, w: the query's high-level features through down_bridge (needs use_prior)",
    "prior": "B, channels, h', w': the prior extractor's query features through down_prior (needs use_prior)",
    "query_feat": "B, channels, h, w: the query's mid-level feature (the decoder's input)",
    "prototype": "B, channels: the support prototype (the category guider)",
}
"""The tensors a region map may consume (its ``consumes``), with their shapes. ``C`` is the
backbone's high-level width, ``channels`` QGNet's width (256); the maps run in float32 (or the
features' dtype if wider), outside autocast."""

#: The inputs that exist only with ``use_prior=True``.
PRIOR_INPUTS = frozenset({"bridge", "prior"})

#: Maps whose options are QGNet's ``region_map_backend`` / ``max_chunk_bytes`` / ``eps``.
SHIPPED: dict[str, type[nn.Module]] = {"guided": GuidedRegionMap, "prior": PriorRegionMap}

_REGISTRY: dict[str, type[nn.Module]] = dict(SHIPPED)

M = TypeVar("M", bound=type)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a region map name must be a Python identifier like 'prototype_cosine', got {name!r}")
    return name


def register_region_map(name: str) -> Callable[[M], M]:
    """Class decorator: register a region-map class under ``name``.

    A registered class can be named in the config (``model.region_maps``) and in
    ``QGNet(region_maps=[...])``, and a QGNet holding one can be saved with
    ``save_pretrained``. Registering the same class again is allowed; another class under
    a taken name raises ``ValueError``.

    Example:
        >>> @register_region_map("ones")
        ... class Ones(nn.Module):
        ...     consumes, out_channels = ("query",), 1
        ...     def forward(self, query):
        ...         return query.new_ones(query.shape[0], 1, *query.shape[-2:])
    """
    _check_name(name)

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_region_map({name!r}) decorates an nn.Module class, got {cls!r}")
        taken = _REGISTRY.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(f"region map name {name!r} is already registered for {taken.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_region_maps() -> list[str]:
    """The registered region-map names, sorted (``"guided"``, ``"prior"`` and yours)."""
    return sorted(_REGISTRY)


def region_map_name(module: nn.Module) -> str | None:
    """The name ``type(module)`` is registered under, or None."""
    return next((name for name, cls in _REGISTRY.items() if type(module) is cls), None)


def create_region_map(name: str, **kwargs: Any) -> nn.Module:
    """An instance of the region map registered as ``name``, built with ``kwargs``.

    Raises:
        ValueError: an unknown name (with the closest registered one and how to register).
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown region map {name!r}{hint} (registered: {', '.join(list_region_maps())}; "
                         "register a class with @fewshot_priors.models.register_region_map('name'))")
    return cls(**kwargs)


def _map_config(module: nn.Module) -> dict[str, Any] | str:
    """The constructor arguments that rebuild ``module`` (a registered map), or why there are none."""
    get_config = getattr(module, "get_config", None)
    if callable(get_config):
        return dict(get_config())
    params = [p for p in inspect.signature(type(module)).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if params:
        return (f"{type(module).__qualname__} takes arguments ({', '.join(p.name for p in params)}) but has no "
                "get_config() returning them")
    return {}


def check_region_map(key: str, module: object, use_prior: bool,
                     default: tuple[tuple[str, ...], int] | None = None) -> tuple[tuple[str, ...], int]:
    """``(consumes, out_channels)`` of the region map ``key`` of ``QGNet(region_maps=...)``.

    ``default``: the declaration of a module without one (a ``guided_map=`` / ``prior_map=``
    part called with the shipped map's arguments).

    Raises:
        TypeError: not a module, or no declaration.
        ValueError: an input that is not in :data:`REGION_MAP_INPUTS` (or needs ``use_prior``).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"region map {key!r} must be an nn.Module (or a registered name), got {type(module).__name__}")
    consumes = getattr(module, "consumes", None if default is None else default[0])
    channels = getattr(module, "out_channels", None if default is None else default[1])
    if (isinstance(consumes, str) or not isinstance(consumes, (tuple, list))
            or not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
        raise TypeError(f"region map {key!r} ({type(module).__name__}) must declare `consumes` (a tuple of "
                        f"{', '.join(REGION_MAP_INPUTS)}) and `out_channels` (an int >= 1) as class attributes")
    for name in consumes:
        if name not in REGION_MAP_INPUTS:
            close = difflib.get_close_matches(str(name), REGION_MAP_INPUTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"region map {key!r} consumes unknown input {name!r}{hint} "
                             f"(inputs: {', '.join(REGION_MAP_INPUTS)})")
        if name in PRIOR_INPUTS and not use_prior:
            raise ValueError(f"region map {key!r} consumes {name!r}, which exists only with use_prior=True")
    return tuple(consumes), channels


_ENTRY_KEYS = ("type", "name", "kwargs")


def _from_entry(entry: Any, options: Mapping[str, Any]) -> tuple[nn.Module, str | None]:
    """``(module, its key or None)`` of one ``region_maps`` item: a module, a registered name or
    a ``{"type": name, "name": key, "kwargs": {...}}`` entry (``name`` and ``kwargs`` optional)."""
    if isinstance(entry, nn.Module):
        return entry, region_map_name(entry)
    if isinstance(entry, str):
        entry = {"type": entry}
    if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str) or set(entry) - set(_ENTRY_KEYS) \
            or not isinstance(entry.get("kwargs", {}), Mapping):
        raise TypeError(f"a region map must be a module, a registered name or a mapping with keys {_ENTRY_KEYS} "
                        f"(`type` a name, `kwargs` a mapping), got {entry!r}")
    kind, kwargs = entry["type"], dict(entry.get("kwargs", {}))
    if kind in SHIPPED:  # QGNet's options; QGNet validates the inputs once, so the map does not
        kwargs = {**options, "check_inputs": False, **kwargs}
    return create_region_map(kind, **kwargs), entry.get("name", kind)


def build_region_maps(region_maps: Sequence[Any] | Mapping[str, Any],
                      options: Mapping[str, Any]) -> dict[str, nn.Module]:
    """The ``region_maps`` argument of QGNet as ``{key: module}``, in order.

    Args:
        region_maps: a sequence of items (modules, registered names, ``{"type", "name",
            "kwargs"}`` entries) or a mapping key -> item. A module's key is its registered
            name (else its class name in snake case), an entry's its ``name`` (else its type).
        options: ``backend`` / ``max_chunk_bytes`` / ``eps`` of the shipped maps built by name.

    Raises:
        ValueError: no map, a duplicate or invalid key, an unknown name.
    """
    if isinstance(region_maps, (str, nn.Module)) or not isinstance(region_maps, (Sequence, Mapping)):
        raise TypeError(f"`region_maps` must be a list or a mapping of region maps, got {type(region_maps).__name__}")
    keyed = region_maps.items() if isinstance(region_maps, Mapping) else [(None, item) for item in region_maps]
    out: dict[str, nn.Module] = {}
    for key, item in keyed:
        module, own = _from_entry(item, options)
        key = _check_name(key if key is not None else own or re.sub(r"(?<!^)(?=[A-Z])", "_",
                                                                    type(module).__name__).lower())
        if key in out:
            raise ValueError(f"two region maps named {key!r}: pass a mapping (or entries with a `name`) to tell them apart")
        out[key] = module
    if not out:
        raise ValueError("`region_maps` must hold at least one region map")
    return out


def region_map_entry(key: str, module: nn.Module, options: Mapping[str, Any]) -> str | dict[str, Any]:
    """The config entry that rebuilds region map ``key`` (what ``save_pretrained`` records):
    its registered name, or ``{"type", "name", "kwargs"}`` when the key or the arguments differ.

    Raises:
        ValueError: the map's class is not registered (the message says how to register it),
            or it cannot say its constructor arguments.
    """
    kind = region_map_name(module)
    if kind is None:
        raise ValueError(
            f"the region map {key!r} ({type(module).__qualname__}) is not registered, so a config cannot name "
            "it: decorate its class with @fewshot_priors.models.register_region_map('a_name') (and give it a "
            "get_config() returning its constructor arguments, if it takes any)")
    if kind in SHIPPED:
        kwargs = {k: v for k, v in module.get_config().items() if options.get(k) != v}
    else:
        kwargs = _map_config(module)
        if isinstance(kwargs, str):
            raise ValueError(f"the region map {key!r} cannot be rebuilt from a config: {kwargs}")
    if key == kind and not kwargs:
        return kind
    return {"type": kind, **({"name": key} if key != kind else {}), **({"kwargs": kwargs} if kwargs else {})}
