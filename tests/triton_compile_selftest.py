"""Kernels with the regressions that mae_kernels.triton.compile_check.check_code must catch, compiled for sm_90
(run by tests/test_triton_compile.py in a subprocess with TRITON_INTERPRET=0). Prints, as JSON, the problems
reported for each: {kernel name: [problem, ...]}, and how many variants random_masking's forward compiles for
several seeds and offsets."""
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mae_kernels.triton import compile_check as cc  # noqa: E402


@triton.jit
def _div_index_kernel(src_ptr, dst_ptr, C, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(dst_ptr + i, tl.load(src_ptr + (i // C) * 7 + i % C))  # per element, by a run-time C


@triton.jit
def _div_in_loop_kernel(src_ptr, dst_ptr, n, C, BLOCK: tl.constexpr):
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(0, n):
        acc += tl.load(src_ptr + k // C * BLOCK + tl.arange(0, BLOCK))  # a scalar, but once per iteration
    tl.store(dst_ptr + tl.arange(0, BLOCK), acc)


@triton.jit
def _approx_div_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i, tl.load(x_ptr + i) / tl.load(x_ptr + BLOCK + i))  # div.full.f32


@triton.jit
def _narrow_copy_kernel(src_ptr, dst_ptr, D, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)[:, None] * D + tl.arange(0, 2)[None, :]  # 2 of each row's D elements: 8 B each
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs))


@triton.jit
def _fat_kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i)
    tl.store(y_ptr + i, tl.sort(x) + tl.cumsum(x, 0))  # 1024 threads with a register-hungry body


@triton.jit
def _nested_index_gemm_kernel(img_ptr, w_ptr, out_ptr, PW: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # masked_patch_embed's p=14 pixel tile as it was: p_row / p_col taken from r % (ph * pw), which hides the
    # aligned pairs from Triton (2-byte loads through registers, no cp.async)
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, 3 * PW * PW, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)
        q = r % (PW * PW)
        col_off = (r // (PW * PW)) * 50176 + (q // PW) * 224 + q % PW
        a = tl.load(img_ptr + (rows * 2 * PW)[:, None] + col_off[None, :], mask=(r < 3 * PW * PW)[None, :], other=0.0)
        acc = tl.dot(a, tl.load(w_ptr + r[:, None] * BLOCK_N + cols[None, :]), acc)
    tl.store(out_ptr + rows[:, None] * BLOCK_N + cols[None, :], acc)


def _launch(kernel, args, **options):
    sink = []
    cc._Recorder(kernel, sink, ["selftest"])[(1,)](*args, **options)
    return sink[0]


def main():
    f32 = torch.empty(1 << 16, device="meta")
    bf16 = torch.empty(1 << 16, dtype=torch.bfloat16, device="meta")
    cases = [
        _launch(_div_index_kernel, (f32, f32, 3), BLOCK=1024),
        _launch(_div_in_loop_kernel, (f32, f32, 100, 3), BLOCK=256),
        _launch(_approx_div_kernel, (f32, f32), BLOCK=1024),
        _launch(_narrow_copy_kernel, (f32, f32, 512), BLOCK=1024),
        _launch(_fat_kernel, (f32, f32), BLOCK=32768, num_warps=32),
        _launch(_nested_index_gemm_kernel, (bf16, bf16, f32), PW=14, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32,
                num_warps=8),
    ]
    cc.COPY_KERNELS["_narrow_copy_kernel"] = lambda c: ("D", True, True)
    cc.GEMM_OPERANDS["_nested_index_gemm_kernel"] = lambda launch: [("pixels (A)", (128, 32), 4)]
    out = {}
    # random_masking's RNG offset moves every call: all of these must be one compiled variant.
    from mae_kernels.triton import random_masking as rm
    sink = []
    with cc.recording(sink, ["offsets"]):
        for seed, offset in ((7, 0), (7, 16), (7, 17), (1, 1), (16, 4096 + 4)):
            rm.random_masking_forward(torch.empty(2, 196, 8, device="meta"), None, 49, seed, offset)
    out["random_masking variants over seeds and offsets"] = len({ln.key() for ln in sink})
    for launch in cases:
        res = cc.compile_one(launch, 90)
        out[launch.kernel.__name__] = res.problems if res.ok else [res.error]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
