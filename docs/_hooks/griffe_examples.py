"""Griffe extension: read a Google-style ``Example:`` section as ``Examples:``.

Griffe only parses the plural ``Examples:`` heading as a doctest section; the
singular form would be rendered as plain Markdown, where ``x[[1, 0]]`` reads as a
reference link. Several docstrings of the package use the singular form.
"""

from __future__ import annotations

import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` section headings to ``Examples:`` before parsing."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        if obj.docstring is not None and "Example:" in obj.docstring.value:
            obj.docstring.value = _SINGULAR.sub(r"\1Examples:", obj.docstring.value)
