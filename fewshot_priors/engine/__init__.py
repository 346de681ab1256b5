"""Training, evaluation, checkpointing and distributed helpers.

``train`` and ``evaluate`` are imported with the package (see below: they share their
names with their submodules, so they cannot be lazy; this loads torch and
:mod:`fewshot_priors.data`); the checkpoint and conversion helpers listed in ``_LAZY``
are imported on first use::

    from fewshot_priors.engine import Runtime, StepLoop       # one runtime, one step loop
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
    "write_converted_checkpoint": "fewshot_priors.engine.convert",
    "Runtime": "fewshot_priors.engine.runtime",
    "StepLoop": "fewshot_priors.engine.loop",
    "build_model": "fewshot_priors.engine.build",
    "build_dataset": "fewshot_priors.engine.build",
}

# ``train`` and ``evaluate`` share their names with their submodules: a lazy name would
# be replaced by the submodule object as soon as anything imports
# ``fewshot_priors.engine.train``, so these two are imported eagerly (torch, tqdm: cheap).
from .evaluate import evaluate  # noqa: E402
from .train import train  # noqa: E402

__all__ = [*_LAZY, "evaluate", "train"]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
