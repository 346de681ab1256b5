#!/usr/bin/env bash
# Installs fewshot_priors and everything its tests, demo, docs and benchmarks need into a virtual
# environment: $VENV (default: the active one, $VIRTUAL_ENV, else .venv/ in the checkout), created from
# $PYTHON if it does not exist yet. Safe to rerun: pip skips what is already satisfied.
#
#   bash scripts/install.sh                                  # .venv/ from python3
#   PYTHON=python3.11 VENV=~/venvs/fsp bash scripts/install.sh
#   TORCH_SPEC="torch torchvision" bash scripts/install.sh   # your own torch build
#
# The venv is created with --system-site-packages: what $PYTHON already has (torch, numpy, ...) is
# reused, not downloaded again; pip installs into the venv only what is missing. A system Python that
# refuses pip installs (PEP 668, e.g. Debian's /usr/bin/python3) is never installed into.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${PYTHON:-python3}
VENV=${VENV:-${VIRTUAL_ENV:-.venv}}
if [ ! -x "$VENV/bin/python" ]; then
  if ! command -v "$BASE" >/dev/null 2>&1; then
    echo "error: no Python interpreter '$BASE' (set PYTHON=/path/to/python3.10+)" >&2
    exit 2
  fi
  echo "creating the virtual environment $VENV (from $BASE, --system-site-packages)"
  if ! "$BASE" -m venv --system-site-packages "$VENV"; then
    rm -rf "$VENV"
    echo "error: '$BASE -m venv' failed. On Debian/Ubuntu install the venv module first" \
         "(sudo apt-get install python3-venv), or pass another interpreter (PYTHON=python3.11) or an" \
         "existing virtual environment (VENV=path/to/venv)" >&2
    exit 2
  fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import sys; sys.exit(sys.version_info < (3, 10))"; then
  echo "error: $PY is Python $("$PY" -c 'import platform; print(platform.python_version())'); fewshot_priors" \
       "needs Python >= 3.10 (set PYTHON=python3.10 or newer and remove $VENV)" >&2
  exit 2
fi
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
echo "installed into $VENV: run $PY -m fewshot_priors ..., or activate it with: source $VENV/bin/activate"
