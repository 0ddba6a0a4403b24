"""Patch the official MAE (facebookresearch/mae, models_mae.MaskedAutoencoderViT) in place to run mae_kernels'
fused ops; the official repository is not a dependency: any model with its structure qualifies.

    model = models_mae.mae_vit_base_patch16(norm_pix_loss=True)
    patch_mae(model)          # unpatch_mae(model) undoes it

The instance's forward_encoder, forward_decoder and forward_loss are replaced (models/fused.py); its forward,
parameters, buffers and state_dict are untouched, so forward(imgs, mask_ratio) keeps its signature and
checkpoints load as before. Patch before wrapping in DistributedDataParallel or torch.compile.

Contract (checked by patch_mae, which names what is missing or different):
- methods forward_encoder(imgs, mask_ratio), forward_decoder(latent, ids_restore), forward_loss(imgs, pred, mask),
  called by the model's forward;
- patch_embed.proj: an nn.Conv2d with square kernel = stride = p, no padding, dilation 1, groups 1; a
  patch_embed.norm, if any, must be nn.Identity (timm's default: the fused op adds pos_embed right after the
  projection);
- pos_embed [1, 1 + L, D] (cls row first) and cls_token [1, 1, D]; blocks (iterable of modules called as
  blk(x)) and norm;
- decoder_embed, mask_token [1, 1, Dd], decoder_pos_embed [1, 1 + L, Dd], decoder_blocks, decoder_norm,
  decoder_pred (p*p*C outputs, patch vectors in (p_row, p_col, c) order as the official patchify), norm_pix_loss.

Results equal the unpatched model's for the same noise up to summation order. With the noise drawn inside (the
official forward), the CPU backend draws torch.rand(N, L) exactly as the official random_masking, so the same
seed gives the same masks (barring ties in the noise, which the official unstable argsort orders arbitrarily and
mae_kernels by lower index); CUDA kernels draw their own Philox numbers (README, semantics notes).
"""
import types

from torch import nn

from ..models import fused

PATCHED = "_mae_kernels_patched"
METHODS = ("forward_encoder", "forward_decoder", "forward_loss")
ATTRIBUTES = ("patch_embed", "pos_embed", "cls_token", "blocks", "norm", "decoder_embed", "mask_token",
              "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "norm_pix_loss")


def _forward_encoder(self, imgs, mask_ratio, noise=None):  # noise: for models whose forward passes one
    return fused.forward_encoder(self, imgs, mask_ratio, noise)


def _forward_decoder(self, x, ids_restore):
    return fused.forward_decoder(self, x, ids_restore)


def _forward_loss(self, imgs, pred, mask):
    return fused.forward_loss(self, imgs, pred, mask)


_PATCHES = {"forward_encoder": _forward_encoder, "forward_decoder": _forward_decoder,
            "forward_loss": _forward_loss}


def missing(model):
    """The names of the contract's attributes and methods that `model` lacks (empty: the official structure)."""
    gone = [a for a in ATTRIBUTES if not hasattr(model, a)]
    gone += [f"{m}()" for m in METHODS if not callable(getattr(model, m, None))]
    if hasattr(model, "patch_embed") and not hasattr(model.patch_embed, "proj"):
        gone.append("patch_embed.proj")
    return gone


def _check(model):
    gone = missing(model)
    if gone:
        raise TypeError(f"patch_mae: expected the official MAE structure (models_mae.MaskedAutoencoderViT), "
                        f"got {type(model).__name__} without {', '.join(gone)}")
    proj = model.patch_embed.proj
    if not isinstance(proj, nn.Conv2d):
        raise TypeError(f"patch_mae: patch_embed.proj must be an nn.Conv2d, got {type(proj).__name__}")
    k = proj.kernel_size
    if (k[0] != k[1] or tuple(proj.stride) != tuple(k) or tuple(proj.padding) != (0, 0)
            or tuple(proj.dilation) != (1, 1) or proj.groups != 1 or proj.padding_mode != "zeros"):
        raise ValueError(f"patch_mae: patch_embed.proj must be a square patch Conv2d (kernel = stride = p, no "
                         f"padding, dilation 1, groups 1), got kernel {tuple(k)}, stride {tuple(proj.stride)}, "
                         f"padding {proj.padding}, dilation {tuple(proj.dilation)}, groups {proj.groups}")
    norm = getattr(model.patch_embed, "norm", None)
    if norm is not None and not isinstance(norm, nn.Identity):
        raise ValueError(f"patch_mae: patch_embed.norm must be absent or nn.Identity (the fused op adds pos_embed "
                         f"right after the projection), got {type(norm).__name__}")


def patch_mae(model):
    """Make an official-structure MAE run the fused ops, in place; returns the model. Idempotent."""
    if getattr(model, PATCHED, False):
        return model
    _check(model)
    for name, fn in _PATCHES.items():
        setattr(model, name, types.MethodType(fn, model))  # instance attributes: the class stays untouched
    setattr(model, PATCHED, True)
    return model


def unpatch_mae(model):
    """Undo patch_mae: the class's own methods take over again."""
    for name in (*_PATCHES, PATCHED):
        model.__dict__.pop(name, None)
    return model
