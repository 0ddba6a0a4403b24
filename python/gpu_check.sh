#!/usr/bin/env bash
# `make gpu-check`: build, test and benchmark mae_kernels on a GPU machine that has torch, triton, nvcc, ninja,
# pytest and pytest-benchmark but no package index (uses python3 as found, or $PYTHON). Everything goes to
# bench/results/; with a folder as $1 (or GPU_RESULTS_DIR) the results are copied there after every step (so a
# run killed from outside still leaves them), 8 flat files at most.
#
# Steps, most important first, each under its own time limit (GPU_CHECK_BUDGET seconds in all, default 450:
# the whole run stays under 8 minutes; a step never gets more than what is left):
#   env          versions, GPU, which optional packages are missing (-> info.txt)
#   build        setup.py build_ext --inplace (the compiled extension, CUDA kernels for TORCH_CUDA_ARCH_LIST)
#   info         python -m mae_kernels info (-> info.txt)
#   tests-gpu    pytest -m gpu with TRITON_INTERPRET=0: CUDA kernels and *compiled* Triton on CUDA tensors
#   bench        python -m mae_kernels bench, providers reference, triton, cuda (-> <device>.json / .png)
#   bench-step   python -m mae_kernels bench-step: whole training step, eager vs fused, ViT-B/L images and
#                VideoMAE-B / mae_st-L clips (-> <device>-train_step.json)
#   pytest-bench the pytest-benchmark suites without the torch.compile provider (-> pytest_bench.json)
#   tests-cpu    pytest -m "not gpu and not slow" with TRITON_INTERPRET=1 (the CPU suite, Triton interpreted)
# Goes on after a failed step; exits non-zero when any step failed or ran out of time.
set -u
cd "$(dirname "$0")/.."
RESULTS=bench/results
DEST=${1:-${GPU_RESULTS_DIR:-}}
PY=${PYTHON:-python3}
export PY
BUDGET=${GPU_CHECK_BUDGET:-450}  # seconds; a step may overrun its limit by 20 s (SIGKILL grace)
START=$(date +%s)
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
INFO=$RESULTS/info.txt
: > "$LOG"
: > "$INFO"
rm -f "$RESULTS"/tests_gpu.xml "$RESULTS"/tests_cpu.xml "$RESULTS"/pytest_bench.json "$RESULTS"/pytest_bench.xml
FAILED=()
SLUG=""

publish() {  # copy what exists so far to $DEST (cheap; after every step and on exit)
  [ -n "$DEST" ] || return 0
  mkdir -p "$DEST" 2>/dev/null || return 0
  local f
  for f in gpu_check.log info.txt tests_gpu.xml tests_cpu.xml pytest_bench.json ${SLUG:+"$SLUG.json" "$SLUG.png" "$SLUG-train_step.json"}; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$DEST/" 2>/dev/null
  done
  return 0
}
trap publish EXIT

left() { echo $((BUDGET - ($(date +%s) - START))); }

NOTES=()
# step [--optional JUNIT_XML] NAME LIMIT_SECONDS COMMAND...: run under min(LIMIT, time left), log, remember
# failures. An optional step that finds no time left, or runs out of it with no failure recorded in its junit
# XML so far, is a note, not a failure.
step() {
  local optional=""
  if [ "$1" = "--optional" ]; then optional=$2; shift 2; fi
  local name=$1 limit=$2; shift 2
  local rest; rest=$(left)
  [ "$rest" -lt "$limit" ] && limit=$rest
  if [ "$limit" -lt 15 ]; then
    echo "=== $name SKIPPED: out of time (${rest}s of ${BUDGET}s left)" | tee -a "$LOG"
    if [ -n "$optional" ]; then NOTES+=("$name skipped (no time left)"); else FAILED+=("$name (no time left)"); fi
    publish
    return 124
  fi
  echo "=== $name (limit ${limit}s, $(date -u +%H:%M:%S)): $*" | tee -a "$LOG"
  # timeout runs programs, not shell functions: a function runs in a child bash that gets its definition.
  if declare -F "$1" >/dev/null; then set -- bash -c "$(declare -f "$1"); $(printf '%q ' "$@")"; fi
  local t0; t0=$(date +%s)
  # SIGINT first: pytest then still prints its summary and writes its junit XML; SIGKILL 20 s later.
  timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "=== $name TIMED OUT after ${took}s (limit ${limit}s)" | tee -a "$LOG"
    if [ -n "$optional" ] && [ -f "$optional" ] && ! grep -qE '(failures|errors)="[1-9]' "$optional"; then
      NOTES+=("$name cut short after ${took}s (no failure up to then; see $optional)")
    else
      FAILED+=("$name (timed out after ${took}s)")
    fi
  elif [ "$rc" -ne 0 ]; then
    FAILED+=("$name (exit $rc)")
    echo "=== $name FAILED (exit $rc, ${took}s)" | tee -a "$LOG"
  else
    echo "=== $name ok (${took}s)" | tee -a "$LOG"
  fi
  publish
  return "$rc"
}

env_report() {
  echo "date: $(date -u)  host: $(uname -n)  cpus: $(nproc)"
  echo "python: $(command -v "$PY") $("$PY" -c 'import sys; print(sys.version)' 2>&1)"
  "$PY" - <<'EOF' 2>&1
import importlib, importlib.util
try:
    import torch
    print(f"torch {torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()}",
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch import FAILED:", e)
for name in ("triton", "setuptools", "wheel", "pip", "ninja", "pytest", "pytest_benchmark", "numpy", "xdist",
             "hypothesis", "PIL", "skimage", "matplotlib", "tqdm", "transformers", "torchvision"):
    if importlib.util.find_spec(name) is None:
        print(f"{name}: MISSING")
        continue
    try:
        print(f"{name}: {getattr(importlib.import_module(name), '__version__', 'present')}")
    except Exception as e:
        print(f"{name}: import FAILED: {e}")
EOF
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not on PATH (CUDA_HOME=${CUDA_HOME:-unset})"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv,noheader 2>&1
  command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo "ninja: not on PATH"
}

build() {
  # In place, not `pip install -e`: a system python may refuse pip installs (PEP 668, externally managed) and
  # every step below runs from the repository root, where mae_kernels is importable as it is.
  "$PY" setup.py -q build_ext --inplace || return $?
  ls -l mae_kernels/_C*.so
}

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export MAE_KERNELS_BUILD_CUDA=${MAE_KERNELS_BUILD_CUDA:-1}  # a GPU check without CUDA kernels is a failure
unset MAE_KERNELS_BACKEND

step env 60 env_report
env_report > "$INFO" 2>&1
step build 240 build || echo "build failed: the tests below run without the compiled extension" | tee -a "$LOG"
step info 60 "$PY" -m mae_kernels info
{ echo; echo "--- python -m mae_kernels info"; timeout 60 "$PY" -m mae_kernels info; } >> "$INFO" 2>&1
SLUG=$(timeout 60 "$PY" -c "from mae_kernels.benchmark.environment import device_slug, default_device as d
print(device_slug(d()))" 2>/dev/null | tail -n 1)

# Several pytest processes at once (python/run_tests_parallel.py; pytest-xdist may be missing): the Triton JIT
# compilations of the GPU tests, single-threaded per process, are spread over the CPUs.
WORKERS=${GPU_CHECK_WORKERS:-8}
# Tests marked large (GiB-sized tensors, 64-bit offsets) run one at a time in one more process.
PYTEST=("$PY" python/run_tests_parallel.py --workers "$WORKERS" --serial large)
TRITON_INTERPRET=0 step tests-gpu 210 "${PYTEST[@]}" --junitxml="$RESULTS/tests_gpu.xml" -- tests -m gpu
# Benchmarks without the torch.compile provider: its compilations (one per op, shape and mode) alone would take
# minutes. `mae-kernels bench --providers reference,compile,triton,cuda` measures it when there is time.
TRITON_INTERPRET=0 step bench 100 "$PY" -m mae_kernels bench --providers reference,triton,cuda --out "$RESULTS" \
  --note "make gpu-check (no torch.compile provider)"
# Whole training step (issues 6 and 15): the GPU default configs, ViT-B/16 (N=256), VideoMAE-B (16x224 clips,
# tubelet 2, tube masking 0.9, N=32), ViT-L/16 (N=128) and mae_st-L (16x224, random masking 0.9, N=16), eager
# and fused: images/s or clips/s and peak memory, with base-dual and videomae-b-dual (dual masking, issue 16's
# GPU target vs the full decoder) after their full-decoder configs. Twelve runs of 23 steps, ~10-15 s each with
# model building; the budget cuts large's and mae_st-L's fused runs first. The compiled providers (a minute of compilation
# each) are measured by `make gpu-compare`, the second call.
TRITON_INTERPRET=0 step bench-step 190 "$PY" -m mae_kernels bench-step --providers eager,fused --out "$RESULTS" \
  --configs base,base-dual,videomae-b,videomae-b-dual,large,mae_st-l \
  --time-budget 150 --note "make gpu-check (eager and fused only)"
# The same measurements in pytest-benchmark's format: optional (a note, not a failure, when time runs out).
TRITON_INTERPRET=0 step --optional "$RESULTS/pytest_bench.xml" pytest-bench 90 "$PY" -m pytest bench -q -rfEs \
  -p no:cacheprovider -k "not compile" --benchmark-enable --benchmark-only \
  --benchmark-json="$RESULTS/pytest_bench.json" --benchmark-columns=min,median,iqr,rounds \
  --junitxml="$RESULTS/pytest_bench.xml"
# The CPU suite minus the slow AOT compile check (the GPU tests above compile every Triton kernel for real).
TRITON_INTERPRET=1 step --optional "$RESULTS/tests_cpu.xml" tests-cpu 600 "${PYTEST[@]}" \
  --junitxml="$RESULTS/tests_cpu.xml" -- tests -m "not gpu and not slow"

echo "=== total $(( $(date +%s) - START ))s" | tee -a "$LOG"
[ ${#NOTES[@]} -gt 0 ] && printf 'gpu-check notes: %s\n' "${NOTES[*]}" | tee -a "$LOG"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu-check FAILED steps: %s\n' "${FAILED[*]}" | tee -a "$LOG"
  exit 1
fi
echo "gpu-check passed" | tee -a "$LOG"
exit 0
