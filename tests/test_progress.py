"""Progress bars: console or notebook widget, chosen when a bar is made, never a warning on import."""

from __future__ import annotations

import io
import subprocess
import sys
import types
import warnings

import pytest
from tqdm.std import tqdm as console_tqdm

from fewshot_priors import _progress
from fewshot_priors._progress import in_jupyter_kernel, progress_bar


class ZMQInteractiveShell:  # the name of ipykernel's shell
    pass


class QtShell:
    pass


def _fake_kernel(monkeypatch, shell=ZMQInteractiveShell):
    """What tqdm and fewshot_priors._progress look at to tell they run in a Jupyter kernel."""
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell()
    monkeypatch.setitem(sys.modules, "IPython", module)
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", types.ModuleType("ipykernel.zmqshell"))


def test_kernel_detection(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel.zmqshell", raising=False)
    assert not in_jupyter_kernel()  # this test process
    _fake_kernel(monkeypatch, shell=QtShell)
    assert not in_jupyter_kernel()  # the Qt console cannot show widgets
    _fake_kernel(monkeypatch)
    assert in_jupyter_kernel()
    monkeypatch.setenv("SPYDER_ARGS", "x")
    assert not in_jupyter_kernel()


def test_kernel_without_widgets_gets_a_console_bar_and_no_warning(monkeypatch):
    _fake_kernel(monkeypatch)
    monkeypatch.setattr(_progress, "_has_widgets", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tqdm.auto would raise TqdmWarning("IProgress not found") here
        bar = progress_bar(range(3), desc="x", disable=True)
        assert type(bar) is console_tqdm and list(bar) == [0, 1, 2]
        bar = progress_bar(total=2, file=io.StringIO())
        assert type(bar) is console_tqdm
        bar.close()


def test_kernel_with_widgets_gets_the_notebook_bar_only_when_shown(monkeypatch):
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    _fake_kernel(monkeypatch)
    assert type(progress_bar(range(2), disable=True)) is console_tqdm
    monkeypatch.setattr(_progress, "_has_widgets", lambda: True)
    monkeypatch.setattr(notebook_tqdm, "__init__", lambda self, *a, **k: None)  # no display machinery
    assert isinstance(progress_bar(range(2)), notebook_tqdm)


# A Jupyter kernel without ipywidgets, as tqdm.autonotebook detects one; then every warning is recorded.
_FAKE_KERNEL = """
import sys, types, warnings
ipython = types.ModuleType("IPython")
ipython.get_ipython = lambda: types.SimpleNamespace()
sys.modules["IPython"] = ipython
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
caught = warnings.catch_warnings(record=True)
log = caught.__enter__()
warnings.simplefilter("always")
"""
_REPORT = "\nprint('WARNINGS:', [str(w.message)[:60] for w in log if 'IProgress' in str(w.message)])\n"


def _warnings_in_fake_kernel(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", _FAKE_KERNEL + code + _REPORT],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.rsplit("WARNINGS:", 1)[1].strip()


def test_no_ipywidgets_warning_in_a_notebook_kernel():
    """tqdm.auto warns "IProgress not found" on import in such a kernel; using the library must not.

    Covers our own bars and timm's import of huggingface_hub (which imports tqdm.auto).
    """
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ipywidgets is installed: tqdm.auto would not warn anyway")
    # control: the fake kernel does make tqdm.auto warn, so the check below can fail
    assert "IProgress not found" in _warnings_in_fake_kernel("import tqdm.auto")
    used = (
        "import fewshot_priors.data, fewshot_priors.engine, fewshot_priors.engine.pretrain\n"
        "from fewshot_priors import create_backbone\n"
        "from fewshot_priors.ssl.moco import create_encoder\n"
        "from fewshot_priors._progress import progress_bar\n"
        "create_backbone('resnet18'); create_encoder('resnet18')\n"
        "list(progress_bar(range(3), file=sys.stdout))\n"
    )
    assert _warnings_in_fake_kernel(used) == "[]"
