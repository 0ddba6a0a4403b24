"""Determinism: the same inputs (and the same seed) give bit-identical outputs and gradients run after run on
every backend, in the default mode and under torch.use_deterministic_algorithms(True); no kernel uses atomics
(audited below: the test fails when one appears, so that it gets documented and a deterministic path)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import mae_kernels
import op_cases as oc

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKENDS = oc.backend_params()
GPU_BACKENDS = oc.backend_params(cpu=(), gpu=("cuda", "triton"))
# Ops whose CUDA paths call cuBLAS (masked_patch_embed's GEMM on the cuda backend, its backward's matmuls on both).
CUBLAS_OPS = ("masked_patch_embed", "random_masked_patch_embed")


def cases(device):
    return oc.all_cases() + [oc.unshuffle_case(dtype=torch.bfloat16), oc.masked_patch_embed_case(
        dtype=torch.bfloat16, pos="grad", pos_dtype=torch.float32)] if device == "cpu" else oc.gpu_cases()


def _ids(cs):
    return [f"{c.name}-{i}" for i, c in enumerate(cs)]


CPU_CASES = cases("cpu")
GPU_CASES = list(range(len(cases("cuda"))))  # indices: the GPU cases are built inside the test


@pytest.fixture
def deterministic_mode():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("backend,device", oc.backend_params(gpu=()))
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids(CPU_CASES))
def test_run_twice_bit_identical(backend, device, case):
    first = oc.run(case, backend)
    oc.assert_bitwise_equal(case, oc.run(case, backend), first)


@pytest.mark.parametrize("backend,device", GPU_BACKENDS)
@pytest.mark.parametrize("index", GPU_CASES)
def test_gpu_run_twice_bit_identical(backend, device, index):
    case = cases("cuda")[index].to("cuda")
    first = oc.run(case, backend)
    for _ in range(3):
        oc.assert_bitwise_equal(case, oc.run(case, backend), first)


@pytest.mark.parametrize("backend,device", oc.backend_params(gpu=()))
@pytest.mark.parametrize("case", CPU_CASES, ids=_ids(CPU_CASES))
def test_deterministic_mode_gives_the_default_results(backend, device, case, deterministic_mode):
    """Under use_deterministic_algorithms(True) the ops run (no alert) and give the default mode's results bit for
    bit: no op has a separate deterministic path because none uses atomics. (Deterministic mode also fills
    uninitialised memory with NaN, so an output element a kernel forgets to write would show here.)"""
    got = oc.run(case, backend)
    torch.use_deterministic_algorithms(False)
    want = oc.run(case, backend)
    oc.assert_bitwise_equal(case, got, want)


def _cublas_deterministic():
    return os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")


@pytest.mark.parametrize("backend,device", GPU_BACKENDS)
@pytest.mark.parametrize("index", GPU_CASES)
def test_gpu_deterministic_mode(backend, device, index, deterministic_mode):
    """Under deterministic mode every op runs twice to the same bits, and the ops without cuBLAS give the
    default mode's results. The cuBLAS ones follow torch's rule for any matmul: older torch releases raise
    unless CUBLAS_WORKSPACE_CONFIG=:4096:8 (or :16:8) was set before the process started; newer ones (per-stream
    cuBLAS workspaces, pytorch/pytorch#161749) need nothing. test_gpu_cublas_ops_under_deterministic_mode runs
    them with the variable set."""
    case = cases("cuda")[index].to("cuda")
    try:
        got = oc.run(case, backend)
    except RuntimeError as e:
        assert case.name in CUBLAS_OPS and "CUBLAS_WORKSPACE_CONFIG" in str(e) and not _cublas_deterministic(), e
        return
    oc.assert_bitwise_equal(case, oc.run(case, backend), got)
    if case.name not in CUBLAS_OPS:  # cuBLAS may pick other algorithms in deterministic mode
        torch.use_deterministic_algorithms(False)
        oc.assert_bitwise_equal(case, got, oc.run(case, backend))


_CUBLAS_SCRIPT = """
import torch, op_cases as oc
torch.use_deterministic_algorithms(True)
for backend in ("cuda", "triton"):
    for case in (oc.masked_patch_embed_case(N=32, C=3, h=14, w=14, p=16, K=49, D=256, pos="grad"),
                 oc.random_masked_patch_embed_case(N=16, C=3, h=14, w=14, p=16, D=256, ratio=0.75)):
        case = case.to("cuda")
        first = oc.run(case, backend)
        for _ in range(3):
            oc.assert_bitwise_equal(case, oc.run(case, backend), first)
        oc.assert_results_equal(case, first, oc.run(case.to("cpu"), "reference"), want64=oc.run64(case.to("cpu")))
print("ok")
"""


@pytest.mark.gpu
def test_gpu_cublas_ops_under_deterministic_mode():
    """masked_patch_embed and random_masked_patch_embed (forward and backward) under deterministic mode with
    CUBLAS_WORKSPACE_CONFIG=:4096:8 (a fresh process: torch reads the variable once)."""
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _CUBLAS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


# ------------------------------------------------------------------------------------------- seeded masks
def _masks(backend, device, fn, **kwargs):
    N, L, D = (2, 64, 4) if device == "cpu" else (16, 196, 8)  # the Triton interpreter sorts slowly
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, L, D, generator=g).to(device)
    with mae_kernels.use_backend(backend):
        if fn == "random_masking":
            return mae_kernels.random_masking(x, 0.75, **kwargs)
        if fn == "random_mask_indices":
            return mae_kernels.random_mask_indices(N, L, 0.75, device=torch.device(device), **kwargs)
        if fn == "tube_mask_indices":
            return mae_kernels.tube_mask_indices(N, 4, L // 4, 0.75, device=torch.device(device), **kwargs)
        imgs = x.reshape(N, 1, 2 * L, D // 2)
        w, b = torch.randn(6, 1, 2, 2, generator=g).to(device), torch.zeros(6, device=device)
        return mae_kernels.random_masked_patch_embed(imgs, w, b, None, 0.75, **kwargs)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("fn", ["random_masking", "random_mask_indices", "tube_mask_indices", "random_masked_patch_embed"])
def test_same_seed_same_masks(backend, device, fn):
    """torch.manual_seed (or a seeded generator) reproduces the masks; successive calls draw fresh ones."""
    torch.manual_seed(123)
    first, second = _masks(backend, device, fn), _masks(backend, device, fn)
    torch.manual_seed(123)
    again = _masks(backend, device, fn)
    for a, b in zip(first, again):
        assert torch.equal(a, b), "the same seed gave other results"
    assert not all(torch.equal(a, b) for a, b in zip(first, second) if a.dtype == torch.int64), \
        "two successive calls drew the same mask"
    torch.manual_seed(124)
    other = _masks(backend, device, fn)
    assert not all(torch.equal(a, b) for a, b in zip(first, other) if a.dtype == torch.int64), \
        "another seed gave the same mask"
    gen = torch.Generator(device=device)
    g1 = _masks(backend, device, fn, generator=gen.manual_seed(5))
    g2 = _masks(backend, device, fn, generator=gen.manual_seed(5))
    for a, b in zip(g1, g2):
        assert torch.equal(a, b), "the same generator seed gave other results"


# ----------------------------------------------------------------------------------------------- the audit
# Order-dependent accumulation: CUDA/Triton atomics, and torch ops that use atomics on CUDA in the default mode.
_ATOMICS = re.compile(r"\batomic\w*\s*[(<]|\.(index_add|scatter_add|scatter_reduce|index_reduce|put)_?\(|"
                      r"accumulate\s*=\s*True|\bred\.global")


def _sources():
    yield from sorted((ROOT / "csrc" / "cuda").rglob("*.cu*"))
    yield from sorted((ROOT / "mae_kernels" / "triton").glob("*.py"))
    yield from sorted((ROOT / "mae_kernels" / "ops").glob("*.py"))


def test_no_atomics_in_kernels_or_backward_code():
    """Every CUDA kernel, Triton kernel and op (forward and backward) accumulates in a fixed order: reductions
    are block-local with one partial per block, summed by a second pass or by torch. An atomic (or a torch op
    that uses atomics on CUDA, such as index_add) makes results order-dependent: document it in the README's
    Guarantees with a deterministic path under torch.are_deterministic_algorithms_enabled(), then list it here."""
    documented = {}  # file name -> why its atomics are fine
    found = {}
    for path in _sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//")[0] if path.suffix in (".cu", ".cuh") else line.split("#")[0]
            if _ATOMICS.search(code):
                found.setdefault(path.name, []).append(f"{number}: {line.strip()}")
    undocumented = {k: v for k, v in found.items() if k not in documented}
    assert not undocumented, f"order-dependent accumulation in {undocumented}"
    assert len(list(_sources())) >= 15, "the audit found too few sources: were they moved?"


# The cpu backend's own C++ kernels (compiled for baseline x86-64: no -march, no intrinsics; every sum in an order
# fixed by the shapes) give the same bits with any thread count and whatever vector ISA ATen picks. Ops whose cpu
# path goes through ATen's or MKL's GEMMs and reductions (the patch embedding's GEMM; patch_stats and
# denormalize_pred, which are the reference maths) are deterministic run after run on one machine and thread
# count, as any torch matmul, but their last bits may change with either.
GEMM_OR_ATEN = ("masked_patch_embed", "random_masked_patch_embed", "patch_stats", "denormalize_pred")


def _own_kernel_cases():
    """Cases large enough that every parallel_for splits over 2 threads and the loss sums many blocks of 1024
    per-row partials (csrc/cpu/masked_mse_loss.cpp fixed_order_sum)."""
    big = dict(N=3, C=3, h=24, w=30, p=2)
    return [c for c in oc.all_cases() if c.name not in GEMM_OR_ATEN] + [
        oc.random_masking_case(N=16, L=700, D=24), oc.masked_patchify_case(**big, K=180),
        oc.unshuffle_case(N=8, L=300, K=75, D=300, dtype=torch.bfloat16),
        oc.masked_mse_loss_case(**big, K=180), oc.masked_mse_loss_case(**big, K=180, norm=False),
        oc.masked_mse_loss_case(**big, K=180, removed_only=True, dtype=torch.bfloat16),
        # 36864 rows: at::sum of that many partials splits over threads (its grain is 32768) and changes bits
        oc.masked_mse_loss_case(N=9, C=2, h=64, w=64, p=1, K=1024)]


OWN_CASES = _own_kernel_cases()


@pytest.fixture
def threads():
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.mark.parametrize("case", OWN_CASES, ids=_ids(OWN_CASES))
def test_cpu_backend_same_bits_with_1_and_2_threads(case, threads):
    threads(1)
    one = oc.run(case, "cpu")
    threads(2)
    oc.assert_bitwise_equal(case, oc.run(case, "cpu"), one)


_ISA_SCRIPT = """
import dataclasses, sys, torch
sys.path.insert(0, sys.argv[1])
import op_cases, test_determinism
inputs = torch.load(sys.argv[2], weights_only=False)
out = [op_cases.run(dataclasses.replace(c, inputs=i), "cpu") for c, i in zip(test_determinism.OWN_CASES, inputs)]
torch.save((torch.backends.cpu.get_cpu_capability(), out), sys.argv[3])
"""


def test_cpu_backend_same_bits_whatever_aten_isa(tmp_path):
    """ATEN_CPU_CAPABILITY=default (no vector kernels) gives the native ISA's bits on every op the cpu backend
    computes itself (the ISA actually used is recorded: on a machine without AVX2 both runs are `default`)."""
    inputs = tmp_path / "inputs.pt"  # made here once: torch.randn itself draws other numbers on other ISAs
    torch.save([c.inputs for c in OWN_CASES], inputs)
    runs = {}
    for isa in ("native", "default"):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        if isa == "default":
            env["ATEN_CPU_CAPABILITY"] = "default"
        path = tmp_path / f"{isa}.pt"
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT, str(ROOT / "tests"), str(inputs), str(path)], env=env, check=True,
                       cwd=ROOT)
        runs[isa] = torch.load(path)
    print("ATen ISA:", runs["native"][0], "vs", runs["default"][0])
    assert runs["default"][0] == "DEFAULT"
    for case, got, want in zip(OWN_CASES, runs["default"][1], runs["native"][1]):
        oc.assert_bitwise_equal(case, got, want)
