"""masked_mse_loss, patch_stats, denormalize_pred: MAE's loss on removed patches in one fused pass.

Compiled op mae_kernels::masked_mse_loss (CPU, CUDA) and its Triton twin masked_mse_loss_triton share one schema:
  (pred [N, R, P], imgs [N, C, H, W], mask [N, L] float32, ids_rows [N, R] int64 or None, patch_size,
   norm_pix_loss, eps, with_grad) -> (loss fp32 scalar, grad_pred [N, R, P] for grad_loss = 1, or empty)
ids_rows None: R == L, pred row j is patch j; otherwise pred row j is patch ids_rows[n, j].
The pred gradient is computed during the forward pass (as fused cross-entropy kernels do) and only scaled by
the upstream gradient in backward. The backward op recomputes from the inputs when imgs needs a gradient (or
the forward pass did not store one):
  masked_mse_loss_backward(grad_loss, pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, need_pred,
                           need_imgs) -> (grad_pred or empty, grad_imgs [N, C, H, W] or empty)
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import (FLOAT_DTYPES, check_bool, check_eps, check_images, check_index_range, check_mask_zero_on_kept,
                        check_patch_size, check_permutation_rows, check_tensor)

_SCHEMA = ("(Tensor pred, Tensor imgs, Tensor mask, Tensor? ids_rows, int patch_size, bool norm_pix_loss, "
           "float eps, bool with_grad) -> (Tensor loss, Tensor grad_pred)")
_BACKWARD_SCHEMA = ("(Tensor grad_loss, Tensor pred, Tensor imgs, Tensor mask, Tensor? ids_rows, int patch_size, "
                    "bool norm_pix_loss, float eps, bool need_pred, bool need_imgs) -> "
                    "(Tensor grad_pred, Tensor grad_imgs)")


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


def _fake(pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad):
    loss = pred.new_empty((), dtype=torch.float32)
    return loss, (torch.empty_like(pred, memory_format=torch.contiguous_format) if with_grad
                  else pred.new_empty(0))


def _fake_backward(grad_loss, pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, need_pred, need_imgs):
    grad_pred = torch.empty_like(pred, memory_format=torch.contiguous_format) if need_pred else pred.new_empty(0)
    grad_imgs = (torch.empty_like(imgs, memory_format=torch.contiguous_format) if need_imgs
                 else imgs.new_empty(0))
    return grad_pred, grad_imgs


def _setup_context(ctx, inputs, output):
    pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, eps, with_grad = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.args = (patch_size, norm_pix_loss, eps)
    ctx.stored_grad = with_grad
    # The inputs only when backward must recompute (imgs gradient, or no stored pred gradient): keeping pred
    # alive for nothing would cost as much memory as the stored gradient.
    recompute = ctx.needs_input_grad[1] or not with_grad
    ctx.save_for_backward(*((pred, imgs, mask, ids_rows) if recompute else (None,) * 4), output[1])


def _make_backward(backward_op):
    def backward(ctx, grad_loss, _grad_grad_pred):
        pred, imgs, mask, ids_rows, stored = ctx.saved_tensors
        need_pred, need_imgs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_pred = grad_imgs = None
        if need_pred and ctx.stored_grad:
            # One pass: a [1]-shaped fp32 factor makes the product fp32 (a 0-dim CUDA tensor would be rounded
            # to stored's dtype first), rounded once into the output dtype, as stored.float() * grad_loss.
            grad_pred = torch.mul(stored, grad_loss.float().reshape(1), out=torch.empty_like(stored))
            need_pred = False
        if need_pred or need_imgs:
            gp, gi = backward_op(grad_loss, pred, imgs, mask, ids_rows, *ctx.args, need_pred, need_imgs)
            grad_pred = gp if need_pred else grad_pred
            grad_imgs = gi if need_imgs else None
        return grad_pred, grad_imgs, None, None, None, None, None, None
    return backward


for _name in ("cuda", "triton"):  # cpu shares cuda's compiled op
    register([OPS[_name]], _fake, _make_backward(BACKWARD_OPS[_name]), _setup_context)
    register([BACKWARD_OPS[_name]], _fake_backward)


def _check_imgs(imgs, patch_size, eps):
    check_patch_size(patch_size)
    check_images("imgs", imgs, patch_size, dtypes=FLOAT_DTYPES)
    check_eps(eps)


def _validate(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle):
    _check_imgs(imgs, patch_size, eps)
    N, C, H, W = imgs.shape
    L = (H // patch_size) * (W // patch_size)
    P = patch_size * patch_size * C
    check_tensor("pred", pred, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device)
    if pred.shape[0] != N or pred.shape[2] != P:
        raise ValueError(f"pred must have shape [N={N}, L={L} (or the L - K removed patches), "
                         f"P=patch_size*patch_size*C={P}], got {tuple(pred.shape)}")
    check_tensor("mask", mask, ndim=2, dtypes=FLOAT_DTYPES + (torch.bool,), device=imgs.device, shape=(N, L))
    check_bool("norm_pix_loss", norm_pix_loss)
    if norm_pix_loss and P < 2:
        raise ValueError(f"norm_pix_loss needs at least 2 values per patch (unbiased variance), got P={P}")
    if ids_shuffle is None:
        if pred.shape[1] != L:
            raise ValueError(f"pred must have L={L} rows (one per patch) when ids_shuffle is None, got "
                             f"{pred.shape[1]}; pass ids_shuffle for predictions of the removed patches only")
        return None
    check_tensor("ids_shuffle", ids_shuffle, ndim=2, dtypes=(torch.int64,), device=imgs.device, shape=(N, L))
    if pred.shape[1] > L:
        raise ValueError(f"pred must have at most L={L} rows with ids_shuffle, got {pred.shape[1]}")
    ids_rows = ids_shuffle[:, L - pred.shape[1]:]  # a view: the compiled kernels read it by strides
    check_index_range("ids_shuffle", ids_rows, L)  # the rows the kernels read; the rest only in debug mode
    check_permutation_rows("ids_shuffle", ids_shuffle)  # MAE_KERNELS_DEBUG=1 only
    check_mask_zero_on_kept(mask, ids_shuffle, L - pred.shape[1])  # MAE_KERNELS_DEBUG=1 only
    return ids_rows


def _reference(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle):
    """The reference maths, with 0.0 (and zero gradients) for a mask without removed patches."""
    if ids_shuffle is not None:
        pred = reference.scatter_removed_pred(pred, ids_shuffle)
    per_patch = reference.patch_mse(pred, imgs, patch_size, norm_pix_loss, eps)
    mask = mask.float()
    total = mask.sum()
    return (per_patch * mask).sum() / torch.where(total != 0, total, torch.ones_like(total))


def masked_mse_loss(pred, imgs, mask, patch_size, norm_pix_loss=True, eps=1e-6, ids_shuffle=None):
    """The official MAE forward_loss, fused: MSE between pred and the patch pixels of imgs (normalised per
    patch when norm_pix_loss: unbiased variance, eps inside the sqrt), averaged over removed patches.

    pred: [N, L, P] (P = patch_size**2 * C), or the removed patches only, [N, L - K, P] with ids_shuffle
      [N, L] int64 (pred[n, j] is patch ids_shuffle[n, K + j]; mask must be 0 on ids_shuffle[:, :K]). The
      indices of the predicted rows are range-checked (a device sync; an async assert under torch.compile);
      with MAE_KERNELS_DEBUG=1 ids_shuffle must also be a permutation per row and mask 0 on the kept patches.
    imgs: [N, C, H, W] (any strides; read in place, never patchified); mask: [N, L] float or bool, 1 = removed.
    Returns an fp32 scalar: sum(per_patch_mse * mask) / mask.sum(); statistics and sums in fp32 whatever the
    dtypes. Unlike the official code (0 / 0 = NaN), a mask with no removed patch (mask.sum() == 0) gives 0.0
    and zero gradients. Differentiable with respect to pred and imgs.
    """
    ids_rows = _validate(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle)
    backend = select("masked_mse_loss", imgs.device.type)
    if backend == "reference":
        return _reference(pred, imgs, mask, patch_size, norm_pix_loss, eps, ids_shuffle)
    with_grad = torch.is_grad_enabled() and pred.requires_grad
    mask = mask.to(torch.float32).contiguous()
    if backend == "triton":  # its kernels read contiguous pred and ids rows; the compiled ones take row strides
        pred = pred.contiguous()
        ids_rows = ids_rows.contiguous() if ids_rows is not None else None
    loss, _ = OPS[backend](pred, imgs, mask, ids_rows, patch_size, norm_pix_loss, float(eps), with_grad)
    return loss


def patch_stats(imgs, patch_size, eps=1e-6):
    """Per-patch mean and std of the target, fp32 ([N, L, 1], [N, L, 1]): std = sqrt(unbiased var + eps)."""
    _check_imgs(imgs, patch_size, eps)
    return reference.patch_stats(imgs, patch_size, eps)


def denormalize_pred(pred, imgs, patch_size, eps=1e-6):
    """norm_pix_loss predictions [N, L, P] back in pixel space (fp32 patch vectors): pred * std + mean with the
    patch statistics of imgs; reference.unpatchify turns them into images."""
    _check_imgs(imgs, patch_size, eps)
    N, C, H, W = imgs.shape
    check_tensor("pred", pred, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device,
                 shape=(N, (H // patch_size) * (W // patch_size), patch_size * patch_size * C))
    return reference.denormalize_pred(pred, imgs, patch_size, eps)
