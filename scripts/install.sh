#!/usr/bin/env bash
# Installs fewshot_priors and everything its tests, demo, docs and benchmarks need.
# Safe to rerun: pip skips what is already satisfied.
#
#   PYTHON=python3.11 bash scripts/install.sh
#   TORCH_SPEC="torch torchvision" bash scripts/install.sh   # your own torch build
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install --disable-pip-version-check --progress-bar off"

# 1. PyTorch. The default pins are the builds that lie on this project's machines' disk.
if [ -n "${TORCH_SPEC:-}" ]; then
  $PIP $TORCH_SPEC
elif ! $PY -c "import torch, torchvision" 2>/dev/null; then
  $PIP "torch==2.14.1" "torchvision==0.29.1"
fi

# 2. fast-slic builds only without build isolation: its build needs numpy and cython<3 present.
$PIP numpy "cython<3" setuptools wheel
if ! $PY -c "import fast_slic" 2>/dev/null; then
  $PIP --no-build-isolation "fast-slic>=0.4" \
    || echo "WARNING: fast-slic did not build; SuperpixelPatchSampler falls back to scikit-image SLIC" >&2
fi

# 3. The package itself (editable) with the extras for tests, docs and benchmarks. The docs extra
#    brings MathJax as a Python package (django-static-mathjax: the MathJax 3 files, no Django), so the
#    docs build serves the math renderer itself with no npm and no CDN.
$PIP -e ".[dev,docs,bench]"
