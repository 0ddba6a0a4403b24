"""Triton masked patch embedding: one GEMM whose A tiles are loaded straight from the pixels of the kept
patches (ids_keep -> patch row/col -> image offsets, any strides), B the Conv2d weight [D, C*p*p], with the
bias and the positional embedding rows 1 + ids_keep added in the epilogue. fp32 accumulation, one rounding
to the output dtype. The reduction runs over the weight's own (c, p_row, p_col) order, so no permuted copy
of the weight is needed."""
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _masked_patch_embed_kernel(
        img_ptr,  # [N, C, H, W] with strides s_n, s_c, s_h, s_w
        ids_ptr,  # [N * K] int64 kept patch indices
        w_ptr,  # [D, C * p * p] contiguous (Conv2d weight flattened)
        b_ptr,  # [D]
        pos_ptr,  # [1 + L, D] contiguous (row 0: cls), unused without HAS_POS
        out_ptr,  # [N * K, D] contiguous
        M, K, D, R, s_n, s_c, s_h, s_w,  # M = N * K rows, R = C * p * p reduction length
        p: tl.constexpr, grid_w: tl.constexpr,  # constants: the index math below divides by them per element
        HAS_POS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < D
    l = tl.load(ids_ptr + rows, mask=row_mask, other=0)
    row_off = (rows // K) * s_n + (l // grid_w) * p * s_h + (l % grid_w) * p * s_w  # patch corner
    pp: tl.constexpr = p * p
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_K):
        r = r0 + tl.arange(0, BLOCK_K).to(tl.int64)
        r_mask = r < R
        q = r % pp  # (c, p_row, p_col) order
        col_off = (r // pp) * s_c + (q // p) * s_h + (q % p) * s_w
        a = tl.load(img_ptr + row_off[:, None] + col_off[None, :], mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        b = tl.load(w_ptr + cols[None, :] * R + r[:, None], mask=r_mask[:, None] & col_mask[None, :], other=0.0)
        if UPCAST:  # the CPU interpreter's tl.dot is wrong on bf16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:  # fp32 operands: true fp32 products (no TF32), as eager matmul
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if HAS_POS:
        acc += tl.load(pos_ptr + (1 + l)[:, None] * D + cols[None, :], mask=out_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed):
    """[N, K, D] = weight . kept patch + bias (+ pos_embed[0, 1 + ids_keep]); dtype of imgs promoted with
    pos_embed's. Inputs are valid (checked by mae_kernels.ops.masked_patch_embed)."""
    N, K = ids_keep.shape
    D, C, p, _ = weight.shape
    out_dtype = imgs.dtype if pos_embed is None else torch.promote_types(imgs.dtype, pos_embed.dtype)
    out = torch.empty(N, K, D, dtype=out_dtype, device=imgs.device)
    M, R = N * K, C * p * p
    if M == 0 or D == 0:
        return out
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    low = imgs.dtype in (torch.float16, torch.bfloat16)
    if interpret:
        block_m, block_n, block_k, warps, stages = 32, 32, 32, 4, 1
    elif low:
        block_m, block_n, block_k, warps, stages = 128, 128, 32, 8, 3
    else:
        block_m, block_n, block_k, warps, stages = 64, 64, 32, 4, 3
    ids = ids_keep.contiguous()
    pos = pos_embed.reshape(-1, D).contiguous() if pos_embed is not None else bias  # any pointer when unused
    grid = (triton.cdiv(M, block_m), triton.cdiv(D, block_n))
    _masked_patch_embed_kernel[grid](
        imgs, ids, weight.contiguous(), bias.contiguous(), pos, out, M, K, D, R, *imgs.stride(),
        p=p, grid_w=imgs.shape[3] // p, HAS_POS=pos_embed is not None, UPCAST=interpret and low,
        IEEE=imgs.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        num_stages=stages)
    return out
