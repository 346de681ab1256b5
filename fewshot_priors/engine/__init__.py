"""Training, evaluation, checkpointing and distributed helpers.

Submodules are imported on first use so that ``import fewshot_priors.engine``
stays cheap::

    from fewshot_priors.engine.checkpoint import save_checkpoint, load_checkpoint
    from fewshot_priors.engine.train import train
    from fewshot_priors.engine.evaluate import evaluate
"""

from __future__ import annotations

from fewshot_priors._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
