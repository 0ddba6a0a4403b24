"""Every Triton kernel compiles for real GPUs (sm_90 H100, sm_80 A100) with exactly what its launcher passes at
the benchmark shapes, and fits: shared memory, registers x threads, grid limits (no GPU needed: triton.compile
with a GPUTarget and the ptxas bundled with triton). The interpreter used by the rest of the CPU suite accepts
kernels that the compiler rejects (e.g. a non-constexpr global), so this is the only CPU-side check that the
kernels build. Runs mae_kernels.triton.compile_check in a subprocess with TRITON_INTERPRET=0; its report
(shared memory, registers, spills per launch) is printed on failure and with `pytest -s`."""
import os
import subprocess
import sys

import pytest

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
