"""MaskedAutoencoderViT: the official MAE model (facebookresearch/mae, models_mae.py) on mae_kernels' fused ops.

Same constructor arguments, parameter names and shapes as the official code (its checkpoints load with
load_state_dict(strict=True)), generalised to any channel count and non-square images. forward(imgs,
mask_ratio, noise) -> (loss, pred [N, L, p*p*C], mask [N, L]) as there.

use_fused_ops=True: masking + patch embedding of the kept patches only (random_masked_patch_embed), the
mask-token scatter (unshuffle_with_mask_tokens) and the masked loss (masked_mse_loss) run as mae_kernels ops
(models/fused.py, shared with integrations.official.patch_mae).
use_fused_ops=False: the official eager path (Conv2d on all patches, random_masking, cat/gather, forward_loss),
from mae_kernels.reference. Both give the same loss and gradients for the same noise (up to summation order).

decoder_mask_ratio > 0 (VideoMAE v2's dual masking, here for images; ops/decoder_mask_indices.py): in training
mode the decoder sees the encoder's tokens plus mask tokens at the decoded positions only (a running-cell or
random decoder mask), and the loss covers the encoder-removed positions among them; in eval mode every position
is decoded (as v2 reconstructs). decoder_mask_ratio 0 (the default) is the official model exactly.
decoder_mask_scope "all" (v2) gives mask tokens to encoder-visible decoded positions too; "removed" decodes only
encoder-removed positions (models/dual_masking.py).
"""
from functools import partial

import torch
from torch import nn

from .. import reference
from . import dual_masking, fused
from .pos_embed import sincos_2d
from .vit import Block, PatchEmbed, to_2tuple


class MaskedAutoencoderViT(nn.Module):
    """Masked Autoencoder with a VisionTransformer backbone."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_layer=nn.LayerNorm, norm_pix_loss=False, use_fused_ops=True, decoder_mask_ratio=0.0,
                 decoder_mask_type="run_cell", decoder_mask_scope="all"):
        super().__init__()
        if not isinstance(patch_size, int):
            raise TypeError(f"patch_size must be an int (square patches), got {patch_size!r}")
        dual_masking.check_options(decoder_mask_ratio, decoder_mask_type, decoder_mask_scope)
        self.decoder_mask_ratio = decoder_mask_ratio
        self.decoder_mask_type = decoder_mask_type
        self.decoder_mask_scope = decoder_mask_scope
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.use_fused_ops = use_fused_ops

        # Encoder.
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)  # fixed
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        # Decoder.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)  # fixed
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)

        self.initialize_weights()

    def initialize_weights(self):
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True).unsqueeze(0))
            self.decoder_pos_embed.copy_(
                sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))  # as a Linear on the [D, C*p*p] view
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # The official helpers (N, C, H, W) <-> (N, L, p*p*C), kept for users of the reference API.
    def patchify(self, imgs):
        return reference.patchify(imgs, self.patch_size)

    def unpatchify(self, x):
        return reference.unpatchify(x, self.patch_size, self.img_size)

    def _check_imgs(self, imgs):
        if not isinstance(imgs, torch.Tensor):
            raise TypeError(f"imgs must be a torch.Tensor, got {type(imgs).__name__}")
        want = (self.in_chans,) + self.img_size
        if imgs.dim() != 4 or tuple(imgs.shape[1:]) != want:
            raise ValueError(f"imgs must have shape [N, {want[0]}, {want[1]}, {want[2]}] for this model, "
                             f"got {tuple(imgs.shape)}")

    def forward_encoder(self, imgs, mask_ratio, noise=None):
        """(latent [N, 1 + K, D] after the final norm, mask [N, L], ids_restore [N, L])."""
        if self.use_fused_ops:
            return fused.forward_encoder(self, imgs, mask_ratio, noise)
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = reference.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        """Pixel predictions [N, L, p*p*C] (in normalised patch space when norm_pix_loss)."""
        if self.use_fused_ops:
            return fused.forward_decoder(self, x, ids_restore)
        x = self.decoder_embed(x)
        x = reference.unshuffle_with_mask_tokens(x, self.mask_token, ids_restore, self.decoder_pos_embed)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]  # drop the cls token

    def forward_loss(self, imgs, pred, mask):
        """MSE on removed patches (against per-patch normalised pixels when norm_pix_loss), fp32 scalar."""
        if self.use_fused_ops:
            return fused.forward_loss(self, imgs, pred, mask)
        return reference.masked_mse_loss(pred, imgs, mask, self.patch_size, norm_pix_loss=self.norm_pix_loss)

    def sample_decoder_mask(self, N, device, generator=None, encoder_mask=None, num_removed=None):
        """A decoder mask for N images, as decoder_mask_indices returns it: (ids_dec [N, M], ids_restore [N, L],
        mask [N, L] float32 with 1 = not decoded). decoder_mask_scope "removed" needs encoder_mask [N, L]."""
        return dual_masking.sample(self, N, (1, *self.grid_size), device, generator, encoder_mask, num_removed)

    def forward_decoder_subset(self, x, ids_keep, ids_dec):
        """Dual masking's decoder: the encoder tokens [N, 1 + K, D] (cls first, rows at positions ids_keep) and
        mask tokens at the decoded positions ids_dec [N, M] -> predictions for ids_dec, [N, M, p*p*C]."""
        if self.use_fused_ops:
            return fused.forward_decoder_subset(self, x, ids_keep, ids_dec)
        x = self.decoder_embed(x)
        x = reference.append_mask_tokens(x, self.mask_token, ids_keep, ids_dec, self.decoder_pos_embed, has_cls=True)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, x.shape[1] - ids_dec.shape[1]:, :]

    def forward(self, imgs, mask_ratio=0.75, noise=None, decoder_mask=None):
        """(loss, pred, mask) as the official model. With dual masking (decoder_mask given, bool [N, L] with True
        = not decoded, or drawn in training mode when decoder_mask_ratio > 0), pred holds the predictions of the
        decoded positions only, in ascending position order, [N, M, p*p*C], and the loss is the mean over the
        encoder-removed positions among them (v2's batch-global weighting). With decoder_mask_scope "removed"
        only encoder-removed positions are decoded (a given decoder_mask's encoder-visible positions are left
        out). A given decoder_mask's decoded count is read from it (mask_to_indices: one host sync); every row
        must decode as many."""
        self._check_imgs(imgs)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        K = latent.shape[1] - 1
        dual = dual_masking.plan(self, (1, *self.grid_size), mask, K, decoder_mask)
        if dual is None:
            pred = self.forward_decoder(latent, ids_restore)
            return self.forward_loss(imgs, pred, mask), pred, mask
        ids_dec, ids_shuffle, loss_mask = dual
        ids_keep = torch.argsort(ids_restore, dim=1)[:, :K]  # the encoder rows' positions
        pred = self.forward_decoder_subset(latent, ids_keep, ids_dec)
        if self.use_fused_ops:
            loss = fused.forward_loss(self, imgs, pred, loss_mask, ids_shuffle)
        else:
            loss = reference.masked_mse_loss(reference.scatter_removed_pred(pred, ids_shuffle), imgs, loss_mask,
                                             self.patch_size, norm_pix_loss=self.norm_pix_loss)
        return loss, pred, mask


_LN = partial(nn.LayerNorm, eps=1e-6)


def _decoder(kwargs):
    kwargs.setdefault("decoder_embed_dim", 512)
    kwargs.setdefault("decoder_depth", 8)
    kwargs.setdefault("decoder_num_heads", 16)
    kwargs.setdefault("mlp_ratio", 4)
    kwargs.setdefault("norm_layer", _LN)
    return kwargs


def mae_vit_base_patch16(**kwargs):
    return MaskedAutoencoderViT(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_decoder(kwargs))


def mae_vit_large_patch16(**kwargs):
    return MaskedAutoencoderViT(patch_size=16, embed_dim=1024, depth=24, num_heads=16, **_decoder(kwargs))


def mae_vit_huge_patch14(**kwargs):
    return MaskedAutoencoderViT(patch_size=14, embed_dim=1280, depth=32, num_heads=16, **_decoder(kwargs))


def mae_vit_tiny(**kwargs):
    """A CPU-sized MAE for demos and tests: 64x64 images, 8x8 patches (L = 64), 192-dim 4-block encoder,
    128-dim 2-block decoder."""
    kwargs.setdefault("img_size", 64)
    kwargs.setdefault("decoder_embed_dim", 128)
    kwargs.setdefault("decoder_depth", 2)
    kwargs.setdefault("decoder_num_heads", 4)
    return MaskedAutoencoderViT(patch_size=8, embed_dim=192, depth=4, num_heads=3, **_decoder(kwargs))


# The official aliases.
mae_vit_base_patch16_dec512d8b = mae_vit_base_patch16
mae_vit_large_patch16_dec512d8b = mae_vit_large_patch16
mae_vit_huge_patch14_dec512d8b = mae_vit_huge_patch14

MODELS = {"mae_vit_tiny": mae_vit_tiny, "mae_vit_base_patch16": mae_vit_base_patch16,
          "mae_vit_large_patch16": mae_vit_large_patch16, "mae_vit_huge_patch14": mae_vit_huge_patch14}
