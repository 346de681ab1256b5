"""Experiment configs: one tree, validated in one place.

Every run is described by one nested dict with the sections ``experiment``, ``data``,
``model``, ``train``, ``eval``, ``pretrain`` and ``study`` (see :data:`DEFAULTS` for
every key and its default). Config files only need the keys they change; they are
merged over the defaults. Unknown keys and wrongly typed values are rejected with an
error naming the key.

* :mod:`~fewshot_priors.config.schema`: :data:`SCHEMA` (one declaration per key: default,
  help, choices or range, path, resume), :data:`DEFAULTS`, :func:`validate`, :func:`resolve_shots`.
* :mod:`~fewshot_priors.config.loading`: YAML files with ``_base_``, shipped names,
  ``section.key=value`` overrides, :func:`load_config`, :func:`save_config`.
* :mod:`~fewshot_priors.config.zoo`: the paper's table rows (``python -m fewshot_priors.config --generate``).

The configs of every row of the paper's tables, the demo and the real-images presets
ship with the package and are addressed by name (``fewshot-priors configs`` lists them)::

    cfg = load_config("pascal/resnet50_473_fold0", overrides=["train.lr=0.01", "data.shots=5"])
"""

from __future__ import annotations

from .loading import (
    CONFIG_DIR,
    apply_overrides,
    available_configs,
    load_config,
    parse_overrides,
    resolve_config_path,
    save_config,
)
from .schema import (
    DEFAULTS,
    SCHEMA,
    ConfigError,
    check_data_keys,
    choices,
    describe_keys,
    merge,
    resolve_shots,
    validate,
)
from .zoo import (
    ZOO_BACKBONES,
    ZOO_DATASETS,
    ZOO_PRIOR_BACKBONE,
    ZOO_SIZES,
    fraction_bins,
    generate_zoo,
    render_zoo_file,
    zoo_bins,
    zoo_configs,
)

__all__ = [
    "CONFIG_DIR",
    "DEFAULTS",
    "SCHEMA",
    "ZOO_BACKBONES",
    "ZOO_DATASETS",
    "ZOO_PRIOR_BACKBONE",
    "ZOO_SIZES",
    "ConfigError",
    "apply_overrides",
    "available_configs",
    "check_data_keys",
    "choices",
    "describe_keys",
    "fraction_bins",
    "generate_zoo",
    "load_config",
    "merge",
    "parse_overrides",
    "render_zoo_file",
    "resolve_config_path",
    "resolve_shots",
    "save_config",
    "validate",
    "zoo_bins",
    "zoo_configs",
]

