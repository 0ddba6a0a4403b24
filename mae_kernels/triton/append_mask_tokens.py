"""Triton kernel of the decoder input with dual masking (VideoMAE v2), and its launcher.

Same semantics as csrc/cpu/append_mask_tokens.cpp: kept rows copied, mask-token rows appended, each + the
pos_embed row of its position, computed in fp32 and rounded once to the output dtype. c = has_cls,
R = c + K + M output rows. The backward is unshuffle_with_mask_tokens' (ops/append_mask_tokens.py).
"""
import torch
import triton
import triton.language as tl

from .unshuffle_with_mask_tokens import _tile


@triton.jit
def _append_kernel(
    x_ptr,     # [N, c + K, D], strides (sxn, sxr, sxd)
    mt_ptr,    # [D] float32
    keep_ptr,  # [N, K] int64 positions of the kept rows
    dec_ptr,   # [N, M] int64 positions of the mask-token rows
    pos_ptr,   # [c + L, D] float32 (unused unless HAS_POS)
    out_ptr,   # [N, R, D] contiguous
    K, M, D, c, sxn, sxr, sxd,
    HAS_POS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    R = c + K + M
    j = tl.program_id(1).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    d = tl.program_id(2).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = j < R
    d_ok = d < D
    ok = row_ok[:, None] & d_ok[None, :]
    from_x = (j < c + K)[:, None] & ok
    xv = tl.load(x_ptr + n * sxn + j[:, None] * sxr + d[None, :] * sxd, mask=from_x, other=0.0)
    mt = tl.load(mt_ptr + d, mask=d_ok, other=0.0)
    v = tl.where(from_x, xv.to(tl.float32), mt[None, :])
    if HAS_POS:
        kept = row_ok & (j >= c) & (j < c + K)
        masked = row_ok & (j >= c + K)
        at = tl.load(keep_ptr + n * K + (j - c), mask=kept, other=0)
        at = tl.where(masked, tl.load(dec_ptr + n * M + (j - c - K), mask=masked, other=0), at)
        at = tl.where(j < c, 0, c + at)
        v += tl.load(pos_ptr + at[:, None] * D + d[None, :], mask=ok, other=0.0)
    tl.store(out_ptr + (n * R + j)[:, None] * D + d[None, :], v.to(out_ptr.dtype.element_ty), mask=ok)


def append_mask_tokens_forward(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls, out_dtype):
    """out [N, c + K + M, D] in out_dtype (see mae_kernels.ops.append_mask_tokens)."""
    N, _, D = x.shape
    c = int(has_cls)
    K, M = ids_keep.shape[1], ids_dec.shape[1]
    R = c + K + M
    out = torch.empty(N, R, D, device=x.device, dtype=out_dtype)
    if out.numel() == 0:
        return out
    mt = mask_token.reshape(D).to(torch.float32).contiguous()
    pos = pos_embed.reshape(-1, D).to(torch.float32).contiguous() if pos_embed is not None else mt
    rows, block_d = _tile(D)
    grid = (N, triton.cdiv(R, rows), triton.cdiv(D, block_d))
    _append_kernel[grid](x, mt, ids_keep.contiguous(), ids_dec.contiguous(), pos, out, K, M, D, c,
                         x.stride(0), x.stride(1), x.stride(2), HAS_POS=pos_embed is not None, ROWS=rows,
                         BLOCK_D=block_d)
    return out
