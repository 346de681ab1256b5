"""Checkpoint and weight-file parsing for the frozen backbones (no modules here).

Reads a local file (or an in-memory state dict) into a timm ``features_only`` body:
a timm state dict, a checkpoint dict holding one under ``"state_dict"`` / ``"model"``,
a MoCo-style checkpoint whose encoder is picked out by its key prefix (``module.encoder_q.``
...), this project's prior-extractor export (a ``.safetensors`` file with metadata
``{"format": "fewshot_priors.prior_extractor", "backbone": <timm name>}``) or a
converted official backbone (``"fewshot_priors.backbone_weights"``).

A MoCo checkpoint holds two encoders: the query encoder (``encoder_q`` in MoCo's
code, ``encoder`` in :class:`~fewshot_priors.ssl.moco.GlobalLocalMoCo`) and the
momentum (key) encoder (``encoder_k`` / ``key_encoder``). The momentum encoder is
loaded by default (``moco_encoder="key"``), as the official QGNet release does for
its prior extractor; ``moco_encoder="query"`` picks the query encoder.

:class:`~fewshot_priors.models.backbone.FrozenBackbone` and
:func:`~fewshot_priors.models.backbone.create_backbone` use these; the names are also
importable from :mod:`fewshot_priors.models.backbone`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._progress import import_timm
from .._tensorfile import read_tensor_file

timm = import_timm()  # ``import timm`` minus tqdm's notebook warning (see fewshot_priors._progress)

__all__ = [
    "BACKBONE_WEIGHTS_FORMAT",
    "CHECKPOINT_PREFIXES",
    "HEAD_NAMES",
    "MOCO_ENCODERS",
    "PRIOR_EXTRACTOR_FORMAT",
    "load_backbone_state_dict",
]

#: ``format`` metadata value of this project's prior-extractor safetensors export.
PRIOR_EXTRACTOR_FORMAT = "fewshot_priors.prior_extractor"

#: ``format`` metadata value of a converted supervised-backbone weights file (timm
#: names, see :func:`fewshot_priors.models.convert.convert_official_checkpoint`).
BACKBONE_WEIGHTS_FORMAT = "fewshot_priors.backbone_weights"

#: The two encoders of a MoCo checkpoint, by the key prefixes that name them. The
#: first entry (the momentum / key encoder) is the default everywhere.
MOCO_ENCODERS: dict[str, tuple[str, ...]] = {
    "key": ("encoder_k.", "key_encoder."),
    "query": ("encoder_q.", "query_encoder.", "encoder."),
}

#: Key prefixes stripped (in any order, repeatedly) to find a model inside a checkpoint.
CHECKPOINT_PREFIXES = (
    "module.",
    "_orig_mod.",
    "encoder_q.",
    "query_encoder.",
    "encoder_k.",
    "key_encoder.",
    "encoder.",
    "backbone.",
    "model.",
)

#: Names of projection / classifier heads found in self-supervised checkpoints. Keys
#: under them are ignored when the feature extractor does not use them.
HEAD_NAMES = ("fc", "head", "classifier", "pre_logits", "projector", "projection", "proj_head",
              "mlp", "predictor", "global_head", "local_head", "global_pool")


def _norm_key(key: str) -> str:
    """Key in a form shared by a timm model and its features_only wrapper."""
    return key.replace(".", "_")


def _read_checkpoint(
    path: str | os.PathLike, what: str = "backbone weights"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file into ``(tensors, safetensors metadata)``; ``what`` names it in errors
    (the one weights reader, :func:`fewshot_priors._tensorfile.read_tensor_file`)."""
    return read_tensor_file(path, what)


def _strip(key: str) -> tuple[tuple[str, ...], str]:
    """Strip known wrapper prefixes; returns ``(stripped prefixes, rest)``."""
    chain: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in CHECKPOINT_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                chain.append(prefix)
                key = key[len(prefix):]
                changed = True
                break
    return tuple(chain), key


def _check_moco_encoder(moco_encoder: object) -> str:
    if moco_encoder not in MOCO_ENCODERS:
        raise ValueError(f"`moco_encoder` must be one of {tuple(MOCO_ENCODERS)}, got {moco_encoder!r}")
    return moco_encoder  # type: ignore[return-value]


def _encoder_kind(chain: tuple[str, ...]) -> str | None:
    """Which MoCo encoder a prefix chain names (``"key"`` / ``"query"``), or None."""
    for kind, prefixes in MOCO_ENCODERS.items():
        if any(p in prefixes for p in chain):
            return kind
    return None


def _select_model_keys(
    state: Mapping[str, torch.Tensor], target: set[str], moco_encoder: str = "key"
) -> dict[str, torch.Tensor]:
    """Pick the sub-dict of ``state`` that best matches the ``target`` keys.

    Keys are grouped by the chain of wrapper prefixes they carry (``module.encoder_q.``,
    ``module.encoder_k.``, ...). When the checkpoint holds both MoCo encoders, only the
    groups of ``moco_encoder`` (``"key"``: the momentum encoder, ``"query"``) compete;
    a checkpoint holding only one of them gives that one. The group whose stripped
    keys overlap ``target`` most wins; ties prefer the shorter chain. The other groups
    (the other encoder, queues, optimiser) are dropped.
    """
    groups: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        chain, rest = _strip(key)
        groups.setdefault(chain, {})[rest] = value
    matching = {chain: keys for chain, keys in groups.items() if set(keys) & target}
    if {_encoder_kind(chain) for chain in matching} >= set(MOCO_ENCODERS):  # both encoders present
        groups = {chain: keys for chain, keys in matching.items() if _encoder_kind(chain) == moco_encoder}

    def score(item):
        chain, keys = item
        return (len(set(keys) & target), -len(chain), len(keys))

    return dict(max(groups.items(), key=score)[1])


def _fmt_keys(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def load_backbone_state_dict(
    body: nn.Module,
    name: str,
    weights: str | os.PathLike | Mapping[str, torch.Tensor],
    moco_encoder: str = "key",
) -> dict[str, str]:
    """Load a local checkpoint (or an in-memory state dict) into a timm ``features_only`` module.

    Args:
        body: the features_only module (as built by :func:`timm.create_model`).
        name: its timm model name (used to list the full model's keys).
        weights: path to a ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file, or
            a state dict (e.g. ``timm_model.state_dict()``).
        moco_encoder: which encoder of a MoCo checkpoint to load: ``"key"`` (the
            momentum encoder, default, as the official QGNet) or ``"query"``.

    Returns:
        The file's safetensors metadata (``{}`` for other formats and state dicts); the
        prior-extractor export records its encoder's input ``mean`` / ``std`` there.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file does not match the model: missing keys (other than the
            classifier head, which features_only does not use), unexpected keys,
            shape mismatches, or a prior-extractor export of another architecture.
    """
    moco_encoder = _check_moco_encoder(moco_encoder)
    if isinstance(weights, Mapping):
        state = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
        metadata: dict[str, str] = {}
        weights = "<state dict>"
    else:
        state, metadata = _read_checkpoint(weights)
    if metadata.get("format") in (PRIOR_EXTRACTOR_FORMAT, BACKBONE_WEIGHTS_FORMAT):
        saved = metadata.get("backbone")
        if saved and saved != name:
            what = "prior-extractor" if metadata["format"] == PRIOR_EXTRACTOR_FORMAT else "backbone"
            raise ValueError(
                f"{what} weights {str(weights)!r} were exported for backbone {saved!r}, "
                f"but the model was built as {name!r}; pass name={saved!r}"
            )
    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    full_shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    body_sd = body.state_dict()
    getter = type(body).__name__ == "FeatureGetterNet"
    body_norm = {}
    for k in body_sd:
        nk = k[len("model."):] if getter and k.startswith("model.") else k
        body_norm[_norm_key(nk)] = k
    full_by_norm = {_norm_key(k): k for k in full_shapes}
    used_full = {full_by_norm[n] for n in body_norm if n in full_by_norm}
    if len(used_full) < len(body_norm):  # unexpected wrapper naming: compare against the body itself
        full_shapes = {k: tuple(v.shape) for k, v in body_sd.items()}
        full_by_norm = {_norm_key(k): k for k in full_shapes}
        body_norm = {_norm_key(k): k for k in body_sd}
        used_full = set(full_shapes)
    used_roots = {k.split(".")[0] for k in used_full}

    state = _select_model_keys(state, set(full_shapes), moco_encoder)
    provided = set(state)
    # head keys may be missing (a self-supervised encoder built with num_classes=0 still holds e.g.
    # VGG's pre_logits, which its dense features never use; features_only bodies hold no head)
    missing = [
        k for k in full_shapes
        if k not in provided and k in used_full and not k.endswith("num_batches_tracked")
        and k.split(".")[0] not in HEAD_NAMES
    ]

    def ignorable(key: str) -> bool:
        root = key.split(".")[0]
        return root not in used_roots and (root in HEAD_NAMES or any(k.split(".")[0] == root for k in full_shapes))

    unexpected = [k for k in provided if k not in full_shapes and not ignorable(k)]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {full_shapes[k]}"
        for k in provided
        if k in full_shapes and tuple(state[k].shape) != full_shapes[k] and k in used_full
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt_keys(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_fmt_keys(mismatched, 6)}")
        raise ValueError(
            f"backbone weights {str(weights)!r} do not match timm model {name!r}: " + "; ".join(parts)
        )
    new_sd = {}
    for nk, bk in body_norm.items():
        fk = full_by_norm.get(nk)
        if fk is not None and fk in state:
            new_sd[bk] = state[fk].to(body_sd[bk].dtype)
    result = body.load_state_dict(new_sd, strict=False)
    left = [k for k in result.missing_keys
            if not k.endswith("num_batches_tracked") and k.split(".")[0] not in HEAD_NAMES]
    if left:  # pragma: no cover - guarded by the checks above
        raise ValueError(f"backbone weights {str(weights)!r}: keys not loaded: {_fmt_keys(left)}")
    return metadata
