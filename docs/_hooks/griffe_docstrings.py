"""Griffe extension: read the package's reST-flavoured docstrings as mkdocstrings Markdown.

Two conventions of the package's docstrings are not Google-style Markdown:

* a singular ``Example:`` heading: griffe parses only ``Examples:`` as a doctest
  section; otherwise ``x[[1, 0]]`` in the example would read as a Markdown link;
* reST literal-block markers (``text::``): the indented block already renders as
  code in Markdown, so ``::`` becomes ``:``;
* Sphinx roles (``:func:`~fewshot_priors.ops.max_cosine_similarity```): they become
  optional cross-references to the object's canonical path (resolved by importing
  it), rendered as links when the object is documented and as code otherwise.
"""

from __future__ import annotations

import importlib
import re

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)
_LITERAL = re.compile(r"(\S)::[ \t]*$", re.MULTILINE)  # reST "text::" before a code block
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`([^`]+)`")


def _runtime_path(dotted: str) -> str | None:
    """Canonical ``module.qualname`` of an importable dotted name, or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:  # noqa: BLE001 - not a module, try a shorter prefix
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        if cut == len(parts):
            return obj.__name__
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            return f"{module}.{qualname}"
        return dotted  # a constant: keep the path it was named by
    return None


def _resolve(target: str, obj: griffe.Object) -> str:
    bases = [""]
    if not target.startswith("fewshot_priors"):
        scope = obj if obj.is_module or obj.is_class else obj.parent
        while scope is not None:
            bases.append(scope.path + ".")
            scope = scope.parent
    for base in bases:
        path = _runtime_path(base + target)
        if path:
            return path
    return target


def _role_to_autoref(match: re.Match, obj: griffe.Object) -> str:
    text = match.group(1).strip()
    titled = re.fullmatch(r"(.+?)\s*<(.+)>", text)
    if titled:
        title, target = titled.group(1), titled.group(2)
    else:
        target = text
        title = text.lstrip("~.").rsplit(".", 1)[-1] if text.startswith("~") else text.lstrip(".")
    target = target.lstrip("~.")
    return f'<autoref identifier="{_resolve(target, obj)}" optional><code>{title}</code></autoref>'


class DocstringCompat(griffe.Extension):
    """Rewrite ``Example:`` headings and Sphinx roles before the docstrings are parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        doc = obj.docstring
        if doc is None:
            return
        value = doc.value
        if "Example:" in value:
            value = _SINGULAR.sub(r"\1Examples:", value)
        if "::" in value:
            value = _LITERAL.sub(r"\1:", value)
        if ":`" in value:
            value = _ROLE.sub(lambda m: _role_to_autoref(m, obj), value)
        doc.value = value
