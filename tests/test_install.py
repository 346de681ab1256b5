"""`make demo` / `make test` on a fresh machine: everything goes into a virtual environment.

A stock distribution Python refuses `pip install` (PEP 668, "externally-managed-environment"),
so neither the Makefile nor scripts/install.sh may pip-install into the interpreter they are
given: they create (or use) a venv and install there. These tests run the real script and
make's dry run with stub interpreters; nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def _install(tmp_path, python: Path | str, venv: Path):
    env = {**os.environ, "PYTHON": str(python), "VENV": str(venv)}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["bash", str(ROOT / "scripts" / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_install_creates_a_venv_and_never_pip_installs_into_the_given_python(tmp_path):
    """An externally-managed Python: its pip refuses (PEP 668) and its venv module is
    missing (Debian without python3-venv). The script must not call its pip, must stop
    with `error:` + exit 2, say what to install, and leave no half-made venv behind."""
    log = tmp_path / "calls.log"
    py = _stub(tmp_path / "python3", f'echo "$@" >> {log}\n'
                                     'if [ "$1 $2" = "-m pip" ]; then echo "error: externally-managed-environment" >&2; '
                                     'exit 1; fi\n'
                                     'if [ "$1 $2" = "-m venv" ]; then mkdir -p "${@: -1}"; '
                                     'echo "ensurepip is not available" >&2; exit 1; fi\nexit 1\n')
    venv = tmp_path / "venv"
    res = _install(tmp_path, py, venv)
    calls = log.read_text() if log.exists() else ""
    assert "-m pip" not in calls, calls
    assert "-m venv --system-site-packages" in calls
    assert res.returncode == 2, res.stderr
    assert "error:" in res.stderr and "python3-venv" in res.stderr
    assert not venv.exists()


def test_install_uses_an_existing_venv_and_names_a_missing_interpreter(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    # an existing venv whose pip works: the script installs there, with the venv's python
    _stub(venv / "bin" / "python", f'echo "$@" >> {log}\nexit 0\n')
    res = _install(tmp_path, tmp_path / "no-such-python", venv)
    assert res.returncode == 0, res.stderr
    calls = log.read_text()
    assert "-m pip install" in calls and '-e .[dev,docs,bench]' in calls
    res = _install(tmp_path, tmp_path / "no-such-python", tmp_path / "other")
    assert res.returncode == 2 and "error: no Python interpreter" in res.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_every_make_target_runs_in_the_venv(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    for target, command in (("demo", "-m fewshot_priors demo"), ("test", "-m pytest"),
                            ("bench", "-m pytest benchmarks"), ("docs", "-m mkdocs build")):
        out = subprocess.run(["make", "-n", "-C", str(ROOT), target], env=env, capture_output=True, text=True,
                             check=True).stdout
        assert f".venv/bin/python {command}" in out, out
        assert "VENV=.venv bash scripts/install.sh" in out or "install-stamp" not in out
        out = subprocess.run(["make", "-n", "-C", str(ROOT), target], env={**env, "VIRTUAL_ENV": str(tmp_path)},
                             capture_output=True, text=True, check=True).stdout
        assert f"{tmp_path}/bin/python {command}" in out, out
