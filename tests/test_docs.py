"""The documentation stays true to the code.

* every ```python block of the Markdown pages runs (blocks of one page share a
  namespace, in page order, in a temporary working directory); a block preceded by
  a ``<!-- skip-test: reason -->`` comment is skipped (only for blocks that need real
  datasets, a GPU or the output of ``make demo``);
* every public name of the package is importable and listed on the API index page;
* the notebooks are committed without outputs (they are executed at build time);
* ``mkdocs build --strict`` passes (slow: it executes the notebooks and draws the
  figures).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- skip-test"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line number, code, skipped)`` of every ```python block of a Markdown text."""
    blocks = []
    for m in _FENCE.finditer(text):
        if m.group(1) != "python":
            continue
        before = text[: m.start()].rstrip().splitlines()
        skipped = bool(before) and before[-1].strip().startswith(SKIP_MARK)
        blocks.append((text[: m.start()].count("\n") + 1, m.group(2), skipped))
    return blocks


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def _pages_with_code() -> list[Path]:
    return [p for p in _pages() if python_blocks(p.read_text(encoding="utf-8"))]


# Pages whose examples train a model end to end (engine + CLI, or a hand-written training
# loop over two frozen ResNet-18s): 10-20 s each on one core, so they run with the slow tests.
SLOW_PAGES = {"how-to/add-priors.md", "how-to/folder-dataset.md"}


def _page_params():
    return [
        pytest.param(p, id=p.relative_to(DOCS).as_posix(),
                     marks=[pytest.mark.slow] if p.relative_to(DOCS).as_posix() in SLOW_PAGES else [])
        for p in _pages_with_code()
    ]


def test_block_extraction_and_skip_marker():
    text = (
        "intro\n```python\na = 1\n```\n\n"
        "<!-- skip-test: needs data -->\n```python\nraise SystemExit\n```\n"
        "```bash\nls\n```\n```python title=\"x\"\nb = a + 1\n```\n"
    )
    blocks = python_blocks(text)
    assert [(code, skipped) for _, code, skipped in blocks] == [
        ("a = 1\n", False),
        ("raise SystemExit\n", True),
        ("b = a + 1\n", False),
    ]
    assert blocks[0][0] == 2


def test_pages_have_runnable_code():
    pages = {p.relative_to(DOCS).as_posix() for p in _pages_with_code()}
    # the pages whose examples must be runnable
    for required in ("index.md", "concepts.md", "how-to/add-priors.md", "how-to/folder-dataset.md",
                     "how-to/pretrain.md"):
        assert required in pages
    skipped = sum(s for p in _pages() for _, _, s in python_blocks(p.read_text(encoding="utf-8")))
    total = sum(len(python_blocks(p.read_text(encoding="utf-8"))) for p in _pages())
    assert skipped <= 4 < total, (skipped, total)  # the skipped ones need data, a run or a download


@pytest.mark.parametrize("page", _page_params())
def test_markdown_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for line, code, skipped in python_blocks(page.read_text(encoding="utf-8")):
        if skipped:
            continue
        try:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"code block at {page.relative_to(ROOT)}:{line} failed: {exc!r}") from exc


def shell_commands(text: str) -> list[list[str]]:
    """Argument lists of the ``fewshot-priors`` / ``-m fewshot_priors`` calls in ```bash blocks."""
    import shlex

    commands = []
    for m in _FENCE.finditer(text):
        if m.group(1) != "bash":
            continue
        for line in m.group(2).replace("\\\n", " ").splitlines():
            line = re.sub(r"\$\{?fold\}?", "0", line.split("#", 1)[0])
            line = re.sub(r"\$\{?k\}?", "1", line)
            for marker in ("fewshot-priors ", "-m fewshot_priors "):
                if marker in line:
                    rest = line.split(marker, 1)[1].split(";", 1)[0]
                    commands.append(shlex.split(rest))
                    break
    return commands


def test_shell_command_extraction():
    text = (
        "```bash\nfor fold in 0 1; do\n  fewshot-priors eval --config pascal/x_fold$fold \\\n"
        "      --shots ${k} --output r_${fold}.json   # comment\ndone\n```\n"
        "```python\nfewshot-priors train\n```\n"
        "```bash\ntorchrun --nproc_per_node 2 -m fewshot_priors train --config a.yaml; echo\n```\n"
    )
    assert shell_commands(text) == [
        ["eval", "--config", "pascal/x_fold0", "--shots", "1", "--output", "r_0.json"],
        ["train", "--config", "a.yaml"],
    ]


def test_documented_cli_commands_parse():
    """Every CLI call shown in the docs uses real subcommands, flags, config names and --set keys."""
    from fewshot_priors.app.cli import build_parser
    from fewshot_priors.config import DEFAULTS, load_config

    pretrain_fields = set(DEFAULTS["pretrain"]) | set(DEFAULTS["experiment"])
    parser = build_parser()
    seen = 0
    for page in _pages():
        for argv in shell_commands(page.read_text(encoding="utf-8")):
            where = f"{page.relative_to(DOCS)}: fewshot-priors {' '.join(argv)}"
            try:
                args = parser.parse_args(argv)
            except SystemExit as exc:  # argparse error
                raise AssertionError(f"does not parse: {where}") from exc
            overrides = getattr(args, "overrides", None) or []
            if args.command == "pretrain":
                bare = [o for o in overrides if "." not in o.split("=", 1)[0]]
                assert not bare, f"deprecated --set FIELD=VALUE (write pretrain.FIELD=VALUE) {bare}: {where}"
                assert {o.split("=", 1)[0].split(".")[1] for o in overrides} <= pretrain_fields
                load_config(args.config, overrides)
            elif getattr(args, "config", None) and not args.config.endswith(".yaml"):
                load_config(args.config, overrides)  # the name resolves and the keys exist
            seen += 1
    assert seen >= 8, seen


def _nav_files(nav) -> list[str]:
    out = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out.extend(_nav_files(value) if isinstance(value, list) else [value])
    return out


def _mkdocs_config() -> dict:
    class _Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use !!python/name tags (e.g. for pymdownx); ignore them here.
    _Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)


def test_nav_pages_exist():
    cfg = _mkdocs_config()
    files = _nav_files(cfg["nav"])
    missing = [f for f in files if not (DOCS / f).is_file()]
    assert not missing, f"nav entries without a file: {missing}"
    assert {"getting-started.md", "concepts.md", "benchmarks.md", "changelog.md", "api/index.md"} <= set(files)
    assert sum(f.startswith("notebooks/") for f in files) == 3


def test_every_public_name_is_documented():
    import fewshot_priors

    index = (DOCS / "api" / "index.md").read_text(encoding="utf-8")
    for name in fewshot_priors.__all__:
        if name == "__version__":
            continue
        obj = getattr(fewshot_priors, name)  # importable (lazy names resolve)
        module = obj.__module__
        # a name defined in a private module (ops._checks) is documented under its public package
        public = ".".join(part for part in module.split(".") if not part.startswith("_"))
        assert f"[`{name}`][{public}.{name}]" in index, f"{name} ({public}) is not on docs/api/index.md"
        # and the module page that renders it (or its own block) is in the API reference
        pages = [p.read_text(encoding="utf-8") for p in (DOCS / "api").glob("*.md")]
        assert any(f"::: {public}\n" in text or f"::: {public}.{name}\n" in text for text in pages), module


def test_notebooks_committed_without_outputs():
    notebooks = sorted((DOCS / "notebooks").glob("*.ipynb"))
    assert len(notebooks) == 3
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        assert nb["metadata"]["kernelspec"]["language"] == "python"
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert code, nb_path.name
        for cell in code:
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
                f"{nb_path.name}: commit notebooks without outputs (they run at build time)"
            )


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    """The whole site builds with ``--strict``: API pages resolve, notebooks execute, figures draw.

    Slow (about a minute on one core): it executes the three notebooks.
    """
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocs_jupyter")
    site = tmp_path / "site"
    env = dict(os.environ, MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    # nbconvert's templates live under <prefix>/share/jupyter; in a venv made with
    # --system-site-packages they are under the base interpreter's prefix
    jupyter_path = [str(Path(sys.base_prefix) / "share" / "jupyter"), env.get("JUPYTER_PATH", "")]
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in jupyter_path if p)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    for figure in ("opposite_region_maps.png", "two_views_and_patches.png"):
        assert (site / "figures" / figure).stat().st_size > 10_000
    for nb in ("region_maps", "superpixel_patches", "add_priors"):
        html = (site / "notebooks" / nb / "index.html").read_text(encoding="utf-8")
        assert "data:image/png;base64" in html, f"{nb}: no executed figure in the page"
    api = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert "QGNet" in api and "GlobalLocalMoCo" in api
    _assert_site_works_offline(site)


# what an HTML page loads: scripts, stylesheets, fonts, preconnects (not plain <a href> links)
_LOADED = re.compile(r"<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=\"([^\"]*)\"", re.IGNORECASE)
# an output cell with stderr text (the notebook CSS also names that mime type, in a selector)
_STDERR_OUTPUT = re.compile(r'<div[^>]*data-mime-type="application/vnd\.jupyter\.stderr"')


def _docs_hook(name: str = "mathjax"):
    """The docs hook ``docs/_hooks/<name>.py``, loaded by path (``mathjax`` is also the PyPI package's name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_docs_hook_{name}", DOCS / "_hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_site_works_offline(site: Path) -> None:
    """Every page loads only files of the site (MathJax included); notebooks show no stderr boxes."""
    hook = _docs_hook()
    SITE_DIR, SCRIPT = hook.SITE_DIR, hook.SCRIPT  # noqa: N806
    assert (site / SITE_DIR / SCRIPT).stat().st_size > 500_000
    assert list((site / SITE_DIR / "output" / "chtml" / "fonts" / "woff-v2").glob("MathJax_Main-Regular.woff"))
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    for page in pages:
        html = page.read_text(encoding="utf-8")
        remote = [u for u in _LOADED.findall(html) if re.match(r"(https?:)?//", u)]
        assert not remote, f"{page.relative_to(site)} loads from the network: {remote}"
    concepts = (site / "concepts" / "index.html").read_text(encoding="utf-8")
    assert f'<script src="../{SITE_DIR}/{SCRIPT}"' in concepts and 'class="arithmatex"' in concepts
    for nb in ("region_maps", "superpixel_patches", "add_priors"):
        html = (site / "notebooks" / nb / "index.html").read_text(encoding="utf-8")
        assert not _STDERR_OUTPUT.search(html) and "IProgress" not in html, f"{nb}: stderr output in the page"


def test_mathjax_hook_finds_the_local_mathjax():
    """The docs extra's MathJax 3 is installed and the hook copies its script, fonts and LICENSE."""
    pytest.importorskip("mkdocs")
    hook = _docs_hook()
    files = hook.mathjax_files()
    assert files[f"{hook.SITE_DIR}/{hook.SCRIPT}"].read_text(encoding="utf-8").find("MathJax") >= 0
    assert f"{hook.SITE_DIR}/LICENSE" in files
    fonts = [u for u in files if u.startswith(f"{hook.SITE_DIR}/output/chtml/fonts/woff-v2/")]
    assert len(fonts) >= 20, fonts
    assert all(p.is_file() for p in files.values())
    assert sum(p.stat().st_size for p in files.values()) < 5_000_000  # not the whole 35 MB package
    assert "unpkg.com" not in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- README
README = ROOT / "README.md"


def test_inline_code_hook_keeps_short_tokens_on_one_line():
    """Short inline code tokens get the no-wrap class; commands with spaces, long tokens and code blocks do not."""
    mark = _docs_hook("inline_code").nowrap_inline_code
    assert mark("<p><code>--version</code>, <code>a&lt;b&gt;.png</code></p>") == (
        '<p><code class="nowrap">--version</code>, <code class="nowrap">a&lt;b&gt;.png</code></p>')
    long_token = "x" * 41
    unchanged = [
        "<p><code>make demo --seed 7</code></p>",                                   # wraps at its spaces
        f"<p><code>{long_token}</code></p>",                                      # too long for one line
        '<pre><span></span><code><span class="n">x</span>\n</code></pre>',       # a code block
        '<p><code class="highlight">x</code></p>',                                # already has a class
    ]
    for html in unchanged:
        assert mark(html) == html


def test_readme_code_blocks_run(tmp_path, monkeypatch):
    """The README's Python examples run as written."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    for line, code, skipped in blocks:
        assert not skipped
        exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102


def test_readme_cli_commands_parse():
    """Every CLI call in the README uses real subcommands, flags, config names and --set keys."""
    from fewshot_priors.app.cli import build_parser
    from fewshot_priors.config import load_config

    parser = build_parser()
    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 4
    for argv in commands:
        args = parser.parse_args(argv)
        if getattr(args, "config", None) and args.command != "pretrain":
            load_config(args.config, getattr(args, "overrides", None) or [])
