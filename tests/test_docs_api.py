"""The API reference: every public docstring parses the way mkdocs.yml tells mkdocstrings to render it.

Cheap stand-in for ``mkdocs build`` (which also executes the notebooks): griffe, the parser behind
mkdocstrings, loads the package with the docs' extension and docstring options from mkdocs.yml.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

griffe = pytest.importorskip("griffe")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]


def _python_options() -> dict:
    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !!python/name tags (e.g. for pymdownx); they are not needed here
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    cfg = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    for plugin in cfg["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            return plugin["mkdocstrings"]["handlers"]["python"]["options"]
    raise AssertionError("mkdocs.yml has no mkdocstrings python handler")


def _public_objects(obj, seen):
    if obj.path in seen:
        return
    seen.add(obj.path)
    for name, member in obj.members.items():
        if member.is_alias or name.startswith("_") and name != "__call__":
            continue
        yield member
        if member.is_module or member.is_class:
            yield from _public_objects(member, seen)


@pytest.fixture(scope="module")
def package():
    opts = _python_options()
    assert opts["docstring_style"] == "google"
    extensions = griffe.load_extensions(*[str(ROOT / e) if e.endswith(".py") or ".py:" in e else e
                                          for e in opts.get("extensions", [])])
    return griffe.load("fewshot_priors", search_paths=[str(ROOT)], extensions=extensions,
                       docstring_parser=griffe.Parser.google, docstring_options=opts.get("docstring_options", {}))


def test_every_returns_section_renders_as_one_unnamed_value(package):
    """A wrapped Returns description is one value, not one row per line (each with a guessed type)."""
    sections = garbled = 0
    bad = []
    for obj in _public_objects(package, set()):
        if obj.docstring is None:
            continue
        for section in obj.docstring.parsed:
            if section.kind.value != "returns":
                continue
            sections += 1
            if len(section.value) != 1 or section.value[0].name:
                garbled += 1
                bad.append(f"{obj.path}: {[(r.name, r.description[:40]) for r in section.value]}")
    assert sections >= 20  # the check really ran over the package
    assert garbled == 0, "\n".join(bad)


def test_the_api_pages_render_no_private_module(package):
    """A ``:::`` block renders its target as a heading: a private module (``ops._checks``) must not be one."""
    directive = re.compile(r"^:::\s*(\S+)", re.MULTILINE)
    targets = []
    for page in sorted((ROOT / "docs" / "api").glob("*.md")):
        for target in directive.findall(page.read_text(encoding="utf-8")):
            targets.append(target)
            obj = package[target.removeprefix("fewshot_priors.")] if target != "fewshot_priors" else package
            assert not (obj.is_module and obj.name.startswith("_")), f"{page.name}: ::: {target} is a private module"
    assert "fewshot_priors.ops.set_checks" in targets  # the public name, not fewshot_priors.ops._checks


def _documented_entries(package):
    for obj in _public_objects(package, set()):
        if obj.docstring is None:
            continue
        for section in obj.docstring.parsed:
            if section.kind.value in ("parameters", "other parameters", "attributes"):
                for entry in section.value:
                    yield obj, section.kind.value, entry


def test_every_documented_name_is_one_identifier(package):
    """``mean, std: ...`` is one row per name, each with the signature's type and default.

    Read as one entry it renders as a row named ``mean, std`` marked *required* (or, under
    Attributes, a row named ``mean,`` of type ``std``): a table that contradicts the signature.
    """
    entries = list(_documented_entries(package))
    assert len(entries) >= 200  # the check really ran over the package
    bad = [f"{obj.path}: {kind} {entry.name!r}" for obj, kind, entry in entries
           if not re.fullmatch(r"\*{0,2}\w+", entry.name)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("path", "names"), [
    ("models.qgnet.QGNet", ("mean", "std", "prior_mean", "prior_std")),
    ("ops.region_maps.guided_region_map", ("backend", "max_chunk_bytes")),
])
def test_multi_name_entries_take_the_signature_defaults(package, path, names):
    obj = package[path]
    params = {p.name: p for s in obj.docstring.parsed if s.kind.value == "parameters" for p in s.value}
    for name in names:
        assert name in params, f"{path}: {name} has no row"
        assert params[name].default is not None and str(params[name].default) != "", (
            f"{path}: {name} renders as required although the signature has a default")


def test_the_split_keeps_continuation_lines_and_other_sections():
    from importlib import util

    spec = util.spec_from_file_location("griffe_docstrings", ROOT / "docs" / "_hooks" / "griffe_docstrings.py")
    hook = util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    text = ("Intro: a, b: not an entry.\n\nArgs:\n    x: one.\n    a, b (int): shared,\n        continued.\n"
            "    y: two.\n\nReturns:\n    a, b: a tuple.\n")
    assert hook.split_multi_name_entries(text) == (
        "Intro: a, b: not an entry.\n\nArgs:\n    x: one.\n    a (int): shared,\n        continued.\n"
        "    b (int): shared,\n        continued.\n    y: two.\n\nReturns:\n    a, b: a tuple.\n")
