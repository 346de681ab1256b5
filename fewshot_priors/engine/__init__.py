"""Training, evaluation, checkpointing and distributed helpers::

    from fewshot_priors.engine import Runtime, StepLoop       # one runtime, one step loop
    from fewshot_priors.engine.checkpoint import save_checkpoint, load_checkpoint
    from fewshot_priors.engine.train import train
    from fewshot_priors.engine.evaluate import evaluate

``train`` and ``evaluate`` share their names with their submodules: the package
attributes are the functions (imported last, so a submodule import cannot replace them).
"""

from __future__ import annotations

from .build import build_dataset, build_model
from .checkpoint import CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .convert import write_converted_checkpoint
from .loop import StepLoop
from .runtime import Runtime

# last: the functions, not their same-named submodules (``import fewshot_priors.engine.train``
# sets the package attribute to the submodule only on its first import, which has run above)
from .evaluate import evaluate  # noqa: E402, I001
from .train import train  # noqa: E402

__all__ = [
    "CheckpointError",
    "Runtime",
    "StepLoop",
    "build_dataset",
    "build_model",
    "capture_rng_state",
    "evaluate",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "train",
    "write_converted_checkpoint",
]
