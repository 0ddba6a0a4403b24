# Quick start: `make demo` (trains a tiny MAE on the embedded photographs) and `make test` (the test suite).
# Each creates its own virtualenv (.venv) with torch==2.14.1, whose CUDA 13 build lets the CUDA sources
# compile even on a machine without a GPU.
VENV    ?= .venv
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.14.1
# The torchvision release paired with TORCH (each torchvision requires one torch; an unpinned one would move torch).
TORCHVISION ?= torchvision==0.29.1
DEPS    := "$(TORCHVISION)" transformers==5.23.0 triton ninja numpy setuptools wheel pybind11 pytest pytest-benchmark hypothesis scikit-image matplotlib tqdm av
SOURCES := setup.py pyproject.toml $(wildcard python/*.py) $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' -o -name '*.h')
GPU_RESULTS_DIR ?=

.PHONY: venv install build wheel test-wheel test test-isa test-floor demo bench bench-compare gpu-check gpu-compare static-report clean

venv: $(VENV)/.deps
$(VENV)/.deps:
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(DEPS)
	touch $@

# Full (re)install only when build inputs changed.
install: $(VENV)/.installed
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

# Incremental in-place build for development (ninja keeps object files in build/).
build: venv
	$(PY) setup.py -q build_ext --inplace

# A wheel in dist/: the extension built for this venv's torch (recorded in mae_kernels/_build_info.py; CUDA kernels
# as `make install` decides, MAE_KERNELS_BUILD_CUDA=0|1 to choose).
wheel: venv
	$(PY) -m pip wheel --no-build-isolation --no-deps -w dist .

# The wheel and `pip install .` (not editable) each installed in a scratch virtualenv and smoke-tested from outside
# the checkout (python/test_wheel.sh; minutes, so not part of `make test`).
test-wheel: venv
	PY=$(CURDIR)/$(PY) TORCH="$(TORCH)" bash python/test_wheel.sh

# One pytest per core (python/run_tests_parallel.py: chunks of whole files, longest first by python/test_durations.json,
# outputs printed as each ends, one junit XML).
test: install
	mkdir -p build
	$(PY) python/run_tests_parallel.py --workers 2 --junitxml build/test-results.xml

# The CPU paths other machines take: the op suites again with ATen's and oneDNN's kernels capped at AVX2, then with
# no vector kernels at all (a cap above this CPU's ISA changes nothing; each run's header says which ISA ran).
# Triton cases are left out: the interpreter's numpy kernels ignore both settings. torch.compile cases are left
# out of the `default` run: Inductor's C++ code for CPU reductions does not compile without a vector ISA
# (torch 2.14: "at::vec has not been declared"), a torch limitation that says nothing about these ops.
ISA_SUITES := tests/test_random_masking.py tests/test_patchify.py tests/test_masked_patch_embed.py \
              tests/test_unshuffle_with_mask_tokens.py tests/test_masked_mse_loss.py \
              tests/test_nonfinite.py tests/test_properties.py tests/test_layouts.py
# The two runs at once (one per core), each printed when it ends.
test-isa: install
	mkdir -p build
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -k "not triton" $(ISA_SUITES) \
	  > build/test-isa-avx2.log 2>&1 & avx2=$$!; \
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -k "not triton and not compile" $(ISA_SUITES) \
	  > build/test-isa-default.log 2>&1; rc=$$?; wait $$avx2; rc2=$$?; \
	cat build/test-isa-avx2.log build/test-isa-default.log; exit $$((rc || rc2))

# The oldest supported versions (pyproject's floors): torch 2.11 and the triton it brings (3.6), in .venv-floor.
# Built in a copy of the sources (build/floor), so the main in-place build stays as it is. Lean: the image op
# suites, info, autograd without materialised gradients, the Triton AOT check (triton 3.6: the GPU machine's), the
# CUDA resource check, and the Triton interpreter cases of debug mode, large indices and layouts, in one pytest per
# core (python/run_tests_parallel.py).
# (Input validation and the model are torch-version-free Python over the same ops; the video op suites and the
# other hardening suites pass here too but are left to the main leg for CI time.)
# numpy<2.4: triton 3.6's interpreter turns runtime loop bounds into ints with int() of a 1-element array, which
# numpy 2.4 refuses (triton-lang/triton#9171; no loop form avoids it). The compiled kernels do not use numpy.
FLOOR_VENV  ?= .venv-floor
FLOOR_PY    := $(CURDIR)/$(FLOOR_VENV)/bin/python
FLOOR_TORCH ?= torch==2.11.0
FLOOR_DEPS  := ninja "numpy<2.4" setuptools wheel pybind11 pytest pytest-benchmark hypothesis
FLOOR_SRC   := build/floor
FLOOR_TESTS ?= tests/test_random_masking.py tests/test_patchify.py tests/test_append_mask_tokens.py \
               tests/test_masked_patch_embed.py tests/test_masked_mse_loss.py tests/test_unshuffle_with_mask_tokens.py \
               tests/test_backends.py tests/test_cuda_resources.py tests/test_autograd_grads.py
# The AOT check (minutes) is in the second, shorter selection.
FLOOR_TRITON_TESTS ?= tests/test_triton_compile.py tests/test_debug_mode.py tests/test_large_index.py tests/test_layouts.py

$(FLOOR_VENV)/.deps:
	python3 -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install -q --upgrade pip
	$(FLOOR_PY) -m pip install -q "$(FLOOR_TORCH)" $(FLOOR_DEPS)
	touch $@

test-floor: $(FLOOR_VENV)/.deps
	mkdir -p $(FLOOR_SRC)
	tar -c --exclude=./build --exclude='./.venv*' --exclude=./.git --exclude=__pycache__ --exclude='*.so' \
	  --exclude=./mae_kernels/_build_info.py --exclude=./runs . | tar -x -C $(FLOOR_SRC)
	cd $(FLOOR_SRC) && $(FLOOR_PY) setup.py -q build_ext --inplace
	cd $(FLOOR_SRC) && TRITON_INTERPRET=1 $(FLOOR_PY) -m mae_kernels info
	cd $(FLOOR_SRC) && $(FLOOR_PY) python/run_tests_parallel.py --junitxml ../floor-ops.xml -- $(FLOOR_TESTS)
	cd $(FLOOR_SRC) && $(FLOOR_PY) python/run_tests_parallel.py --junitxml ../floor-triton.xml -- \
	  -k triton $(FLOOR_TRITON_TESTS)

# Trains the tiny MAE on the embedded photographs; writes runs/demo/{reconstruction,loss_curve}.png.
demo: install
	$(PY) -m mae_kernels pretrain

bench: install
	$(PY) -m mae_kernels bench

# Fails on a median regression past 10% against the stored per-device baseline (bench/baselines/).
bench-compare: install
	$(PY) -m pytest bench -q -p no:randomly --benchmark-enable --benchmark-only \
	  --benchmark-storage=file://bench/baselines --benchmark-compare --benchmark-compare-fail=median:10%

# On a GPU machine with torch, triton and nvcc but no package index (uses the system python).
gpu-check:
	bash python/gpu_check.sh "$(GPU_RESULTS_DIR)"

# Second GPU call (after gpu-check): the comparisons with torch.compile, whose compilations take minutes: the
# whole training step with all four providers (ViT-B/16 and VideoMAE-B, then ViT-L/16 as time allows) and every
# op in `full` mode.
gpu-compare:
	TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 python3 setup.py -q build_ext --inplace
	export TRITON_INTERPRET=0; rc=0; \
	timeout -s INT 300 python3 -m mae_kernels bench-step --configs base,videomae-b,large --out bench/results/compare \
	  --time-budget 230 --note "make gpu-compare" || rc=1; \
	timeout -s INT 230 python3 -m mae_kernels bench --providers reference,compile,triton,cuda --modes full \
	  --out bench/results/compare --note "make gpu-compare" || rc=1; \
	if [ -n "$(GPU_RESULTS_DIR)" ]; then mkdir -p "$(GPU_RESULTS_DIR)" && cp bench/results/compare/* "$(GPU_RESULTS_DIR)/"; fi; \
	exit $$rc

# The static per-kernel report (issue 13; estimates, no GPU): bench/results/static_report.{md,json} from an sm_90
# build (SASS), the Triton kernels compiled for sm_90 and the launches counted in the CUDA emulator. Not in CI.
static-report: venv
	TORCH_CUDA_ARCH_LIST=9.0 $(PY) setup.py -q build_ext --inplace
	TRITON_INTERPRET=0 nice $(PY) python/static_report.py

clean:
	rm -rf build dist *.egg-info mae_kernels/_C*.so mae_kernels/_build_info.py $(VENV) $(FLOOR_VENV)
