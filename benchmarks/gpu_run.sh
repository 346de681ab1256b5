#!/usr/bin/env bash
# The GPU tests and the benchmarks in one timed script for a CUDA machine (measured on an H100 / H200:
# about 6 minutes): environment facts, kornia from local wheels, the GPU tests, then the benchmarks.
#
# Run from the repository root:
#   OUT=gpu_out bash benchmarks/gpu_run.sh
# On a machine without network, download the wheels beforehand on one with it (`wheels/` is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d wheels kornia kornia_rs
# (kornia needs kornia_rs, packaging and torch; the last two are usually installed.)
#
# Environment: WHEELS (default wheels/), OUT (default ./gpu_out), PYTHON (default python3), TEST_FILES,
# BENCH_FILES (to run a subset), T_TESTS / T_BENCH (seconds per step). Each step runs under `timeout`;
# the benchmark step gets SIGINT first, so pytest still writes RESULTS.md with the rows it finished.
# Files under $OUT: summary.txt, env.log, install.log, import.log, tests.log, bench.log, RESULTS.md,
# bench.json.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
WHEELS=${WHEELS:-wheels}
PY=${PYTHON:-python3}
TEST_FILES=${TEST_FILES:-tests/test_fused.py tests/test_ops.py}
BENCH_FILES=${BENCH_FILES:-benchmarks/test_bench_region_maps.py benchmarks/test_bench_ops.py benchmarks/test_bench_models.py benchmarks/test_bench_data.py}
T_TESTS=${T_TESTS:-150}
T_BENCH=${T_BENCH:-270}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

log() { echo "== +$(($(date +%s) - START))s $*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS CMD...: run CMD under timeout (SIGINT, then KILL 20 s later), output to $OUT/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    log "start $name (limit ${limit}s): $*"
    timeout -s INT -k 20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    log "end $name: rc=$rc$([ $rc = 124 ] && echo ' (timed out)')"
    return 0
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; \
  $PY -c 'import torch, triton, platform; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \
  \"python\", platform.python_version(), torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")'; \
  $PY -m pip list 2>/dev/null | grep -i -E '^(kornia|timm|einops|scikit-image|pytest|pytest-benchmark|numpy|opencv) '"

if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    step install 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
else
    log "no wheels in $WHEELS: kornia must already be installed"
fi
step import 60 "$PY" -c "import kornia, fewshot_priors, fewshot_priors.ops.fused as f; print('kornia', kornia.__version__, 'fused available', f.is_available(), 'padded', f.PADDED_BF16, f.PADDED_MAX_BYTES)"

# GPU tests: -s prints the derived error bounds of test_real_sizes_on_gpu next to the measured errors
# shellcheck disable=SC2086
step tests "$T_TESTS" "$PY" -m pytest $TEST_FILES -q -s -rA -p no:cacheprovider

# Benchmarks, the region maps first: if the step runs out of time the later files are the ones lost
# shellcheck disable=SC2086
step bench "$T_BENCH" "$PY" -m pytest $BENCH_FILES -q -p no:cacheprovider \
    --results-md "$OUT/RESULTS.md" --benchmark-json "$OUT/bench.json" --benchmark-columns=median,rounds

log "done in $(($(date +%s) - START))s; copy \$OUT/RESULTS.md over benchmarks/RESULTS.md"
# the reply shows the end of the output: the summary last
cat "$OUT/summary.txt"
