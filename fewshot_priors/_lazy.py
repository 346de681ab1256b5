"""Lazy public names of a package (the package root's ``__getattr__`` / ``__dir__``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for a package's lazy names.

    Args:
        package: the package's ``__name__`` (used in the AttributeError message).
        namespace: the package's ``globals()``; a resolved name is cached there.
        names: public name -> module that defines it.
    """

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # the public API: __all__, the lazy names and the imported public submodules
        public = {k for k, v in namespace.items() if not k.startswith("_") and isinstance(v, ModuleType)}
        return sorted(public | set(namespace.get("__all__", ())) | set(names))

    return __getattr__, __dir__
