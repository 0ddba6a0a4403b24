"""The CUDA sources, tested without a GPU: tests/cuda_emulation compiles csrc/cuda as C++ against a CUDA emulator
(every thread a fiber; barriers, warp shuffles, launch limits and shared-memory races checked) and loads it in
place of the CPU kernels; the `cpu` backend's tests then run in a subprocess against the emulated CUDA code.

The emulator's own checks are tested first, on kernels with known bugs (tests/cuda_emulation/selftest.cpp)."""
import ctypes
import os
import pathlib
import re
import subprocess
import sys

import pytest

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
EMULATION = TESTS / "cuda_emulation"

# The whole suite (less the files that run no compiled op in this process) against the emulated kernels in forward
# thread order; the op suites again in reverse order under AddressSanitizer (results that depend on the order
# reveal races in global memory). The hardening suites (properties, determinism, NaN/Inf, validation, debug mode)
# run their op cases in the first run only: they launch no kernel the op suites do not.
_OP_SUITES = ["test_random_masking.py", "test_tube_mask_indices.py", "test_mask_to_indices.py", "test_patchify.py",
              "test_masked_patch_embed.py", "test_video_patch.py", "test_unshuffle_with_mask_tokens.py",
              "test_append_mask_tokens.py", "test_masked_mse_loss.py", "test_video_loss.py", "test_layouts.py",
              "test_masked_patch_embed_bias_grad.py"]
_WHOLE_SUITE = ["."]
_NOT_EMULATED = ["test_cuda_emulation.py", "test_cuda_emulation_asan.py", "test_triton_compile.py", "test_cuda_resources.py", "test_ddp.py",
                 "test_run_tests_parallel.py", "test_bench_step.py", "test_benchmark_harness.py",
                 "test_build_config.py",
                 # whole models and training runs of the ops the op suites already cover, and suites that rerun
                 # the op cases in subprocesses (thread counts, ISAs) or for CPU allocations: minutes in the emulator
                 # for no kernel path the op suites miss
                 "test_convergence.py", "test_official.py", "test_pretrain.py", "test_video_model.py",
                 "test_model.py", "test_transformers.py", "test_decoder_masking.py", "test_mask_units.py",
                 "test_determinism.py", "test_memory.py", "test_transformers_videomae.py", "test_video_demo.py",
                 "test_static_report.py"]
_ASAN_OPTIONS = "detect_leaks=0:detect_stack_use_after_return=0"  # fibers switch stacks: no fake stacks


def _libasan():
    """Paths to preload for AddressSanitizer in a Python process (libstdc++ too: ASan must see its __cxa_throw)."""
    libs = [subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
            for name in ("libasan.so", "libstdc++.so.6")]
    return " ".join(libs) if all(os.path.isfile(p) for p in libs) else None


def _compile_selftest(out_dir, *flags):
    from cuda_emulation import build

    (out_dir / "selftest.cpp").write_text(build.rewrite((EMULATION / "selftest.cpp").read_text()))
    proc = subprocess.run(["g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-w", *flags, f"-I{EMULATION}",
                           str(out_dir / "selftest.cpp"), "-o", str(out_dir / "selftest.so")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out_dir / "selftest.so"


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    lib = ctypes.CDLL(str(_compile_selftest(tmp_path_factory.mktemp("cuda_emulation"))))
    lib.run_case.restype = ctypes.c_char_p
    lib.run_case.argtypes = [ctypes.c_char_p]
    return lambda name, order="forward": _run_case(lib, name, order)


def _run_case(lib, name, order):
    previous = os.environ.get("MAE_KERNELS_EMU_ORDER")
    os.environ["MAE_KERNELS_EMU_ORDER"] = order
    try:
        return lib.run_case(name.encode()).decode()
    finally:
        if previous is None:
            del os.environ["MAE_KERNELS_EMU_ORDER"]
        else:
            os.environ["MAE_KERNELS_EMU_ORDER"] = previous


@pytest.mark.parametrize("case,error", [
    ("race", "shared-memory race (read after write)"),
    ("write_after_read", "shared-memory race (write after read)"),
    ("divergent_barrier", "divergent __syncthreads()"),
    ("shuffle_against_barrier", "deadlock"),
    ("partial_warp_shuffle", "a warp shuffle's mask names an exited lane"),
    ("shared_out_of_bounds", "shared-memory index 64 out of bounds [0, 64)"),
    ("uninitialised_read", "read of uninitialised shared memory"),
    ("above_launch_bounds", "launch of 256 threads per block above the kernel's __launch_bounds__(128)"),
    ("empty_grid", "invalid configuration"),
    ("block_too_large", "invalid configuration"),
    ("dynamic_shared_over_default", "above the kernel's limit of 49152"),
    ("dynamic_shared_too_small", "shared-memory index 32 out of bounds [0, 32)"),
])
def test_emulator_catches(selftest, case, error):
    assert error in selftest(case)


@pytest.mark.parametrize("case", ["no_race", "block_sum", "dynamic_shared_opt_in", "within_launch_bounds"])
def test_emulator_passes_correct_kernels(selftest, case):
    assert selftest(case) == ""


def test_thread_order_changes_which_write_wins(selftest):
    assert selftest("global_last_writer", "forward") == "last writer 63"
    assert selftest("global_last_writer", "reverse") == "last writer 0"
    shuffled = selftest("global_last_writer", "shuffle")  # seeded: the same order at every launch
    assert shuffled == selftest("global_last_writer", "shuffle") and shuffled != "last writer 63"
    assert "MAE_KERNELS_EMU_ORDER must be forward, reverse or shuffle, got sideways" in selftest("no_race", "sideways")


def test_asan_catches_global_out_of_bounds(tmp_path):
    """The emulator cannot see global-memory bounds; AddressSanitizer (MAE_KERNELS_EMU_ASAN=1) does."""
    preload = _libasan()
    if preload is None:
        pytest.skip("g++ has no libasan here: the emulated suite runs without AddressSanitizer")
    lib = _compile_selftest(tmp_path, "-fsanitize=address", "-fno-omit-frame-pointer")
    env = dict(os.environ, LD_PRELOAD=preload, ASAN_OPTIONS=_ASAN_OPTIONS)
    script = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.run_case.restype = ctypes.c_char_p; "
              "print(lib.run_case(sys.argv[2].encode()).decode() or 'ok')")
    ok = subprocess.run([sys.executable, "-c", script, str(lib), "block_sum"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr[-3000:]
    bad = subprocess.run([sys.executable, "-c", script, str(lib), "global_out_of_bounds"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "heap-buffer-overflow" in bad.stderr, bad.stderr[-3000:]


@pytest.mark.slow
def test_cuda_sources_pass_the_cpu_backend_tests(tmp_path):
    """The whole suite in forward thread order (the reverse-order ASan run of the op suites is
    tests/test_cuda_emulation_asan.py: a file of its own, so that make test runs the two side by side)."""
    run_emulated_suite("forward", False, _WHOLE_SUITE, tmp_path)


_LAUNCH_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from cuda_emulation import build
build.load()
import torch
import mae_kernels
torch.manual_seed(0)
# unshuffle_with_mask_tokens backward at the decoder's D = 512
x = torch.randn(2, 1 + 1, 512, requires_grad=True)
mt = torch.randn(1, 1, 512, requires_grad=True)
out = mae_kernels.unshuffle_with_mask_tokens(x, mt, torch.argsort(torch.rand(2, 4), dim=1))
torch.autograd.grad(out, (x, mt), torch.randn_like(out))
# one masked_mse_loss forward with a gradient to store, MAE's layout (pred of the removed patches, a view)
imgs = torch.randn(2, 3, 8, 8)
ids = torch.argsort(torch.rand(2, 4), dim=1)
mask = torch.zeros(2, 4).scatter_(1, ids[:, 1:], 1.0)
pred = torch.randn(2, 4, 48, requires_grad=True)
mae_kernels.masked_mse_loss(pred[:, 1:, :], imgs, mask, 4, ids_shuffle=ids)
"""


def _emulator_table(path):
    """{kernel name without parameters: value} of an emulator stats file ("value<TAB>kernel" lines)."""
    table = {}
    for line in path.read_text().splitlines():
        value, name = line.split("\t", 1)
        key = name.split("(")[0].replace("void ", "").split("<")[0].split("::")[-1]
        table[key] = table.get(key, 0) + int(value)
    return table


def test_emulated_launch_counts_and_grids(tmp_path):
    """Issue 13: the CUDA launchers' parallelism and launch counts, read from the emulator (the library the
    emulated suites build; after test_cuda_sources_pass_the_cpu_backend_tests in this file, only a load): the
    unshuffle backward's mask-token sum runs on D / 32 blocks (16 at D = 512; 256-thread blocks gave 2), and a
    masked_mse_loss forward is 3 kernels (scale, rows, total), one launch each."""
    stats, grids = tmp_path / "stats.tsv", tmp_path / "grids.tsv"
    env = dict(os.environ, MAE_KERNELS_CUDA_EMULATION="1", MAE_KERNELS_EMU_STATS=str(stats),
               MAE_KERNELS_EMU_GRIDS=str(grids))
    env.pop("MAE_KERNELS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", _LAUNCH_SCRIPT, str(TESTS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    counts, blocks = _emulator_table(stats), _emulator_table(grids)
    assert blocks.get("unshuffle_backward_mask_sum_kernel") == 16, blocks
    mse = {k: v for k, v in counts.items() if k.startswith("masked_mse")}
    assert mse == {"masked_mse_scale_kernel": 1, "masked_mse_rows_kernel": 1, "masked_mse_total_kernel": 1}, counts


def run_emulated_suite(order, asan, suites, tmp_path):
    """pytest on `suites` against the emulated CUDA kernels (thread order `order`, AddressSanitizer when asan): every
    test passes and every __global__ kernel of csrc/cuda/kernels is launched."""
    env = dict(os.environ, MAE_KERNELS_CUDA_EMULATION="1", MAE_KERNELS_EMU_ORDER=order, TRITON_INTERPRET="1")
    env.pop("MAE_KERNELS_BACKEND", None)
    # This checkout's mae_kernels (pytest runs from tests/), not whichever one is installed (another worktree's).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if asan:
        preload = _libasan()
        if preload is None:
            pytest.skip("g++ has no libasan here: no AddressSanitizer run of the emulated kernels")
        env.update(MAE_KERNELS_EMU_ASAN="1", LD_PRELOAD=preload, ASAN_OPTIONS=_ASAN_OPTIONS)
    stats = tmp_path / "launches.tsv"
    env["MAE_KERNELS_EMU_STATS"] = str(stats)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           *[f"--ignore={f}" for f in _NOT_EMULATED], *suites]
    proc = subprocess.run(cmd, cwd=TESTS, env=env, capture_output=True, text=True, timeout=3000)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and " passed" in summary and "failed" not in summary, (
        f"emulated CUDA run ({order}{', ASan' if asan else ''}) failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    # The emulated kernels really ran (not the CPU ones), every kernel of csrc/cuda/kernels.
    launched = stats.read_text() if stats.exists() else ""
    missing = [k for k in _cuda_kernels() if f"{k}<" not in launched and f"{k}(" not in launched]
    assert not missing, f"kernels never launched in the emulated run: {missing}\n{launched}"


def _cuda_kernels():
    names = []
    for header in sorted((ROOT / "csrc" / "cuda" / "kernels").glob("*.cuh")):
        names += re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", header.read_text())
    assert names, "no __global__ kernel found in csrc/cuda/kernels"
    return names
