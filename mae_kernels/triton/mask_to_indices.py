"""Triton mask_to_indices: one program per row scans the boolean mask (True = masked) in chunks, a cumulative sum
of the kept flags giving each patch its rank in ids_shuffle = argsort(mask, stable=True) (kept ascending, then
masked ascending); the count carried from chunk to chunk makes any row length work. One launch, no sort."""
import torch
import triton
import triton.language as tl

BLOCK_MAX = 1024


@triton.jit
def _mask_to_indices_kernel(
    mask_ptr,         # [N, L] uint8 (a bool mask's bytes, nonzero = masked), strides (smn, sml)
    ids_keep_ptr,     # [N, K] int64, contiguous
    ids_restore_ptr,  # [N, L] int64, contiguous
    out_mask_ptr,     # [N, L] float32, contiguous, 1 = removed
    L, K, smn, sml,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    kept_before = tl.full([], 0, tl.int64)
    for l0 in range(0, L, BLOCK):
        l = l0 + tl.arange(0, BLOCK).to(tl.int64)
        valid = l < L
        masked = tl.load(mask_ptr + n * smn + l * sml, mask=valid, other=0) != 0
        kept = tl.where(valid & (masked == 0), 1, 0)
        ck = (tl.cumsum(kept, 0) - kept).to(tl.int64) + kept_before  # kept patches before l in the row
        r = tl.where(masked, K + (l - ck), ck)
        # ck < K: a row with more kept patches than K (rejected by the wrapper) stays inside ids_keep
        tl.store(ids_keep_ptr + n * K + ck, l, mask=valid & (masked == 0) & (ck < K))
        tl.store(ids_restore_ptr + n * L + l, r, mask=valid)
        tl.store(out_mask_ptr + n * L + l, tl.where(masked, 1.0, 0.0), mask=valid)
        kept_before += tl.sum(kept, 0).to(tl.int64)


def mask_to_indices(bool_mask, num_kept):
    """(ids_keep [N, num_kept] i64, ids_restore [N, L] i64, mask [N, L] f32) of bool_mask [N, L] (any strides)."""
    N, L = bool_mask.shape
    K = num_kept
    device = bool_mask.device
    ids_keep = torch.empty(N, K, device=device, dtype=torch.int64)
    ids_restore = torch.empty(N, L, device=device, dtype=torch.int64)
    mask = torch.empty(N, L, device=device, dtype=torch.float32)
    if N == 0 or L == 0:
        return ids_keep, ids_restore, mask
    raw = bool_mask.view(torch.uint8)  # same bytes, any strides: no copy
    block = min(triton.next_power_of_2(L), BLOCK_MAX)
    _mask_to_indices_kernel[(N,)](raw, ids_keep if K > 0 else ids_restore, ids_restore, mask, L, K,
                                  raw.stride(0), raw.stride(1), BLOCK=block, num_warps=4)
    return ids_keep, ids_restore, mask
