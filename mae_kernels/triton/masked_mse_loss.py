"""Triton masked MSE loss: one program per prediction row (a patch). The target patch is read straight from
imgs by strides (no patchified copy); rows whose mask weight is 0 load nothing. One kernel serves forward and
backward through constexpr switches:
  partial[row]   = w * sum_i (pred_i - t_i)^2                 (the loss is sum(partial) / (P * mask.sum()))
  grad_pred[row] = scale * w * (pred - t)                     (scale = 2 * grad_loss / (P * mask.sum()), or 0)
  grad_imgs      = (d - mean(d) - t * sum(d * t) / (P - 1)) / std   with d = -grad_pred[row]   (norm_pix_loss)
                 = d                                                                          (otherwise)
Statistics in fp32: mean of the values shifted by the patch's first pixel, then the centred squares (two-pass
variance), all from registers. Divisions are IEEE round-to-nearest (div_rn: Triton's `/` is approximate on GPUs).
p and C are compile-time constants, so the per-element index math divides by constants (multiplications).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _masked_mse_rows_kernel(
    pred_ptr,       # [N, R, P] pred dtype, contiguous
    imgs_ptr,       # [N, C, H, W] any float dtype, strides (s_n, s_c, s_h, s_w)
    mask_ptr,       # [N, L] float32, contiguous
    ids_ptr,        # [N, R] int64 patch of each pred row (HAS_IDS), else a dummy (row j is patch j)
    scale_ptr,      # [1] float32: gradient multiplier 2 * grad_loss / (P * mask.sum()), 0 when the sum is 0
    partial_ptr,    # [N * R] float32 out (WRITE_PARTIAL)
    grad_pred_ptr,  # [N, R, P] pred dtype out (WRITE_GRAD_PRED)
    grad_imgs_ptr,  # [N, C, H, W] imgs dtype, contiguous, zero-filled out (WRITE_GRAD_IMGS)
    R, L, w_patches, H, W,
    s_n, s_c, s_h, s_w, eps,
    p: tl.constexpr, C: tl.constexpr, HAS_IDS: tl.constexpr, NORM: tl.constexpr, WRITE_PARTIAL: tl.constexpr,
    WRITE_GRAD_PRED: tl.constexpr, WRITE_GRAD_IMGS: tl.constexpr, BLOCK: tl.constexpr,
):
    P: tl.constexpr = p * p * C
    row = tl.program_id(0).to(tl.int64)
    n = row // R
    if HAS_IDS:
        l = tl.load(ids_ptr + row)
    else:
        l = row % R
    in_range = (l >= 0) & (l < L)  # validated in Python; never read out of bounds even if not
    l = tl.where(in_range, l, 0)
    w = tl.load(mask_ptr + n * L + l)
    w = tl.where(in_range, w, 0.0)
    i = tl.arange(0, BLOCK)  # int32: divided by constants below, widened before it meets a stride
    in_row = i < P
    active = i < tl.where(w != 0.0, P, 0)  # kept patches: no memory traffic
    # Patch vector element i = (pr * p + pc) * C + c  <->  pixel (c, hp * p + pr, wp * p + pc).
    pr = (i // (p * C)).to(tl.int64)
    pc = (i // C % p).to(tl.int64)
    c = (i % C).to(tl.int64)
    y0 = (l // w_patches) * p  # the patch's corner: one division per row
    x0 = (l % w_patches) * p
    corner = imgs_ptr + n * s_n + y0 * s_h + x0 * s_w
    x = tl.load(corner + c * s_c + pr * s_h + pc * s_w, mask=active, other=0.0).to(tl.float32)
    y = tl.load(pred_ptr + row * P + i, mask=active, other=0.0).to(tl.float32)
    if NORM:
        # Shifted by the patch's first pixel: exact for large offsets (two-pass variance on top).
        active0 = w != 0.0
        shift = tl.load(corner, mask=active0, other=0.0).to(tl.float32)
        mean = shift + tl.math.div_rn(tl.sum(tl.where(active, x - shift, 0.0), axis=0), P * 1.0)
        xc = tl.where(active, x - mean, 0.0)
        var = tl.math.div_rn(tl.sum(xc * xc, axis=0), P - 1.0)
        # Kept rows read nothing (var = 0): std 1 there, or eps = 0 would make their t = 0 / 0 = NaN.
        std = tl.sqrt_rn(tl.where(active0, var + eps, 1.0))
        t = tl.math.div_rn(xc, std)
    else:
        t = x
    diff = y - t  # 0 outside the active row
    if WRITE_PARTIAL:
        tl.store(partial_ptr + row, w * tl.sum(diff * diff, axis=0))
    if WRITE_GRAD_PRED or WRITE_GRAD_IMGS:
        g = diff * (w * tl.load(scale_ptr))
        if WRITE_GRAD_PRED:
            tl.store(grad_pred_ptr + row * P + i, g.to(grad_pred_ptr.dtype.element_ty), mask=in_row)
        if WRITE_GRAD_IMGS:
            d = -g
            if NORM:
                mean_d = tl.math.div_rn(tl.sum(d, axis=0), P * 1.0)
                d = tl.math.div_rn(d - mean_d - t * tl.math.div_rn(tl.sum(d * t, axis=0), P - 1.0), std)
            dst = ((n * C + c) * H + y0 + pr) * W + x0 + pc
            tl.store(grad_imgs_ptr + dst, d.to(grad_imgs_ptr.dtype.element_ty), mask=active)


def _gradient_scale(mask, P, grad_loss=None):
    """[1] float32: 2 * grad_loss / (P * mask.sum()), 0 when mask.sum() == 0 (no sync with the host)."""
    total = mask.sum()
    scale = torch.where(total != 0, 2.0 / (P * total), torch.zeros_like(total))
    if grad_loss is not None:
        scale = scale * grad_loss.float()
    return scale.reshape(1)


def _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, partial, grad_pred, grad_imgs):
    N, R, P = pred.shape
    _, C, H, W = imgs.shape
    L = mask.shape[1]
    if N * R == 0:
        return
    block = triton.next_power_of_2(P)
    dummy = scale
    _masked_mse_rows_kernel[(N * R,)](
        pred, imgs, mask, ids_rows if ids_rows is not None else dummy, scale,
        partial if partial is not None else dummy,
        grad_pred if grad_pred is not None else dummy,
        grad_imgs if grad_imgs is not None else dummy,
        R, L, W // patch_size, H, W,
        *imgs.stride(), eps,
        p=patch_size, C=C, HAS_IDS=ids_rows is not None, NORM=norm_pix_loss, WRITE_PARTIAL=partial is not None,
        WRITE_GRAD_PRED=grad_pred is not None, WRITE_GRAD_IMGS=grad_imgs is not None,
        BLOCK=block, num_warps=max(1, min(16, block // 256)),
    )


def masked_mse_loss_forward(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad):
    """(loss fp32 scalar, grad_pred for grad_loss = 1 in pred's dtype, or an empty tensor)."""
    N, R, P = pred.shape
    scale = _gradient_scale(mask, P)
    partial = torch.empty(N * R, device=pred.device, dtype=torch.float32)
    grad_pred = torch.empty_like(pred) if with_grad else None
    _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, partial, grad_pred, None)
    loss = partial.sum() * (scale[0] / 2)
    return loss, grad_pred if with_grad else pred.new_empty(0)


def masked_mse_loss_backward(grad_loss, pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps,
                             need_pred, need_imgs):
    """(grad_pred or empty, grad_imgs (contiguous) or empty) for the scalar upstream gradient grad_loss."""
    P = pred.shape[2]
    scale = _gradient_scale(mask, P, grad_loss)
    grad_pred = torch.empty_like(pred) if need_pred else None
    grad_imgs = torch.zeros(imgs.shape, device=imgs.device, dtype=imgs.dtype) if need_imgs else None
    if need_pred or need_imgs:
        _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, None, grad_pred, grad_imgs)
    return (grad_pred if need_pred else pred.new_empty(0),
            grad_imgs if need_imgs else imgs.new_empty(0))
