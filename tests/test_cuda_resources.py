"""The CUDA kernels as built fit their launches, without a GPU: cuobjdump (from PATH or the one Triton bundles)
reads the registers, stack, local and shared memory of every kernel compiled into mae_kernels._C, for every
arch in the build. A kernel must use no stack or local memory (no spills), and registers x the threads the
launcher starts must fit one SM's register file, so that every launch can run at all."""
import pathlib
import re
import shutil
import subprocess

import pytest

import mae_kernels

# Threads per block each launcher starts (csrc/cuda/*.cu); a new kernel must be added here.
THREADS = {
    "random_masking_forward_kernel": 512,    # cuda::kRandomMaskingThreads
    "random_masking_backward_kernel": 512,
    "copy_patches_kernel": 256,              # masked_patchify.cu kThreads
    "unshuffle_forward_kernel": 256,         # unshuffle_with_mask_tokens.cu threads_for(D) <= kThreads
    "unshuffle_backward_rows_kernel": 256,
    "unshuffle_backward_mask_sum_kernel": 256,
    "masked_mse_rows_kernel": 256,           # masked_mse_loss.cu kThreads (also its __launch_bounds__)
}
REGISTERS_PER_SM = 65536
MAX_REGISTERS_PER_THREAD = 255
STATIC_SHARED_LIMIT = 48 * 1024


def _cuobjdump():
    found = shutil.which("cuobjdump")
    if found:
        return found
    import triton

    bundled = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.exists() else None


def _kernels():
    """[(arch, kernel name, mangled name, {REG, STACK, SHARED, LOCAL})] of the built extension."""
    if not mae_kernels._C.build_info()["with_cuda"]:
        pytest.skip("this build of mae_kernels._C has no CUDA kernels (MAE_KERNELS_BUILD_CUDA=0 or no nvcc)")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (neither on PATH nor bundled with triton)")
    out = subprocess.run([tool, "-res-usage", mae_kernels._C.__file__], capture_output=True, text=True, check=True)
    kernels, arch = [], None
    lines = out.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("arch = "):
            arch = line.split("=", 1)[1].strip()
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            usage = {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", lines[i + 1])}
            name = next((k for k in THREADS if k in m.group(1)), m.group(1))
            kernels.append((arch, name, m.group(1), usage))
    return kernels


def _problems(kernels):
    problems = []
    for arch, name, mangled, u in kernels:
        threads = THREADS[name]
        if u["STACK"] or u["LOCAL"]:
            problems.append(f"{arch} {mangled}: {u['STACK']} bytes of stack, {u['LOCAL']} of local memory (spills)")
        if u["REG"] > MAX_REGISTERS_PER_THREAD or u["REG"] * threads > REGISTERS_PER_SM:
            problems.append(f"{arch} {mangled}: {u['REG']} registers x {threads} threads")
        if u["SHARED"] > STATIC_SHARED_LIMIT:
            problems.append(f"{arch} {mangled}: {u['SHARED']} bytes of static shared memory")
    return problems


def test_every_kernel_is_known_and_fits_its_launch():
    kernels = _kernels()
    assert kernels, "cuobjdump found no kernel in mae_kernels._C"
    assert {name for _, name, _, _ in kernels} == set(THREADS), "THREADS must list exactly the built kernels"
    problems = _problems(kernels)
    assert not problems, "\n".join(problems)


def test_problems_are_reported():
    bad = [("sm_90", "random_masking_forward_kernel", "k1", dict(REG=130, STACK=0, SHARED=0, LOCAL=0)),
           ("sm_90", "copy_patches_kernel", "k2", dict(REG=40, STACK=16, SHARED=0, LOCAL=16)),
           ("sm_80", "masked_mse_rows_kernel", "k3", dict(REG=40, STACK=0, SHARED=49153, LOCAL=0)),
           ("sm_80", "masked_mse_rows_kernel", "k4", dict(REG=255, STACK=0, SHARED=49152, LOCAL=0))]
    assert [p.split(":")[0] for p in _problems(bad)] == ["sm_90 k1", "sm_90 k2", "sm_80 k3"]
