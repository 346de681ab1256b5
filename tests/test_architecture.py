"""The package's import architecture: layers import downward only, and no module imports itself back.

Every module of ``fewshot_priors`` is parsed with :mod:`ast` (nothing is imported), and
every import counts: module level, inside functions, and the string imports of the lazy
machinery (``_LAZY`` tables, ``importlib.import_module("fewshot_priors...")``). Only imports under
``if TYPE_CHECKING:`` are left out (they never run).

The rule (also on the docs page ``docs/explanation/architecture.md``):

=====  ===============================================================  ====================
layer  modules (``fewshot_priors.`` + name or package)                   may import layers
=====  ===============================================================  ====================
0      ``constants``, ``_lazy``, ``_progress``, ``_scalars``,           0
       ``distributed``
1      ``ops``                                                          0, 1
2      ``models``, ``data``, ``ssl``, ``analysis``, ``metrics``,        0, 1, 2
       ``viz``; the package root ``fewshot_priors`` (a facade of
       layers 1 and 2)
3      ``config``, ``engine``                                           0 - 3
4      the app subpackage ``app`` (``app.cli``, ``app.demo``,           0 - 4
       ``app.real_images``, ``app.study``, ``app.report``,
       ``app.predict``) and
       ``__main__`` (``python -m fewshot_priors``)
=====  ===============================================================  ====================

Within a layer modules may import each other, but no set of modules may import each
other in a cycle. A package's ``__init__`` importing its own submodules (re-exports) is
not an edge of the cycle check: Python runs a package's ``__init__`` before any of its
submodules anyway, so a child importing from its parent package would otherwise always
look like a cycle.

No module outside ``app/`` imports ``fewshot_priors.app`` (the library core never needs the
applications); the one exception is ``__main__``, the ``python -m fewshot_priors`` entry point.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fewshot_priors"

#: Layer of each top-level name of the package (longest dotted prefix wins; "" is the root package).
LAYERS: dict[str, int] = {
    "constants": 0,
    "_lazy": 0,
    "_progress": 0,
    "_scalars": 0,
    "_io": 0,
    "_version": 0,
    "_validate": 0,
    "_images": 0,
    "_tensorfile": 0,
    "_typecheck": 0,
    "distributed": 0,
    "ops": 1,
    "models": 2,
    "data": 2,
    "ssl": 2,
    "analysis": 2,
    "metrics": 2,
    "viz": 2,
    "": 2,  # the root package: eager re-exports of ops, lazy names from layer 2
    "config": 3,
    "engine": 3,
    "app": 4,  # the package itself (imports nothing)
    "app.cli": 4,
    "app.demo": 4,
    "app.real_images": 4,
    "app.report": 4,  # the tables and recall meter shared by demo and real_images
    "app.study": 4,  # run config + train one variant + score it 1-/5-shot, shared by demo and real_images
    "app.predict": 4,  # `fewshot-priors predict`: query files -> mask / overlay / map PNGs
    "__main__": 4,  # `python -m fewshot_priors`: calls app.cli.main
}

#: The only modules outside app/ that may import it: the entry point of `python -m fewshot_priors`.
APP_ENTRY_POINTS = {f"{PACKAGE}.__main__"}

#: Allowed upward imports, (importer, imported) -> reason. Each must still be needed.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

#: Allowed cycles, frozenset of modules -> reason. Each must still be needed.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}

#: Modules that may still define a shared constant themselves, -> reason. Each must still be needed.
CONSTANT_COPIES_PENDING: dict[str, str] = {}


# ----------------------------------------------------------------------------- the checker
def discover(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``root / package``."""
    mods = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _call_name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _is_lazy_table(node: ast.AST) -> bool:
    """``_LAZY = {"Name": "fewshot_priors.module", ...}``: the lazy names of a package."""
    return (
        isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Dict)
        and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
    )


def _resolve(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from ... import`` statement in module ``name``."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(name: str, path: Path, mods: Mapping[str, Path]) -> set[str]:
    """The modules of ``mods`` that module ``name`` (file ``path``) imports, anywhere in it.

    ``from pkg import sub`` is an edge to the submodule ``pkg.sub``; ``from mod import obj``
    (or a dotted string naming an object) is an edge to ``mod``.
    """
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:  # the else branch does run
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                mod = _resolve(name, is_pkg, child)
                found.update(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in child.names)
            elif isinstance(child, ast.Call) and _call_name(child.func) in ("import_module",):
                found.update(a.value for a in child.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
            elif _is_lazy_table(child):
                found.update(v.value for v in child.value.values if isinstance(v, ast.Constant))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    out = set()
    for m in found:
        if not isinstance(m, str):
            continue
        while m and m not in mods:  # `pkg.mod.func` -> `pkg.mod`; outside the package -> ""
            m = m.rpartition(".")[0]
        if m and m != name:
            out.add(m)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports."""
    mods = discover(root, package)
    return {name: imported_modules(name, path, mods) for name, path in mods.items()}


def cycle_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """The graph without a package's edges to its own submodules (its re-exports)."""
    return {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}


def find_cycles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def layer_of(module: str, package: str, layers: Mapping[str, int]) -> int | None:
    """Layer of a dotted module name from the table (longest matching prefix), None if unlisted."""
    rest = module[len(package) + 1 :] if module != package else ""
    parts = rest.split(".") if rest else []
    if not parts:  # the root package itself; the "" entry is not a fallback for unlisted modules
        return layers.get("")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in layers:
            return layers[key]
    return None


def upward_imports(graph: Mapping[str, set[str]], package: str, layers: Mapping[str, int]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the importer's layer is below the imported module's."""
    bad = []
    for mod, targets in sorted(graph.items()):
        for t in sorted(targets):
            lm, lt = layer_of(mod, package, layers), layer_of(t, package, layers)
            if lm is not None and lt is not None and lt > lm:
                bad.append((mod, t))
    return bad


# ----------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, PACKAGE)


def test_every_module_has_a_layer(graph):
    unlisted = sorted(m for m in graph if layer_of(m, PACKAGE, LAYERS) is None)
    assert not unlisted, f"add these modules to LAYERS (and to docs/explanation/architecture.md): {unlisted}"


def test_no_import_cycles(graph):
    cycles = find_cycles(cycle_graph(graph))
    unexpected = [sorted(c) for c in cycles if c not in ALLOWED_CYCLES]
    assert not unexpected, f"import cycles: {unexpected}"
    stale = [sorted(c) for c in ALLOWED_CYCLES if c not in cycles]
    assert not stale, f"ALLOWED_CYCLES lists cycles that are gone, remove them: {stale}"


def test_no_import_from_a_lower_layer_up_to_a_higher_one(graph):
    bad = upward_imports(graph, PACKAGE, LAYERS)
    unexpected = [
        f"{a} (layer {layer_of(a, PACKAGE, LAYERS)}) imports {b} (layer {layer_of(b, PACKAGE, LAYERS)})"
        for a, b in bad
        if (a, b) not in ALLOWED_UPWARD
    ]
    assert not unexpected, "upward imports:\n" + "\n".join(unexpected)
    stale = [k for k in ALLOWED_UPWARD if k not in bad]
    assert not stale, f"ALLOWED_UPWARD lists imports that are gone, remove them: {stale}"


def test_the_graph_sees_function_level_and_lazy_imports(graph):
    """Controls: the checker finds imports that are not at module level, and skips TYPE_CHECKING ones."""
    assert "fewshot_priors.ops.fused" in graph["fewshot_priors.ops.similarity"]  # inside a function
    assert "fewshot_priors.models.hub" in graph["fewshot_priors"]  # a _LAZY string
    assert "fewshot_priors.data" in graph["fewshot_priors"]  # root's _LAZY
    assert "fewshot_priors.ops.fused" not in graph["fewshot_priors.ops._backward"]  # the cycle's old edge


def test_layer_2_packages_form_a_chain_models_then_data_then_ssl(graph):
    """Within layer 2: ssl builds on models (backbone dilation, weight formats) and data (image lists);
    neither models nor data imports ssl, and models imports no data (no arrow back, anywhere in them)."""
    def reaches(src: str, dst: str) -> list[tuple[str, str]]:
        return [(a, b) for a, bs in graph.items() if a == src or a.startswith(src + ".")
                for b in bs if b == dst or b.startswith(dst + ".")]

    assert reaches("fewshot_priors.models", "fewshot_priors.ssl") == []
    assert reaches("fewshot_priors.data", "fewshot_priors.ssl") == []
    assert reaches("fewshot_priors.models", "fewshot_priors.data") == []
    assert reaches("fewshot_priors.ssl", "fewshot_priors.models")  # the direction that is used
    assert reaches("fewshot_priors.ssl", "fewshot_priors.data")


def test_no_library_module_imports_the_package_root(graph):
    """The root is a facade over layers 0-2: none of their modules imports it (e.g. for
    ``__version__``, which lives in the bottom module ``_version``)."""
    importers = sorted(a for a, bs in graph.items() if "fewshot_priors" in bs and a != "fewshot_priors"
                       and layer_of(a, PACKAGE, LAYERS) <= 2)
    assert importers == [], importers


def library_modules_importing_the_app(graph: Mapping[str, set[str]], package: str) -> dict[str, list[str]]:
    """Module outside ``package.app`` -> the ``package.app`` modules it imports (anywhere in it)."""
    app = f"{package}.app"

    def in_app(m: str) -> bool:
        return m == app or m.startswith(app + ".")

    return {a: sorted(b for b in bs if in_app(b)) for a, bs in sorted(graph.items())
            if not in_app(a) and any(in_app(b) for b in bs)}


def test_no_library_module_imports_the_app(graph):
    """The library core (every module outside ``fewshot_priors/app/``) never imports the app
    code; only the ``python -m fewshot_priors`` entry point does, and nothing imports that."""
    importers = library_modules_importing_the_app(graph, PACKAGE)
    unexpected = {a: bs for a, bs in importers.items() if a not in APP_ENTRY_POINTS}
    assert not unexpected, f"these library modules import fewshot_priors.app: {unexpected}"
    assert importers == {f"{PACKAGE}.__main__": [f"{PACKAGE}.app.cli"]}, importers  # the exception is needed
    assert [a for a, bs in graph.items() if f"{PACKAGE}.__main__" in bs] == []
    # the app modules all live under app/ (no module left at the old top-level paths)
    assert {m for m in graph if layer_of(m, PACKAGE, LAYERS) == 4} == {
        f"{PACKAGE}.{m}" for m in ("app", "app.cli", "app.demo", "app.real_images", "app.report", "app.study", "app.predict",
                                   "__main__")}


def test_app_check_finds_a_planted_library_import(tmp_path):
    """The checker sees a library module importing the app, at function level or by a lazy string."""
    _write(tmp_path, {
        "fake/__init__.py": "_LAZY = {'run': 'fake.app.study'}\n",
        "fake/engine.py": "def f():\n    from .app.cli import main\n",
        "fake/ops.py": "from fake.data import x\n",
        "fake/data.py": "x = 1\n",
        "fake/app/__init__.py": "",
        "fake/app/cli.py": "from ..engine import f\ndef main():\n    pass\n",
        "fake/app/study.py": "from . import cli\n",
    })
    found = library_modules_importing_the_app(import_graph(tmp_path, "fake"), "fake")
    assert found == {"fake": ["fake.app.study"], "fake.engine": ["fake.app.cli"]}


def test_python_dash_m_package_runs_the_cli():
    """``python -m fewshot_priors`` and ``python -m fewshot_priors.app.cli`` are the CLI; the old
    top-level module paths are gone (0.2.0, no aliases)."""
    for argv in (["-m", PACKAGE, "--version"], ["-m", f"{PACKAGE}.app.cli", "--version"]):
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
        assert r.returncode == 0 and r.stdout.startswith("fewshot-priors "), (argv, r.stdout, r.stderr)
    for old in ("cli", "demo", "real_images", "study", "report"):
        assert not (ROOT / PACKAGE / f"{old}.py").exists(), old


def test_only_the_distributed_module_uses_torch_distributed():
    """One distributed module: no other module imports torch.distributed (anywhere in it)."""
    users = []
    for name, path in discover(ROOT, PACKAGE).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "torch.distributed" or n.startswith("torch.distributed.") for n in names):
                users.append(name)
                break
    assert users == ["fewshot_priors.distributed"], users


def test_the_integer_test_is_written_once():
    """``is_int`` (an int, not a bool) lives in ``_validate``; no module defines its own or inlines the idiom."""
    import re

    idiom = re.compile(r"isinstance\((\w+), bool\) or not isinstance\(\1, int\)|"
                       r"isinstance\((\w+), int\) and not isinstance\(\2, bool\)")
    bad = []
    for mod, path in discover(ROOT, PACKAGE).items():
        text = path.read_text(encoding="utf-8")
        if mod != "fewshot_priors._validate" and (idiom.search(text) or re.search(r"^def _?is_int\(", text, re.MULTILINE)):
            bad.append(mod)
    assert bad == [], bad


def test_shared_constants_are_defined_once():
    """IMAGENET_MEAN and IGNORE_INDEX are assigned only in constants.py."""
    names = {"IMAGENET_MEAN", "IGNORE_INDEX"}
    defined: dict[str, list[str]] = {}
    for mod, path in discover(ROOT, PACKAGE).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id in names:
                    defined.setdefault(mod, []).append(t.id)
    assert sorted(defined.pop("fewshot_priors.constants")) == sorted(names)
    unexpected = {m: v for m, v in defined.items() if m not in CONSTANT_COPIES_PENDING}
    assert not unexpected, f"define these in fewshot_priors/constants.py only and import them: {unexpected}"
    stale = [m for m in CONSTANT_COPIES_PENDING if m not in defined]
    assert not stale, f"CONSTANT_COPIES_PENDING lists modules that no longer copy a constant: {stale}"
    from fewshot_priors import constants
    from fewshot_priors.data import transforms
    from fewshot_priors.ops import checks

    assert transforms.PFENET_PAD_COLOUR is constants.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert checks.IGNORE_INDEX == constants.IGNORE_INDEX == 255


# ----------------------------------------------------------------------------- the checker catches violations
def _write(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_checker_finds_a_planted_cycle_and_upward_import(tmp_path):
    """A fake package with one cycle (at function level) and one upward import; the checker must see both,
    and must not flag a package's re-exports, a TYPE_CHECKING import or a downward lazy string."""
    _write(tmp_path, {
        "fake/__init__.py": "from .low import f\n",  # a re-export of a child that imports the root: no cycle
        "fake/low.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .top import App  # never runs: not an upward import
            def f():
                from fake.high import g  # upward (0 -> 1) and a cycle with high, inside a function
                return g
        """,
        "fake/high.py": "import fake\nfrom .low import f\ndef g():\n    return f\n",
        "fake/top.py": "import fake.high\n_LAZY = {'f': 'fake.low'}\ndef h():\n    from .high import g\n",
        "fake/sub/__init__.py": "from .a import x\n",
        "fake/sub/a.py": "x = 1\ndef use():\n    from .b import y\n",
        "fake/sub/b.py": "from fake.sub.a import x\ny = x\n",
    })
    layers = {"": 0, "low": 0, "high": 1, "top": 2, "sub": 1}
    graph = import_graph(tmp_path, "fake")
    assert graph["fake.low"] == {"fake.high"}
    assert graph["fake.high"] == {"fake", "fake.low"}
    assert graph["fake.top"] == {"fake.high", "fake.low"}
    cycles = sorted(sorted(c) for c in find_cycles(cycle_graph(graph)))
    assert cycles == [["fake.high", "fake.low"], ["fake.sub.a", "fake.sub.b"]]
    assert upward_imports(graph, "fake", layers) == [("fake.low", "fake.high")]
    # the fixed fake package passes
    _write(tmp_path, {"fake/low.py": "def f():\n    return 1\n", "fake/sub/a.py": "x = 1\n"})
    fixed = import_graph(tmp_path, "fake")
    assert find_cycles(cycle_graph(fixed)) == []
    assert upward_imports(fixed, "fake", layers) == []
