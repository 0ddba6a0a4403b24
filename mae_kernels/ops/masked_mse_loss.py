"""masked_mse_loss, patch_stats, denormalize_pred: MAE's loss on removed patches in one fused pass, for images
(MAE) and videos (mae_st, VideoMAE, VideoMAEv2, HF VideoMAE; ../shared/MAE_SPEC_VIDEO.md).

Compiled op mae_kernels::masked_mse_loss (CPU, CUDA) and its Triton twin masked_mse_loss_triton share one schema:
  (pred [N, R, P], imgs [N, C, H, W] or [N, C, T, H, W], mask [N, L] float32 (the loss weight of each token:
   the mask, times the user's weights), ids_rows [N, R] int64 or None, patch_size [u, ph, pw], norm_pix_loss,
   eps, with_grad, target_frames [t * u'] int64 or None, pixel_norm [2, C] float32 (x * row 0 + row 1) or None,
   per_channel, per_token)
  -> (loss: fp32 scalar sum(w * l) / sum(w), or [N, L] fp32 w * l when per_token; grad_pred [N, R, P] for
      grad_loss = 1 (ones when per_token), or empty)
ids_rows None: R == L, pred row j is token j; otherwise pred row j is token ids_rows[n, j]. patch_size is int[3]
(one int p broadcasts to [p, p, p]: the images' old int argument still works); for 4-D imgs its first entry is
ignored (u = 1). l = mean over the P' = u' * ph * pw * C entries of (pred - target)^2, u' = target_frames.numel()
/ t (u without a frame table).
The pred gradient is computed during the forward pass (as fused cross-entropy kernels do) and only scaled by
the upstream gradient in backward. The backward op recomputes from the inputs when imgs needs a gradient (or
the forward pass did not store one):
  masked_mse_loss_backward(grad_loss (scalar, or [N, L] when per_token), pred, imgs, mask, ids_rows, patch_size,
                           norm_pix_loss, eps, need_pred, need_imgs, target_frames, pixel_norm, per_channel,
                           per_token) -> (grad_pred or empty, grad_imgs (imgs' shape, contiguous) or empty)
The imgs gradient exists for the all-channel / raw target read from the tubelet's own frames (no target_frames,
pixel_norm or per_channel: the public function refuses those with an imgs that requires grad).
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import (FLOAT_DTYPES, check_bool, check_eps, check_images, check_index_range, check_mask_zero_on_kept,
                        check_permutation_rows, check_tensor)

_OPTIONS = ("Tensor? target_frames=None, Tensor? pixel_norm=None, bool per_channel=False, bool per_token=False")
_SCHEMA = ("(Tensor pred, Tensor imgs, Tensor mask, Tensor? ids_rows, int[3] patch_size, bool norm_pix_loss, "
           f"float eps, bool with_grad, {_OPTIONS}) -> (Tensor loss, Tensor grad_pred)")
_BACKWARD_SCHEMA = ("(Tensor grad_loss, Tensor pred, Tensor imgs, Tensor mask, Tensor? ids_rows, int[3] patch_size, "
                    f"bool norm_pix_loss, float eps, bool need_pred, bool need_imgs, {_OPTIONS}) -> "
                    "(Tensor grad_pred, Tensor grad_imgs)")
REDUCTIONS = ("mean", "none")


def _triton_forward(*args):
    from ..triton.masked_mse_loss import masked_mse_loss_forward
    return masked_mse_loss_forward(*args)


def _triton_backward(*args):
    from ..triton.masked_mse_loss import masked_mse_loss_backward
    return masked_mse_loss_backward(*args)


OPS = {"cpu": compiled_op("masked_mse_loss"), "cuda": compiled_op("masked_mse_loss"),
       "triton": define_triton_op("masked_mse_loss", _SCHEMA, _triton_forward)}
BACKWARD_OPS = {"cpu": compiled_op("masked_mse_loss_backward"), "cuda": compiled_op("masked_mse_loss_backward"),
                "triton": define_triton_op("masked_mse_loss_backward", _BACKWARD_SCHEMA, _triton_backward)}


def _fake(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad, target_frames=None,
          pixel_norm=None, per_channel=False, per_token=False):
    loss = pred.new_empty(tuple(mask.shape) if per_token else (), dtype=torch.float32)
    return loss, (torch.empty_like(pred, memory_format=torch.contiguous_format) if with_grad
                  else pred.new_empty(0))


def _fake_backward(grad_loss, pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, need_pred, need_imgs,
                   target_frames=None, pixel_norm=None, per_channel=False, per_token=False):
    grad_pred = torch.empty_like(pred, memory_format=torch.contiguous_format) if need_pred else pred.new_empty(0)
    grad_imgs = (torch.empty_like(imgs, memory_format=torch.contiguous_format) if need_imgs
                 else imgs.new_empty(0))
    return grad_pred, grad_imgs


def _setup_context(ctx, inputs, output):
    (pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad, target_frames, pixel_norm, per_channel,
     per_token) = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.args = (patch_size, norm_pix_loss, eps)
    ctx.options = (per_channel, per_token)
    ctx.stored_grad = with_grad
    # The inputs only when backward must recompute (imgs gradient, or no stored pred gradient): keeping pred
    # alive for nothing would cost as much memory as the stored gradient. Per-token losses scale the stored
    # gradient by the upstream gradient of each row's token: ids_rows then (small).
    recompute = ctx.needs_input_grad[1] or not with_grad
    saved = (pred, imgs, mask, ids_rows, target_frames, pixel_norm) if recompute else (None,) * 6
    if per_token and not recompute:
        saved = saved[:3] + (ids_rows,) + saved[4:]
    ctx.save_for_backward(*saved, output[1])


def _make_backward(backward_op):
    def backward(ctx, grad_loss, _grad_grad_pred):
        pred, imgs, mask, ids_rows, target_frames, pixel_norm, stored = ctx.saved_tensors
        per_channel, per_token = ctx.options
        # grad_pred is non-differentiable and gradients are not materialised (_registry.register): its gradient
        # is None (no zero fill of pred's size), and so is the loss's when the loss reached nothing.
        if grad_loss is None:
            return (None,) * 12
        need_pred, need_imgs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_pred = grad_imgs = None
        if need_pred and ctx.stored_grad:
            # One pass: an fp32 factor makes the product fp32 (a 0-dim CUDA tensor would be rounded to stored's
            # dtype first), rounded once into the output dtype, as stored.float() * grad_loss.
            if per_token:  # the upstream gradient of each prediction row's token
                g = grad_loss.float()
                factor = (g if ids_rows is None else g.gather(1, ids_rows)).unsqueeze(-1)
            else:
                factor = grad_loss.float().reshape(1)
            grad_pred = torch.mul(stored, factor, out=torch.empty_like(stored))
            need_pred = False
        if need_pred or need_imgs:
            gp, gi = backward_op(grad_loss, pred, imgs, mask, ids_rows, *ctx.args, need_pred, need_imgs,
                                 target_frames, pixel_norm, per_channel, per_token)
            grad_pred = gp if need_pred else grad_pred
            grad_imgs = gi if need_imgs else None
        return (grad_pred, grad_imgs) + (None,) * 10
    return backward


for _name in ("cuda", "triton"):  # cpu shares cuda's compiled op
    register([OPS[_name]], _fake, _make_backward(BACKWARD_OPS[_name]), _setup_context)
    register([BACKWARD_OPS[_name]], _fake_backward)


# --- validation -------------------------------------------------------------------------------------------


def _check_norm(norm_pix_loss, per_channel):
    check_bool("norm_pix_loss", norm_pix_loss)
    check_bool("per_channel", per_channel)
    if per_channel and not norm_pix_loss:
        raise ValueError("per_channel=True normalises the target per patch and channel: it needs "
                         "norm_pix_loss=True, got norm_pix_loss=False")


def _check_frames(target_frames, imgs, u):
    """u' (target frames per token): target_frames.numel() / t, or u without a frame table."""
    if target_frames is None:
        return u
    if imgs.dim() != 5:
        raise ValueError(f"target_frames selects frames of videos [N, C, T, H, W]: imgs must have 5 dimensions, "
                         f"got {imgs.dim()} (shape {tuple(imgs.shape)})")
    check_tensor("target_frames", target_frames, ndim=1, dtypes=(torch.int64,), device=imgs.device)
    T = imgs.shape[2]
    t = T // u
    if target_frames.numel() == 0 or target_frames.numel() % t != 0:
        raise ValueError(f"target_frames must hold u' frames for each of the t={t} tubelet positions (a multiple "
                         f"of {t} entries, at least {t}), got {target_frames.numel()}")
    check_index_range("target_frames", target_frames, T, what="frame indices", bound="T = frames of imgs")
    return target_frames.numel() // t


def _pixel_norm(pixel_mean, pixel_std, imgs):
    """[2, C] float32 on imgs' device (row 0: std, row 1: mean), or None without either."""
    if pixel_mean is None and pixel_std is None:
        return None
    C = imgs.shape[1]
    rows = []
    for name, value, default in (("pixel_std", pixel_std, 1.0), ("pixel_mean", pixel_mean, 0.0)):
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple, torch.Tensor)):
            raise TypeError(f"{name} must be a float, a sequence of C={C} floats or a tensor of C values, got "
                            f"{type(value).__name__}")
        v = torch.as_tensor(value).detach()
        if not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold real numbers, got dtype {v.dtype}")
        if v.numel() not in (1, C):
            raise ValueError(f"{name} must have 1 or C={C} values (one per channel), got {v.numel()} "
                             f"(shape {tuple(v.shape)})")
        rows.append(v.to(device=imgs.device, dtype=torch.float32).reshape(-1).expand(C))
    return torch.stack(rows)


def _geometry(imgs, patch_size, eps):
    """(u, ph, pw) of imgs [N, C, H, W] or [N, C, T, H, W]."""
    dims = check_images("imgs", imgs, patch_size, dtypes=FLOAT_DTYPES, video=True)
    check_eps(eps)
    return dims


def _token_counts(imgs, dims):
    u, ph, pw = dims
    T = imgs.shape[2] if imgs.dim() == 5 else 1
    return (T // u) * (imgs.shape[-2] // ph) * (imgs.shape[-1] // pw)


def _p_text(patch_size, imgs, frames):
    if imgs.dim() == 5:
        return "u'*ph*pw*C (u' = target frames per token)" if frames else "u*ph*pw*C"
    return "patch_size*patch_size*C" if isinstance(patch_size, int) else "ph*pw*C"


def _check_options(imgs, patch_size, eps, norm_pix_loss, per_channel, target_frames, pixel_mean, pixel_std,
                   stats=False):
    """(u, ph, pw), u', L, P and pixel_norm of a loss call (stats: of patch_stats / denormalize_pred, which
    return the statistics of any patch, NaN where a variance has no divisor)."""
    dims = _geometry(imgs, patch_size, eps)
    _check_norm(norm_pix_loss, per_channel)
    ut = _check_frames(target_frames, imgs, dims[0])
    pixel_norm = _pixel_norm(pixel_mean, pixel_std, imgs)
    Q = ut * dims[1] * dims[2]
    P = Q * imgs.shape[1]
    if norm_pix_loss and not stats and (Q if per_channel else P) < 2:
        what = f"pixels per patch and channel, got {Q}" if per_channel else f"values per patch, got P={P}"
        raise ValueError(f"norm_pix_loss needs at least 2 {what} (unbiased variance)")
    return dims, ut, _token_counts(imgs, dims), P, pixel_norm


def _validate(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle, per_channel, target_frames,
              pixel_mean, pixel_std, reduction, weight):
    dims, ut, L, P, pixel_norm = _check_options(imgs, patch_size, eps, norm_pix_loss, per_channel, target_frames,
                                                 pixel_mean, pixel_std)
    N = imgs.shape[0]
    check_tensor("pred", pred, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device)
    if pred.shape[0] != N or pred.shape[2] != P:
        raise ValueError(f"pred must have shape [N={N}, L={L} (or the L - K removed patches), "
                         f"P={_p_text(patch_size, imgs, target_frames is not None)}={P}], got {tuple(pred.shape)}")
    check_tensor("mask", mask, ndim=2, dtypes=FLOAT_DTYPES + (torch.bool,), device=imgs.device, shape=(N, L))
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        check_tensor("weight", weight, ndim=2, dtypes=FLOAT_DTYPES, device=imgs.device, shape=(N, L))
    if (imgs.requires_grad and torch.is_grad_enabled()
            and (per_channel or target_frames is not None or pixel_norm is not None)):
        raise ValueError("imgs requires grad, but the gradient with respect to imgs exists only for the target read "
                         "from each tubelet's own frames and normalised over all channels (MAE, mae_st without "
                         "target_frames); with per_channel, target_frames, pixel_mean or pixel_std the target is "
                         "data (as in mae_st and VideoMAE): pass imgs.detach()")
    if ids_shuffle is None:
        if pred.shape[1] != L:
            raise ValueError(f"pred must have L={L} rows (one per patch) when ids_shuffle is None, got "
                             f"{pred.shape[1]}; pass ids_shuffle for predictions of the removed patches only")
        return None, pixel_norm, dims
    check_tensor("ids_shuffle", ids_shuffle, ndim=2, dtypes=(torch.int64,), device=imgs.device, shape=(N, L))
    if pred.shape[1] > L:
        raise ValueError(f"pred must have at most L={L} rows with ids_shuffle, got {pred.shape[1]}")
    ids_rows = ids_shuffle[:, L - pred.shape[1]:]  # a view: every backend reads it by strides
    check_index_range("ids_shuffle", ids_rows, L)  # the rows the kernels read; the rest only in debug mode
    check_permutation_rows("ids_shuffle", ids_shuffle)  # MAE_KERNELS_DEBUG=1 only
    check_mask_zero_on_kept(mask, ids_shuffle, L - pred.shape[1])  # MAE_KERNELS_DEBUG=1 only
    return ids_rows, pixel_norm, dims


def _target_kw(per_channel, target_frames, pixel_norm):
    return dict(per_channel=per_channel, target_frames=target_frames,
                pixel_mean=None if pixel_norm is None else pixel_norm[1],
                pixel_std=None if pixel_norm is None else pixel_norm[0])


def _reference(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle, per_channel=False, target_frames=None,
               pixel_norm=None, reduction="mean", weight=None):
    """The reference maths, with 0.0 (and zero gradients) for a mask without removed patches."""
    if ids_shuffle is not None:
        pred = reference.scatter_removed_pred(pred, ids_shuffle)
    per_patch = reference.patch_mse(pred, imgs, patch_size, norm_pix_loss, eps,
                                    **_target_kw(per_channel, target_frames, pixel_norm))
    mask = mask.float() if weight is None else mask.to(per_patch.dtype) * weight.to(per_patch.dtype)
    if reduction == "none":  # rows without a loss weight are 0, whatever their (unread) prediction
        return torch.where(mask != 0, per_patch * mask, torch.zeros_like(per_patch))
    total = mask.sum()
    return (per_patch * mask).sum() / torch.where(total != 0, total, torch.ones_like(total))


def masked_mse_loss(pred, imgs, mask, patch_size, norm_pix_loss=True, eps=1e-6, ids_shuffle=None, *,
                    per_channel=False, target_frames=None, pixel_mean=None, pixel_std=None, reduction="mean",
                    weight=None):
    """The MAE loss, fused: MSE between pred and the patch pixels of imgs (normalised per patch when
    norm_pix_loss), averaged over removed patches; for images (MAE) and videos (mae_st, VideoMAE, VideoMAEv2, HF).

    imgs: [N, C, H, W] with patch_size p or (ph, pw), or videos [N, C, T, H, W] with patch_size (u, ph, pw)
      (tubelets of u frames; HF's [N, T, C, H, W] pixel_values as pixel_values.permute(0, 2, 1, 3, 4)). Any
      strides: read in place, never patchified. Tokens l = (ti*h + hi)*w + wi, patch vectors in (frame, row,
      column, channel) order (reference.patchify).
    pred: [N, L, P], or the removed patches only, [N, L - K, P] with ids_shuffle [N, L] int64 (pred[n, j] is
      patch ids_shuffle[n, K + j]; mask must be 0 on ids_shuffle[:, :K]). VideoMAE / HF predictions of the
      masked tokens in ascending order: ids_shuffle = torch.argsort(bool_masked_pos.byte(), dim=1, stable=True).
      The indices of the predicted rows are range-checked (a device sync; an async assert under torch.compile);
      with MAE_KERNELS_DEBUG=1 ids_shuffle must also be a permutation per row and mask 0 on the kept patches.
      P = u' * ph * pw * C (u' = u, or the target frames per token with target_frames).
    mask: [N, L] float or bool, 1 = removed (the tokens that carry a loss).
    norm_pix_loss: normalise the target per patch: (x - mean) / sqrt(var + eps) over the whole patch (all
      channels; MAE, mae_st), unbiased variance. per_channel=True (with norm_pix_loss): per patch and per
      channel over the patch's pixels, (v - mean) / (sqrt(var) + eps), eps added to the std (VideoMAE, v2, HF).
    target_frames: int64 [t * u'] (videos): token (ti, hi, wi) targets frames target_frames[ti*u' + a], a < u',
      instead of its own u frames (mae_st: mae_kernels.mae_st_target_frames(T, pred_t_dim), the linspace frames).
    pixel_mean, pixel_std: per-channel floats (C values or one): the target is computed on x * std + mean, the
      model input un-normalised on the fly (VideoMAE: ImageNet's mean/std -> [0, 1] pixels). Not differentiated.
    reduction: "mean" (default): an fp32 scalar sum(l * w * m) / sum(w * m), l the per-token MSE (mean over P),
      m the mask, w the weight (1 without); 0.0 and zero gradients when sum(w * m) == 0 (the official code gives
      NaN for 0 / 0). "none": the per-token terms l * w * m, [N, L] fp32 (0 where no loss is taken).
    weight: optional [N, L] float per-token weights (hard-patch mining, VideoMAEv2's batch-global weighting with
      mask = the tokens it weights). Differentiable (then the weighting runs as torch ops on the per-token losses).
    Statistics and sums in fp32 whatever the dtypes. Differentiable with respect to pred, and to imgs for the
    target read from each tubelet's own frames and normalised over all channels (or not at all); with
    per_channel, target_frames, pixel_mean or pixel_std an imgs that requires grad is refused (the target is data).
    """
    ids_rows, pixel_norm, dims = _validate(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle, per_channel,
                                     target_frames, pixel_mean, pixel_std, reduction, weight)
    backend = select("masked_mse_loss", imgs.device.type)
    if backend == "reference":
        return _reference(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle, per_channel,
                          target_frames, pixel_norm, reduction, weight)
    grad_weight = weight is not None and weight.requires_grad and torch.is_grad_enabled()
    mask = mask.to(torch.float32)
    if weight is not None and not grad_weight:
        mask = mask * weight.to(torch.float32)  # the kernels weight each token by this product
    mask = mask.contiguous()
    per_token = reduction == "none" or grad_weight
    with_grad = torch.is_grad_enabled() and pred.requires_grad
    frames = target_frames.contiguous() if target_frames is not None else None
    loss, _ = OPS[backend](pred, imgs, mask, ids_rows, list(dims), norm_pix_loss, float(eps), with_grad,
                           frames, pixel_norm, per_channel, per_token)
    if not grad_weight:
        return loss
    # Differentiable weights: the weighting as torch ops on the per-token losses l * m.
    if reduction == "none":
        return loss * weight.float()
    total = (mask * weight.float()).sum()
    return (loss * weight.float()).sum() / torch.where(total != 0, total, torch.ones_like(total))


def mae_st_target_frames(num_frames, pred_t_dim, device=None):
    """mae_st's target frames for masked_mse_loss's target_frames: torch.linspace(0, T - 1, pred_t_dim).long()
    (T=16, pred_t_dim=8 -> [0, 2, 4, 6, 8, 10, 12, 15]; each token targets pred_t_dim // t of them)."""
    return reference.mae_st_target_frames(num_frames, pred_t_dim, device)


def _stats_inputs(imgs, patch_size, eps, per_channel, target_frames, pixel_mean, pixel_std):
    dims, ut, L, P, pixel_norm = _check_options(imgs, patch_size, eps, True, per_channel, target_frames,
                                                 pixel_mean, pixel_std, stats=True)
    return L, P, _target_kw(per_channel, target_frames, pixel_norm)


def patch_stats(imgs, patch_size, eps=1e-6, *, per_channel=False, target_frames=None, pixel_mean=None,
                pixel_std=None):
    """Per-patch mean and std of the loss target, fp32: ([N, L, 1], [N, L, 1]), std = sqrt(unbiased var + eps);
    per_channel: ([N, L, C], [N, L, C]), std = sqrt(unbiased var) + eps (VideoMAE). imgs, patch_size and the
    keywords as in masked_mse_loss."""
    _, _, kw = _stats_inputs(imgs, patch_size, eps, per_channel, target_frames, pixel_mean, pixel_std)
    return reference.patch_stats(imgs, patch_size, eps, **kw)


def denormalize_pred(pred, imgs, patch_size, eps=1e-6, *, per_channel=False, target_frames=None, pixel_mean=None,
                     pixel_std=None):
    """norm_pix_loss predictions [N, L, P] back in pixel space (fp32 patch vectors): pred * std + mean with the
    patch statistics of imgs (patch_stats); reference.unpatchify turns them into images or videos."""
    L, P, kw = _stats_inputs(imgs, patch_size, eps, per_channel, target_frames, pixel_mean, pixel_std)
    check_tensor("pred", pred, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device, shape=(imgs.shape[0], L, P))
    return reference.denormalize_pred(pred, imgs, patch_size, eps, **kw)
