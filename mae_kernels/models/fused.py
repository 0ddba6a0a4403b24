"""The MAE forward on mae_kernels' fused ops, written once for every model with the official structure.

Used by MaskedAutoencoderViT(use_fused_ops=True), by integrations.official.patch_mae (the official repository's
models_mae.MaskedAutoencoderViT, patched in place) and, for the encoder front end, by the transformers patch.
The contract (attributes read): patch_embed.proj (Conv2d, kernel = stride = p), pos_embed [1, 1 + L, D],
cls_token, blocks, norm, decoder_embed, mask_token, decoder_pos_embed, decoder_blocks, decoder_norm,
decoder_pred, norm_pix_loss.
"""
import torch

import mae_kernels


def encoder_tokens(imgs, proj, cls_token, pos_embed, mask_ratio, noise=None):
    """cls token + the kept patches embedded (random masking, patch embedding, pos_embed in one op):
    ([N, 1 + K, D], mask [N, L], ids_restore [N, L]). With noise None the CPU backend draws torch.rand(N, L)
    as the official random_masking does, so a seed gives the official masks."""
    tokens, mask, ids_restore, _ = mae_kernels.random_masked_patch_embed(
        imgs, proj.weight, proj.bias, pos_embed, mask_ratio, noise=noise)
    cls = (cls_token + pos_embed[:, :1, :]).expand(tokens.shape[0], -1, -1)
    return torch.cat((cls, tokens), dim=1), mask, ids_restore


def forward_encoder(model, imgs, mask_ratio, noise=None):
    """The official forward_encoder: (latent [N, 1 + K, D], mask [N, L], ids_restore [N, L])."""
    x, mask, ids_restore = encoder_tokens(imgs, model.patch_embed.proj, model.cls_token, model.pos_embed,
                                          mask_ratio, noise)
    for blk in model.blocks:
        x = blk(x)
    return model.norm(x), mask, ids_restore


def forward_decoder(model, x, ids_restore):
    """The official forward_decoder: pixel predictions [N, L, p*p*C] (cls row dropped)."""
    x = model.decoder_embed(x)
    x = mae_kernels.unshuffle_with_mask_tokens(x, model.mask_token, ids_restore, model.decoder_pos_embed)
    for blk in model.decoder_blocks:
        x = blk(x)
    return model.decoder_pred(model.decoder_norm(x))[:, 1:, :]


def forward_decoder_subset(model, x, ids_keep, ids_dec):
    """Dual masking's decoder (VideoMAE v2): encoder tokens [N, 1 + K, D] at positions ids_keep and mask tokens at
    the decoded positions ids_dec [N, M] in one append_mask_tokens -> predictions for ids_dec [N, M, p*p*C]."""
    x = model.decoder_embed(x)
    x = mae_kernels.append_mask_tokens(x, model.mask_token, ids_keep, ids_dec, model.decoder_pos_embed, has_cls=True)
    for blk in model.decoder_blocks:
        x = blk(x)
    return model.decoder_pred(model.decoder_norm(x))[:, x.shape[1] - ids_dec.shape[1]:, :]


def forward_loss(model, imgs, pred, mask, ids_shuffle=None):
    """The official forward_loss (masked MSE, per-patch normalised pixels when norm_pix_loss), fp32 scalar; with
    ids_shuffle, pred holds the rows of the positions ids_shuffle[:, L - R:] only (dual masking's decoded ones)."""
    p = model.patch_embed.proj.kernel_size[0]
    return mae_kernels.masked_mse_loss(pred, imgs, mask, p, norm_pix_loss=bool(model.norm_pix_loss),
                                       ids_shuffle=ids_shuffle)
