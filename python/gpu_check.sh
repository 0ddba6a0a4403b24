#!/usr/bin/env bash
# `make gpu-check`: build, test and benchmark mae_kernels on a GPU machine that has torch, triton, nvcc, ninja,
# pytest and pytest-benchmark but no package index (uses python3 as found). Everything goes to bench/results/;
# with a folder as $1 (or GPU_RESULTS_DIR) the results are copied there too (8 flat files at most).
# Goes on to the benchmarks when tests fail; exits non-zero when any step failed. About 5 minutes on an H100.
set -u
cd "$(dirname "$0")/.."
RESULTS=bench/results
DEST=${1:-${GPU_RESULTS_DIR:-}}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
: > "$LOG"
FAILED=()

step() {  # step NAME COMMAND...: run, log, remember failures
  local name=$1; shift
  echo "=== $name: $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { FAILED+=("$name (exit $rc)"); echo "=== $name FAILED (exit $rc)" | tee -a "$LOG"; }
  return "$rc"
}

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
step build "$PY" -m pip install --no-build-isolation --no-deps -e . || {
  echo "build failed: nothing to test" | tee -a "$LOG"; }
step info "$PY" -m mae_kernels info
"$PY" -m mae_kernels info > "$RESULTS/info.txt" 2>&1

XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n 8)
step tests "$PY" -m pytest tests -q -rfEs -p no:cacheprovider "${XDIST[@]}" --junitxml="$RESULTS/tests.xml"

step bench "$PY" -m mae_kernels bench --out "$RESULTS" --note "make gpu-check"
step bench-step timeout 300 "$PY" -m mae_kernels bench-step --out "$RESULTS" --time-budget 150 --note "make gpu-check"
step pytest-bench "$PY" -m pytest bench -q -rfEs -p no:cacheprovider --benchmark-enable --benchmark-only \
  --benchmark-json="$RESULTS/pytest_bench.json" --benchmark-columns=min,median,iqr,rounds

if [ -n "$DEST" ]; then
  mkdir -p "$DEST"
  SLUG=$("$PY" -c "from mae_kernels.benchmark.environment import device_slug, default_device as d; print(device_slug(d()))")
  for f in gpu_check.log tests.xml info.txt pytest_bench.json "$SLUG.json" "$SLUG.png"; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$DEST/"
  done
  echo "copied results to $DEST" | tee -a "$LOG"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu-check FAILED steps: %s\n' "${FAILED[*]}" | tee -a "$LOG"
  [ -n "$DEST" ] && cp "$LOG" "$DEST/"
  exit 1
fi
echo "gpu-check passed" | tee -a "$LOG"
[ -n "$DEST" ] && cp "$LOG" "$DEST/"
exit 0
