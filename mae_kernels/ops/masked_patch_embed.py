"""masked_patch_embed and random_masked_patch_embed: the MAE encoder front end on the kept patches only, for
images (Conv2d patch embedding) and videos (Conv3d tubelet embedding).

tokens[n, k] = W . patch(imgs[n], ids_keep[n, k]) + b (+ pos[ids_keep[n, k]]), equal to the official Conv2d /
Conv3d patch embedding of all L patches + the positional embedding followed by the mask gather, about
1 / (1 - mask_ratio) times cheaper. Compiled op mae_kernels::masked_patch_embed (CPU: compiled gather +
at::addmm; CUDA: gather kernel + cuBLAS; then one positional epilogue pass over the GEMM output, which reads the
table rows in place: csrc/masked_patch_embed_gemm.h) and its Triton twin masked_patch_embed_triton (one GEMM loading its A
tiles from the pixels) share:
  (imgs [N, C, H, W] or [N, C, T, H, W], ids_keep [N, K] int64, weight [D, C, ph, pw] or [D, C, u, ph, pw],
   bias [D], pos_embed, pos_temporal) -> [N, K, D], the GEMM dtype (weight's) promoted with the positional
   tables'. imgs may have another float dtype: each kept pixel is rounded to weight's as the gather reads it.
Positional rows (token l = (ti * h + hi) * w + wi):
  pos_embed None                        : none;
  pos_embed [1, R, D], pos_temporal None: row R - L + l, R = 1 + L (row 0 the cls token's, never read: the
                                          model adds cls + pos_embed[:, :1] itself, as MAE does) or R = L (videos
                                          only: VideoMAE's sin-cos table, no cls);
  pos_embed [1, hw, D], pos_temporal [1, t, D]: mae_st's separable pair, spatial[l % hw] + temporal[l // hw],
                                          gathered per kept token (the [L, D] sum is never formed); mae_st's cls
                                          row (cls_token + pos_embed_class) is added by the model.
Backward (any of imgs, weight, bias, the positional tables): grad_W = grad^T @ masked_patchify(imgs)
(recomputed, not saved), grad_b = sum, positional grads = batch sums of the rows scattered to the kept tokens
(no atomics; the separable pair's are the sums over time / space of that [L, D] grid), grad_imgs =
masked_patchify_backward(grad @ W), returned in imgs' dtype. Autocast: weight and bias are cast to the autocast
dtype, as nn.Conv2d's / nn.Conv3d's are; imgs are not cast (a full-size copy of which 1 - mask_ratio is read): the
gather rounds the kept pixels to the GEMM dtype, the same values as imgs.to(dtype), forward and backward.
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import (FLOAT_DTYPES, check_ids_keep, check_images, check_mask_ratio, check_tensor, patch_dims,
                        patch_size_text)
from .masked_patchify import OPS as PATCHIFY_OPS
from .random_masking import random_mask_indices

_SCHEMA = ("(Tensor imgs, Tensor ids_keep, Tensor weight, Tensor bias, Tensor? pos_embed, "
           "Tensor? pos_temporal=None) -> Tensor")


def _triton_forward(imgs, ids_keep, weight, bias, pos_embed, pos_temporal=None):
    from ..triton.masked_patch_embed import masked_patch_embed
    return masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed, pos_temporal)


OPS = {"cpu": compiled_op("masked_patch_embed"), "cuda": compiled_op("masked_patch_embed"),
       "triton": define_triton_op("masked_patch_embed", _SCHEMA, _triton_forward)}


def _out_dtype(weight, pos_embed, pos_temporal):
    dtype = weight.dtype  # the GEMM's
    for table in (pos_embed, pos_temporal):
        if table is not None:
            dtype = torch.promote_types(dtype, table.dtype)
    return dtype


def _fake(imgs, ids_keep, weight, bias, pos_embed, pos_temporal=None):
    return imgs.new_empty(*ids_keep.shape, weight.shape[0], dtype=_out_dtype(weight, pos_embed, pos_temporal))


def _geometry(weight):
    """[u, ph, pw] of a Conv2d ([D, C, ph, pw], u = 1) or Conv3d ([D, C, u, ph, pw]) weight."""
    return list(weight.shape[2:]) if weight.dim() == 5 else [1, *weight.shape[2:]]


def _setup_context(ctx, inputs, output):
    imgs, ids_keep, weight, bias, pos_embed = inputs[:5]
    pos_temporal = inputs[5] if len(inputs) > 5 else None
    ctx.image_size = list(imgs.shape[2:])
    ctx.patch_size = _geometry(weight)
    ctx.gemm_dtype = weight.dtype  # the GEMM ran in weight's dtype; the positional promotion came after it
    ctx.imgs_dtype = imgs.dtype
    ctx.bias_dtype = bias.dtype
    ctx.pos_dtypes = tuple(t.dtype if t is not None else None for t in (pos_embed, pos_temporal))
    u, ph, pw = ctx.patch_size
    T = imgs.shape[2] if imgs.dim() == 5 else 1
    ctx.grid = (T // u, imgs.shape[-2] // ph, imgs.shape[-1] // pw)
    ctx.pos_rows = pos_embed.shape[1] if pos_embed is not None else 0
    ctx.separable = pos_temporal is not None
    # imgs only for grad_W (the patches are gathered again, not saved); weight only for grad_imgs.
    ctx.save_for_backward(imgs if ctx.needs_input_grad[2] else None, ids_keep,
                          weight if ctx.needs_input_grad[0] else None)
    ctx.weight_shape = weight.shape


CPU_FP32_GEMM = "mae_kernels::cpu_fp32_gemm"  # the profiler range of _matmul's CPU-only branch


def _matmul(a, b):
    """a @ b; bf16/fp16 on CPU as an fp32 GEMM rounded once (as the forward, csrc/masked_patch_embed_gemm.h):
    ATen's reduced-precision CPU GEMMs depend on the CPU's ISA, non-finite results included."""
    if a.is_cpu and a.dtype in (torch.bfloat16, torch.float16):
        # Named for python/static_report.py: these casts (and the fp32 GEMM) are the CPU's; a GPU runs one
        # reduced-precision GEMM here.
        with torch.profiler.record_function(CPU_FP32_GEMM):
            return (a.float() @ b.float()).to(a.dtype)
    return a @ b


def _weight_matrix(weight):
    """[D, P] in the patch-vector order (frame, p_row, p_col, c) from the weight's (c, [frame,] p_row, p_col)."""
    perm = (0, 2, 3, 4, 1) if weight.dim() == 5 else (0, 2, 3, 1)
    return weight.permute(*perm).reshape(weight.shape[0], -1)


_BIAS_GRAD_SCHEMA = ("(Tensor grad, ScalarType gemm_dtype, bool write_gemm_grad, ScalarType bias_dtype) -> "
                     "(Tensor gemm_grad, Tensor grad_bias)")


def _triton_bias_grad(grad, gemm_dtype, write_gemm_grad, bias_dtype):
    from ..triton.masked_patch_embed_bias_grad import masked_patch_embed_bias_grad
    return masked_patch_embed_bias_grad(grad, gemm_dtype, write_gemm_grad, bias_dtype)


# The backward's one pass over grad_out: the GEMM-dtype copy (when the GEMMs need one) and the bias gradient.
BIAS_GRAD_OPS = {"cpu": compiled_op("masked_patch_embed_bias_grad"),
                 "cuda": compiled_op("masked_patch_embed_bias_grad"),
                 "triton": define_triton_op("masked_patch_embed_bias_grad", _BIAS_GRAD_SCHEMA, _triton_bias_grad)}


def _fake_bias_grad(grad, gemm_dtype, write_gemm_grad, bias_dtype):
    N, K, D = grad.shape
    return (grad.new_empty(N * K if write_gemm_grad else 0, D, dtype=gemm_dtype),
            grad.new_empty(D, dtype=bias_dtype))


def _make_backward(patchify_ops, bias_grad_op):
    def backward(ctx, grad_out):
        if grad_out is None:  # not materialised (_registry.register): no gradient reached the tokens
            return (None,) * 6
        imgs, ids_keep, weight = ctx.saved_tensors
        D, C = ctx.weight_shape[:2]
        u, ph, pw = ctx.patch_size
        P = C * u * ph * pw
        N, K = ids_keep.shape
        grad_imgs = grad_weight = grad_bias = grad_pos = grad_pos_t = None
        need_gemm = ctx.needs_input_grad[0] or ctx.needs_input_grad[2]
        gemm_grad = None
        if ctx.needs_input_grad[3]:
            # One read of grad_out for the bias gradient and the GEMMs' operand: the copy is written when the
            # GEMMs need another dtype (autocast: the fp32 pos_embed made the output fp32) or rows that do not
            # view as [N * K, D] (the model's slice of its cat's gradient).
            write = need_gemm and (grad_out.dtype != ctx.gemm_dtype or not grad_out.is_contiguous())
            copy, grad_bias = bias_grad_op(grad_out, ctx.gemm_dtype, write, ctx.bias_dtype)
            if write:
                gemm_grad = copy
        if need_gemm and gemm_grad is None:
            gemm_grad = grad_out.reshape(N * K, D).to(ctx.gemm_dtype)
        if ctx.needs_input_grad[0]:
            grad_patches = _matmul(gemm_grad, _weight_matrix(weight)).reshape(N, K, P)
            grad_imgs = patchify_ops["masked_patchify_backward"](grad_patches, ids_keep, ctx.patch_size,
                                                                 ctx.image_size).to(ctx.imgs_dtype)
        if ctx.needs_input_grad[2]:
            patches = patchify_ops["masked_patchify"](imgs, ids_keep, ctx.patch_size,
                                                      ctx.gemm_dtype).reshape(N * K, P)
            grad_w = _matmul(gemm_grad.t(), patches)  # [D, P] in (frame, p_row, p_col, c) order
            if len(ctx.weight_shape) == 5:
                grad_weight = grad_w.reshape(D, u, ph, pw, C).permute(0, 4, 1, 2, 3).contiguous()
            else:
                grad_weight = grad_w.reshape(D, ph, pw, C).permute(0, 3, 1, 2).contiguous()
        need_pos = ctx.needs_input_grad[4] or (len(ctx.needs_input_grad) > 5 and ctx.needs_input_grad[5])
        if need_pos:
            # Deterministic without atomics (index_add would use them on CUDA): ids_keep rows hold distinct
            # patches, so the scatter writes each element once, then the batch sum runs in a fixed order.
            # Costs an [N, L, D] fp32 buffer, only when a positional table is trainable.
            t, h, w = ctx.grid
            L = t * h * w
            first = 0 if ctx.separable else ctx.pos_rows - L
            buf = grad_out.new_zeros(N, first + L, D, dtype=torch.float32)
            buf.scatter_(1, (ids_keep + first).unsqueeze(-1).expand(N, K, D), grad_out.float())
            rows = buf.sum(0, keepdim=True)  # [1, first + L, D]
            if ctx.separable:
                grid = rows.reshape(t, h * w, D)
                grad_pos = grid.sum(0, keepdim=True).to(ctx.pos_dtypes[0])
                grad_pos_t = grid.sum(1).unsqueeze(0).to(ctx.pos_dtypes[1])
            else:
                grad_pos = rows.to(ctx.pos_dtypes[0])
        return grad_imgs, None, grad_weight, grad_bias, grad_pos, grad_pos_t
    return backward


for _name in ("cuda", "triton"):  # cpu shares cuda's compiled op
    if OPS[_name] is not None:
        register([OPS[_name]], _fake, _make_backward(PATCHIFY_OPS[_name], BIAS_GRAD_OPS[_name]), _setup_context)
        register([BIAS_GRAD_OPS[_name]], _fake_bias_grad)


def _autocast(imgs, weight, bias):
    """Cast weight and bias to the autocast dtype when autocast is on for imgs' device (as nn.Conv2d; like
    autocast, only floating-point tensors: others are left for validation to reject). imgs in fp32 / fp16 / bf16
    stay as they are: the gather rounds the kept pixels to the GEMM dtype (weight's), giving imgs.to(dtype)'s
    values without converting the whole image; others (float64) are cast here as before. Returns (imgs, weight,
    bias, whether autocast applied)."""
    device_type = imgs.device.type
    if not torch.is_autocast_enabled(device_type):
        return imgs, weight, bias, False
    dtype = torch.get_autocast_dtype(device_type)
    weight, bias = (t.to(dtype) if t.is_floating_point() else t for t in (weight, bias))
    if imgs.is_floating_point() and imgs.dtype not in FLOAT_DTYPES:
        imgs = imgs.to(dtype)
    return imgs, weight, bias, True


def _check_weight(weight, device, patch_size):
    """weight [D, C, ph, pw] (Conv2d) or [D, C, u, ph, pw] (Conv3d), all sizes >= 1, on `device`, agreeing with
    patch_size when given; without patch_size a Conv2d weight must be square (a rectangular one needs
    patch_size=(ph, pw): the caller says so). Returns (D, C, [u, ph, pw])."""
    video = _is_conv3d(weight)
    check_tensor("weight", weight, ndim=5 if video else 4, dtypes=FLOAT_DTYPES, device=device)
    D, C = weight.shape[:2]
    dims = _geometry(weight)
    if video:
        ok = min(D, C, *dims) >= 1 and (patch_size is None or list(patch_dims(patch_size, 5)) == dims)
        if not ok:
            want = "" if patch_size is None else f" with (u, ph, pw) = patch_size={patch_size_text(patch_size)}"
            raise ValueError(f"weight must be a Conv3d tubelet embedding weight [D, C, u, ph, pw]{want} with "
                             f"D, C, u, ph, pw >= 1, got {tuple(weight.shape)}")
    elif patch_size is None:
        if dims[1] != dims[2] or min(D, C, dims[1]) < 1:
            raise ValueError(f"weight must be a Conv2d patch embedding weight [D, C, p, p] with D, C, p >= 1 "
                             f"(rectangular patches: pass patch_size=(ph, pw)), got {tuple(weight.shape)}")
    elif list(patch_dims(patch_size, 4)) != dims or min(D, C) < 1:
        raise ValueError(f"weight must be a Conv2d patch embedding weight [D, C, ph, pw] with (ph, pw) = "
                         f"patch_size={patch_size_text(patch_size)} and D, C >= 1, got {tuple(weight.shape)}")
    return D, C, dims


def _check_pos(pos_embed, imgs, D, grid):
    """The positional embedding's form (module docstring) -> (pos_embed, pos_temporal) for the ops."""
    t, h, w = grid
    L = t * h * w
    video = imgs.dim() == 5
    if isinstance(pos_embed, (tuple, list)):
        if not video or len(pos_embed) != 2:
            raise TypeError(f"pos_embed must be a tensor [1, 1 + L, D]{', [1, L, D]' if video else ''} or None"
                            + (" or the separable pair (spatial [1, h*w, D], temporal [1, t, D])" if video
                               else " (the separable (spatial, temporal) pair is for videos)")
                            + f", got a {type(pos_embed).__name__} of {len(pos_embed)}")
        spatial, temporal = pos_embed
        check_tensor("pos_embed spatial", spatial, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device,
                     shape=(1, h * w, D))
        check_tensor("pos_embed temporal", temporal, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device,
                     shape=(1, t, D))
        return spatial, temporal
    if pos_embed is None:
        return None, None
    if video:
        check_tensor("pos_embed", pos_embed, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device)
        if pos_embed.shape[0] != 1 or pos_embed.shape[1] not in (L, 1 + L) or pos_embed.shape[2] != D:
            raise ValueError(f"pos_embed must have shape [1, {L}, {D}] (a table of the L tokens) or "
                             f"[1, {1 + L}, {D}] (cls row first), got {tuple(pos_embed.shape)}")
    else:
        check_tensor("pos_embed", pos_embed, ndim=3, dtypes=FLOAT_DTYPES, device=imgs.device, shape=(1, 1 + L, D))
    return pos_embed, None


def _is_conv3d(weight):
    return isinstance(weight, torch.Tensor) and weight.dim() == 5


def _check_imgs(imgs, weight):
    """imgs' rank must follow the weight's: 4-D images with a Conv2d weight, 5-D videos with a Conv3d one."""
    video = _is_conv3d(weight)
    if isinstance(imgs, torch.Tensor) and imgs.dim() == 5 and not video and isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a Conv3d tubelet embedding weight [D, C, u, ph, pw] for videos imgs "
                         f"[N, C, T, H, W], got {tuple(weight.shape)}")
    check_tensor("imgs", imgs, ndim=5 if video else 4)


def _validate(imgs, ids_keep, weight, bias, pos_embed, patch_size, autocast=False):
    """Everything checked (imgs in weight's dtype, or under autocast any of FLOAT_DTYPES); returns (pos_embed,
    pos_temporal, L)."""
    D, C, dims = _check_weight(weight, imgs.device, patch_size)
    video = weight.dim() == 5
    # The patch size as the caller sees it, so that error messages quote it (an int p for square Conv2d kernels).
    shown = tuple(dims) if video else patch_size if patch_size is not None else dims[1]
    check_images("imgs", imgs, shown, video=video)
    check_tensor("imgs", imgs, dtypes=FLOAT_DTYPES if autocast else (weight.dtype,), shape=(None, C))
    N = imgs.shape[0]
    u, ph, pw = dims
    grid = ((imgs.shape[2] // u) if imgs.dim() == 5 else 1, imgs.shape[-2] // ph, imgs.shape[-1] // pw)
    check_tensor("bias", bias, ndim=1, dtypes=(weight.dtype,), device=imgs.device, shape=(D,))
    pos, pos_t = _check_pos(pos_embed, imgs, D, grid)
    L = grid[0] * grid[1] * grid[2]
    check_ids_keep(ids_keep, N, L, imgs.device)
    return pos, pos_t, L


def _prepare(imgs, ids_keep, weight, bias, pos_embed, patch_size):
    """The validated GEMM operands and positional tables (imgs, weight, bias, pos_embed, pos_temporal, L):
    bias None -> zeros, autocast applied."""
    _check_imgs(imgs, weight)
    check_tensor("weight", weight, ndim=5 if _is_conv3d(weight) else 4)
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    check_tensor("bias", bias, ndim=1)
    if pos_embed is not None and not isinstance(pos_embed, (tuple, list)):
        check_tensor("pos_embed", pos_embed, ndim=3)
    imgs, weight, bias, autocast = _autocast(imgs, weight, bias)
    pos, pos_t, L = _validate(imgs, ids_keep, weight, bias, pos_embed, patch_size, autocast)
    return imgs, weight, bias, pos, pos_t, L


def _run(imgs, ids_keep, weight, bias, pos, pos_t):
    backend = select("masked_patch_embed", imgs.device.type)
    if backend == "reference":  # eager's autocast order: imgs cast first
        return reference.masked_patch_embed(imgs.to(weight.dtype), ids_keep, weight, bias,
                                            pos if pos_t is None else (pos, pos_t))
    if pos_t is None:  # the image op's call, unchanged
        return OPS[backend](imgs, ids_keep, weight, bias, pos)
    return OPS[backend](imgs, ids_keep, weight, bias, pos, pos_t)


def masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed=None, patch_size=None):
    """Patch embedding of the kept patches (image patches or video tubelets) only: [N, K, D].

    imgs [N, C, H, W] with the Conv2d patch embedding weight [D, C, ph, pw], or videos [N, C, T, H, W] with the
    Conv3d tubelet embedding weight [D, C, u, ph, pw], each in its own layout (any strides: HF's [N, T, C, H, W]
    clip is passed as x.permute(0, 2, 1, 3, 4), never copied); bias [D] (None: no bias); ids_keep [N, K] int64
    token indices l = (ti * h + hi) * w + wi (distinct within a row, as the masking ops make them; their range
    is always checked, their distinctness with MAE_KERNELS_DEBUG=1). patch_size: None (the weight's kernel; a
    rectangular Conv2d kernel must be confirmed with patch_size=(ph, pw)), or p / (ph, pw) / (u, ph, pw)
    checked against the weight.

    pos_embed: None; a table [1, 1 + L, D] whose row 0 (the cls token's, MAE's and mae_st's non-separable
    layout) is skipped; for videos also [1, L, D] (no cls: VideoMAE's sin-cos table,
    mae_kernels.models.pos_embed.sinusoid_table); or, for videos, mae_st's separable pair (spatial [1, h*w, D],
    temporal [1, t, D]) added per kept token as spatial[l % (h*w)] + temporal[l // (h*w)] without forming the
    [L, D] sum. The cls token (and mae_st's pos_embed_class) is the model's to add, as in the references.

    Output dtype: imgs' (the autocast dtype under autocast) promoted with the positional tables', as the
    reference's conv + pos add. Under autocast imgs are not cast as a whole: the kept pixels are rounded to the
    autocast dtype as they are read (the same values), and imgs' gradient comes back in imgs' dtype.
    Differentiable with respect to imgs, weight, bias and the positional tables."""
    imgs, weight, bias, pos, pos_t, _ = _prepare(imgs, ids_keep, weight, bias, pos_embed, patch_size)
    return _run(imgs, ids_keep, weight, bias, pos, pos_t)


def random_masked_patch_embed(imgs, weight, bias, pos_embed, mask_ratio, noise=None, generator=None,
                              patch_size=None):
    """The MAE encoder front end in one call: random masking indices (mae_kernels.random_mask_indices) over
    the L tokens (images: h*w; videos: t*h*w, mae_st's spacetime masking), then masked_patch_embed of the kept
    ones (pos_embed and patch_size as there). Returns (tokens [N, K, D], mask [N, L] float32 with 1 = removed,
    ids_restore [N, L] int64, ids_keep [N, K] int64), K = int(L * (1 - mask_ratio))."""
    check_mask_ratio(mask_ratio)
    _check_imgs(imgs, weight)
    N = imgs.shape[0]
    no_ids = torch.empty(N, 0, dtype=torch.int64, device=imgs.device)
    # everything checked before any kernel
    imgs, weight, bias, pos, pos_t, L = _prepare(imgs, no_ids, weight, bias, pos_embed, patch_size)
    ids_keep, ids_restore, mask = random_mask_indices(N, L, mask_ratio, noise=noise, generator=generator,
                                                      device=imgs.device)
    tokens = _run(imgs, ids_keep, weight, bias, pos, pos_t)  # ids_keep valid by construction: no sync
    return tokens, mask, ids_restore, ids_keep
