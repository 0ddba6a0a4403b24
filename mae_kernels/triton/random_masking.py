"""Triton random masking: one program per sample row does noise (loaded or drawn with Philox), a per-row sort
of (order-preserving key, index) pairs, the index outputs and the gather of the kept rows, in one launch.

Sort key: the float32 noise bits mapped to an int32 whose order is the float order (-0.0 folded onto +0.0,
every NaN mapped to the largest key), shifted up 32 bits, OR the index: a plain int64 sort then gives exactly
torch.argsort(noise, dim=1, stable=True) (NaN last, ties by lower index).

Noise None: u[n, l] = (philox4x32_10(key=seed, counter=(o lo32, o hi32, s lo32, s hi32)).x >> 8) * 2^-24 with
o = offset / 4 and subsequence s = n*L + l: float32 uniform in [0, 1) with 24 bits, like torch.rand. This is
torch's own convention (curand_init(seed, subsequence, offset)): the generator's offset counts Philox outputs in
units of 4 and each element consumes one block of 4, so the caller advances it by 4 and no later torch kernel
draws these numbers again. The CUDA kernel draws the same.
"""
import torch
import triton
import triton.language as tl

MAX_L = 8192  # longest row the per-program sort handles (validated in ops/random_masking.py)
_INT64_MAX = tl.constexpr(9223372036854775807)  # a compiled kernel reads only constexpr globals


@triton.jit
def _uniform(seed, offset, subsequence):
    """float32 in [0, 1) from Philox4x32-10 keyed by seed: counter (offset / 4, subsequence), both 64-bit (the
    subsequence an int64 tensor), first output."""
    block = offset.to(tl.int64) // 4  # an int32 argument when small: widen before the 32-bit shift
    s_lo = subsequence.to(tl.uint32)  # truncation: the low 32 bits
    s_hi = (subsequence >> 32).to(tl.uint32)
    o_lo = s_lo * 0 + block.to(tl.uint32)
    o_hi = s_lo * 0 + (block >> 32).to(tl.uint32)
    r0, _r1, _r2, _r3 = tl.philox(seed, o_lo, o_hi, s_lo, s_hi)
    return (r0 >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit(do_not_specialize=["seed", "offset"])  # a new offset every step: never a reason to recompile
def _random_masking_fwd_kernel(
    x_ptr,            # [N, L, D] any dtype, strides (sxn, sxl, sxd); a dummy when D == 0
    noise_ptr,        # [N, L] float32, strides (snn, snl); a dummy when HAS_NOISE is False
    x_masked_ptr,     # [N, K, D] x's dtype, contiguous
    mask_ptr,         # [N, L] float32, contiguous
    ids_restore_ptr,  # [N, L] int64, contiguous
    ids_keep_ptr,     # [N, K] int64, contiguous
    L, K, D, seed, offset,
    sxn, sxl, sxd, snn, snl,
    HAS_NOISE: tl.constexpr, HAS_D: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    l = tl.arange(0, BLOCK_L).to(tl.int64)
    valid = l < L
    if HAS_NOISE:
        v = tl.load(noise_ptr + n * snn + l * snl, mask=valid, other=0.0)
    else:
        v = _uniform(seed, offset, n * L + l)
    # Zero and NaN from the bits: compiled float compares flush denormals to zero (denormal v == 0.0).
    bits = v.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    bits = tl.where(magnitude == 0, 0, bits)                   # -0.0 == +0.0: a tie, broken by index
    bits = tl.where(magnitude > 0x7F800000, 0x7FFFFFFF, bits)  # NaN after everything (+inf included)
    bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)         # negative floats: reverse the magnitude order
    key = (bits.to(tl.int64) << 32) | l
    key = tl.where(valid, key, _INT64_MAX)        # padding sorts last
    key = tl.sort(key)
    idx = (key & 0xFFFFFFFF).to(tl.int64)  # rank l holds the index of the l-th smallest noise
    row = n * L
    tl.store(ids_restore_ptr + row + idx, l, mask=valid)
    tl.store(mask_ptr + row + idx, tl.where(l >= K, 1.0, 0.0), mask=valid)
    tl.store(ids_keep_ptr + n * K + l, idx, mask=l < K)
    if HAS_D:
        tl.debug_barrier()  # ids_keep is read back below by other threads of this program
        rd = tl.arange(0, BLOCK_D).to(tl.int64)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            km = k < K
            src = tl.load(ids_keep_ptr + n * K + k, mask=km, other=0)
            src_row = x_ptr + n * sxn + src * sxl
            dst_row = x_masked_ptr + (n * K + k) * D
            for d0 in range(0, D, BLOCK_D):
                d = d0 + rd
                m = km[:, None] & (d < D)[None, :]
                val = tl.load(src_row[:, None] + d[None, :] * sxd, mask=m)
                tl.store(dst_row[:, None] + d[None, :], val, mask=m)


@triton.jit
def _random_masking_bwd_kernel(
    grad_ptr,         # [N, K, D] contiguous
    ids_keep_ptr,     # [N, K] int64 contiguous
    inv_ptr,          # [N, L] int32 scratch: the rank of each index among the kept ones, -1 when removed
    grad_x_ptr,       # [N, L, D] contiguous, every element written once
    L, K, D,
    BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    l = tl.arange(0, BLOCK_L).to(tl.int64)
    tl.store(inv_ptr + n * L + l, tl.full([BLOCK_L], -1, tl.int32), mask=l < L)
    tl.debug_barrier()
    src = tl.load(ids_keep_ptr + n * K + l, mask=l < K, other=0)
    tl.store(inv_ptr + n * L + src, l.to(tl.int32), mask=l < K)
    tl.debug_barrier()
    rd = tl.arange(0, BLOCK_D).to(tl.int64)
    for r0 in range(0, L, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        rm = r < L
        j = tl.load(inv_ptr + n * L + r, mask=rm, other=-1).to(tl.int64)
        kept = rm & (j >= 0)
        src_row = grad_ptr + (n * K + j) * D
        dst_row = grad_x_ptr + (n * L + r) * D
        for d0 in range(0, D, BLOCK_D):
            d = d0 + rd
            dm = (d < D)[None, :]
            val = tl.load(src_row[:, None] + d[None, :], mask=kept[:, None] & dm, other=0.0)
            tl.store(dst_row[:, None] + d[None, :], val, mask=rm[:, None] & dm)


def _tile(rows, D):
    """(BLOCK_rows, BLOCK_D): about 4096 elements per tile."""
    block_d = min(triton.next_power_of_2(max(D, 1)), 1024)
    block_r = max(1, min(triton.next_power_of_2(max(rows, 1)), 4096 // block_d))
    return block_r, block_d


def _warps(block_l):
    # 16 warps for the longest rows: 8192 keys at 8 warps needed 245 registers per thread and took ~5x longer to
    # compile (about 100 s) than at 16 warps (128 registers, no spills; mae_kernels.triton.compile_check).
    return 16 if block_l >= 4096 else 8 if block_l >= 2048 else 4


def random_masking_forward(x, noise, len_keep, seed, offset):
    """(x_masked [N, K, D], mask [N, L] f32, ids_restore [N, L] i64, ids_keep [N, K] i64); see the module doc."""
    N, L, D = x.shape
    K = len_keep
    x_masked = x.new_empty(N, K, D)
    mask = torch.empty(N, L, device=x.device, dtype=torch.float32)
    ids_restore = torch.empty(N, L, device=x.device, dtype=torch.int64)
    ids_keep = torch.empty(N, K, device=x.device, dtype=torch.int64)
    if N == 0 or L == 0:
        return x_masked, mask, ids_restore, ids_keep
    has_noise = noise is not None
    has_d = D > 0 and K > 0
    block_l = triton.next_power_of_2(L)
    block_k, block_d = _tile(K, D)
    _random_masking_fwd_kernel[(N,)](
        x if has_d else mask, noise if has_noise else mask, x_masked if has_d else mask,
        mask, ids_restore, ids_keep,
        L, K, D, seed, offset,
        x.stride(0), x.stride(1), x.stride(2),
        noise.stride(0) if has_noise else 0, noise.stride(1) if has_noise else 0,
        HAS_NOISE=has_noise, HAS_D=has_d, BLOCK_L=block_l, BLOCK_K=block_k, BLOCK_D=block_d,
        num_warps=_warps(block_l))
    return x_masked, mask, ids_restore, ids_keep


def random_masking_backward(grad_x_masked, ids_keep, L):
    """grad_x [N, L, D]: grad_x[n, ids_keep[n, k]] = grad_x_masked[n, k], zero elsewhere."""
    grad = grad_x_masked.contiguous()
    ids_keep = ids_keep.contiguous()
    N, K, D = grad.shape
    grad_x = grad.new_empty(N, L, D)
    if grad_x.numel() == 0:
        return grad_x
    inv = torch.empty(N, L, device=grad.device, dtype=torch.int32)
    block_l = triton.next_power_of_2(L)
    block_r, block_d = _tile(L, D)
    _random_masking_bwd_kernel[(N,)](
        grad if K > 0 else grad_x, ids_keep if K > 0 else inv, inv, grad_x, L, K, D,
        BLOCK_L=block_l, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=_warps(block_l))
    return grad_x
