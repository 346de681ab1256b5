"""Griffe extension: read the package's reST-flavoured docstrings as mkdocstrings Markdown.

Four conventions of the package's docstrings are not Google-style Markdown:

* a singular ``Example:`` heading: griffe parses only ``Examples:`` as a doctest
  section; otherwise ``x[[1, 0]]`` in the example would read as a Markdown link;
* reST literal-block markers (``text::``, or ``::`` alone on a line): the indented block
  already renders as code in Markdown, so ``::`` becomes ``:`` (a lone ``::`` is dropped);
* one entry for several parameters or attributes (``mean, std: the statistics ...``):
  griffe would read it as one row named ``mean, std`` with no type and no default, so it
  becomes one entry per name, each with the shared description;
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
_LONE_LITERAL = re.compile(r"^[ \t]*::[ \t]*\n", re.MULTILINE)  # reST "::" alone on its line
#: section headings whose entries are ``name (type): description`` (griffe's Google parser)
_NAMED_SECTIONS = re.compile(r"^\s*(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|"
                             r"Other Parameters|Attributes):\s*$")
_MULTI_NAME = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)((?:\s*\([^)]*\))?:(?:\s.*)?)$")
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`([^`]+)`")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_multi_name_entries(text: str) -> str:
    """``a, b: description`` entries of Args / Attributes sections -> one entry per name.

    The entry's continuation lines (indented deeper) go with every copy.
    """
    lines = text.split("\n")
    out: list[str] = []
    section_indent = item_indent = None  # of the current named section's heading and entries
    i = 0
    while i < len(lines):
        line = lines[i]
        if _NAMED_SECTIONS.match(line):
            section_indent, item_indent = _indent(line), None
        elif line.strip() and section_indent is not None and _indent(line) <= section_indent:
            section_indent = None  # the next heading or paragraph ends the section
        elif line.strip() and section_indent is not None and item_indent is None:
            item_indent = _indent(line)
        entry = section_indent is not None and line.strip() and _indent(line) == item_indent
        match = _MULTI_NAME.match(line) if entry else None
        if match is None:
            out.append(line)
            i += 1
            continue
        lead, names, rest = match.groups()
        body = []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(lead)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():  # blank lines after the entry stay after all copies
            i -= 1
            body.pop()
        for name in re.split(r"\s*,\s*", names):
            out += [f"{lead}{name}{rest}", *body]
    return "\n".join(out)


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
    """Rewrite ``Example:`` headings, ``::``, multi-name entries and Sphinx roles before parsing."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        doc = obj.docstring
        if doc is None:
            return
        value = doc.value
        if "Example:" in value:
            value = _SINGULAR.sub(r"\1Examples:", value)
        if "::" in value:
            value = _LONE_LITERAL.sub("", _LITERAL.sub(r"\1:", value))
        if "," in value:
            value = split_multi_name_entries(value)
        if ":`" in value:
            value = _ROLE.sub(lambda m: _role_to_autoref(m, obj), value)
        doc.value = value
