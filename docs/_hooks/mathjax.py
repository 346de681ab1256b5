"""MkDocs hook: serve MathJax from the site itself, so the math renders without a network.

MathJax 3 comes from the PyPI package ``django-static-mathjax`` (pinned in the ``docs``
extra of ``pyproject.toml``): a verbatim copy of the official MathJax 3.2.2 distribution,
Apache-2.0, with no dependencies (Django is *not* needed; the package only ships files).
It is installed by ``pip install -e ".[docs]"`` like the rest of the docs toolchain, so
building the docs needs neither npm nor a CDN, and nothing large is committed here.

Only what the pages use is copied into the site, under :data:`SITE_DIR` (about 2 MB):
the combined TeX/MathML + CommonHTML component, its web fonts and the TeX extensions
that the component may autoload (e.g. ``\\boldsymbol``). The speech-rule engine behind
the accessibility explorer of MathJax's context menu (about 20 MB) is left out.

The script is added to every page's ``extra_javascript`` by :func:`on_config`, so
``mkdocs.yml`` does not name it a second time.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from mkdocs.exceptions import PluginError

DISTRIBUTION = "django-static-mathjax"
SITE_DIR = "assets/mathjax"
SCRIPT = "tex-mml-chtml.js"
# Paths inside MathJax's es5/ folder that are copied (files, or folders copied whole).
NEEDED = (SCRIPT, "output/chtml/fonts/woff-v2", "input/tex/extensions")


def mathjax_root() -> Path:
    """MathJax's ``es5/`` folder (and ``../LICENSE``) as installed by ``django-static-mathjax``.

    Raises:
        PluginError: the package is missing or is not MathJax 3 (with the command that fixes it).
    """
    fix = f'install the docs extra: pip install -e ".[docs]" (it pins {DISTRIBUTION})'
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise PluginError(f"MathJax is not installed, so math would not render offline: {fix}") from None
    if not dist.version.startswith("3."):
        raise PluginError(f"{DISTRIBUTION} {dist.version} is not the MathJax 3 this site is configured for: {fix}")
    root = Path(dist.locate_file("mathjax/static/mathjax/es5"))
    if not (root / SCRIPT).is_file():
        raise PluginError(f"{root / SCRIPT} is missing (broken {DISTRIBUTION} {dist.version}): reinstall it")
    return root


def mathjax_files() -> dict[str, Path]:
    """Site path -> installed file, for every file of :data:`NEEDED` plus MathJax's LICENSE."""
    root = mathjax_root()
    out = {f"{SITE_DIR}/LICENSE": root.parent / "LICENSE"}
    for rel in NEEDED:
        path = root / rel
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                out[f"{SITE_DIR}/{f.relative_to(root).as_posix()}"] = f
    return out


def on_config(config):
    """Load the local MathJax on every page (mkdocs makes the path relative to each page)."""
    mathjax_root()  # fail early, before the slow notebook execution, if MathJax is missing
    config.extra_javascript.append(f"{SITE_DIR}/{SCRIPT}")
    return config


def on_files(files, config):
    """Copy the MathJax files into the built site (never into ``docs/``)."""
    from mkdocs.structure.files import File

    for uri, path in mathjax_files().items():
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
