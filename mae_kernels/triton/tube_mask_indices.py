"""Triton tube masking: one program per sample sorts its spatial noise [hw] (loaded, or drawn with the Philox
stream of random_masking: subsequence n*hw + s), keeps the hw - m positions of smallest noise (ties by lower
index, NaN last: the sort keys of random_masking), and writes the indices of all t frames: a cumulative sum of
the kept flags in position order gives the kept rank, so kept tokens come in ascending token index (VideoMAE's
x[~mask] order), then the masked ones ascending. One launch."""
import torch
import triton
import triton.language as tl

from .random_masking import _uniform, _warps

MAX_HW = 4096  # longest spatial row (ops/tube_mask_indices.py and csrc/cuda/kernels/tube_mask_indices.cuh agree)
_INT64_MAX = tl.constexpr(9223372036854775807)


@triton.jit(do_not_specialize=["seed", "offset"])
def _tube_mask_kernel(
    noise_ptr,        # [N, hw] float32, strides (snn, snh); a dummy when HAS_NOISE is False
    ids_keep_ptr,     # [N, K] int64, contiguous, K = t * (hw - m)
    ids_restore_ptr,  # [N, L] int64, contiguous, L = t * hw
    mask_ptr,         # [N, L] float32, contiguous, 1 = removed
    hw, t, m, seed, offset, snn, snh,
    HAS_NOISE: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_HW).to(tl.int64)
    valid = s < hw
    kh = hw - m
    L = t * hw   # int32 (sizes of tensors); every address below goes through the int64 n or s
    K = t * kh
    if HAS_NOISE:
        v = tl.load(noise_ptr + n * snn + s * snh, mask=valid, other=0.0)
    else:
        v = _uniform(seed, offset, n * hw + s)
    # random_masking's order-preserving keys: -0.0 == +0.0, NaN last, ties by index, from the bits
    bits = v.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    bits = tl.where(magnitude == 0, 0, bits)
    bits = tl.where(magnitude > 0x7F800000, 0x7FFFFFFF, bits)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = tl.where(valid, (bits.to(tl.int64) << 32) | s, _INT64_MAX)
    key = tl.sort(key)
    idx = (key & 0xFFFFFFFF).to(tl.int64)  # rank s holds the position of the s-th smallest noise
    # The flags go to position order through memory: frame 0 of the mask row, rewritten with the same values below.
    tl.store(mask_ptr + n * L + idx, tl.where(s >= kh, 1.0, 0.0), mask=valid)
    tl.debug_barrier()
    masked = tl.load(mask_ptr + n * L + s, mask=valid, other=0.0) != 0.0
    kept = tl.where(valid & (masked == 0), 1, 0)
    ck = (tl.cumsum(kept, 0) - kept).to(tl.int64)  # kept positions before s
    cm = s - ck                                     # masked positions before s
    flag = tl.where(masked, 1.0, 0.0)
    for ti in range(0, t):
        l = s + ti * hw
        r = tl.where(masked, cm + (K + ti * m), ck + ti * kh)
        tl.store(ids_keep_ptr + n * K + r, l, mask=valid & (masked == 0))
        tl.store(ids_restore_ptr + n * L + l, r, mask=valid)
        tl.store(mask_ptr + n * L + l, flag, mask=valid)


def tube_mask_indices(like, noise, t, num_masked, seed, offset):
    """(ids_keep [N, t*(hw - m)] i64, ids_restore [N, t*hw] i64, mask [N, t*hw] f32); like [N, hw, 0]."""
    N, hw = like.shape[0], like.shape[1]
    L, K = t * hw, t * (hw - num_masked)
    device = like.device
    ids_keep = torch.empty(N, K, device=device, dtype=torch.int64)
    ids_restore = torch.empty(N, L, device=device, dtype=torch.int64)
    mask = torch.empty(N, L, device=device, dtype=torch.float32)
    if N == 0 or L == 0:
        return ids_keep, ids_restore, mask
    has_noise = noise is not None
    block = triton.next_power_of_2(hw)
    _tube_mask_kernel[(N,)](
        noise if has_noise else mask, ids_keep if K > 0 else ids_restore, ids_restore, mask,
        hw, t, num_masked, seed, offset,
        noise.stride(0) if has_noise else 0, noise.stride(1) if has_noise else 0,
        HAS_NOISE=has_noise, BLOCK_HW=block, num_warps=_warps(block))  # random_masking's sort sizes
    return ids_keep, ids_restore, mask
