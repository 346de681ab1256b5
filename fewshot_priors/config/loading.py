"""Config files: YAML with ``_base_`` includes, shipped names, ``section.key=value`` overrides.

A config file holds only the keys it changes; :func:`load_config` merges it over
:data:`~fewshot_priors.config.schema.DEFAULTS`, applies the overrides and validates the
result (:func:`~fewshot_priors.config.schema.validate`)::

    cfg = load_config("pascal/resnet50_473_fold0", overrides=["train.lr=0.01", "data.shots=5"])
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .schema import (
    DEFAULTS,
    SCHEMA,
    ConfigError,
    _unknown,
    merge,
    validate,
)

__all__ = [
    "CONFIG_DIR",
    "apply_overrides",
    "available_configs",
    "load_config",
    "parse_overrides",
    "resolve_config_path",
    "save_config",
]

#: The shipped configs (the paper's zoo, the demo and real-images presets).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Loader(yaml.SafeLoader):
    """YAML's safe loader reading every usual spelling of a number as a number.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent: ``1e-3``,
    ``1E3``, ``+1e-3`` or ``+.5`` stay strings there. Here they are floats (YAML 1.2 and
    Python spell them so); ``true`` / ``false`` stay booleans, never numbers.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$"""),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text as the config files and ``--set`` values are parsed (:class:`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: safe


def _parse_value(text: str) -> Any:
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: Iterable[str] | Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``["train.lr=0.01"]`` or ``{"train.lr": 0.01}`` -> ``{"train": {"lr": 0.01}}`` (values parsed as YAML).

    Unknown sections and keys (not in :data:`~fewshot_priors.config.schema.SCHEMA`) are refused,
    naming the close matches; the values are checked by :func:`~fewshot_priors.config.schema.validate`.

    Raises:
        ConfigError: a malformed override or an unknown section or key.
    """
    if not overrides:
        return {}
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            if "=" not in text:
                raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=0.01)")
            key, value = text.split("=", 1)
            items.append((key.strip(), _parse_value(value.strip())))
    tree: dict[str, dict[str, Any]] = {}
    for dotted, value in items:
        parts = dotted.split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {dotted!r} must be section.key (e.g. train.lr)")
        section, key = parts
        if section not in SCHEMA:
            raise _unknown(section, SCHEMA, "section ")
        if key not in SCHEMA[section]:
            raise _unknown(key, SCHEMA[section], f"{section}.")
        tree.setdefault(section, {})[key] = value
    return tree


def apply_overrides(cfg: Mapping, overrides: Iterable[str] | Mapping[str, Any] | None) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML: ``0.01``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: malformed override or unknown key.
    """
    out = copy.deepcopy(dict(cfg))
    for section, values in parse_overrides(overrides).items():
        out.setdefault(section, {}).update(values)
    return out


def available_configs() -> list[str]:
    """Names of the shipped configs (``pascal/resnet50_473_fold0``, ``demo``, ``demo/quick``, ...)."""
    return sorted(
        p.relative_to(CONFIG_DIR).with_suffix("").as_posix()
        for p in CONFIG_DIR.rglob("*.yaml")
        if not p.name.startswith("_")
    )


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """Find a config file by path or by shipped name.

    Raises:
        ConfigError: neither an existing file nor a shipped name (close names suggested).
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = str(name_or_path).removesuffix(".yaml")
    candidate = CONFIG_DIR / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    names = available_configs()
    close = difflib.get_close_matches(name, names, n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"config {str(name_or_path)!r} is neither a file nor a shipped config name.{hint} "
        "List them with `fewshot-priors configs`."
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    merged: dict = {}
    for b in [base] if isinstance(base, str) else base:
        bp = (path.parent / b).resolve()
        if bp in seen:
            raise ConfigError(f"{path}: circular _base_ include of {bp}")
        if not bp.is_file():
            raise ConfigError(f"{path}: _base_ file {b!r} not found (looked at {bp})")
        merged = merge(merged, _read_yaml(bp, seen + (bp,)))
    return merge(merged, data)


def load_config(
    name_or_path: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
) -> dict:
    """Load a config by shipped name or path, merged over :data:`DEFAULTS`, overrides applied.

    Args:
        name_or_path: ``"pascal/resnet50_473_fold0"``, ``"demo/quick"``, a YAML path, or None
            for the defaults alone.
        overrides: ``["train.lr=0.01", "data.shots=5"]`` or ``{"train.lr": 0.01}``.

    Returns:
        The full, validated config dict (``experiment.output_dir`` filled in).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        data = _read_yaml(path)
        validate(merge(DEFAULTS, data))  # report unknown keys against the file
        cfg = merge(cfg, data)
    cfg = validate(apply_overrides(cfg, overrides))
    if cfg["experiment"]["output_dir"] is None:
        cfg["experiment"]["output_dir"] = str(Path("runs") / cfg["experiment"]["name"])
    return cfg


def save_config(cfg: Mapping, path: str | os.PathLike) -> Path:
    """Write a config as YAML (used to record the effective config of a run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_plain(cfg), sort_keys=False), encoding="utf-8")
    return path


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
