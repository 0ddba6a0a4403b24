"""Triton masked patch embedding: one GEMM whose A tiles are loaded straight from the pixels of the kept
patches of images [N, C, H, W] or tubelets of videos [N, C, T, H, W] (ids_keep -> grid cell -> sample offsets,
any strides), B the Conv2d weight [D, C*ph*pw] or Conv3d weight [D, C*u*ph*pw], with the bias and the
positional rows of the kept tokens added in the epilogue: a full table's row first + l (first = 1 when it holds
a cls row), or the separable pair spatial[l % hw] + temporal[l // hw] (mae_st), never summed into [L, D].
fp32 accumulation, one rounding to the output dtype. The reduction runs over the weight's own (c, frame, p_row,
p_col) order, so no permuted copy of the weight is needed. The GEMM runs in the weight's dtype: pixels of another
dtype (autocast's fp32 images) are rounded to it as the A tiles are loaded."""
import os

import torch
import triton
import triton.language as tl

from .masked_patchify import emulate_bf16, round_to

POS_NONE, POS_TABLE, POS_SEPARABLE = 0, 1, 2


@triton.jit
def _masked_patch_embed_kernel(
        img_ptr,  # [N, C, (T,) H, W] with strides s_n, s_c, s_t (0 for images), s_h, s_w
        ids_ptr,  # [N * K] int64 kept patch indices
        w_ptr,  # [D, C * u * ph * pw] contiguous (Conv2d / Conv3d weight flattened)
        b_ptr,  # [D]
        pos_ptr,  # POS_TABLE: [rows, D] contiguous (token l at row pos_first + l); POS_SEPARABLE: spatial [hw, D]
        pos_t_ptr,  # POS_SEPARABLE: temporal [t, D] contiguous; else unused
        out_ptr,  # [N * K, D] contiguous
        M, K, D, pos_first, s_n, s_c, s_t, s_h, s_w,  # M = N * K rows
        C: tl.constexpr, U: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,  # constants: index math divides by them
        GRID_W: tl.constexpr, GRID_HW: tl.constexpr,
        POS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EMULATE_BF16: tl.constexpr = False):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < D
    l = tl.load(ids_ptr + rows, mask=row_mask, other=0)
    cell = l % GRID_HW  # hi * w + wi
    row_off = ((rows // K) * s_n + (l // GRID_HW) * U * s_t + (cell // GRID_W) * PH * s_h
               + (cell % GRID_W) * PW * s_w)  # the tubelet's first pixel
    up: tl.constexpr = U * PH
    R: tl.constexpr = C * U * PH * PW  # reduction length, in the weight's (c, frame, p_row, p_col) order
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K)  # int32: divided by constants, then widened
        r_mask = r < R
        # p_row and p_col come from r itself, not from r % (U * PH * PW): Triton's alignment analysis keeps runs
        # through `// const` and `% const` only of a range contiguous over the whole tile, and a load's vectors
        # are as wide as its runs and their alignment. So with s_w == 1 a patch row loads in aligned runs (p=16:
        # 16-byte cp.async; p=14: pairs, 4 B in 16-bit, 8 B in fp32) and the weight as the constant R aligns it
        # (p=14, 16-bit: 8 B). 4 B is the ceiling for 16-bit p=14: patch rows start at 28 * wi bytes, 4-byte
        # aligned only; a wider aligned span would need a per-row shift in registers (no cp.async), and TMA
        # 16-byte strides.
        t = r // PW  # (c, frame, p_row)
        col_off = ((t // up).to(tl.int64) * s_c + ((t // PH) % U).to(tl.int64) * s_t + (t % PH).to(tl.int64) * s_h
                   + (r % PW).to(tl.int64) * s_w)
        a = tl.load(img_ptr + row_off[:, None] + col_off[None, :], mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        a = round_to(a, w_ptr.dtype.element_ty, EMULATE_BF16)  # the GEMM's dtype (no-op when imgs have it)
        b = tl.load(w_ptr + cols[None, :] * R + r.to(tl.int64)[:, None], mask=r_mask[:, None] & col_mask[None, :],
                    other=0.0)
        if UPCAST:  # the CPU interpreter's tl.dot is wrong on bf16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:  # fp32 operands: true fp32 products (no TF32), as eager matmul
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if POS == 1:
        acc += tl.load(pos_ptr + (pos_first + l)[:, None] * D + cols[None, :], mask=out_mask, other=0.0).to(tl.float32)
    if POS == 2:
        spatial = tl.load(pos_ptr + cell[:, None] * D + cols[None, :], mask=out_mask, other=0.0).to(tl.float32)
        temporal = tl.load(pos_t_ptr + (l // GRID_HW)[:, None] * D + cols[None, :], mask=out_mask,
                           other=0.0).to(tl.float32)
        acc += spatial + temporal
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed, pos_temporal=None):
    """[N, K, D] = weight . kept patch + bias (+ positional rows: see the module docstring); dtype of weight
    promoted with the positional tables'. Inputs are valid (checked by mae_kernels.ops.masked_patch_embed)."""
    N, K = ids_keep.shape
    D, C = weight.shape[:2]
    u, ph, pw = (weight.shape[2:] if weight.dim() == 5 else (1, *weight.shape[2:]))
    out_dtype = weight.dtype  # the GEMM's
    for table in (pos_embed, pos_temporal):
        if table is not None:
            out_dtype = torch.promote_types(out_dtype, table.dtype)
    out = torch.empty(N, K, D, dtype=out_dtype, device=imgs.device)
    M = N * K
    if M == 0 or D == 0:
        return out
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    low = weight.dtype in (torch.float16, torch.bfloat16)
    if interpret:
        block_m, block_n, block_k, warps, stages = 32, 32, 32, 4, 1
    elif low:
        block_m, block_n, block_k, warps, stages = 128, 128, 32, 8, 3
    else:
        block_m, block_n, block_k, warps, stages = 64, 64, 32, 4, 3
    # ptxas takes 134-197 registers per thread for the 16-bit tiles unasked (one block of 8 warps per SM on
    # sm_90 and sm_80); capped at 128 they fit without spills, two blocks per SM (compile_check pins both).
    # maxnreg is an option of Triton's NVIDIA backend only.
    options = dict(maxnreg=128) if low and not interpret and torch.version.hip is None else {}
    video = imgs.dim() == 5
    s_n, s_c = imgs.stride(0), imgs.stride(1)
    s_t = imgs.stride(2) if video else 0
    grid_t, grid_h, grid_w = (imgs.shape[2] // u if video else 1), imgs.shape[-2] // ph, imgs.shape[-1] // pw
    L = grid_t * grid_h * grid_w
    ids = ids_keep.contiguous()
    mode, pos, pos_t, first = POS_NONE, bias, bias, 0  # any pointer when unused
    if pos_temporal is not None:
        mode, pos, pos_t = POS_SEPARABLE, pos_embed.reshape(-1, D).contiguous(), pos_temporal.reshape(-1, D).contiguous()
    elif pos_embed is not None:
        mode, pos = POS_TABLE, pos_embed.reshape(-1, D).contiguous()
        first = pos.shape[0] - L  # 1 when row 0 is the cls token's
    grid = (triton.cdiv(M, block_m), triton.cdiv(D, block_n))
    _masked_patch_embed_kernel[grid](
        imgs, ids, weight.contiguous(), bias.contiguous(), pos, pos_t, out, M, K, D, first, s_n, s_c, s_t,
        imgs.stride(-2), imgs.stride(-1), C=C, U=u, PH=ph, PW=pw, GRID_W=grid_w, GRID_HW=grid_h * grid_w, POS=mode,
        UPCAST=interpret and low, IEEE=weight.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, EMULATE_BF16=emulate_bf16(imgs.dtype, weight.dtype), num_warps=warps, num_stages=stages,
        **options)
    return out
