"""Triton kernels of the decoder input (mask-token scatter / unshuffle) and its fused backward, with launchers.

Same semantics as csrc/cpu/unshuffle_with_mask_tokens.cpp: every output row reads its source through
ids_restore (a pure gather), values computed in fp32 and rounded once to the output dtype; the backward reads
grad_out once, writes grad_x once and reduces the mask-token / pos_embed gradients in two deterministic stages
(per chunk of samples, then over the chunks in a fixed order).
c = has_cls (0 or 1), R = c + L output rows, K kept rows.
"""
import os

import torch
import triton
import triton.language as tl

_CHUNK = 32  # samples per backward program, and terms per partial sum in the fixed-order reductions


def _tile(D):
    """(ROWS output rows, BLOCK_D columns) per program. The interpreter costs ~1 ms per program: many rows each.
    On a GPU, small tiles: 16 x 512 tiles needed 255 registers per thread in the backward (one program per tile
    of rows and chunk of samples) and gave few programs; 8 x 128 gives each of the 128 threads 8 elements, so
    16-bit rows move in 16-byte accesses too."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 16, min(max(triton.next_power_of_2(D), 16), 512)
    return 8, min(max(triton.next_power_of_2(D), 16), 128)


@triton.jit
def _source_rows(ids_ptr, n, j, L, K, c, row_ok):
    """x row (int64) each output row j of sample n reads; -1 for the mask token (also for out-of-range ids)."""
    l = tl.maximum(j - c, 0)
    r = tl.load(ids_ptr + n * L + l, mask=row_ok & (j >= c), other=-1)
    src = tl.where((r >= 0) & (r < K), c + r, -1)
    return tl.where(j < c, 0, src)


@triton.jit
def _forward_kernel(
    x_ptr,      # [N, c + K, D], strides (sxn, sxr, sxd)
    mt_ptr,     # [D] float32
    ids_ptr,    # [N, L] int64
    pos_ptr,    # [R, D] float32 (unused unless HAS_POS)
    out_ptr,    # [N, R, D] contiguous
    L, K, D, c, sxn, sxr, sxd,
    HAS_POS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    R = c + L
    j = tl.program_id(1).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    d = tl.program_id(2).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = j < R
    d_ok = d < D
    src = _source_rows(ids_ptr, n, j, L, K, c, row_ok)
    from_x = (src >= 0)[:, None] & row_ok[:, None] & d_ok[None, :]
    xv = tl.load(x_ptr + n * sxn + tl.maximum(src, 0)[:, None] * sxr + d[None, :] * sxd, mask=from_x, other=0.0)
    mt = tl.load(mt_ptr + d, mask=d_ok, other=0.0)
    v = tl.where(from_x, xv.to(tl.float32), mt[None, :])
    ok = row_ok[:, None] & d_ok[None, :]
    if HAS_POS:
        v += tl.load(pos_ptr + j[:, None] * D + d[None, :], mask=ok, other=0.0)
    tl.store(out_ptr + (n * R + j)[:, None] * D + d[None, :], v.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _backward_rows_kernel(
    grad_ptr,       # [N, R, D] contiguous
    ids_ptr,        # [N, L] int64
    gx_ptr,         # [N, c + K, D] contiguous, x's dtype
    pos_part_ptr,   # [B, R, D] float32: per chunk of CHUNK samples, the sum of their grad rows (POS_GRAD)
    mask_part_ptr,  # [B, RB, D] float32: per chunk and block of ROWS rows, the mask-token gradient of its rows
    N, L, K, D, c,
    POS_GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    """One program per (row block, column block, chunk of CHUNK samples): the batch is split across programs
    so that the grid fills the GPU; _sum_partials_kernel then adds the chunks' partial sums in a fixed order."""
    rb = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(2).to(tl.int64)
    R = c + L
    j = rb * ROWS + tl.arange(0, ROWS).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    row_ok = j < R
    d_ok = d < D
    ok = row_ok[:, None] & d_ok[None, :]
    acc_pos = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    acc_mask = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    # A constant trip count, masked past N: the triton 3.6 interpreter rejects range() bounds computed from
    # program ids.
    for i in range(0, CHUNK):
        n = chunk * CHUNK + i
        live = row_ok & (n < N)
        in_tile = live[:, None] & d_ok[None, :]
        g = tl.load(grad_ptr + (n * R + j)[:, None] * D + d[None, :], mask=in_tile, other=0.0).to(tl.float32)
        dst = _source_rows(ids_ptr, n, j, L, K, c, live)
        to_x = (dst >= 0)[:, None] & in_tile
        tl.store(gx_ptr + (n * (c + K) + tl.maximum(dst, 0))[:, None] * D + d[None, :],
                 g.to(gx_ptr.dtype.element_ty), mask=to_x)
        acc_mask += tl.where(to_x, 0.0, g)
        acc_pos += g
    if POS_GRAD:
        tl.store(pos_part_ptr + (chunk * R + j)[:, None] * D + d[None, :], acc_pos, mask=ok)
    blocks = tl.num_programs(0).to(tl.int64)
    tl.store(mask_part_ptr + (chunk * blocks + rb) * D + d, tl.sum(acc_mask, axis=0), mask=d_ok)


@triton.jit
def _sum_partials_kernel(
    partial_ptr,  # [B, X] float32
    out_ptr,      # [X] float32: the sum over B
    B, X,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    """One program per BLOCK columns (the columns are independent: any BLOCK gives the same bits). Each column is
    summed in a fixed order, in chunks of CHUNK terms: the CHUNK loads of a chunk are unrolled, so they are all in
    flight at once, then added in order; past B they load 0.0 (x + 0.0 == x: the chunk sum starts at +0.0, never
    -0.0)."""
    x = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    x_ok = x < X
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for b0 in range(0, B, CHUNK):  # chunked sums: error grows with CHUNK + B / CHUNK, not B
        chunk = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in tl.static_range(CHUNK):
            b = b0 + i
            chunk += tl.load(partial_ptr + tl.cast(b, tl.int64) * X + x, mask=x_ok & (b < B), other=0.0)
        acc += chunk
    tl.store(out_ptr + x, acc, mask=x_ok)


def _sum_partials(partial, out, cap=None):
    """out (contiguous, X elements) = partial [B, X] summed over B in a fixed order. On a GPU, 64 columns per
    one-warp program (D = 512: 8 programs where one did all); the interpreter (~1 ms per program) takes up to
    1024 columns per program: the same sums."""
    B, X = partial.shape
    if cap is None:
        cap = 1024 if os.environ.get("TRITON_INTERPRET") == "1" else 64
    block = max(16, min(triton.next_power_of_2(X), cap))
    _sum_partials_kernel[(triton.cdiv(X, block),)](partial, out, B, X, BLOCK=block, CHUNK=_CHUNK,
                                                   num_warps=max(1, block // 256))


def unshuffle_with_mask_tokens_forward(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype):
    """out [N, c + L, D] in out_dtype (see mae_kernels.ops.unshuffle_with_mask_tokens)."""
    N, _, D = x.shape
    L = ids_restore.shape[1]
    c = int(has_cls)
    K = x.shape[1] - c
    R = c + L
    out = torch.empty(N, R, D, device=x.device, dtype=out_dtype)
    if out.numel() == 0:
        return out
    ids = ids_restore.contiguous()
    mt = mask_token.reshape(D).to(torch.float32).contiguous()
    pos = pos_embed.reshape(R, D).to(torch.float32).contiguous() if pos_embed is not None else mt
    rows, block_d = _tile(D)
    grid = (N, triton.cdiv(R, rows), triton.cdiv(D, block_d))
    _forward_kernel[grid](x, mt, ids, pos, out, L, K, D, c, x.stride(0), x.stride(1), x.stride(2),
                          HAS_POS=pos_embed is not None, ROWS=rows, BLOCK_D=block_d)
    return out


def unshuffle_with_mask_tokens_backward(grad_out, ids_restore, K, has_cls, x_dtype, pos_grad):
    """(grad_x [N, c + K, D] x_dtype, grad_mask_token [1, 1, D] f32, grad_pos_embed [1, R, D] f32 or [0])."""
    grad = grad_out.contiguous()
    ids = ids_restore.contiguous()
    N, R, D = grad.shape
    c = int(has_cls)
    dev = grad.device
    grad_x = torch.empty(N, c + K, D, device=dev, dtype=x_dtype)
    grad_mask = torch.empty(1, 1, D, device=dev, dtype=torch.float32)  # written whole by _sum_partials
    grad_pos = torch.empty(1, R, D, device=dev, dtype=torch.float32) if pos_grad else grad_mask.new_empty(0)
    if D == 0 or R == 0:
        return grad_x, grad_mask.zero_(), grad_pos
    rows, block_d = _tile(D)
    blocks = triton.cdiv(R, rows)
    # Samples per program: _CHUNK, or under the interpreter (which runs every masked iteration too) the whole
    # batch when it is smaller: the same single chunk, so the same results.
    samples = min(_CHUNK, max(N, 1)) if os.environ.get("TRITON_INTERPRET") == "1" else _CHUNK
    chunks = max(1, triton.cdiv(N, samples))
    mask_part = torch.empty(chunks, blocks, D, device=dev, dtype=torch.float32)
    pos_part = torch.empty(chunks, R, D, device=dev, dtype=torch.float32) if pos_grad else mask_part
    _backward_rows_kernel[(blocks, triton.cdiv(D, block_d), chunks)](
        grad, ids, grad_x, pos_part, mask_part, N, R - c, K, D, c,
        POS_GRAD=pos_grad, ROWS=rows, BLOCK_D=block_d, CHUNK=samples)
    _sum_partials(mask_part.view(chunks * blocks, D), grad_mask)
    if pos_grad:
        _sum_partials(pos_part.view(chunks, R * D), grad_pos)
    return grad_x, grad_mask, grad_pos
