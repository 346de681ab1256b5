"""Training, evaluation, checkpointing and distributed helpers.

Submodules are imported on first use so that ``import fewshot_priors.engine``
stays cheap::

    from fewshot_priors.engine.checkpoint import save_checkpoint, load_checkpoint
    from fewshot_priors.engine.train import train
    from fewshot_priors.engine.evaluate import evaluate
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CheckpointError": "fewshot_priors.engine.checkpoint",
    "save_checkpoint": "fewshot_priors.engine.checkpoint",
    "load_checkpoint": "fewshot_priors.engine.checkpoint",
    "capture_rng_state": "fewshot_priors.engine.checkpoint",
    "restore_rng_state": "fewshot_priors.engine.checkpoint",
    "train": "fewshot_priors.engine.train",
    "evaluate": "fewshot_priors.engine.evaluate",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fewshot_priors.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
