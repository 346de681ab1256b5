"""Write an official PFENet / QGNet checkpoint as this library's checkpoint + config.

:func:`write_converted_checkpoint` is what ``fewshot-priors convert`` runs: it calls
:func:`fewshot_priors.models.convert.convert_official_checkpoint`, merges the model
section it returns over a base config (a shipped name such as
``pascal/resnet50_473_fold0``, or the defaults), loads the weights strictly into the
model that config builds and writes

* ``<output>.safetensors`` + ``<output>.json``: a checkpoint of
  :func:`~fewshot_priors.engine.checkpoint.save_checkpoint` (kinds ``"pfenet"`` /
  ``"qgnet"``), for ``fewshot-priors eval --checkpoint <output>``; or, for
  ``"pfenet-backbone"``, a timm state dict with metadata ``{"format":
  "fewshot_priors.backbone_weights", "backbone": <timm name>}`` for ``model.weights``;
* ``<output>.yaml``: the full config to evaluate (or train) with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_converted_checkpoint"]


def write_converted_checkpoint(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    output: str | os.PathLike,
    kind: str = "pfenet",
    config: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    bins: Sequence[int | float] | None = None,
) -> dict[str, str]:
    """Convert an official checkpoint and write it with its config.

    Args:
        source: the official ``.pth`` file (or state dict); see
            :func:`~fewshot_priors.models.convert.convert_official_checkpoint`.
        output: output stem (``converted/pfenet_r50_fold0``); a ``.safetensors`` /
            ``.json`` / ``.yaml`` suffix is dropped. Parent folders are created.
        kind: ``"pfenet"``, ``"qgnet"`` or ``"pfenet-backbone"``.
        config: base config (shipped name or YAML path) for the data / train / eval
            sections; None: the defaults.
        overrides: ``section.key=value`` overrides applied last (``data.fold=2``).
        bins: PFENet's ``ppm_scales`` of the checkpoint (values ``<= 1`` are
            fractions); None keeps the base config's ``model.bins``.

    Returns:
        ``{"checkpoint": <.safetensors path>, "config": <.yaml path>}`` (for
        ``"pfenet-backbone"``: ``{"weights": ..., "config": ...}``).

    Raises:
        ValueError: the checkpoint cannot be converted (the message lists the keys).
        fewshot_priors.config.ConfigError: a bad base config or override.
    """
    from fewshot_priors.config import apply_overrides, load_config, merge, save_config, validate
    from fewshot_priors.models.convert import convert_official_checkpoint
    from fewshot_priors.models.weights import BACKBONE_WEIGHTS_FORMAT

    from .build import build_model
    from .checkpoint import checkpoint_paths, save_checkpoint

    state, partial = convert_official_checkpoint(source, kind=kind, bins=bins)
    stem = Path(output)
    if stem.suffix in (".safetensors", ".json", ".yaml"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    cfg = merge(load_config(config), partial)
    yaml_path = stem.with_name(stem.name + ".yaml")

    if kind == "pfenet-backbone":
        from safetensors.torch import save_file

        weights = stem.with_name(stem.name + ".safetensors")
        name = partial["model"]["backbone"]
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(weights),
                  metadata={"format": BACKBONE_WEIGHTS_FORMAT, "backbone": name})
        cfg["model"]["weights"] = str(weights)
        cfg = validate(apply_overrides(cfg, overrides))
        save_config(cfg, yaml_path)
        return {"weights": str(weights), "config": str(yaml_path)}

    cfg = validate(apply_overrides(cfg, overrides))
    model = build_model(cfg, pretrained=False, weights=None, prior_weights=None)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"the converted weights do not fit the model of the config (model section {cfg['model']}): "
            f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}; "
            "do not override model.backbone / prior_backbone / use_prior / channels / bins length"
        )
    save_checkpoint(stem, model=model, meta={"config": cfg, "converted_from": str(source) if not
                                             isinstance(source, Mapping) else "<state dict>", "kind": kind})
    save_config(cfg, yaml_path)
    return {"checkpoint": str(checkpoint_paths(stem)[0]), "config": str(yaml_path)}
