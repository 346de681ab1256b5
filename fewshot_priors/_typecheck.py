"""The declaration of a config key (:class:`ConfigKey`) and the one type rule of its values
(a key's default fixes the type of its values).

Every key of the config tree is declared once, as a :class:`ConfigKey` (default, help text,
choices or lower bound, extra rule, whether it is a path and whether a resume may change it):
the ``model`` section in :mod:`fewshot_priors.models.qgnet_config` (a ``save_pretrained``
folder's ``config.json`` is checked by the same declarations), every other section in
:mod:`fewshot_priors.config.schema`. Validation, ``--set`` parsing, the resume check and
``fewshot-priors configs --keys`` all read the declarations, so a value is accepted or refused
the same way wherever it comes from. This module is the bottom layer: it imports nothing of
the package but ``_validate``.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._validate import is_int

__all__ = ["ConfigKey", "positive_error", "stats_error", "type_error"]


@dataclass(frozen=True)
class ConfigKey:
    """One config key: everything the package knows about it, in one place.

    Attributes:
        default: the value a config without the key gets. A non-``None`` default fixes
            the type of the values (:func:`type_error`: ints are accepted for floats); a
            ``None`` default accepts ``None`` and leaves the type to ``min`` / ``path`` /
            ``rule``.
        help: what the key does (one line; listed by ``fewshot-priors configs --keys``).
        choices: the allowed values (checked when the value differs from the default).
        min: the value must be an integer >= ``min`` (or ``None`` when the default is ``None``).
        rule: an extra check, ``rule(name, value) -> error message or None``; with
            ``typed=False`` it replaces the default-type check.
        typed: whether the default fixes the type (``False``: several types are accepted).
        path: the value is a file or folder path (or ``None``).
        resume: what a resumed run may do with the key: ``"refuse"`` a change (it changes
            what is trained), change it ``"free"``-ly (where the run is written, logging,
            workers, evaluation), or change it with a warning (``"warn"``: a path whose
            files may have moved).
    """

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    min: int | None = None
    rule: Callable[[str, Any], str | None] | None = None
    typed: bool = True
    path: bool = False
    resume: Literal["refuse", "free", "warn"] = "refuse"

    def error(self, name: str, value: Any) -> str | None:
        """Why ``value`` cannot be the value of this key (named ``name``), or None."""
        if self.choices is not None and value != self.default and value not in self.choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return f"{name} must be one of {self.choices}, got {value!r}.{hint}"
        if self.typed and self.default is not None:
            error = type_error(name, value, self.default)
            if error is not None:
                return error
        optional = value is None and self.default is None
        if self.min is not None and not optional and (not is_int(value) or value < self.min):
            null = " or null" if self.default is None else ""
            return f"{name} must be an integer >= {self.min}{null}, got {value!r}"
        if self.path and value is not None and not isinstance(value, (str, os.PathLike)):
            return f"{name} must be a file path or null, got {value!r} ({type(value).__name__})"
        return None if self.rule is None else self.rule(name, value)

    def describe(self, name: str) -> str:
        """``name = default  help [choices / minimum / path / resume]``: one line of a key listing."""
        notes = [f"one of {', '.join(map(str, self.choices))}" if self.choices else "",
                 f"integer >= {self.min}" if self.min is not None else "", "path" if self.path else "",
                 {"free": "a resume may change it", "warn": "a resume may move it"}.get(self.resume, "")]
        extra = "; ".join(n for n in notes if n)
        return f"{name} = {self.default!r}  {self.help}" + (f" [{extra}]" if extra else "")


def type_error(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot be the value of key ``name`` whose default is ``default``, or None.

    bool defaults take bools only (never ``"false"`` or 0); int defaults ints (not bools);
    float defaults finite ints or floats (not bools); list defaults lists or tuples; str
    defaults strings. A ``None`` default accepts anything (the caller checks those keys).
    """
    if default is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = is_int(value)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            return f"{name} must be a finite number (like {default!r}), got {value!r}"
    elif isinstance(default, list):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if ok:
        return None
    return f"{name} must be a {type(default).__name__} (like {default!r}), got {value!r} ({type(value).__name__})"


def positive_error(name: str, value: Any) -> str | None:
    """Why the number ``value`` cannot be the value of a key that must be > 0, or None."""
    return None if value > 0 else f"{name} must be > 0, got {value!r}"


def nonnegative_error(name: str, value: Any) -> str | None:
    """Why the number ``value`` cannot be the value of a key that must be >= 0, or None."""
    return None if value >= 0 else f"{name} must be >= 0, got {value!r}"


def stats_error(name: str, value: Any) -> str | None:
    """Why ``value`` cannot be the per-channel RGB statistic ``name`` (a ``...mean`` / ``...std`` key of
    the input normalisation: null or three finite numbers, each std > 0), or None."""
    if value is None:
        return None
    numbers = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
    if numbers and (not name.endswith("std") or all(x > 0 for x in value)):
        return None
    need = "three numbers > 0" if name.endswith("std") else "three numbers"
    return f"{name} must be null or {need} (one per RGB channel, for images in [0, 1]), got {value!r}"
