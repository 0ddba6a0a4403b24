"""Triton patchify family: one gather (images [N, C, H, W] or videos [N, C, T, H, W] -> [N, K, P] patch vectors)
and one scatter (the inverse), with the patches picked by ids_keep [N, K] or, without it, all L patches in order.
Samples are addressed by their strides (channels_last, channels_last_3d and non-contiguous views work); values
are copied, so results are bit-exact. A patch is a tubelet of u frames x ph x pw pixels (images: u = 1, time
stride 0); its vector is in (frame, p_row, p_col, c) order: entry j = ((a * ph + p_row) * pw + p_col) * C + c;
token l = (ti * h + hi) * w + wi. The gather may also round each element to another dtype (masked_patchify's
dtype), as imgs.to(dtype) rounds it."""
import os

import torch
import triton
import triton.language as tl


@triton.jit
def round_to(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """x (fp32 / fp16 / bf16) rounded once to `dtype`, to nearest even as ATen's casts. EMULATE_BF16: bf16 from and
    to fp32 by integer operations on the fp32 bits, for the CPU interpreter, whose fp32 -> bf16 cast truncates and
    whose bf16 -> fp32 cast loses subnormals (compiled kernels take the hardware's exact conversions)."""
    if EMULATE_BF16:
        if x.dtype == tl.bfloat16:
            x = (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
        else:
            x = x.to(tl.float32)
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            bits = tl.where(x == x, bits, 0x7FC0)  # NaN stays NaN (the carry could reach the sign bit)
            return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


def emulate_bf16(src_dtype, dtype):
    """round_to's EMULATE_BF16 for a src_dtype -> dtype conversion in this process."""
    return (os.environ.get("TRITON_INTERPRET") == "1" and src_dtype != dtype
            and torch.bfloat16 in (src_dtype, dtype))


@triton.jit
def _copy_kernel(src_ptr,  # gather: the sample [N, C, (T,) H, W] with strides s_*; scatter: [N * K, P] contiguous
                 ids_ptr,  # [N * K] int64 (unused without HAS_IDS)
                 dst_ptr,  # gather: [N * K, P] contiguous; scatter: the sample (only the listed patches are written)
                 K, s_n, s_c, s_t, s_h, s_w,  # s_t = 0 for images
                 U: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, C: tl.constexpr,
                 GRID_W: tl.constexpr, GRID_HW: tl.constexpr,
                 TO_IMAGE: tl.constexpr, HAS_IDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
                 EMULATE_BF16: tl.constexpr = False):
    """Copies patch vectors between the sample and their rows: a gather, or with TO_IMAGE a scatter. A program
    copies BLOCK_M patches of one sample; the patch sizes, C and the grid are constants, so no index math
    divides at run time except the one division per program that finds the sample."""
    P: tl.constexpr = U * PH * PW * C
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
    cell = l % GRID_HW  # hi * w + wi
    corner = n * s_n + (l // GRID_HW) * U * s_t + (cell // GRID_W) * PH * s_h + (cell % GRID_W) * PW * s_w
    q = cols // C  # (a * ph + p_row) * pw + p_col
    r = q // PW  # a * ph + p_row
    in_patch = ((cols % C).to(tl.int64) * s_c + (r // PH).to(tl.int64) * s_t + (r % PH).to(tl.int64) * s_h
                + (q % PW).to(tl.int64) * s_w)
    pixel = corner[:, None] + in_patch[None, :]
    row = (n * K + k)[:, None] * P + cols[None, :]
    if TO_IMAGE:
        tl.store(dst_ptr + pixel, tl.load(src_ptr + row, mask=mask), mask=mask)
    else:
        # dst's dtype may differ (a converting gather): each element rounded once; no-op otherwise
        tl.store(dst_ptr + row, round_to(tl.load(src_ptr + pixel, mask=mask), dst_ptr.dtype.element_ty, EMULATE_BF16),
                 mask=mask)


@triton.jit
def _scatter_bands_kernel(src_ptr,  # [N * K, P] contiguous patch vectors
                          ids_ptr,  # [N * K] int64: the patch of each row
                          dst_ptr,  # the sample [N, C, (T,) H, W], strides s_*: written whole (zeros included)
                          K, s_n, s_c, s_t, s_h,  # s_t = 0 for images; unit column stride
                          U: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, C: tl.constexpr,
                          GRID_H: tl.constexpr, GRID_W: tl.constexpr, BANDS: tl.constexpr, BB: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
                          BLOCK_X: tl.constexpr):
    """The masked scatter (masked_patchify's backward) in one pass, without a zero fill first: a program writes BB
    bands of a sample (a band: the GRID_W patches of tubelet row (ti, hi), U frames x PH rows x the image's width,
    C channels), the listed patches' values and zeros elsewhere. Its patches are the BB * GRID_W consecutive
    tokens from `first`; it finds the row k of ids[n, :] holding each (-1: none), then writes them as
    [BLOCK_R pixel rows (channel, frame, row), BLOCK_T patches, BLOCK_X columns] tiles."""
    P: tl.constexpr = U * PH * PW * C
    groups: tl.constexpr = (BANDS + BB - 1) // BB
    pid = tl.program_id(0).to(tl.int64)
    n = pid // groups
    first = pid % groups * (BB * GRID_W)  # token of the program's first patch
    t = tl.arange(0, BLOCK_T)
    row_of = tl.full([BLOCK_T], -1, tl.int64)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        d = tl.load(ids_ptr + n * K + ks, mask=ks < K, other=-1) - first
        hit = (d[None, :] == t[:, None]) & (ks < K)[None, :]
        row_of = tl.maximum(row_of, tl.max(tl.where(hit, ks[None, :], -1), axis=1))
    l = first + t  # the patches' tokens
    band = l // GRID_W
    x = tl.arange(0, BLOCK_X)
    in_row = ((t < BB * GRID_W) & (band < BANDS))[:, None] & (x < PW)[None, :]
    kept = in_row & (row_of >= 0)[:, None]
    src_row = ((n * K + tl.maximum(row_of, 0)) * P)[None, :, None]
    corner = ((band // GRID_H) * U * s_t + (band % GRID_H) * PH * s_h + (l % GRID_W) * PW)[:, None] + x[None, :]
    corner = n * s_n + corner[None, :, :]
    for r0 in range(0, C * U * PH, BLOCK_R):  # BLOCK_R pixel rows r = (c * U + a) * PH + p_row at a time
        r = r0 + tl.arange(0, BLOCK_R)
        c = (r // (U * PH))[:, None, None]
        a = (r // PH % U)[:, None, None]
        p_row = (r % PH)[:, None, None]
        rows_ok = (r < C * U * PH)[:, None, None]
        v = tl.load(src_ptr + src_row + (((a * PH + p_row) * PW + x[None, None, :]) * C + c),
                    mask=kept[None, :, :] & rows_ok, other=0)
        tl.store(dst_ptr + corner + c * s_c + a * s_t + p_row * s_h, v, mask=in_row[None, :, :] & rows_ok)

def _blocks(N, K, P, element_size):
    # Whole patch vectors per program where possible: few program instances (the CPU interpreter pays per
    # instance) and wide contiguous stores on the GPU: at most 4 warps, fewer for small tiles so that every
    # thread still moves 16 bytes at a time.
    block_p = min(triton.next_power_of_2(P), 1024)
    block_m = max(1, min(4096 // block_p, triton.next_power_of_2(K)))
    warps = max(1, min(4, block_m * block_p * element_size // (16 * 32)))
    return block_m, block_p, warps, (N * triton.cdiv(K, block_m), triton.cdiv(P, block_p))


def _strides(x):
    """(s_n, s_c, s_t, s_h, s_w) of a 4-D image (s_t = 0: one frame) or a 5-D video."""
    s = x.stride()
    return s if x.dim() == 5 else (s[0], s[1], 0, s[2], s[3])


def _launch(to_image, src, ids, dst, img, N, K, patch_size):
    u, ph, pw = patch_size
    C, H, W = img.shape[1], img.shape[-2], img.shape[-1]
    P = u * ph * pw * C
    if N * K == 0 or P == 0:
        return
    block_m, block_p, warps, grid = _blocks(N, K, P, img.element_size())
    has_ids = ids is not None
    ids = ids.contiguous() if has_ids else src  # any pointer when unused
    _copy_kernel[grid](src, ids, dst, K, *_strides(img), U=u, PH=ph, PW=pw, C=C, GRID_W=W // pw,
                       GRID_HW=(H // ph) * (W // pw), TO_IMAGE=to_image, HAS_IDS=has_ids, BLOCK_M=block_m,
                       BLOCK_P=block_p, EMULATE_BF16=emulate_bf16(src.dtype, dst.dtype), num_warps=warps)


def num_patches(sizes, patch_size):
    u, ph, pw = patch_size
    T, H, W = sizes if len(sizes) == 3 else (u, *sizes)
    return (T // u) * (H // ph) * (W // pw)


def gather(imgs, ids_keep, patch_size, dtype=None):
    """[N, K, u*ph*pw*C] patch vectors of imgs [N, C, (T,) H, W] (patch_size [u, ph, pw]; ids_keep [N, K] int64,
    or None for all L patches in order), in dtype (None: imgs'; else each element rounded to it once)."""
    u, ph, pw = patch_size
    N, C = imgs.shape[:2]
    K = ids_keep.shape[1] if ids_keep is not None else num_patches(imgs.shape[2:], patch_size)
    dtype = dtype or imgs.dtype
    if dtype != imgs.dtype and not {dtype, imgs.dtype} <= {torch.float32, torch.float16, torch.bfloat16}:
        raise TypeError(f"masked_patchify: dtype conversion supports float32, float16 and bfloat16, got "
                        f"{imgs.dtype} -> {dtype}")
    out = torch.empty(N, K, u * ph * pw * C, dtype=dtype, device=imgs.device)
    _launch(False, imgs, ids_keep, out, imgs, N, K, patch_size)
    return out


def scatter(patches, ids_keep, patch_size, image_size):
    """The sample [N, C, *image_size] (image_size [H, W] or [T, H, W]) holding the patch vectors at patches
    ids_keep (zero elsewhere: written band by band in one pass), or, with ids_keep None, at all L patches in order
    (the inverse of gather)."""
    patches = patches.contiguous()
    N, K, P = patches.shape
    u, ph, pw = patch_size
    C = P // (u * ph * pw)
    img = torch.empty(N, C, *image_size, dtype=patches.dtype, device=patches.device)
    if ids_keep is None:
        _launch(True, patches, None, img, img, N, K, patch_size)
        return img
    if img.numel() == 0:
        return img
    if K == 0 or P == 0:
        return img.zero_()
    H, W = image_size[-2:]
    grid_h, grid_w = H // ph, W // pw
    bands = (image_size[0] // u if len(image_size) == 3 else 1) * grid_h
    # Bands per program: whole image rows of patches, at least 16 patches per program where the rows are short
    # (fewer, fuller programs; ViT sizes: one band).
    bb = max(1, min(bands, 16 // grid_w))
    block_t, block_x = triton.next_power_of_2(bb * grid_w), triton.next_power_of_2(pw)
    rows = C * u * ph  # pixel rows of a band, over all channels and frames
    block_r = max(1, min(triton.next_power_of_2(rows), 4096 // (block_t * block_x)))
    warps = max(1, min(4, block_r * block_t * block_x * img.element_size() // (16 * 32)))
    s_n, s_c, s_t, s_h, _ = _strides(img)
    _scatter_bands_kernel[(N * triton.cdiv(bands, bb),)](
        patches, ids_keep.contiguous(), img, K, s_n, s_c, s_t, s_h, U=u, PH=ph, PW=pw, C=C, GRID_H=grid_h,
        GRID_W=grid_w, BANDS=bands, BB=bb, BLOCK_K=min(128, triton.next_power_of_2(K)), BLOCK_R=block_r,
        BLOCK_T=block_t, BLOCK_X=block_x, num_warps=warps)
    return img
