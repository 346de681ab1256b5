"""The package's public namespace: the root's lazy names resolve to the objects their modules define,
``dir(fp)`` is the public API, and only the root has a module-level ``__getattr__``."""

from __future__ import annotations

import importlib

import pytest


def test_lazy_names_resolve_and_unknown_names_fail():
    mod = importlib.import_module("fewshot_priors")
    for name, module in mod._LAZY.items():
        assert getattr(mod, name) is getattr(importlib.import_module(module), name)
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="module 'fewshot_priors' has no attribute 'no_such_name'"):
        mod.no_such_name  # noqa: B018


@pytest.mark.parametrize("package", ["fewshot_priors.models", "fewshot_priors.engine", "fewshot_priors.ssl"])
def test_subpackages_export_their_names_eagerly(package):
    mod = importlib.import_module(package)
    assert not hasattr(mod, "__getattr__") and not hasattr(mod, "_LAZY")
    for name in mod.__all__:
        assert name in vars(mod), name


def test_dir_of_the_package_is_its_public_api():
    """No helper leaks into the namespace (``TYPE_CHECKING``, ``annotations``, ``lazy_exports``): dir() lists
    __all__ and the public subpackages imported so far, nothing else."""
    import types

    import fewshot_priors as fp

    names = dir(fp)
    for leak in ("TYPE_CHECKING", "annotations", "lazy_exports"):
        assert leak not in names and not hasattr(fp, leak), leak
    extra = [n for n in names if n not in fp.__all__]
    assert all(isinstance(getattr(fp, n), types.ModuleType) and not n.startswith("_") for n in extra), extra
    assert {"__version__", "from_pretrained", "save_pretrained", "InfoNCELoss", "MaskedAveragePool",
            "SuperpixelPool"} <= set(names)
    from fewshot_priors._version import __version__

    assert fp.__version__ == __version__


def test_only_the_package_root_defines_a_module_getattr():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "fewshot_priors"
    owners = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = [node.name] if isinstance(node, ast.FunctionDef) else [
                e.id for t in node.targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])
                if isinstance(e, ast.Name)] if isinstance(node, ast.Assign) else []
            if "__getattr__" in targets:
                owners.append(str(path.relative_to(root)))
    assert owners == ["__init__.py"], owners


def test_from_pretrained_dispatches_on_the_saved_format(tmp_path):
    import fewshot_priors as fp

    model = fp.create_qgnet(backbone="resnet18", bins=[4, 2, 1], channels=8).eval()
    fp.save_pretrained(model, tmp_path / "qgnet")
    same = fp.from_pretrained(tmp_path / "qgnet")
    assert type(same) is fp.QGNet
    assert all(__import__("torch").equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    fp.save_pretrained(model.prior_extractor, tmp_path / "prior")
    assert type(fp.from_pretrained(tmp_path / "prior")) is fp.FrozenBackbone


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
