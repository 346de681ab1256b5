"""What a newcomer meets first on the command line: a closed pipe, a mistyped command, warnings."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fewshot_priors.app import cli

ROOT = Path(__file__).resolve().parents[1]


def test_a_closed_pipe_stops_quietly():
    """`fewshot-priors configs | head`: no `error: [Errno 32] Broken pipe`, the SIGPIPE status."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "fewshot_priors", "configs"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before the first line is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == "", stderr


def test_an_unknown_command_suggests_the_closest(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["trian", "--config", "demo"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'; did you mean 'train'?" in err
    with pytest.raises(SystemExit):
        cli.main(["zzzzzz"])
    assert "choose from" in capsys.readouterr().err


def test_warnings_are_one_line_in_the_cli_voice(monkeypatch, capsys):
    def noisy(args):
        warnings.warn("FolderFewShot: a long\n  message over\n  three lines", UserWarning, stacklevel=1)
        print("result")
        return 0

    monkeypatch.setitem(cli._COMMANDS, "configs", noisy)
    saved = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["configs"]) == 0
    assert warnings.showwarning is saved  # restored for whatever runs next in the process
    out, err = capsys.readouterr()
    assert out == "result\n"
    assert err == "warning: FolderFewShot: a long message over three lines\n"  # no file:line, no code echo
    assert cli._one_line("x " * 1000, limit=50).endswith("\u2026") and len(cli._one_line("x " * 1000, limit=50)) == 50


def test_the_librarys_logged_warnings_are_warning_lines_in_the_cli(monkeypatch, capsys):
    """A library message logged at WARNING (e.g. engine.train's loss curve that could not be drawn) is one
    ``warning:`` line on stderr in the CLI; INFO stays quiet, and the handler leaves with the command."""
    import logging

    def noisy(args):
        logging.getLogger("fewshot_priors.engine.train").warning("could not draw the loss curve: %s", "no\ndisplay")
        logging.getLogger("fewshot_priors.ssl.superpixels").info("SuperpixelPatchSampler: method=slic")
        print("result")
        return 0

    monkeypatch.setitem(cli._COMMANDS, "configs", noisy)
    handlers = list(logging.getLogger("fewshot_priors").handlers)
    assert cli.main(["configs"]) == 0
    assert logging.getLogger("fewshot_priors").handlers == handlers
    out, err = capsys.readouterr()
    assert out == "result\n"
    assert err == "warning: could not draw the loss curve: no display\n"


def test_every_set_advice_parses():
    """`--set a=1 b=2` is not one override per --set: advice in messages and docs must repeat the flag."""
    import re

    two_in_one = re.compile(r"--set [\w.]+=\S+\s+[\w.]+=")
    files = [*(ROOT / "fewshot_priors").rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files
           for m in two_in_one.finditer(" ".join(p.read_text(encoding="utf-8").replace('"', " ").split()))]
    assert not bad, bad


def test_a_folder_dataset_root_one_level_too_high_names_the_right_one(tmp_path):
    from fewshot_priors.data.folder import class_image_counts

    data = tmp_path / "downloads" / "my_dataset"
    for cls in ("cat", "dog"):
        (data / cls).mkdir(parents=True)
        for stem in ("a", "b"):
            (data / cls / f"{stem}.jpg").write_bytes(b"")
            (data / cls / f"{stem}.png").write_bytes(b"")
    assert class_image_counts(data) == {"cat": 2, "dog": 2}
    with pytest.raises(FileNotFoundError, match=r"expected <root>/<class>/<stem>\.jpg.*my_dataset is laid out so"):
        class_image_counts(data.parent)
    with pytest.raises(FileNotFoundError, match=r"none of its 1 sub-folders.*\.png$"):  # two levels: no hint
        class_image_counts(tmp_path)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "examples").glob("*.py")))
def test_every_example_answers_help_without_running(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--help"], check=False, capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.lstrip().startswith("usage:"), res.stdout[:300]
