"""Triton patchify family: one gather (image -> [N, K, P] patch vectors) and one scatter (the inverse), with
the patches picked by ids_keep [N, K] or, without it, all L patches in order. Images are addressed by their
strides (channels_last and non-contiguous views work); values are copied, so results are bit-exact.
Patch vectors are in MAE's (p_row, p_col, c) order: entry j = (p_row * p + p_col) * C + c."""
import torch
import triton
import triton.language as tl


@triton.jit
def _patch_offsets(rows, cols, ids_ptr, row_mask, K, C, p, grid_w, s_n, s_c, s_h, s_w, HAS_IDS: tl.constexpr):
    """Element offsets [BLOCK_M, BLOCK_P] into the image of entries `cols` of patch rows `rows` (= n * K + k)."""
    if HAS_IDS:
        l = tl.load(ids_ptr + rows, mask=row_mask, other=0)
    else:
        l = rows % K
    row_off = (rows // K) * s_n + (l // grid_w) * p * s_h + (l % grid_w) * p * s_w
    q = cols // C  # p_row * p + p_col
    col_off = (cols % C) * s_c + (q // p) * s_h + (q % p) * s_w
    return row_off[:, None] + col_off[None, :]


@triton.jit
def _copy_kernel(src_ptr,  # gather: the image [N, C, H, W] with strides s_*; scatter: [N * K, P] contiguous
                 ids_ptr,  # [N * K] int64 (unused without HAS_IDS)
                 dst_ptr,  # gather: [N * K, P] contiguous; scatter: the image (only the listed patches are written)
                 M, K, P, C, p, grid_w, s_n, s_c, s_h, s_w,
                 TO_IMAGE: tl.constexpr, HAS_IDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """Copies patch vectors between the image and their rows: a gather, or with TO_IMAGE a scatter."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = (rows < M)[:, None] & (cols < P)[None, :]
    pixel = _patch_offsets(rows, cols, ids_ptr, rows < M, K, C, p, grid_w, s_n, s_c, s_h, s_w, HAS_IDS)
    row = rows[:, None] * P + cols[None, :]
    if TO_IMAGE:
        tl.store(dst_ptr + pixel, tl.load(src_ptr + row, mask=mask), mask=mask)
    else:
        tl.store(dst_ptr + row, tl.load(src_ptr + pixel, mask=mask), mask=mask)


def _blocks(M, P):
    # Whole patch vectors per program where possible: few program instances (the CPU interpreter pays per
    # instance) and wide contiguous stores on the GPU.
    block_p = min(triton.next_power_of_2(P), 1024)
    block_m = max(1, min(4096 // block_p, triton.next_power_of_2(M)))
    return block_m, block_p, (triton.cdiv(M, block_m), triton.cdiv(P, block_p))


def _launch(to_image, src, ids, dst, img, N, K, p):
    C, W = img.shape[1], img.shape[3]
    P, M = p * p * C, N * K
    if M == 0 or P == 0:
        return
    block_m, block_p, grid = _blocks(M, P)
    has_ids = ids is not None
    ids = ids.contiguous() if has_ids else src  # any pointer when unused
    _copy_kernel[grid](src, ids, dst, M, K, P, C, p, W // p, *img.stride(),
                       TO_IMAGE=to_image, HAS_IDS=has_ids, BLOCK_M=block_m, BLOCK_P=block_p)


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
