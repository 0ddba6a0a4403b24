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
pred [N, R, P] and the ids rows are read by their row strides (the model's x[:, 1:, :] view and the removed-only
slice of ids_shuffle are not copied). A forward is three launches, as the CUDA backend's: a one-program kernel for
the gradient scale (mask.sum() in a fixed order), the rows, a one-program kernel for the total (fixed order); two
without a gradient to write (the total kernel sums the mask itself); per-token losses are written by the rows
kernel straight into [N, L] (after a zero fill when the rows cover only some tokens).
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _masked_mse_rows_kernel(
    pred_ptr,       # [N, R, P] pred dtype, strides (s_pn, s_pr, 1): the model's x[:, 1:, :] view, read in place
    imgs_ptr,       # [N, C, T, H, W] any float dtype, strides (s_n, s_c, s_t, s_h, s_w); images: T = 1, s_t = 0
    mask_ptr,       # [N, L] float32, contiguous (each token's loss weight)
    ids_ptr,        # [N, R] int64 token of each pred row, strides (s_in, s_ir) (HAS_IDS), else a dummy (row j:
                    # token j)
    scale_ptr,      # [1] float32: gradient multiplier 2 * grad_loss / (P * mask.sum()) (0 when the sum is 0), or a
                    # dummy with TOKEN_SCALE (then token_scale = 2 / P, an argument: no fill kernel)
    partial_ptr,    # [N * R] float32 out (WRITE_PARTIAL), or [N, L] float32 per-token losses partial / P (PER_TOKEN)
    grad_pred_ptr,  # [N, R, P] pred dtype out (WRITE_GRAD_PRED)
    grad_imgs_ptr,  # [N, C, T, H, W] imgs dtype, contiguous, zero-filled out (WRITE_GRAD_IMGS)
    frames_ptr,     # [t * UT] int64 target frame of each (ti, a) (HAS_FRAMES), else a dummy
    norm_ptr,       # [2, C] float32 pixel std and mean (HAS_PIXEL_NORM), else a dummy
    R, L, w_patches, hw, u, T, H, W,
    s_n, s_c, s_t, s_h, s_w, s_pn, s_pr, s_in, s_ir, eps, token_scale,
    ph: tl.constexpr, pw: tl.constexpr, UT: tl.constexpr, C: tl.constexpr, HAS_IDS: tl.constexpr,
    NORM: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_FRAMES: tl.constexpr, HAS_PIXEL_NORM: tl.constexpr,
    WRITE_PARTIAL: tl.constexpr, PER_TOKEN: tl.constexpr, TOKEN_SCALE: tl.constexpr,
    WRITE_GRAD_PRED: tl.constexpr, WRITE_GRAD_IMGS: tl.constexpr, BLOCK: tl.constexpr,
):
    P: tl.constexpr = UT * ph * pw * C
    row = tl.program_id(0).to(tl.int64)
    n = row // R
    j = row - n * R
    if HAS_IDS:
        l = tl.load(ids_ptr + n * s_in + j * s_ir)
    else:
        l = j
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
    y = tl.load(pred_ptr + n * s_pn + j * s_pr + i, mask=active, other=0.0).to(tl.float32)
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
        part = w * tl.sum(diff * diff, axis=0)
        if PER_TOKEN:  # the token's loss w * l straight into [N, L] (zero-filled when rows cover only some tokens)
            tl.store(partial_ptr + n * L + l, tl.math.div_rn(part, P * 1.0), mask=in_range)
        else:
            tl.store(partial_ptr + row, part)
    if WRITE_GRAD_PRED or WRITE_GRAD_IMGS:
        if TOKEN_SCALE:
            g = diff * (w * token_scale)
        else:
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


@triton.jit
def _scale_of(mask_ptr, count, P, grad_loss_ptr, HAS_GRAD_LOSS: tl.constexpr, BLOCK: tl.constexpr):
    """2 * grad_loss / (P * mask.sum()) in fp32, 0 when the sum is 0; the sum in a fixed order (deterministic).
    Rounded as the torch expression it replaces: P * total, then 2 / that (torch's 2 / x is reciprocal(x) * 2, the
    same value), then * grad_loss."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, count, BLOCK):
        k = start + tl.arange(0, BLOCK).to(tl.int64)
        acc += tl.load(mask_ptr + k, mask=k < count, other=0.0)
    total = tl.sum(acc, axis=0)
    scale = tl.where(total != 0.0, tl.math.div_rn(2.0, P * total), 0.0)
    if HAS_GRAD_LOSS:
        scale = scale * tl.load(grad_loss_ptr).to(tl.float32)
    return scale


@triton.jit
def _masked_mse_scale_kernel(mask_ptr, count, P, grad_loss_ptr, scale_ptr,
                             HAS_GRAD_LOSS: tl.constexpr, BLOCK: tl.constexpr):
    """One program: scale[0] = 2 * grad_loss / (P * mask.sum()) (0 when the sum is 0)."""
    tl.store(scale_ptr, _scale_of(mask_ptr, count, P, grad_loss_ptr, HAS_GRAD_LOSS, BLOCK))


@triton.jit
def _masked_mse_total_kernel(partial_ptr, rows, scale_ptr, mask_ptr, count, P, loss_ptr,
                             HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """One program: loss = sum(partial) * scale / 2 = sum / (P * mask.sum()), the sum in a fixed order. Without
    a scale kernel before (no gradient to write) the scale is computed here from the mask."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, rows, BLOCK):
        k = start + tl.arange(0, BLOCK).to(tl.int64)
        acc += tl.load(partial_ptr + k, mask=k < rows, other=0.0)
    if HAS_SCALE:
        scale = tl.load(scale_ptr)
    else:
        scale = _scale_of(mask_ptr, count, P, scale_ptr, False, BLOCK)
    tl.store(loss_ptr, tl.sum(acc, axis=0) * (scale * 0.5))  # exact, as / 2 (which Triton lowers to div.full)


_SUM_BLOCK = 1024  # elements per step of the one-program sums (N * L masks, N * R partials)


def _gradient_scale(mask, P, grad_loss=None):
    """[1] float32: 2 * grad_loss / (P * mask.sum()), 0 when mask.sum() == 0: one one-program kernel (no sync
    with the host, no chain of tiny torch kernels)."""
    scale = torch.empty(1, device=mask.device, dtype=torch.float32)
    g = grad_loss if grad_loss is not None else scale
    _masked_mse_scale_kernel[(1,)](mask, mask.numel(), P, g, scale, HAS_GRAD_LOSS=grad_loss is not None,
                                   BLOCK=_SUM_BLOCK, num_warps=4)
    return scale


def _rows_view(t):
    """t as the kernel reads it: any row strides, unit stride along the last dimension (copied only otherwise)."""
    return t.contiguous() if t.shape[-1] > 1 and t.stride(-1) != 1 else t


def _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, partial, grad_pred, grad_imgs,
            frames=None, pixel_norm=None, per_channel=False, per_token_out=False):
    """scale: the [1] gradient-scale tensor, or None for per-token losses (2 / P, passed by value). partial: [N * R]
    row partials, or [N, L] per-token losses (per_token_out)."""
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
    dummy = mask
    s_n, s_c = imgs.stride(0), imgs.stride(1)
    s_t = imgs.stride(2) if video else 0
    s_in, s_ir = ids_rows.stride() if ids_rows is not None else (0, 0)
    _masked_mse_rows_kernel[(N * R,)](
        pred, imgs, mask, ids_rows if ids_rows is not None else dummy, scale if scale is not None else dummy,
        partial if partial is not None else dummy,
        grad_pred if grad_pred is not None else dummy,
        grad_imgs if grad_imgs is not None else dummy,
        frames if frames is not None else dummy,
        pixel_norm if pixel_norm is not None else dummy,
        R, L, W // pw, (H // ph) * (W // pw), u, T, H, W,
        s_n, s_c, s_t, imgs.stride(-2), imgs.stride(-1), pred.stride(0), pred.stride(1), s_in, s_ir, eps, 2.0 / P,
        ph=ph, pw=pw, UT=ut, C=C, HAS_IDS=ids_rows is not None, NORM=norm_pix_loss, PER_CHANNEL=per_channel,
        HAS_FRAMES=frames is not None, HAS_PIXEL_NORM=pixel_norm is not None, WRITE_PARTIAL=partial is not None,
        PER_TOKEN=per_token_out, TOKEN_SCALE=scale is None, WRITE_GRAD_PRED=grad_pred is not None,
        WRITE_GRAD_IMGS=grad_imgs is not None,
        BLOCK=block, num_warps=max(1, min(16, block // 256)),
    )


def masked_mse_loss_forward(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad,
                            target_frames=None, pixel_norm=None, per_channel=False, per_token=False):
    """(loss: fp32 scalar, or [N, L] per-token w * l when per_token; grad_pred for grad_loss = 1 (ones) in pred's
    dtype, or an empty tensor). Launches: the scale (only with a gradient to write), the rows and the total; per
    token the rows (after a zero fill when ids_rows leaves tokens out)."""
    pred = _rows_view(pred)
    ids_rows = _rows_view(ids_rows) if ids_rows is not None else None
    N, R, P = pred.shape
    # grad_pred is contiguous whatever pred's strides (the fake kernel says so)
    grad_pred = torch.empty(pred.shape, device=pred.device, dtype=pred.dtype) if with_grad else None
    if per_token:
        loss = (torch.zeros if ids_rows is not None else torch.empty)(mask.shape, device=mask.device,
                                                                      dtype=torch.float32)
        _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, None, loss, grad_pred, None,
                target_frames, pixel_norm, per_channel, per_token_out=True)
        return loss, grad_pred if with_grad else pred.new_empty(0)
    scale = _gradient_scale(mask, P) if with_grad else None
    partial = torch.empty(N * R, device=pred.device, dtype=torch.float32)
    _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale if with_grad else mask, partial,
            grad_pred, None, target_frames, pixel_norm, per_channel)
    loss = torch.empty((), device=pred.device, dtype=torch.float32)
    _masked_mse_total_kernel[(1,)](partial, N * R, scale if with_grad else mask, mask, mask.numel(), P, loss,
                                   HAS_SCALE=with_grad, BLOCK=_SUM_BLOCK, num_warps=4)
    return loss, grad_pred if with_grad else pred.new_empty(0)


def masked_mse_loss_backward(grad_loss, pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps,
                             need_pred, need_imgs, target_frames=None, pixel_norm=None, per_channel=False,
                             per_token=False):
    """(grad_pred or empty, grad_imgs (contiguous) or empty) for the upstream gradient grad_loss (a scalar, or
    [N, L] when per_token)."""
    if need_imgs and (target_frames is not None or pixel_norm is not None or per_channel):
        raise RuntimeError("mae_kernels::masked_mse_loss_backward_triton: no imgs gradient with target_frames, "
                           "pixel_norm or per_channel (the target is data there)")
    pred = _rows_view(pred)
    ids_rows = _rows_view(ids_rows) if ids_rows is not None else None
    P = pred.shape[2]
    if per_token:  # each token's weight times its upstream gradient; the scale 2 / P by value
        mask = (mask * grad_loss.float()).contiguous()
        scale = None
    elif need_pred or need_imgs:
        scale = _gradient_scale(mask, P, grad_loss)
    grad_pred = torch.empty(pred.shape, device=pred.device, dtype=pred.dtype) if need_pred else None
    grad_imgs = torch.zeros(imgs.shape, device=imgs.device, dtype=imgs.dtype) if need_imgs else None
    if need_pred or need_imgs:
        _launch(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, scale, None, grad_pred, grad_imgs,
                target_frames, pixel_norm, per_channel)
    return (grad_pred if need_pred else pred.new_empty(0),
            grad_imgs if need_imgs else imgs.new_empty(0))
