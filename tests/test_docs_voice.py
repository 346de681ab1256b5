"""The project speaks of itself: what it does, on which hardware a number was measured and with
which command, never how its development was organised (ticket numbers, borrowed machines, work
sessions). A reader of the docs, the benchmarks or the code cannot resolve such words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: words about the development process, not the project
FORBIDDEN = re.compile(
    r"\bissues? ?#?\d+|\bthe issue\b|\bissue's\b|\btickets?\b|\blent\b|\bborrowed\b|device tool|"
    r"\b(?:this|the|per|a|helper) session\b|\bsessions? (?:that|which)\b|\bengineers?\b|development machine",
    re.IGNORECASE,
)
SOURCES = ("README.md", "CHANGELOG.md", "mkdocs.yml", "pyproject.toml", "Makefile", "docs", "benchmarks",
           "examples", "fewshot_priors", "scripts", "tests")
SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".ipynb", ".txt", ""}


def _files():
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from (p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in SUFFIXES
                        and "__pycache__" not in p.parts and p.name != Path(__file__).name)


def test_the_pattern_catches_what_it_is_for():
    for text in ("as asked in issue 12", "issue #7", "the issue's targets", "on the lent H100",
                 "a borrowed GPU", "one call of the device tool", "No GPU in the session that built it",
                 "measured on a development machine"):
        assert FORBIDDEN.search(text), text
    for text in ('scope="session"', "a relentless pace", "tissue 3", "an issue with the mask"):
        assert not FORBIDDEN.search(text), text


@pytest.mark.parametrize("path", list(_files()), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_words_about_how_the_work_was_organised(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    hits = [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}"
            for m in FORBIDDEN.finditer(text)]
    assert not hits, "\n".join(hits)
