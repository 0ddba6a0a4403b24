"""The CUDA kernels as built fit their launches and compile to the code they were written for, without a GPU:
cuobjdump (from PATH or the one Triton bundles) reads every kernel compiled into mae_kernels._C, for every arch in
the build.
- Resources (-res-usage): no stack or local memory (no spills); registers and shared memory let two blocks of the
  launcher's size share one SM (latency hiding needs more than one block per SM).
- Code (-sass): no runtime integer division (index math divides with csrc/fast_divmod.h); no fast math (no
  flush-to-zero, no approximate square root or division); the raw-word copies move 16 bytes per access when the
  launcher picks 16-byte words.
Each problem names the arch, the kernel and the fact that regressed."""
import re

import pytest

import mae_kernels
from mae_kernels.triton import compile_check as cc

# Threads per block each launcher starts (csrc/cuda/*.cu); a new kernel must be added here.
THREADS = {
    "masked_mse_scale_kernel": 512,          # masked_mse_loss.cu kTotalThreads (one block)
    "masked_mse_total_kernel": 512,
    "unshuffle_backward_chunks_kernel": 256,
    "random_masking_forward_kernel": 512,    # cuda::kRandomMaskingThreads
    "random_masking_backward_kernel": 512,
    "copy_patches_kernel": 256,              # masked_patchify.cu kThreads
    "copy_patches_vec_kernel": 256,          # masked_patchify.cu kThreads (the 16-byte path)
    "scatter_bands_vec_kernel": 256,         # masked_patchify.cu kThreads (the one-pass masked scatter)
    "copy_patches_cast_vec_kernel": 256,     # masked_patchify.cu kThreads (fp32 -> fp16 / bf16, 16-byte path)
    "unshuffle_forward_kernel": 256,         # unshuffle_with_mask_tokens.cu threads_for(D) <= kThreads
    "unshuffle_backward_rows_kernel": 256,
    "unshuffle_backward_mask_sum_kernel": 32,  # cuda::kMaskSumThreads (also its __launch_bounds__)
    "append_mask_tokens_kernel": 256,        # append_mask_tokens.cu kThreads
    "masked_mse_rows_kernel": 256,           # masked_mse_loss.cu kThreads (also its __launch_bounds__)
    "mask_to_indices_kernel": 256,           # cuda::kMaskToIndicesThreads (also its __launch_bounds__)
    "tube_mask_indices_kernel": 512,         # cuda::kTubeThreads (also its __launch_bounds__)
    "pos_embed_epilogue_kernel": 256,        # cuda::kPosEpilogueThreads (also its __launch_bounds__)
    "bias_grad_rows_kernel": 256,            # cuda::kBiasGradThreads (at most; also its __launch_bounds__)
    "bias_grad_finish_kernel": 256,          # cuda::kBiasGradThreads (32 x 8)
}
# Largest dynamic shared memory a launcher asks for (bytes): the sort keys of L = kRandomMaskingMaxL = 8192
# tokens, int64; the backward's int32 ranks.
DYNAMIC_SHARED = {"random_masking_forward_kernel": 8192 * 8, "random_masking_backward_kernel": 8192 * 4,
                  "tube_mask_indices_kernel": (4096 + 4096 + 512) * 8,  # keys, ranks, scan at hw = kTubeMaxHW
                  "scatter_bands_vec_kernel": 48 * 1024}  # a band's patch map: masked_patchify.cu's bound
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256                   # registers are allocated per warp in units of 256
MAX_REGISTERS_PER_THREAD = 255
MAX_THREADS_PER_SM = 2048             # sm_80 and sm_90
SHARED_PER_SM = {"sm_80": 164 * 1024, "sm_86": 100 * 1024, "sm_89": 100 * 1024, "sm_90": 228 * 1024}
SHARED_RESERVED_PER_BLOCK = 1024
STATIC_SHARED_LIMIT = 48 * 1024
BLOCKS_PER_SM = 2


def _cuobjdump_of_extension(flag):
    """cuobjdump `flag` over mae_kernels._C (skips when the build has no CUDA kernels or there is no cuobjdump)."""
    if not mae_kernels._C.build_info()["with_cuda"]:
        pytest.skip("this build of mae_kernels._C has no CUDA kernels (MAE_KERNELS_BUILD_CUDA=0 or no nvcc)")
    if cc.cuobjdump_path() is None:
        pytest.skip("no cuobjdump (neither on PATH nor bundled with triton)")
    return cc.cuobjdump([flag, mae_kernels._C.__file__])


def _kernels():
    """[(arch, kernel name, mangled name, {REG, STACK, SHARED, LOCAL})] of the built extension."""
    return [(arch, next((k for k in THREADS if k in mangled), mangled), mangled, usage)
            for (arch, mangled), usage in cc.parse_res_usage(_cuobjdump_of_extension("-res-usage")).items()]


def _blocks_per_sm(arch, name, u):
    """How many blocks of the launcher's size fit one SM by registers, shared memory and threads."""
    threads = THREADS[name]
    regs_per_warp = -(-u["REG"] * 32 // REGISTER_UNIT) * REGISTER_UNIT
    by_regs = REGISTERS_PER_SM // (regs_per_warp * -(-threads // 32))
    shared = u["SHARED"] + DYNAMIC_SHARED.get(name, 0) + SHARED_RESERVED_PER_BLOCK
    by_shared = SHARED_PER_SM.get(arch, 100 * 1024) // shared
    return min(by_regs, by_shared, MAX_THREADS_PER_SM // threads)


def _problems(kernels):
    problems = []
    for arch, name, mangled, u in kernels:
        if u["STACK"] or u["LOCAL"]:
            problems.append(f"{arch} {mangled}: {u['STACK']} bytes of stack, {u['LOCAL']} of local memory (spills)")
        if u["REG"] > MAX_REGISTERS_PER_THREAD or _blocks_per_sm(arch, name, u) < BLOCKS_PER_SM:
            problems.append(f"{arch} {mangled}: {u['REG']} registers x {THREADS[name]} threads and "
                            f"{u['SHARED']} + {DYNAMIC_SHARED.get(name, 0)} bytes of shared memory: "
                            f"{_blocks_per_sm(arch, name, u)} block(s) per SM, fewer than {BLOCKS_PER_SM}")
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
           ("sm_80", "masked_mse_rows_kernel", "k4", dict(REG=128, STACK=0, SHARED=1056, LOCAL=0)),
           ("sm_80", "random_masking_forward_kernel", "k5", dict(REG=72, STACK=0, SHARED=0, LOCAL=0)),
           ("sm_80", "random_masking_forward_kernel", "k6", dict(REG=64, STACK=0, SHARED=20000, LOCAL=0)),
           ("sm_90", "random_masking_forward_kernel", "k7", dict(REG=64, STACK=0, SHARED=20000, LOCAL=0))]
    assert [p.split(":")[0] for p in _problems(bad)] == ["sm_90 k1", "sm_90 k2", "sm_80 k3", "sm_80 k5",
                                                          "sm_80 k6"]


# --- facts read from the SASS ---------------------------------------------------------------------------

def _sass():
    """{(arch, mangled name): [opcodes]} of every kernel of the built extension."""
    return _parse_sass(_cuobjdump_of_extension("-sass"))


_parse_sass = cc.parse_sass
_demangled = cc.demangle


# Integer division by a runtime value: its reciprocal estimate converts the divisor with round-up (I2F.RP,
# I2F.U32.RP, I2F.U64.RP), inline for 32 bits and in the 64-bit division subroutine.
_INT_DIVISION = re.compile(r"I2F(\.[SU](32|64))?\.RP$")
_COPY_KERNELS_16B = ("random_masking_forward_kernel<uint4>", "random_masking_backward_kernel<uint4>",
                     "copy_patches_vec_kernel<",  # every instance of the patchify 16-byte path
                     "scatter_bands_vec_kernel<",  # and of its one-pass masked scatter
                     "copy_patches_cast_vec_kernel<",  # and of its converting gather
                     "pos_embed_epilogue_kernel<true,",  # masked_patch_embed's 16-byte packs
                     "bias_grad_rows_kernel<true,")  # its backward's pass over grad_out


def _sass_problems(kernels):
    problems = []
    pretty = _demangled([mangled for _, mangled in kernels])
    for (arch, mangled), ops in kernels.items():
        where = f"{arch} {pretty[mangled]}"
        division = sorted({op for op in ops if _INT_DIVISION.match(op)})
        if division:
            problems.append(f"{where}: runtime integer division ({', '.join(division)}): divide index math by a "
                            f"FastDivmod (csrc/fast_divmod.h) or a compile-time constant")
        # Not F2I.FTZ (the integer division's conversion, reported above) nor, beside MUFU.RSQ, FMUL.FTZ (IEEE
        # sqrtf's refinement, which takes subnormal inputs to a slow path).
        ftz = sorted({op for op in ops if ".FTZ" in op and not op.startswith("F2I")
                      and not (op.startswith("FMUL.FTZ") and "MUFU.RSQ" in ops)})
        if ftz:
            problems.append(f"{where}: flush-to-zero float instructions ({', '.join(ftz)}): subnormals become 0 "
                            f"(built with --use_fast_math?)")
        if "MUFU.SQRT" in ops:
            problems.append(f"{where}: approximate square root (MUFU.SQRT without the IEEE refinement: fast math)")
        if "MUFU.RCP" in ops and "FCHK" not in ops and not division:  # else the integer division's reciprocal
            problems.append(f"{where}: approximate float division (MUFU.RCP without FCHK: fast math)")
        if any(k in pretty[mangled] for k in _COPY_KERNELS_16B):
            narrow = [op for op in ("LDG.E.128", "STG.E.128") if not any(o.startswith(op) for o in ops)]
            if narrow:
                problems.append(f"{where}: the 16-byte word copy has no {' or '.join(narrow)} (vector accesses "
                                f"split)")
    return problems


def test_sass_has_no_division_no_fast_math_and_wide_copies():
    kernels = _sass()
    assert kernels, "cuobjdump -sass found no kernel in mae_kernels._C"
    names = {k for _, mangled in kernels for k in THREADS if k in mangled}
    assert names == set(THREADS), "THREADS must list exactly the built kernels"
    problems = _sass_problems(kernels)
    assert not problems, "\n".join(problems)


def test_sass_problems_are_reported():
    uint4 = "_ZN11mae_kernels4cuda29random_masking_forward_kernelI5uint4EEvPKcPKfPcPfPlS9_llllllmm"
    good = ["IMAD.WIDE.U32", "LDG.E.128.CONSTANT", "STG.E.128", "FADD", "MUFU.RSQ", "MUFU.RCP", "FCHK"]
    kernels = {("sm_90", "k_div32"): ["I2F.U32.RP", "MUFU.RCP", "F2I.FTZ.U32.TRUNC.NTZ"],
               ("sm_90", "k_div64"): ["CALL.REL.NOINC", "I2F.U64.RP"],
               ("sm_90", "k_ftz"): ["FADD.FTZ", "FFMA", "FMUL.FTZ"],
               ("sm_90", "k_sqrtf"): ["MUFU.RSQ", "FMUL.FTZ", "FFMA"],
               ("sm_80", "k_sqrt"): ["MUFU.SQRT"],
               ("sm_80", "k_rcp"): ["MUFU.RCP", "FMUL"],
               ("sm_90", uint4): ["LDG.E.128.CONSTANT", "STG.E.64", "STG.E.64"],
               ("sm_90", "k_good"): good}
    got = [p.split(": ")[0] for p in _sass_problems(kernels)]
    assert got[:5] == ["sm_90 k_div32", "sm_90 k_div64", "sm_90 k_ftz", "sm_80 k_sqrt", "sm_80 k_rcp"]
    assert len(got) == 6 and got[5].startswith("sm_90 void mae_kernels::cuda::random_masking_forward_kernel<uint4>")
    line = "        /*0c70*/              @!P1 I2F.U64.RP R5, R10 ;                  /* 0x0000000a00057306 */"
    assert _parse_sass(f"code for sm_90\n  Function : k\n{line}\n") == {("sm_90", "k"): ["I2F.U64.RP"]}
