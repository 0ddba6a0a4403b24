"""Triton kernels of masked_patch_embed_bias_grad, with the launcher: one pass over grad [N, K, D] (any strides)
that writes the GEMM-dtype copy (when asked) and per-chunk fp32 column sums, then the fixed-order sum of the
chunks into the bias gradient. The order is csrc/masked_patch_embed_bias_grad.h's (chunks of ROWS rows within a
sample, summed row by row from 0; the chunk sums in groups of GROUP, the groups added in order), so the CPU, CUDA
and Triton kernels add the same fp32 numbers in the same order. No atomics.
"""
import os

import torch
import triton
import triton.language as tl

ROWS = 32   # kBiasGradRows
GROUP = 32  # kBiasGradGroup
_LANES = 8  # groups the finishing program sums at once
_FINISH_COLS = 32


@triton.jit
def _bias_grad_rows_kernel(
    grad_ptr,   # [N, K, D], strides (s_n, s_k, s_d)
    out_ptr,    # [N * K, D] contiguous, the GEMM-dtype copy (unused unless WRITE)
    part_ptr,   # [N * KB, D] float32: chunk n * KB + kb, rows [kb * ROWS, min(K, kb * ROWS + ROWS)) of sample n
    N, K, D, KB, s_n, s_k, s_d,
    WRITE: tl.constexpr, ROWS: tl.constexpr, SAMPLES: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Program: chunk kb of SAMPLES samples (1 on a GPU; more under the interpreter, ~1 ms per program) over
    # BLOCK_D columns, as [SAMPLES, BLOCK_D] tiles (16-byte accesses along D).
    n = (tl.program_id(0).to(tl.int64) * SAMPLES + tl.arange(0, SAMPLES).to(tl.int64))[:, None]
    kb = tl.program_id(1).to(tl.int64)
    d = (tl.program_id(2).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64))[None, :]
    tile_ok = (n < N) & (d < D)
    k0 = kb * ROWS
    src = grad_ptr + n * s_n + k0 * s_k + d * s_d
    dst = out_ptr + (n * K + k0) * D + d
    acc = tl.zeros((SAMPLES, BLOCK_D), dtype=tl.float32)
    for i in tl.static_range(ROWS):  # the rows in order (the CPU's and CUDA's adds); unrolled: loads in flight
        ok = tile_ok & (k0 + i < K)
        g = tl.load(src + i * s_k, mask=ok, other=0.0).to(tl.float32)
        acc += g  # + 0 past the chunk's end: acc is never -0, so its bits do not change
        if WRITE:
            tl.store(dst + i * D, g.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(part_ptr + (n * KB + kb) * D + d, acc, mask=tile_ok)


@triton.jit
def _bias_grad_finish_kernel(
    part_ptr,   # [chunks, D] float32
    out_ptr,    # [D] in the bias dtype
    chunks, D,
    GROUP: tl.constexpr, LANES: tl.constexpr, BLOCK: tl.constexpr,
):
    d = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    d_ok = d < D
    lane = tl.arange(0, LANES).to(tl.int64)
    groups = (chunks + GROUP - 1) // GROUP
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for g0 in range(0, groups, LANES):  # LANES groups at once, each lane's loads independent
        first = (g0 + lane) * GROUP
        sums = tl.zeros((LANES, BLOCK), dtype=tl.float32)
        for i in tl.static_range(GROUP):
            c = first + i
            ok = (c < chunks)[:, None] & d_ok[None, :]
            sums += tl.load(part_ptr + c[:, None] * D + d[None, :], mask=ok, other=0.0)
        for j in tl.static_range(LANES):  # the group sums added in group order; picking a row out is exact
            total += tl.sum(tl.where(lane[:, None] == j, sums, 0.0), axis=0)
    tl.store(out_ptr + d, total.to(out_ptr.dtype.element_ty), mask=d_ok)


def _rows_config(grad_dtype, out_dtype):
    """(columns per thread: 16 bytes of the narrower type, warps): the fp32 rows of an fp32 -> bf16 copy then
    move in two 16-byte loads and one 16-byte store per thread and row."""
    per_thread = 16 // min(grad_dtype.itemsize, out_dtype.itemsize)
    return per_thread, 4


def masked_patch_embed_bias_grad(grad, gemm_dtype, write_gemm_grad, bias_dtype):
    """(gemm_grad [N * K, D] in gemm_dtype, or [0, D] without write_gemm_grad; grad_bias [D] in bias_dtype) of
    grad [N, K, D] (see mae_kernels.ops.masked_patch_embed)."""
    N, K, D = grad.shape
    dev = grad.device
    KB = triton.cdiv(K, ROWS)
    chunks = N * KB
    gemm_grad = torch.empty(N * K if write_gemm_grad else 0, D, device=dev, dtype=gemm_dtype)
    grad_bias = torch.empty(D, device=dev, dtype=bias_dtype)
    if D == 0:
        return gemm_grad, grad_bias
    partial = torch.empty(chunks, D, device=dev, dtype=torch.float32)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if chunks > 0:
        per_thread, warps = _rows_config(grad.dtype, gemm_dtype if write_gemm_grad else grad.dtype)
        block_d = min(triton.next_power_of_2(D), per_thread * 32 * warps)
        warps = max(1, min(warps, block_d // (per_thread * 32)))
        samples = min(triton.next_power_of_2(N), 64) if interpret else 1
        _bias_grad_rows_kernel[(triton.cdiv(N, samples), KB, triton.cdiv(D, block_d))](
            grad, gemm_grad if write_gemm_grad else partial, partial, N, K, D, KB, *grad.stride(),
            WRITE=write_gemm_grad, ROWS=ROWS, SAMPLES=samples, BLOCK_D=block_d, num_warps=warps)
    block = min(triton.next_power_of_2(D), 1024) if interpret else _FINISH_COLS
    _bias_grad_finish_kernel[(triton.cdiv(D, block),)](partial, grad_bias, chunks, D, GROUP=GROUP, LANES=_LANES,
                                                       BLOCK=block, num_warps=1)
    return gemm_grad, grad_bias
