"""The ``Examples:`` of the public ops' docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["fewshot_priors.ops.region_maps", "fewshot_priors.ops.similarity", "fewshot_priors.ops.pooling",
           "fewshot_priors.ops.superpixel_pool", "fewshot_priors.ops.contrastive"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no example"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} example lines failed (see above)"
