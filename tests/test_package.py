"""The package's lazy public names resolve to the objects their modules define."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["fewshot_priors", "fewshot_priors.models", "fewshot_priors.engine", "fewshot_priors.ssl"])
def test_lazy_names_resolve_and_unknown_names_fail(package):
    mod = importlib.import_module(package)
    for name, module in mod._LAZY.items():
        assert getattr(mod, name) is getattr(importlib.import_module(module), name)
        assert name in dir(mod)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'no_such_name'"):
        mod.no_such_name  # noqa: B018


def test_engine_functions_are_not_shadowed_by_their_submodules():
    import fewshot_priors.engine as engine
    import fewshot_priors.engine.evaluate
    import fewshot_priors.engine.train  # noqa: F401

    assert callable(engine.train) and engine.train.__name__ == "train"
    assert callable(engine.evaluate) and engine.evaluate.__name__ == "evaluate"


def test_importing_the_package_does_not_import_timm_models():
    import subprocess
    import sys

    code = "import sys, fewshot_priors; print('fewshot_priors.models.qgnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
