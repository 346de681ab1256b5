"""Lazy public names for packages and deprecated aliases of moved modules."""

from __future__ import annotations

import importlib
import sys
import warnings
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

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())) | set(names))

    return __getattr__, __dir__


def deprecated_module_alias(old: str, new: str) -> ModuleType:
    """Make the module ``old`` another name of ``new`` for one release, with a warning.

    Called from the alias file that stands where a module used to be: ``old``'s entry in
    ``sys.modules`` becomes the module ``new`` itself (one module object, so an attribute
    set or monkeypatched through either name is seen through both). An import from
    outside the package warns ``DeprecationWarning`` naming the new place; the package's
    own not-yet-migrated imports stay silent.

    Args:
        old: the alias module's ``__name__`` (e.g. ``"fewshot_priors.superpixels"``).
        new: the module that now holds the code (e.g. ``"fewshot_priors.ssl.superpixels"``).

    Returns:
        The module ``new``.
    """
    module = importlib.import_module(new)
    importer = _importer_name()
    if not (importer == "fewshot_priors" or importer.startswith("fewshot_priors.")):
        warnings.warn(
            f"`{old}` is deprecated and will be removed in the next release; import from `{new}` instead",
            DeprecationWarning,
            stacklevel=3,  # the importer (warnings skips the import machinery's frames)
        )
    sys.modules[old] = module
    return module


def _importer_name() -> str:
    """``__name__`` of the module whose import statement loaded the alias module."""
    frame = sys._getframe(3)  # 0 here, 1 deprecated_module_alias, 2 the alias module, 3 the import machinery
    while frame is not None and "importlib" in frame.f_code.co_filename:
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))
