"""patchify, unpatchify and masked_patchify: MAE's patch layout as gathers / scatters, any channel count,
non-square images, square or rectangular patches, videos cut into tubelets, any strides (channels_last,
channels_last_3d, HF's [N, T, C, H, W] video permuted to [N, C, T, H, W], non-contiguous views).

Compiled ops (CPU, CUDA) and their Triton twins (<name>_triton) share these schemas, with patch_size = [u, ph, pw]
(u = 1 for images) and image_size = [H, W] (output [N, C, H, W]) or [T, H, W] (output [N, C, T, H, W]):
  patchify(imgs [N, C, (T,) H, W], patch_size) -> [N, L, P]                  backward: unpatchify
  unpatchify(x [N, L, P], patch_size, image_size) -> [N, C, (T,) H, W]       backward: patchify
  masked_patchify(imgs, ids_keep [N, K] int64, patch_size, dtype=None) -> [N, K, P]   (only the kept pixels are
      read; dtype None: imgs', else fp32 / fp16 / bf16, each read pixel rounded to it once, as imgs.to(dtype))
  masked_patchify_backward(grad [N, K, P], ids_keep, patch_size, image_size) -> imgs' shape (zeros elsewhere)
P = u*ph*pw*C. Patch vectors are in (frame, p_row, p_col, c) order, channel fastest; token
l = (ti * h + hi) * w + wi with h = H / ph, w = W / pw (MAE_SPEC_VIDEO.md; images: l = hi * w + wi).
ids_keep entries must be distinct within a row (as random masking makes them) for the scatter to be a gradient;
their range is always checked, their distinctness with MAE_KERNELS_DEBUG=1 (ops/_validate.py).
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import (FLOAT_DTYPES, check_ids_keep, check_images, check_patch_size, check_tensor, patch_dims,
                        patch_size_text)

_SCHEMAS = {
    "patchify": "(Tensor imgs, int[] patch_size) -> Tensor",
    "unpatchify": "(Tensor x, int[] patch_size, int[] image_size) -> Tensor",
    "masked_patchify": "(Tensor imgs, Tensor ids_keep, int[] patch_size, ScalarType? dtype=None) -> Tensor",
    "masked_patchify_backward": "(Tensor grad, Tensor ids_keep, int[] patch_size, int[] image_size) -> Tensor",
}


def _triton(name):
    def impl(*args):
        from ..triton import masked_patchify as tk
        if name == "patchify":
            imgs, patch_size = args
            return tk.gather(imgs, None, patch_size)
        if name == "unpatchify":
            x, patch_size, image_size = args
            return tk.scatter(x, None, patch_size, image_size)
        if name == "masked_patchify":
            imgs, ids_keep, patch_size, *dtype = args
            return tk.gather(imgs, ids_keep, patch_size, *dtype)
        grad, ids_keep, patch_size, image_size = args
        return tk.scatter(grad, ids_keep, patch_size, image_size)
    return impl


# OPS[backend][name]; cpu and cuda share the compiled op.
_compiled = {name: compiled_op(name) for name in _SCHEMAS}
OPS = {"cpu": _compiled, "cuda": _compiled,
       "triton": {name: define_triton_op(name, schema, _triton(name)) for name, schema in _SCHEMAS.items()}}


def _num_patches(sizes, patch_size):
    """L of a sample of spatial sizes [H, W] or [T, H, W] cut into patch_size [u, ph, pw] patches."""
    u, ph, pw = patch_size
    T, H, W = sizes if len(sizes) == 3 else (u, *sizes)
    return (T // u) * (H // ph) * (W // pw)


def _fake_patchify(imgs, patch_size):
    u, ph, pw = patch_size
    return imgs.new_empty(imgs.shape[0], _num_patches(imgs.shape[2:], patch_size), u * ph * pw * imgs.shape[1])


def _fake_unpatchify(x, patch_size, image_size):
    N, _, P = x.shape
    u, ph, pw = patch_size
    return x.new_empty(N, P // (u * ph * pw), *image_size)


def _fake_masked_patchify(imgs, ids_keep, patch_size, dtype=None):
    u, ph, pw = patch_size
    return imgs.new_empty(imgs.shape[0], ids_keep.shape[1], u * ph * pw * imgs.shape[1], dtype=dtype or imgs.dtype)


def _fake_masked_patchify_backward(grad, ids_keep, patch_size, image_size):
    return _fake_unpatchify(grad, patch_size, image_size)


def _register(ops):
    def setup_image(ctx, inputs, output):  # ops whose differentiable input is an image or video
        masked = len(inputs) > 2  # masked_patchify(imgs, ids_keep, patch_size, dtype) / patchify(imgs, patch_size)
        ctx.patch_size, ctx.image_size = inputs[2 if masked else 1], list(inputs[0].shape[2:])
        ctx.imgs_dtype = inputs[0].dtype
        ctx.save_for_backward(inputs[1] if masked else None)

    def setup_patches(ctx, inputs, output):  # ops whose differentiable input is patch vectors
        ctx.patch_size = inputs[-2]
        ctx.save_for_backward(inputs[1] if len(inputs) == 4 else None)

    # Gradients are not materialised (_registry.register): a None grad (nothing reached the output) gives None.
    def patchify_backward(ctx, grad):
        if grad is None:
            return None, None
        return ops["unpatchify"](grad.contiguous(), ctx.patch_size, ctx.image_size), None

    def unpatchify_backward(ctx, grad):
        if grad is None:
            return None, None, None
        return ops["patchify"](grad, ctx.patch_size), None, None

    def masked_patchify_backward(ctx, grad):
        if grad is None:
            return None, None, None
        (ids_keep,) = ctx.saved_tensors
        grad_imgs = ops["masked_patchify_backward"](grad.contiguous(), ids_keep, ctx.patch_size, ctx.image_size)
        # In the patches' dtype, then imgs' (a dtype-converting gather): as autograd's cast of imgs.to(dtype).
        return grad_imgs.to(ctx.imgs_dtype), None, None, None

    def masked_patchify_double_backward(ctx, grad):
        if grad is None:
            return None, None, None, None
        (ids_keep,) = ctx.saved_tensors
        return ops["masked_patchify"](grad, ids_keep, ctx.patch_size), None, None, None

    register([ops["patchify"]], _fake_patchify, patchify_backward, setup_image)
    register([ops["unpatchify"]], _fake_unpatchify, unpatchify_backward, setup_patches)
    register([ops["masked_patchify"]], _fake_masked_patchify, masked_patchify_backward, setup_image)
    register([ops["masked_patchify_backward"]], _fake_masked_patchify_backward, masked_patchify_double_backward,
             setup_patches)


for _backend in ("cuda", "triton"):  # cpu shares cuda's compiled ops
    if OPS[_backend]["patchify"] is not None:
        _register(OPS[_backend])


def _is_video_size(patch_size):
    return isinstance(patch_size, (tuple, list, torch.Size)) and len(patch_size) == 3


def _check_geometry(imgs, patch_size):
    """Validate imgs against patch_size; returns [u, ph, pw] for the ops. An int or a pair goes with images
    [N, C, H, W], a triple (u, ph, pw) with videos [N, C, T, H, W]; a mismatch names patch_size (patch_dims)."""
    if not isinstance(patch_size, (tuple, list, torch.Size)):
        check_patch_size(patch_size)  # first, as before videos: its message names patch_size
    video = _is_video_size(patch_size) or isinstance(imgs, torch.Tensor) and imgs.dim() == 5
    return list(check_images("imgs", imgs, patch_size, video=video))


def _image_size(image_size, patch_size=None):
    if _is_video_size(patch_size):
        if (isinstance(image_size, (tuple, list, torch.Size)) and len(image_size) == 3
                and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)):
            return tuple(image_size)
        raise TypeError(f"image_size must be a triple of ints (T, H, W) for videos (patch_size (u, ph, pw)), "
                        f"got {image_size!r}")
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    if (isinstance(image_size, (tuple, list, torch.Size)) and len(image_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)):
        return tuple(image_size)
    raise TypeError(f"image_size must be an int or a pair of ints (H, W), got {image_size!r}")


def patchify(imgs, patch_size):
    """Images [N, C, H, W] with patch_size p or (ph, pw) -> [N, L, ph*pw*C] in (p_row, p_col, c) order (MAE's
    patchify, any C, H != W); videos [N, C, T, H, W] with patch_size (u, ph, pw) -> [N, L, u*ph*pw*C] in
    (frame, p_row, p_col, c) order, token l = (ti * h + hi) * w + wi (mae_st's and VideoMAE's patchify)."""
    dims = _check_geometry(imgs, patch_size)
    backend = select("patchify", imgs.device.type)
    if backend == "reference":
        return reference.patchify(imgs, patch_size)
    return OPS[backend]["patchify"](imgs, dims)


def unpatchify(x, patch_size, image_size):
    """[N, L, P] -> the images [N, C, H, W] or videos [N, C, T, H, W], the exact inverse of patchify; image_size
    is H (square) or (H, W) for images (patch_size p or (ph, pw)), (T, H, W) for videos (patch_size (u, ph, pw))."""
    if not isinstance(patch_size, (tuple, list, torch.Size)):
        check_patch_size(patch_size)
    u, ph, pw = patch_dims(patch_size, 5 if _is_video_size(patch_size) else 4)
    size = _image_size(image_size, patch_size)
    check_tensor("x", x, ndim=3)
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    T, H, W = size if len(size) == 3 else (u, *size)
    size_text = "x".join(str(s) for s in size)
    if T % u or H % ph or W % pw or min(size) < 1:
        raise ValueError(f"image_size must be positive and divisible by patch_size={patch_size_text(patch_size)}, "
                         f"got {size_text}")
    L, P, vec = (T // u) * (H // ph) * (W // pw), x.shape[2], u * ph * pw
    if x.shape[1] != L or P == 0 or P % vec:
        vec_text = ("p*p*C" if isinstance(patch_size, int) else "ph*pw*C" if len(size) == 2 else "u*ph*pw*C")
        kind = "images" if len(size) == 2 else "videos"
        raise ValueError(f"x must have shape [N, {L}, {vec_text}] for {size_text} {kind} and "
                         f"patch_size={patch_size_text(patch_size)} (C >= 1), got {tuple(x.shape)}")
    backend = select("unpatchify", x.device.type)
    if backend == "reference":
        return reference.unpatchify(x, patch_size, size)
    return OPS[backend]["unpatchify"](x, [u, ph, pw], list(size))


def masked_patchify(imgs, ids_keep, patch_size, dtype=None):
    """The patch vectors of the kept patches (tubelets for videos) only, in ids_keep order: [N, K, P] in
    patchify's vector order.

    Reads only the kept patches' pixels straight from imgs (any strides); equals
    gather(patchify(imgs), 1, ids_keep) bit for bit. dtype (torch.float32, float16 or bfloat16, for imgs in one of
    them; None: imgs'): each read pixel rounded to it once, equal to masked_patchify(imgs.to(dtype), ...) bit for
    bit without converting the rest of the image. Differentiable with respect to imgs (the gradient is scattered
    back into a zero image, in imgs' dtype)."""
    dims = _check_geometry(imgs, patch_size)
    if dtype is not None and dtype != imgs.dtype:
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be None or one of {', '.join(map(str, FLOAT_DTYPES))}, got {dtype!r}")
        check_tensor("imgs", imgs, dtypes=FLOAT_DTYPES)  # to convert to dtype
    else:
        dtype = None  # the plain gather
    check_ids_keep(ids_keep, imgs.shape[0], _num_patches(imgs.shape[2:], dims), imgs.device)
    backend = select("masked_patchify", imgs.device.type)
    if backend == "reference":
        return reference.masked_patchify(imgs if dtype is None else imgs.to(dtype), ids_keep, patch_size)
    if dtype is None:
        return OPS[backend]["masked_patchify"](imgs, ids_keep, dims)
    return OPS[backend]["masked_patchify"](imgs, ids_keep, dims, dtype)
