"""Progress bars: the one place that picks tqdm's console bar or its notebook widget.

``tqdm.auto`` is not used because it warns (``TqdmWarning: IProgress not found``) as soon
as it is *imported* inside a Jupyter kernel that lacks ipywidgets, i.e. on
``import fewshot_priors.data`` even when every bar is disabled. Here the choice is made
when a bar is created, and only for a bar that is shown:

* inside a Jupyter kernel with ipywidgets installed: ``tqdm.notebook.tqdm`` (a widget);
* everywhere else: the plain console ``tqdm`` (to stderr), without any warning.

A disabled bar (``disable=True``) is always the plain console class, which prints nothing.

timm imports huggingface_hub, which imports ``tqdm.auto`` itself (for weight downloads);
:func:`import_timm` does that import with the same warning silenced, so a notebook that
uses this library shows no "IProgress not found" box (the downloads then show console bars).
"""

from __future__ import annotations

import os
import sys
import warnings
from types import ModuleType
from typing import Any

from tqdm.std import TqdmWarning
from tqdm.std import tqdm as _console_tqdm

#: Start of the warning ``tqdm.auto`` gives on import in a Jupyter kernel without ipywidgets.
NO_WIDGETS_WARNING = "IProgress not found"


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (notebook, lab, VS Code); False in a terminal, a script, IPython
    or the Qt console / Spyder (which cannot show widgets).

    Same test as ``tqdm.autonotebook``: ``ipykernel``'s shell is loaded. Nothing is imported here.
    """
    if "ipykernel.zmqshell" not in sys.modules:
        return False
    if any(k == "QT_API" or k.startswith("SPYDER") for k in os.environ):
        return False
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and not any(s in type(shell).__name__.lower() for s in ("qt", "spyder"))


def _has_widgets() -> bool:
    try:
        from ipywidgets import FloatProgress  # noqa: F401  (what tqdm.notebook needs)
    except Exception:  # noqa: BLE001 - missing or broken ipywidgets: use the console bar
        return False
    return True


def progress_bar(*args: Any, disable: bool = False, **kwargs: Any) -> _console_tqdm:
    """A ``tqdm`` bar (same arguments as ``tqdm.tqdm``) of the right kind for where we run.

    Returns ``tqdm.notebook.tqdm(...)`` in a Jupyter kernel with ipywidgets, else
    ``tqdm.tqdm(...)``; ``disable=True`` always gives a silent console bar.
    """
    if not disable and in_jupyter_kernel() and _has_widgets():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(*args, **kwargs)
    return _console_tqdm(*args, disable=disable, **kwargs)


def import_timm() -> ModuleType:
    """``import timm``, without the warning its ``tqdm.auto`` import gives in a kernel lacking ipywidgets."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_WIDGETS_WARNING, category=TqdmWarning)
        import timm
    return timm
