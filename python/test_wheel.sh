#!/usr/bin/env bash
# `make test-wheel`: mae_kernels installed like a library, not from the checkout. From a copy of the sources:
#   1. `pip wheel --no-build-isolation --no-deps .` with the main venv (its torch is the one the wheel records);
#   2. a scratch virtualenv with its own torch ($TORCH, from pip's cache after `make venv`); the wheel installed
#      into it and python/wheel_smoke.py run from a folder outside the checkout;
#   3. the wheel uninstalled, `pip install --no-build-isolation .` (not editable) into the same virtualenv, the
#      smoke test again.
# CPU-only extension by default (MAE_KERNELS_BUILD_CUDA=0: two builds of a few CPU-minutes each; set it to auto or
# 1 to build the CUDA kernels too). Not part of `make test` (the two builds and the torch install take minutes).
# Scratch files in $WHEEL_WORK (default: a fresh temporary folder, removed at the end when all passed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
TORCH=${TORCH:-torch==2.14.1}
export MAE_KERNELS_BUILD_CUDA=${MAE_KERNELS_BUILD_CUDA:-0}
WORK=${WHEEL_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/mae_kernels_wheel.XXXXXX")}
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
tar -c --exclude=./build --exclude='./.venv*' --exclude=./.git --exclude=__pycache__ --exclude='*.so' \
  --exclude=./mae_kernels/_build_info.py --exclude=./runs --exclude=./dist --exclude='*.egg-info' . \
  | tar -x -C "$WORK/src"
cp python/wheel_smoke.py "$WORK/run/"

echo "== 1. wheel (MAE_KERNELS_BUILD_CUDA=$MAE_KERNELS_BUILD_CUDA)"
(cd "$WORK/src" && "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/dist" .)
ls "$WORK"/dist/mae_kernels-*.whl

echo "== 2. the wheel in a fresh virtualenv with $TORCH"
"$("$PY" -c 'import sys; print(sys._base_executable)')" -m venv "$WORK/venv"
V=$WORK/venv/bin/python
"$V" -m pip install -q "$TORCH" numpy setuptools wheel ninja
"$V" -m pip install -q --no-deps "$WORK"/dist/mae_kernels-*.whl
(cd "$WORK/run" && "$V" wheel_smoke.py "$ROOT")

echo "== 3. pip install --no-build-isolation . (not editable) in the same virtualenv"
"$V" -m pip uninstall -q -y mae_kernels
(cd "$WORK/src" && rm -rf build ./*.egg-info mae_kernels/_build_info.py && "$V" -m pip install -q --no-build-isolation --no-deps .)
(cd "$WORK/run" && "$V" wheel_smoke.py "$ROOT")

[ -n "${WHEEL_WORK:-}" ] || rm -rf "$WORK"
echo "test-wheel: OK"
