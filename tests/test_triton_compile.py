"""Every Triton kernel compiles for real GPUs (sm_90 H100, sm_80 A100) with exactly what its launcher passes at
the benchmark shapes, and fits: shared memory, registers x threads, grid limits (no GPU needed: triton.compile
with a GPUTarget and the ptxas bundled with triton). The interpreter used by the rest of the CPU suite accepts
kernels that the compiler rejects (e.g. a non-constexpr global), so this is the only CPU-side check that the
kernels build. Runs mae_kernels.triton.compile_check in a subprocess with TRITON_INTERPRET=0; its report
(shared memory, registers, spills per launch) is printed on failure and with `pytest -s`. It also checks facts of
the compiled code that decide speed (compile_check.check_code: runtime integer division in index math, 16-byte
copies, GEMM operand tiles loaded by cp.async as wide as their alignment allows (masked_patch_embed: 4-byte pixel
pairs at p=14 in 16-bit, 16 bytes at p=16), blocks per SM, approximate division); test_code_checks_catch_regressions
shows that each one fails on a kernel with that regression."""
import json
import os
import subprocess
import sys

import pytest

from mae_kernels.triton import compile_check
from mae_kernels.triton.compile_check import MODULES

triton = pytest.importorskip("triton", reason="triton is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
# .ci/run checks sm_90 only (the compilations are most of this file's minutes on 2 cores).
ARCHS = os.environ.get("MAE_KERNELS_COMPILE_CHECK_ARCHS", "90 80").split()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PTXAS), reason=f"no ptxas bundled with triton at {PTXAS}")
@pytest.mark.parametrize("module", MODULES)
def test_triton_kernels_compile_for_sm90_and_sm80(module):
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "mae_kernels.triton.compile_check", "--arch", *ARCHS,
                           "--module", module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(proc.stdout[-20000:], proc.stderr[-5000:])
    assert proc.returncode == 0, f"{module}: Triton kernels fail to compile or do not fit:\n" + "\n".join(
        line for line in proc.stdout.splitlines() if not line.startswith("ok ")) + proc.stderr[-5000:]
    assert " 0 failed" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PTXAS), reason=f"no ptxas bundled with triton at {PTXAS}")
def test_code_checks_catch_regressions():
    """Each speed check of compile_check.check_code fails on a kernel with that regression (compiled for sm_90
    by tests/triton_compile_selftest.py), naming the kernel and the reason."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "triton_compile_selftest.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    problems = json.loads(proc.stdout.splitlines()[-1])
    assert problems.pop("random_masking variants over seeds and offsets") == 1, \
        "random_masking's seed / offset are specialized again (do_not_specialize): a recompile as the offset moves"
    division = "runtime integer division in per-element index math"
    expected = {  # kernel: (the check that must fail, the detail its message must give)
        "_div_index_kernel": (division, "arith.divsi on tensor<1024xi32> at triton_compile_selftest.py"),
        "_div_in_loop_kernel": (division, "arith.divsi on i32 in a loop at triton_compile_selftest.py"),
        "_approx_div_kernel": ("approximate", "div.full.f32 at triton_compile_selftest.py"),
        "_narrow_copy_kernel": ("narrower than the 16 B", "st.global.v2.b32 at triton_compile_selftest.py"),
        "_fat_kernel": ("fewer than 2", "1 block(s) of 1024 threads per SM on sm_90"),
        "_nested_index_gemm_kernel": ("narrower than the 4 B its rows' alignment allows",
                                      "pixels (A) tile loaded 2 B at a time (ld.global.b16 at triton_compile_selftest"),
    }
    if compile_check._triton_release() < compile_check.WIDTH_CHECKED_FROM:  # reported, not failed, there
        expected.pop("_narrow_copy_kernel")
        assert not problems.pop("_narrow_copy_kernel"), "narrow accesses fail only from WIDTH_CHECKED_FROM on"
    for name, (check, detail) in expected.items():
        got = problems[name]
        assert any(p.startswith(name + ": ") and check in p and detail in p for p in got), \
            f"{name}: expected '{check}' with '{detail}' in {got}"
        others = [p for p in got if check not in p]
        assert not others, f"{name}: unexpected problems {others}"


def test_blocks_per_sm():
    from mae_kernels.triton.compile_check import blocks_per_sm

    assert blocks_per_sm(90, 32, 128, 0) == 16  # 4 warps x 4096 registers: 16 blocks (64 warps)
    assert blocks_per_sm(90, 128, 512, 0) == 1  # the register file exactly
    assert blocks_per_sm(80, 64, 256, 0) == 4
    assert blocks_per_sm(80, 33, 256, 0) == 6  # 33 registers allocate as 40 (units of 256 per warp)
    assert blocks_per_sm(80, 32, 128, 100 * 1024) == 1  # shared memory: 2 x (100 KiB + 1 KiB) > 164 KiB
    assert blocks_per_sm(90, 32, 128, 100 * 1024) == 2  # 228 KiB on sm_90
