"""Triton masked MSE loss: one program per prediction row (a token). The target patch is read straight from
imgs [N, C, H, W] or videos [N, C, T, H, W] by strides (no patchified copy); rows whose mask weight is 0 load
nothing. One kernel serves forward and backward through constexpr switches:
  partial[row]   = w * sum_i (pred_i - t_i)^2                 (the loss is sum(partial) / (P * mask.sum()))
  grad_pred[row] = scale * w * (pred - t)                     (scale = 2 * grad_loss / (P * mask.sum()), or 0)
  grad_imgs      = (d - mean(d) - t * sum(d * t) / (P - 1)) / std   with d = -grad_pred[row]   (norm_pix_loss)
                 = d                                                                          (otherwise)
Per-token losses (reduction="none") are partial / P per token, with scale = 2 * grad_loss[token] / P (the
launcher folds grad_loss into w). The target of token l = (ti * h + hi) * w + wi: element
i = ((a * ph + pr) * pw + pc) * C + c is pixel (c, f, hi * ph + pr, wi * pw + pc), f = frames[ti * UT + a] with a
frame table (mae_st), else ti * u + a; un-normalised to x * pixel_norm[0, c] + pixel_norm[1, c] when given
(VideoMAE); normalised over the whole patch, t = (x - mean) / sqrt(var + eps), or per channel (PER_CHANNEL),
t = (x - mean_c) / (sqrt(var_c) + eps) over the UT * ph * pw pixels of channel c; unbiased variances.
Statistics in fp32: mean of the values shifted by the first pixel, then the centred squares (two-pass variance),
all from registers. Divisions are IEEE round-to-nearest (div_rn: Triton's `/` is approximate on GPUs).
ph, pw, UT and C are compile-time constants, so the per-element index math divides by constants (multiplications).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _masked_mse_rows_kernel(
    pred_ptr,       # [N, R, P] pred dtype, contiguous
    imgs_ptr,       # [N, C, T, H, W] any float dtype, strides (s_n, s_c, s_t, s_h, s_w); images: T = 1, s_t = 0
    mask_ptr,       # [N, L] float32, contiguous (each token's loss weight)
    ids_ptr,        # [N, R] int64 token of each pred row (HAS_IDS), else a dummy (row j is token j)
    scale_ptr,      # [1] float32: gradient multiplier 2 * grad_loss / (P * mask.sum()) (0 when the sum is 0), or 2 / P
    partial_ptr,    # [N * R] float32 out (WRITE_PARTIAL)
    grad_pred_ptr,  # [N, R, P] pred dtype out (WRITE_GRAD_PRED)
    grad_imgs_ptr,  # [N, C, T, H, W] imgs dtype, contiguous, zero-filled out (WRITE_GRAD_IMGS)
    frames_ptr,     # [t * UT] int64 target frame of each (ti, a) (HAS_FRAMES), else a dummy
    norm_ptr,       # [2, C] float32 pixel std and mean (HAS_PIXEL_NORM), else a dummy
    R, L, w_patches, hw, u, T, H, W,
    s_n, s_c, s_t, s_h, s_w, eps,
    ph: tl.constexpr, pw: tl.constexpr, UT: tl.constexpr, C: tl.constexpr, HAS_IDS: tl.constexpr,
    NORM: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_FRAMES: tl.constexpr, HAS_PIXEL_NORM: tl.constexpr,
    WRITE_PARTIAL: tl.constexpr, WRITE_GRAD_PRED: tl.constexpr, WRITE_GRAD_IMGS: tl.constexpr, BLOCK: tl.constexpr,
):
    P: tl.constexpr = UT * ph * pw * C
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
    active0 = w != 0.0
    i = tl.arange(0, BLOCK)  # int32: divided by constants below, widened before it meets a stride
    in_row = i < P
    active = i < tl.where(active0, P, 0)  # kept patches: no memory traffic
    # Patch vector element i = ((a * ph + pr) * pw + pc) * C + c  <->  pixel (c, f, hp * ph + pr, wp * pw + pc).
    a = (i // (ph * pw * C)).to(tl.int64)
    pr = (i // (pw * C) % ph).to(tl.int64)
    pc = (i // C % pw).to(tl.int64)
    c = (i % C).to(tl.int64)
    ti = l // hw  # the token's place: a few divisions per row
    s = l % hw
    y0 = (s // w_patches) * ph
    x0 = (s % w_patches) * pw
    if HAS_FRAMES:
        f = tl.load(frames_ptr + ti * UT + a, mask=active, other=0)
        f0 = tl.load(frames_ptr + ti * UT, mask=active0, other=0)
    else:
        f = ti * u + a
        f0 = ti * u
    corner = imgs_ptr + n * s_n + y0 * s_h + x0 * s_w
    x = tl.load(corner + c * s_c + f * s_t + pr * s_h + pc * s_w, mask=active, other=0.0).to(tl.float32)
    if HAS_PIXEL_NORM:
        x = x * tl.load(norm_ptr + c, mask=active, other=0.0) + tl.load(norm_ptr + C + c, mask=active, other=0.0)
    y = tl.load(pred_ptr + row * P + i, mask=active, other=0.0).to(tl.float32)
    std = 1.0
    if NORM:
        if PER_CHANNEL:
            Q: tl.constexpr = UT * ph * pw
            t = tl.zeros([BLOCK], dtype=tl.float32)
            for cc in tl.static_range(C):
                sel = active & (c == cc)
                # the channel's first pixel (element cc): a shift that keeps the sums exact for large offsets
                shift = tl.load(corner + cc * s_c + f0 * s_t, mask=active0, other=0.0).to(tl.float32)
                if HAS_PIXEL_NORM:
                    shift = shift * tl.load(norm_ptr + cc) + tl.load(norm_ptr + C + cc)
                mean = shift + tl.math.div_rn(tl.sum(tl.where(sel, x - shift, 0.0), axis=0), Q * 1.0)
                xc = tl.where(sel, x - mean, 0.0)
                var = tl.math.div_rn(tl.sum(xc * xc, axis=0), Q - 1.0)
                # Kept rows read nothing: denominator 1 there (eps = 0 would give 0 / 0 = NaN).
                denom = tl.where(active0, tl.sqrt_rn(var) + eps, 1.0)
                t = tl.where(sel, tl.math.div_rn(xc, denom), t)
        else:
            # Shifted by the patch's first pixel: exact for large offsets (two-pass variance on top).
            shift = tl.load(corner + f0 * s_t, mask=active0, other=0.0).to(tl.float32)
            if HAS_PIXEL_NORM:
                shift = shift * tl.load(norm_ptr) + tl.load(norm_ptr + C)
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
        if WRITE_GRAD_IMGS:  # the tubelet's own frames, all-channel or raw target (the op refuses the others)
            d = -g
            if NORM:
                mean_d = tl.math.div_rn(tl.sum(d, axis=0), P * 1.0)
                d = tl.math.div_rn(d - mean_d - t * tl.math.div_rn(tl.sum(d * t, axis=0), P - 1.0), std)
            dst = (((n * C + c) * T + f) * H + y0 + pr) * W + x0 + pc
            tl.store(grad_imgs_ptr + dst, d.to(grad_imgs_ptr.dtype.element_ty), mask=active)


def _gradient_scale(mask, P, grad_loss=None):
    """[1] float32: 2 * grad_loss / (P * mask.sum()), 0 when mask.sum() == 0 (no sync with the host)."""
    total = mask.sum()
    scale = torch.where(total != 0, 2.0 / (P * total), torch.zeros_like(total))
    if grad_loss is not None:
        scale = scale * grad_loss.float()
    return scale.reshape(1)


def _token_scale(mask, P):
    """[1] float32 2 / P: per-token losses, the upstream gradient folded into the weights."""
    return torch.full((1,), 2.0 / P, device=mask.device, dtype=torch.float32)


def _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, partial, grad_pred, grad_imgs,
            frames=None, pixel_norm=None, per_channel=False):
    N, R, P = pred.shape
    video = imgs.dim() == 5
    C, H, W = imgs.shape[1], imgs.shape[-2], imgs.shape[-1]
    T = imgs.shape[2] if video else 1
    u, ph, pw = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
    u = u if video else 1
    ut = frames.numel() // (T // u) if frames is not None else u
    L = mask.shape[1]
    if N * R == 0:
        return
    block = triton.next_power_of_2(P)
    dummy = scale
    s_n, s_c = imgs.stride(0), imgs.stride(1)
    s_t = imgs.stride(2) if video else 0
    _masked_mse_rows_kernel[(N * R,)](
        pred, imgs, mask, ids_rows if ids_rows is not None else dummy, scale,
        partial if partial is not None else dummy,
        grad_pred if grad_pred is not None else dummy,
        grad_imgs if grad_imgs is not None else dummy,
        frames if frames is not None else dummy,
        pixel_norm if pixel_norm is not None else dummy,
        R, L, W // pw, (H // ph) * (W // pw), u, T, H, W,
        s_n, s_c, s_t, imgs.stride(-2), imgs.stride(-1), eps,
        ph=ph, pw=pw, UT=ut, C=C, HAS_IDS=ids_rows is not None, NORM=norm_pix_loss, PER_CHANNEL=per_channel,
        HAS_FRAMES=frames is not None, HAS_PIXEL_NORM=pixel_norm is not None, WRITE_PARTIAL=partial is not None,
        WRITE_GRAD_PRED=grad_pred is not None, WRITE_GRAD_IMGS=grad_imgs is not None,
        BLOCK=block, num_warps=max(1, min(16, block // 256)),
    )


def masked_mse_loss_forward(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad,
                            target_frames=None, pixel_norm=None, per_channel=False, per_token=False):
    """(loss: fp32 scalar, or [N, L] per-token w * l when per_token; grad_pred for grad_loss = 1 (ones) in pred's
    dtype, or an empty tensor)."""
    N, R, P = pred.shape
    scale = _token_scale(mask, P) if per_token else _gradient_scale(mask, P)
    partial = torch.empty(N * R, device=pred.device, dtype=torch.float32)
    grad_pred = torch.empty_like(pred) if with_grad else None
    _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, partial, grad_pred, None,
            target_frames, pixel_norm, per_channel)
    if per_token:
        rows = partial.view(N, R) / P
        loss = rows if ids_rows is None else torch.zeros_like(mask).scatter_(1, ids_rows, rows)
    else:
        loss = partial.sum() * (scale[0] / 2)
    return loss, grad_pred if with_grad else pred.new_empty(0)


def masked_mse_loss_backward(grad_loss, pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps,
                             need_pred, need_imgs, target_frames=None, pixel_norm=None, per_channel=False,
                             per_token=False):
    """(grad_pred or empty, grad_imgs (contiguous) or empty) for the upstream gradient grad_loss (a scalar, or
    [N, L] when per_token)."""
    if need_imgs and (target_frames is not None or pixel_norm is not None or per_channel):
        raise RuntimeError("mae_kernels::masked_mse_loss_backward_triton: no imgs gradient with target_frames, "
                           "pixel_norm or per_channel (the target is data there)")
    P = pred.shape[2]
    if per_token:
        mask = (mask * grad_loss.float()).contiguous()
        scale = _token_scale(mask, P)
    else:
        scale = _gradient_scale(mask, P, grad_loss)
    grad_pred = torch.empty_like(pred) if need_pred else None
    grad_imgs = torch.zeros(imgs.shape, device=imgs.device, dtype=imgs.dtype) if need_imgs else None
    if need_pred or need_imgs:
        _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, None, grad_pred, grad_imgs,
                target_frames, pixel_norm, per_channel)
    return (grad_pred if need_pred else pred.new_empty(0),
            grad_imgs if need_imgs else imgs.new_empty(0))
