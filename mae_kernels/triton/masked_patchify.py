"""Triton patchify family: one gather (image -> [N, K, P] patch vectors) and one scatter (the inverse), with
the patches picked by ids_keep [N, K] or, without it, all L patches in order. Images are addressed by their
strides (channels_last and non-contiguous views work); values are copied, so results are bit-exact.
Patch vectors are in MAE's (p_row, p_col, c) order: entry j = (p_row * p + p_col) * C + c."""
import torch
import triton
import triton.language as tl


@triton.jit
def _copy_kernel(src_ptr,  # gather: the image [N, C, H, W] with strides s_*; scatter: [N * K, P] contiguous
                 ids_ptr,  # [N * K] int64 (unused without HAS_IDS)
                 dst_ptr,  # gather: [N * K, P] contiguous; scatter: the image (only the listed patches are written)
                 K, s_n, s_c, s_h, s_w,
                 p: tl.constexpr, C: tl.constexpr, GRID_W: tl.constexpr,
                 TO_IMAGE: tl.constexpr, HAS_IDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """Copies patch vectors between the image and their rows: a gather, or with TO_IMAGE a scatter. A program
    copies BLOCK_M patches of one sample; p, C and the grid width are constants, so no index math divides at
    run time except the one division per program that finds the sample."""
    P: tl.constexpr = p * p * C
    k_blocks = tl.cdiv(K, BLOCK_M)
    pid = tl.program_id(0).to(tl.int64)
    n = pid // k_blocks
    k = (pid % k_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32: divided by constants, then widened
    k_ok = k < K
    mask = k_ok[:, None] & (cols < P)[None, :]
    if HAS_IDS:
        l = tl.load(ids_ptr + n * K + k, mask=k_ok, other=0)
    else:
        l = k
    corner = n * s_n + (l // GRID_W) * p * s_h + (l % GRID_W) * p * s_w
    q = cols // C  # p_row * p + p_col
    in_patch = (cols % C).to(tl.int64) * s_c + (q // p).to(tl.int64) * s_h + (q % p).to(tl.int64) * s_w
    pixel = corner[:, None] + in_patch[None, :]
    row = (n * K + k)[:, None] * P + cols[None, :]
    if TO_IMAGE:
        tl.store(dst_ptr + pixel, tl.load(src_ptr + row, mask=mask), mask=mask)
    else:
        tl.store(dst_ptr + row, tl.load(src_ptr + pixel, mask=mask), mask=mask)


def _blocks(N, K, P, element_size):
    # Whole patch vectors per program where possible: few program instances (the CPU interpreter pays per
    # instance) and wide contiguous stores on the GPU: at most 4 warps, fewer for small tiles so that every
    # thread still moves 16 bytes at a time.
    block_p = min(triton.next_power_of_2(P), 1024)
    block_m = max(1, min(4096 // block_p, triton.next_power_of_2(K)))
    warps = max(1, min(4, block_m * block_p * element_size // (16 * 32)))
    return block_m, block_p, warps, (N * triton.cdiv(K, block_m), triton.cdiv(P, block_p))


def _launch(to_image, src, ids, dst, img, N, K, p):
    C, W = img.shape[1], img.shape[3]
    P = p * p * C
    if N * K == 0 or P == 0:
        return
    block_m, block_p, warps, grid = _blocks(N, K, P, img.element_size())
    has_ids = ids is not None
    ids = ids.contiguous() if has_ids else src  # any pointer when unused
    _copy_kernel[grid](src, ids, dst, K, *img.stride(), p=p, C=C, GRID_W=W // p,
                       TO_IMAGE=to_image, HAS_IDS=has_ids, BLOCK_M=block_m, BLOCK_P=block_p, num_warps=warps)


def gather(imgs, ids_keep, p):
    """[N, K, p*p*C] patch vectors of imgs (ids_keep [N, K] int64, or None for all L patches in order)."""
    N, C, H, W = imgs.shape
    K = ids_keep.shape[1] if ids_keep is not None else (H // p) * (W // p)
    out = torch.empty(N, K, p * p * C, dtype=imgs.dtype, device=imgs.device)
    _launch(False, imgs, ids_keep, out, imgs, N, K, p)
    return out


def scatter(patches, ids_keep, p, H, W):
    """The image [N, C, H, W] holding the patch vectors at patches ids_keep (zero elsewhere), or, with
    ids_keep None, at all L patches in order (the inverse of gather)."""
    patches = patches.contiguous()
    N, K, P = patches.shape
    C = P // (p * p)
    make = torch.zeros if ids_keep is not None else torch.empty
    img = make(N, C, H, W, dtype=patches.dtype, device=patches.device)
    _launch(True, patches, ids_keep, img, img, N, K, p)
    return img
