"""patchify, unpatchify and masked_patchify: MAE's patch layout as gathers / scatters, any channel count,
non-square images, any image strides (channels_last, non-contiguous views).

Compiled ops (CPU, CUDA) and their Triton twins (<name>_triton) share these schemas:
  patchify(imgs [N, C, H, W], patch_size) -> [N, L, p*p*C]            backward: unpatchify
  unpatchify(x [N, L, p*p*C], patch_size, height, width) -> [N, C, H, W]   backward: patchify
  masked_patchify(imgs, ids_keep [N, K] int64, patch_size) -> [N, K, p*p*C]   (only the kept pixels are read)
  masked_patchify_backward(grad [N, K, P], ids_keep, patch_size, height, width) -> [N, C, H, W] (zeros elsewhere)
Patch vectors are in (p_row, p_col, c) order, channel fastest; token l = row * (W / p) + col.
ids_keep entries must be distinct within a row (as random masking makes them) for the scatter to be a gradient;
their range is always checked, their distinctness with MAE_KERNELS_DEBUG=1 (ops/_validate.py).
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import check_ids_keep, check_images, check_patch_size, check_tensor

_SCHEMAS = {
    "patchify": "(Tensor imgs, int patch_size) -> Tensor",
    "unpatchify": "(Tensor x, int patch_size, int height, int width) -> Tensor",
    "masked_patchify": "(Tensor imgs, Tensor ids_keep, int patch_size) -> Tensor",
    "masked_patchify_backward": "(Tensor grad, Tensor ids_keep, int patch_size, int height, int width) -> Tensor",
}


def _triton(name):
    def impl(*args):
        from ..triton import masked_patchify as tk
        if name == "patchify":
            imgs, p = args
            return tk.gather(imgs, None, p)
        if name == "unpatchify":
            x, p, H, W = args
            return tk.scatter(x, None, p, H, W)
        if name == "masked_patchify":
            imgs, ids_keep, p = args
            return tk.gather(imgs, ids_keep, p)
        grad, ids_keep, p, H, W = args
        return tk.scatter(grad, ids_keep, p, H, W)
    return impl


# OPS[backend][name]; cpu and cuda share the compiled op.
_compiled = {name: compiled_op(name) for name in _SCHEMAS}
OPS = {"cpu": _compiled, "cuda": _compiled,
       "triton": {name: define_triton_op(name, schema, _triton(name)) for name, schema in _SCHEMAS.items()}}


def _fake_patchify(imgs, p):
    N, C, H, W = imgs.shape
    return imgs.new_empty(N, (H // p) * (W // p), p * p * C)


def _fake_unpatchify(x, p, H, W):
    N, _, P = x.shape
    return x.new_empty(N, P // (p * p), H, W)


def _fake_masked_patchify(imgs, ids_keep, p):
    N, C, _, _ = imgs.shape
    return imgs.new_empty(N, ids_keep.shape[1], p * p * C)


def _fake_masked_patchify_backward(grad, ids_keep, p, H, W):
    N, _, P = grad.shape
    return grad.new_empty(N, P // (p * p), H, W)


def _register(ops):
    def setup_image(ctx, inputs, output):  # ops whose differentiable input is an image
        ctx.p, ctx.H, ctx.W = inputs[-1], inputs[0].shape[2], inputs[0].shape[3]
        ctx.save_for_backward(inputs[1] if len(inputs) == 3 else None)

    def setup_patches(ctx, inputs, output):  # ops whose differentiable input is patch vectors
        ctx.p = inputs[-3]
        ctx.save_for_backward(inputs[1] if len(inputs) == 5 else None)

    def patchify_backward(ctx, grad):
        return ops["unpatchify"](grad.contiguous(), ctx.p, ctx.H, ctx.W), None

    def unpatchify_backward(ctx, grad):
        return ops["patchify"](grad, ctx.p), None, None, None

    def masked_patchify_backward(ctx, grad):
        (ids_keep,) = ctx.saved_tensors
        return ops["masked_patchify_backward"](grad.contiguous(), ids_keep, ctx.p, ctx.H, ctx.W), None, None

    def masked_patchify_double_backward(ctx, grad):
        (ids_keep,) = ctx.saved_tensors
        return ops["masked_patchify"](grad, ids_keep, ctx.p), None, None, None, None

    register([ops["patchify"]], _fake_patchify, patchify_backward, setup_image)
    register([ops["unpatchify"]], _fake_unpatchify, unpatchify_backward, setup_patches)
    register([ops["masked_patchify"]], _fake_masked_patchify, masked_patchify_backward, setup_image)
    register([ops["masked_patchify_backward"]], _fake_masked_patchify_backward, masked_patchify_double_backward,
             setup_patches)


for _backend in ("cuda", "triton"):  # cpu shares cuda's compiled ops
    if OPS[_backend]["patchify"] is not None:
        _register(OPS[_backend])


def _image_size(image_size):
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return image_size, image_size
    if (isinstance(image_size, (tuple, list, torch.Size)) and len(image_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in image_size)):
        return tuple(image_size)
    raise TypeError(f"image_size must be an int or a pair of ints (H, W), got {image_size!r}")


def patchify(imgs, patch_size):
    """[N, C, H, W] -> [N, L, p*p*C] patch vectors in (p_row, p_col, c) order (MAE's patchify, any C, H != W)."""
    check_patch_size(patch_size)
    check_images("imgs", imgs, patch_size)
    backend = select("patchify", imgs.device.type)
    if backend == "reference":
        return reference.patchify(imgs, patch_size)
    return OPS[backend]["patchify"](imgs, patch_size)


def unpatchify(x, patch_size, image_size):
    """[N, L, p*p*C] -> [N, C, H, W], the exact inverse of patchify; image_size is H (square) or (H, W)."""
    check_patch_size(patch_size)
    H, W = _image_size(image_size)
    check_tensor("x", x, ndim=3)
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    if H % patch_size or W % patch_size or H < 1 or W < 1:
        raise ValueError(f"image_size must be positive and divisible by patch_size={patch_size}, got {H}x{W}")
    L, P = (H // patch_size) * (W // patch_size), x.shape[2]
    if x.shape[1] != L or P == 0 or P % (patch_size * patch_size):
        raise ValueError(f"x must have shape [N, {L}, p*p*C] for {H}x{W} images and patch_size={patch_size} "
                         f"(C >= 1), got {tuple(x.shape)}")
    backend = select("unpatchify", x.device.type)
    if backend == "reference":
        return reference.unpatchify(x, patch_size, (H, W))
    return OPS[backend]["unpatchify"](x, patch_size, H, W)


def masked_patchify(imgs, ids_keep, patch_size):
    """The patch vectors of the kept patches only, in ids_keep order: [N, K, p*p*C] (p_row, p_col, c).

    Reads only the kept patches' pixels straight from imgs (any strides); equals
    gather(patchify(imgs), 1, ids_keep) bit for bit. Differentiable with respect to imgs (the gradient is
    scattered back into a zero image)."""
    check_patch_size(patch_size)
    check_images("imgs", imgs, patch_size)
    N, _, H, W = imgs.shape
    check_ids_keep(ids_keep, N, (H // patch_size) * (W // patch_size), imgs.device)
    backend = select("masked_patchify", imgs.device.type)
    if backend == "reference":
        return reference.masked_patchify(imgs, ids_keep, patch_size)
    return OPS[backend]["masked_patchify"](imgs, ids_keep, patch_size)
