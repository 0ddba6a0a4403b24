"""masked_patch_embed and random_masked_patch_embed: the MAE encoder front end on the kept patches only.

tokens[n, k] = W . patch(imgs[n], ids_keep[n, k]) + b (+ pos_embed[0, 1 + ids_keep[n, k]]), equal to the
official Conv2d patch embedding of all L patches + pos_embed[:, 1:] followed by the mask gather, about 4x
cheaper. Compiled op mae_kernels::masked_patch_embed (CPU: compiled gather + at::addmm; CUDA: gather kernel +
cuBLAS) and its Triton twin masked_patch_embed_triton (one GEMM loading its A tiles from the pixels) share:
  (imgs [N, C, H, W], ids_keep [N, K] int64, weight [D, C, p, p], bias [D], pos_embed [1, 1 + L, D] or None)
  -> [N, K, D], dtype of imgs promoted with pos_embed's (the reference's conv + pos_embed add).
Backward (any of imgs, weight, bias, pos_embed): grad_W = grad^T @ masked_patchify(imgs) (recomputed, not
saved), grad_b = sum, grad_pos_embed = batch sum of the rows scattered to 1 + ids_keep (no atomics),
grad_imgs = masked_patchify_backward(grad @ W). Autocast: imgs, weight and bias are cast to the autocast dtype, as nn.Conv2d's are.
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import FLOAT_DTYPES, check_ids_keep, check_images, check_mask_ratio, check_tensor
from .masked_patchify import OPS as PATCHIFY_OPS
from .random_masking import random_mask_indices

_SCHEMA = "(Tensor imgs, Tensor ids_keep, Tensor weight, Tensor bias, Tensor? pos_embed) -> Tensor"


def _triton_forward(imgs, ids_keep, weight, bias, pos_embed):
    from ..triton.masked_patch_embed import masked_patch_embed
    return masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed)


OPS = {"cpu": compiled_op("masked_patch_embed"), "cuda": compiled_op("masked_patch_embed"),
       "triton": define_triton_op("masked_patch_embed", _SCHEMA, _triton_forward)}


def _fake(imgs, ids_keep, weight, bias, pos_embed):
    dtype = imgs.dtype if pos_embed is None else torch.promote_types(imgs.dtype, pos_embed.dtype)
    return imgs.new_empty(*ids_keep.shape, weight.shape[0], dtype=dtype)


def _setup_context(ctx, inputs, output):
    imgs, ids_keep, weight, bias, pos_embed = inputs
    ctx.image_size = imgs.shape[2:]
    ctx.gemm_dtype = imgs.dtype  # the GEMM ran in imgs' dtype; pos_embed's promotion came after it
    ctx.bias_dtype = bias.dtype
    ctx.pos_dtype = pos_embed.dtype if pos_embed is not None else None
    ctx.L = pos_embed.shape[1] - 1 if pos_embed is not None else 0
    # imgs only for grad_W (the patches are gathered again, not saved); weight only for grad_imgs.
    ctx.save_for_backward(imgs if ctx.needs_input_grad[2] else None, ids_keep,
                          weight if ctx.needs_input_grad[0] else None)
    ctx.weight_shape = weight.shape


def _matmul(a, b):
    """a @ b; bf16/fp16 on CPU as an fp32 GEMM rounded once (as the forward, csrc/masked_patch_embed_gemm.h):
    ATen's reduced-precision CPU GEMMs depend on the CPU's ISA, non-finite results included."""
    if a.is_cpu and a.dtype in (torch.bfloat16, torch.float16):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


def _make_backward(patchify_ops):
    def backward(ctx, grad_out):
        imgs, ids_keep, weight = ctx.saved_tensors
        D, C, p, _ = ctx.weight_shape
        N, K = ids_keep.shape
        grad = grad_out.reshape(N * K, D)
        gemm_grad = grad.to(ctx.gemm_dtype)
        grad_imgs = grad_weight = grad_bias = grad_pos = None
        if ctx.needs_input_grad[0]:
            w = weight.permute(0, 2, 3, 1).reshape(D, p * p * C)  # MAE's (p_row, p_col, c) patch order
            grad_patches = _matmul(gemm_grad, w).reshape(N, K, p * p * C)
            grad_imgs = patchify_ops["masked_patchify_backward"](grad_patches, ids_keep, p, *ctx.image_size)
        if ctx.needs_input_grad[2]:
            patches = patchify_ops["masked_patchify"](imgs, ids_keep, p).reshape(N * K, p * p * C)
            grad_weight = _matmul(gemm_grad.t(), patches).reshape(D, p, p, C).permute(0, 3, 1, 2).contiguous()
        if ctx.needs_input_grad[3]:
            grad_bias = grad.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        if ctx.needs_input_grad[4]:
            # Deterministic without atomics (index_add would use them on CUDA): ids_keep rows hold distinct
            # patches, so the scatter writes each element once, then the batch sum runs in a fixed order.
            # Costs an [N, 1 + L, D] fp32 buffer, only when pos_embed is trainable (MAE's is fixed).
            grad_pos = grad.new_zeros(N, 1 + ctx.L, D, dtype=torch.float32)
            grad_pos.scatter_(1, (ids_keep + 1).unsqueeze(-1).expand(N, K, D), grad.float().reshape(N, K, D))
            grad_pos = grad_pos.sum(0, keepdim=True).to(ctx.pos_dtype)
        return grad_imgs, None, grad_weight, grad_bias, grad_pos
    return backward


for _name in ("cuda", "triton"):  # cpu shares cuda's compiled op
    if OPS[_name] is not None:
        register([OPS[_name]], _fake, _make_backward(PATCHIFY_OPS[_name]), _setup_context)


def _autocast(imgs, weight, bias):
    """Cast the GEMM operands to the autocast dtype when autocast is on for imgs' device (as nn.Conv2d; like
    autocast, only floating-point tensors: others are left for validation to reject)."""
    device_type = imgs.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        imgs, weight, bias = (t.to(dtype) if t.is_floating_point() else t for t in (imgs, weight, bias))
    return imgs, weight, bias


def _check_weight(weight, device):
    """weight [D, C, p, p] (D, C, p >= 1) on `device`; returns (D, C, p)."""
    check_tensor("weight", weight, ndim=4, dtypes=FLOAT_DTYPES, device=device)
    D, C, p, p2 = weight.shape
    if p != p2 or min(D, C, p) < 1:
        raise ValueError(f"weight must be a Conv2d patch embedding weight [D, C, p, p] with D, C, p >= 1, got "
                         f"{tuple(weight.shape)}")
    return D, C, p


def _validate(imgs, ids_keep, weight, bias, pos_embed):
    check_tensor("imgs", imgs, ndim=4)
    D, C, p = _check_weight(weight, imgs.device)
    check_images("imgs", imgs, p)
    check_tensor("imgs", imgs, dtypes=(weight.dtype,), shape=(None, C))
    N, _, H, W = imgs.shape
    L = (H // p) * (W // p)
    check_tensor("bias", bias, ndim=1, dtypes=(weight.dtype,), device=imgs.device, shape=(D,))
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device, shape=(1, 1 + L, D))
    check_ids_keep(ids_keep, N, L, imgs.device)


def _prepare(imgs, ids_keep, weight, bias, pos_embed):
    """The validated GEMM operands (imgs, weight, bias): bias None -> zeros, autocast applied."""
    check_tensor("imgs", imgs, ndim=4)
    check_tensor("weight", weight, ndim=4)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    check_tensor("bias", bias, ndim=1)
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed, ndim=3)
    imgs, weight, bias = _autocast(imgs, weight, bias)
    _validate(imgs, ids_keep, weight, bias, pos_embed)
    return imgs, weight, bias


def _run(imgs, ids_keep, weight, bias, pos_embed):
    backend = select("masked_patch_embed", imgs.device.type)
    if backend == "reference":
        return reference.masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed)
    return OPS[backend](imgs, ids_keep, weight, bias, pos_embed)


def masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed=None):
    """Patch embedding of the kept patches only: [N, K, D].

    imgs [N, C, H, W] (any strides); ids_keep [N, K] int64 patch indices (distinct within a row, as
    random_mask_indices makes them; their range is always checked, their distinctness with MAE_KERNELS_DEBUG=1);
    weight [D, C, p, p] and bias [D] of the Conv2d patch embedding (bias None: no bias); pos_embed
    [1, 1 + L, D] with the cls row first, or None. Output dtype: imgs' (the autocast dtype
    under autocast) promoted with pos_embed's, as the reference's conv + pos_embed add. Differentiable with
    respect to imgs, weight, bias and pos_embed."""
    imgs, weight, bias = _prepare(imgs, ids_keep, weight, bias, pos_embed)
    return _run(imgs, ids_keep, weight, bias, pos_embed)


def random_masked_patch_embed(imgs, weight, bias, pos_embed, mask_ratio, noise=None, generator=None):
    """The MAE encoder front end in one call: random masking indices (mae_kernels.random_mask_indices), then
    masked_patch_embed of the kept patches. Returns (tokens [N, K, D], mask [N, L] float32 with 1 = removed,
    ids_restore [N, L] int64, ids_keep [N, K] int64), K = int(L * (1 - mask_ratio))."""
    check_mask_ratio(mask_ratio)
    check_tensor("imgs", imgs, ndim=4)
    N, _, H, W = imgs.shape
    no_ids = torch.empty(N, 0, dtype=torch.int64, device=imgs.device)
    imgs, weight, bias = _prepare(imgs, no_ids, weight, bias, pos_embed)  # everything checked before any kernel
    p = weight.shape[-1]
    ids_keep, ids_restore, mask = random_mask_indices(N, (H // p) * (W // p), mask_ratio, noise=noise,
                                                      generator=generator, device=imgs.device)
    tokens = _run(imgs, ids_keep, weight, bias, pos_embed)  # ids_keep valid by construction: no sync
    return tokens, mask, ids_restore, ids_keep
