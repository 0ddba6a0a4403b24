"""VideoMaskedAutoencoderViT: the spatiotemporal MAE of facebookresearch/mae_st (models_mae.py @ c5dec1b) on
mae_kernels' ops.

Same constructor arguments, parameter names and shapes as mae_st's MaskedAutoencoderViT (Conv3d tubelet
embedding, separate q/k/v Linears, learned positional embeddings, separable in space and time with
sep_pos_embed, encoder and decoder cls tokens with cls_embed), so mae_st checkpoints load with
load_state_dict(strict=True). Generalised to any channel count and non-square frames (mae_st asserts C = 3 and
H == W). forward(x [N, C, T, H, W], mask_ratio, noise) -> (loss, pred [N, L, u'*p*p*C], mask [N, L]) as mae_st
(which takes no noise: with noise None a seed gives mae_st's masks, since both draw torch.rand(N, L)).

The class defaults are mae_st's class defaults (t_patch_size 4, no cls, one joint pos_embed); the factories
(mae_st_vit_base_patch16, ...) default to mae_st's main_pretrain.py configuration: sep_pos_embed and cls_embed
on, 16 frames, t_patch_size 2, pred_t_dim 8. See ../shared/MAE_SPEC_VIDEO.md "mae_st".

mask_type="tube" (an extension): VideoMAE's tube masking (one random spatial mask per sample repeated at every
temporal index, int(mask_ratio * h*w) masked per frame; noise [N, h*w]) on this architecture.

decoder_mask_ratio > 0 (VideoMAE v2's dual masking, models/dual_masking.py; MAE_SPEC_VIDEO.md "VideoMAEv2"): in
training mode the decoder sees the encoder's tokens plus mask tokens at a running-cell (decoder_mask_type
"run_cell", v2's maps) or uniformly random subset of the positions only, and the loss covers the encoder-removed
positions among them (v2's batch-global weighting); pred then holds the decoded positions' predictions only, in
ascending position order. decoder_mask_scope "all" (v2's rule) gives mask tokens to every decoded position,
encoder-visible ones included; "removed" decodes encoder-removed positions only. Eval mode decodes every position
(as v2 reconstructs); decoder_mask_ratio 0 (the default) is the model above exactly.

use_fused_ops=True runs the steps of models/video_fused.py (masking indices, the embedding of the kept tubelets
only, the decoder input, the loss) on mae_kernels ops; use_fused_ops=False is mae_st's eager forward restated.
Both give the same loss and gradients for the same noise (up to summation order).
"""
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .. import reference
from . import dual_masking, video_fused, vit
from .vit import to_2tuple

MASK_TYPES = ("random", "tube")


class PatchEmbed(nn.Module):
    """mae_st's video PatchEmbed: Conv3d with kernel = stride = (t_patch_size, ph, pw); [N, C, T, H, W] ->
    [N, L, D], token l = (ti*h + hi)*w + wi."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, frames=32, t_patch_size=4):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        H, W = self.img_size
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {self.patch_size}")
        if frames % t_patch_size:
            raise ValueError(f"num_frames {frames} must be divisible by t_patch_size {t_patch_size}")
        self.frames = frames
        self.t_patch_size = t_patch_size
        self.input_size = (frames // t_patch_size, H // ph, W // pw)  # (t, h, w)
        self.num_patches = self.input_size[0] * self.input_size[1] * self.input_size[2]
        self.t_grid_size = self.input_size[0]
        self.grid_size = self.input_size[1:]  # mae_st: an int (square frames); here (h, w)
        kernel = (t_patch_size, ph, pw)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """mae_st's video_vit.Attention: separate q, k, v Linears (parameter names attn.q / attn.k / attn.v /
    attn.proj), run through F.scaled_dot_product_attention (scale head_dim ** -0.5, as mae_st's qk_scale=None)."""

    def __init__(self, dim, num_heads=8, qkv_bias=False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = (lin(x).reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(vit.Block):
    """mae_st's video_vit.Block (pre-norm; no drop path in pre-training): norm1, attn, norm2, mlp.fc1/fc2, with
    mae_st's Attention and no q, k, v biases by default."""

    attention = Attention

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, norm_layer=nn.LayerNorm):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, norm_layer)


def target_frame_indices(num_frames, pred_t_dim):
    """mae_st's target frames: torch.linspace(0, T - 1, pred_t_dim).long() (float32, truncated):
    T=16, pred_t_dim=8 -> [0, 2, 4, 6, 8, 10, 12, 15] (reference.mae_st_target_frames)."""
    return reference.mae_st_target_frames(num_frames, pred_t_dim, device="cpu")


tube_mask_indices = reference.tube_mask_indices  # VideoMAE's tube masking, eager (kept ids ascending)


class VideoMaskedAutoencoderViT(nn.Module):
    """Masked Autoencoder with a spatiotemporal VisionTransformer backbone (mae_st)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_layer=nn.LayerNorm, norm_pix_loss=False, num_frames=16, t_patch_size=4,
                 patch_embed=PatchEmbed, no_qkv_bias=False, sep_pos_embed=False, trunc_init=False,
                 cls_embed=False, pred_t_dim=8, mask_type="random", use_fused_ops=True, decoder_mask_ratio=0.0,
                 decoder_mask_type="run_cell", decoder_mask_scope="all", **kwargs):
        super().__init__()
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        dual_masking.check_options(decoder_mask_ratio, decoder_mask_type, decoder_mask_scope)
        self.decoder_mask_ratio = decoder_mask_ratio
        self.decoder_mask_type = decoder_mask_type
        self.decoder_mask_scope = decoder_mask_scope
        self.trunc_init = trunc_init
        self.sep_pos_embed = sep_pos_embed
        self.cls_embed = cls_embed
        self.pred_t_dim = pred_t_dim
        self.t_pred_patch_size = t_patch_size * pred_t_dim // num_frames
        self.num_frames = num_frames
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.mask_type = mask_type
        self.use_fused_ops = use_fused_ops

        self.patch_embed = patch_embed(img_size, patch_size, in_chans, embed_dim, num_frames, t_patch_size)
        self.img_size = self.patch_embed.img_size
        self.patch_size = self.patch_embed.patch_size  # (ph, pw)
        num_patches = self.patch_embed.num_patches
        self.input_size = self.patch_embed.input_size
        t = self.input_size[0]
        if self.t_pred_patch_size < 1 or t * self.t_pred_patch_size != pred_t_dim:
            raise ValueError(f"pred_t_dim {pred_t_dim} must be a multiple of num_frames / t_patch_size = {t} "
                             f"(one target tubelet of t_patch_size * pred_t_dim // num_frames frames per token)")
        # Not in the state_dict (mae_st computes it in forward_loss): checkpoints stay strict-loadable.
        self.register_buffer("target_frames", target_frame_indices(num_frames, pred_t_dim), persistent=False)

        if cls_embed:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.decoder_cls_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        c = int(cls_embed)
        hw = self.input_size[1] * self.input_size[2]
        if sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, hw, embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
            if cls_embed:
                self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + c, embed_dim))

        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=not no_qkv_bias,
                                           norm_layer=norm_layer) for _ in range(depth)])
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        if sep_pos_embed:
            self.decoder_pos_embed_spatial = nn.Parameter(torch.zeros(1, hw, decoder_embed_dim))
            self.decoder_pos_embed_temporal = nn.Parameter(torch.zeros(1, t, decoder_embed_dim))
            if cls_embed:
                self.decoder_pos_embed_class = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        else:
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + c, decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=not no_qkv_bias, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        ph, pw = self.patch_size
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.t_pred_patch_size * ph * pw * in_chans, bias=True)

        self.initialize_weights()

    def initialize_weights(self):
        """mae_st's init: learned embeddings trunc_normal(0.02), patch weight xavier_uniform on its [D, C*u*p*p]
        view (trunc_normal with trunc_init), mask_token normal(0.02), Linear xavier_uniform / zero bias;
        decoder_cls_token stays zero (mae_st never initialises it)."""
        std = 0.02
        names = ["pos_embed_spatial", "pos_embed_temporal", "decoder_pos_embed_spatial",
                 "decoder_pos_embed_temporal", "pos_embed_class", "decoder_pos_embed_class"] if self.sep_pos_embed \
            else ["pos_embed", "decoder_pos_embed"]
        if self.cls_embed:
            nn.init.trunc_normal_(self.cls_token, std=std)
        for name in names:
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=std)
        w = self.patch_embed.proj.weight.data
        if self.trunc_init:
            nn.init.trunc_normal_(w)
            nn.init.trunc_normal_(self.mask_token, std=std)
        else:
            nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
            nn.init.normal_(self.mask_token, std=std)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            if self.trunc_init:
                nn.init.trunc_normal_(m.weight, std=0.02)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # --- geometry and positional embeddings --------------------------------------------------------------

    @property
    def target_patch_size(self):
        """(u', ph, pw): the target tubelet of one token (u' = t_pred_patch_size frames)."""
        return (self.t_pred_patch_size, *self.patch_size)

    def patchify(self, x):
        """The target patch vectors of a clip of pred_t_dim frames: [N, L, u'*ph*pw*C] (mae_st's patchify)."""
        return reference.patchify(x, self.target_patch_size)

    def unpatchify(self, x):
        """[N, L, u'*ph*pw*C] -> [N, C, pred_t_dim, H, W]."""
        return reference.unpatchify(x, self.target_patch_size, (self.pred_t_dim, *self.img_size))

    def _token_pos(self, spatial, temporal):
        """pos[l] = spatial[l % hw] + temporal[l // hw] -> [1, L, D] (mae_st's repeat + repeat_interleave)."""
        t, h, w = self.input_size
        return spatial.repeat(1, t, 1) + torch.repeat_interleave(temporal, h * w, dim=1)

    def encoder_pos(self):
        """(pos of the L tokens [1, L, D], pos of the cls token [1, 1, D] or None without cls_embed)."""
        if self.sep_pos_embed:
            tokens = self._token_pos(self.pos_embed_spatial, self.pos_embed_temporal)
            return tokens, (self.pos_embed_class if self.cls_embed else None)
        c = int(self.cls_embed)
        return self.pos_embed[:, c:], (self.pos_embed[:, :1] if self.cls_embed else None)

    def decoder_pos(self):
        """The decoder's positional embedding of its whole input [1, (1 +) L, Dd] (cls row first with cls_embed)."""
        if not self.sep_pos_embed:
            return self.decoder_pos_embed
        pos = self._token_pos(self.decoder_pos_embed_spatial, self.decoder_pos_embed_temporal)
        return torch.cat([self.decoder_pos_embed_class, pos], dim=1) if self.cls_embed else pos

    def _check_video(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        want = (self.in_chans, self.num_frames) + self.img_size
        if x.dim() != 5 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must be a video [N, C, T, H, W] = [N, {', '.join(map(str, want))}] for this "
                             f"model, got {tuple(x.shape)}")

    # --- forward ------------------------------------------------------------------------------------------

    def mask_indices(self, N, mask_ratio, noise=None, device=None):
        """(ids_keep [N, K], ids_restore [N, L], mask [N, L] float32, 1 = removed) of this model's mask_type."""
        return video_fused.mask_indices(self, N, mask_ratio, noise, device, fused=self.use_fused_ops)

    def forward_encoder(self, x, mask_ratio, noise=None):
        """(latent [N, K, D] after the final norm, cls row dropped; mask [N, L]; ids_restore [N, L])."""
        N = x.shape[0]
        ids_keep, ids_restore, mask = self.mask_indices(N, mask_ratio, noise, x.device)
        if self.use_fused_ops:
            table = ((self.pos_embed_spatial, self.pos_embed_temporal) if self.sep_pos_embed
                     else self.pos_embed)  # [1, (1 +) L, D]: a cls row is skipped
            h = video_fused.embed_kept_tubelets(x, ids_keep, self.patch_embed.proj, table)
            pos_cls = (self.pos_embed_class if self.sep_pos_embed else self.pos_embed[:, :1]) if self.cls_embed \
                else None
        else:  # mae_st: Conv3d over every tubelet, then the gathers of the kept tokens and of their pos
            pos, pos_cls = self.encoder_pos()
            tokens = self.patch_embed(x)
            index = ids_keep.unsqueeze(-1).repeat(1, 1, tokens.shape[2])
            h = torch.gather(tokens, 1, index) + torch.gather(pos.expand(N, -1, -1), 1, index)
        if self.cls_embed:
            h = torch.cat(((self.cls_token + pos_cls).expand(N, -1, -1), h), dim=1)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        return (h[:, 1:, :] if self.cls_embed else h), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        """Predictions for all L tokens [N, L, u'*ph*pw*C] (normalised patch space with norm_pix_loss)."""
        y = self.decoder_embed(x)
        cls = self.decoder_cls_token if self.cls_embed else None
        if self.use_fused_ops:
            y = video_fused.decoder_input(y, self.mask_token, ids_restore, cls, self.decoder_pos())
        else:  # mae_st: mask tokens appended, unshuffled, decoder cls first, + decoder pos
            N, L = ids_restore.shape
            y = torch.cat([y, self.mask_token.repeat(N, L - y.shape[1], 1)], dim=1)
            y = torch.gather(y, 1, ids_restore.unsqueeze(-1).repeat(1, 1, y.shape[2]))
            if cls is not None:
                y = torch.cat((cls.expand(N, -1, -1), y), dim=1)
            y = y + self.decoder_pos()
        for blk in self.decoder_blocks:
            y = blk(y)
        y = self.decoder_pred(self.decoder_norm(y))
        return y[:, 1:, :] if self.cls_embed else y

    def forward_decoder_subset(self, x, ids_keep, ids_dec):
        """Dual masking's decoder (VideoMAE v2): the encoder's tokens x [N, K, D] (cls row dropped) at positions
        ids_keep [N, K], the decoder cls token first with cls_embed, and mask tokens at the decoded positions
        ids_dec [N, M], each + the decoder pos of its position -> predictions for ids_dec [N, M, u'*ph*pw*C]."""
        y = self.decoder_embed(x)
        cls = self.decoder_cls_token if self.cls_embed else None
        if self.use_fused_ops:
            y = video_fused.decoder_input_subset(y, self.mask_token, ids_keep, ids_dec, cls, self.decoder_pos())
        else:  # v2's cat([y + pos[ids_keep], mask_token + pos[ids_dec]]), mae_st's decoder cls first
            if cls is not None:
                y = torch.cat((cls.expand(y.shape[0], -1, -1), y), dim=1)
            y = reference.append_mask_tokens(y, self.mask_token, ids_keep, ids_dec, self.decoder_pos(),
                                             has_cls=self.cls_embed)
        for blk in self.decoder_blocks:
            y = blk(y)
        return self.decoder_pred(self.decoder_norm(y))[:, y.shape[1] - ids_dec.shape[1]:, :]

    def forward_loss(self, x, pred, mask, ids_shuffle=None):
        """mae_st's forward_loss: MSE against the target frames (target_frames) patchified with (u', ph, pw),
        normalised per patch with norm_pix_loss (unbiased variance, eps inside the sqrt), mean over the removed
        tokens. fp32 scalar. With ids_shuffle [N, L], pred holds the rows of the positions ids_shuffle[:, L - R:]
        only (dual masking's decoded positions) and mask weights the tokens (v2: sum(l * w) / sum(w))."""
        if self.use_fused_ops:
            return video_fused.loss(x, pred, mask, self.target_frames, self.patch_embed.proj.kernel_size,
                                    self.norm_pix_loss, ids_shuffle)
        target = torch.index_select(x, 2, self.target_frames)
        if ids_shuffle is not None:
            pred = reference.scatter_removed_pred(pred, ids_shuffle)
        return reference.masked_mse_loss(pred, target, mask, self.target_patch_size,
                                         norm_pix_loss=bool(self.norm_pix_loss))

    def sample_decoder_mask(self, N, device, generator=None, encoder_mask=None, num_removed=None):
        """A decoder mask for N clips over the (t, h, w) token grid, as decoder_mask_indices returns it:
        (ids_dec [N, M], ids_restore [N, L], mask [N, L] float32 with 1 = not decoded). decoder_mask_scope
        "removed" needs encoder_mask [N, L] (1 = removed)."""
        return dual_masking.sample(self, N, self.input_size, device, generator, encoder_mask, num_removed)

    def forward(self, x, mask_ratio=0.75, noise=None, decoder_mask=None):
        """(loss, pred, mask) as mae_st. With dual masking (decoder_mask given, bool [N, L] with True = not
        decoded, or drawn in training mode when decoder_mask_ratio > 0), pred holds the predictions of the decoded
        positions only, [N, M, u'*ph*pw*C] in ascending position order, and the loss is the mean over the
        encoder-removed positions among them. A given decoder_mask's decoded count is read from it (one host
        sync); every row must decode as many."""
        self._check_video(x)
        latent, mask, ids_restore = self.forward_encoder(x, mask_ratio, noise)
        K = latent.shape[1]
        dual = dual_masking.plan(self, self.input_size, mask, K, decoder_mask)
        if dual is None:
            pred = self.forward_decoder(latent, ids_restore)
            return self.forward_loss(x, pred, mask), pred, mask
        ids_dec, ids_shuffle, loss_mask = dual
        ids_keep = torch.argsort(ids_restore, dim=1)[:, :K]  # the positions of the encoder's rows
        pred = self.forward_decoder_subset(latent, ids_keep, ids_dec)
        return self.forward_loss(x, pred, loss_mask, ids_shuffle), pred, mask


_LN = partial(nn.LayerNorm, eps=1e-6)


def _main_pretrain(kwargs):
    """mae_st main_pretrain.py's model configuration (decoder 512 / 8 / 16; sep_pos_embed, cls_embed forced on;
    16 frames, t_patch_size 2, pred_t_dim 8); any keyword overrides."""
    for key, value in (("decoder_embed_dim", 512), ("decoder_depth", 8), ("decoder_num_heads", 16),
                       ("mlp_ratio", 4), ("norm_layer", _LN), ("num_frames", 16), ("t_patch_size", 2),
                       ("pred_t_dim", 8), ("sep_pos_embed", True), ("cls_embed", True)):
        kwargs.setdefault(key, value)
    return kwargs


def mae_st_vit_base_patch16(**kwargs):
    return VideoMaskedAutoencoderViT(patch_size=16, embed_dim=768, depth=12, num_heads=12, **_main_pretrain(kwargs))


def mae_st_vit_large_patch16(**kwargs):
    return VideoMaskedAutoencoderViT(patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                     **_main_pretrain(kwargs))


def mae_st_vit_huge_patch14(**kwargs):
    return VideoMaskedAutoencoderViT(patch_size=14, embed_dim=1280, depth=32, num_heads=16,
                                     **_main_pretrain(kwargs))


def mae_st_vit_tiny(**kwargs):
    """A CPU-sized video MAE for demos and tests: 8 frames of 64x64, 2x8x8 tubelets (L = 4*8*8 = 256), a
    192-dim 4-block encoder, a 128-dim 2-block decoder, pred_t_dim 4 (target frames [0, 2, 4, 7])."""
    for key, value in (("img_size", 64), ("num_frames", 8), ("pred_t_dim", 4), ("decoder_embed_dim", 128),
                       ("decoder_depth", 2), ("decoder_num_heads", 4)):
        kwargs.setdefault(key, value)
    return VideoMaskedAutoencoderViT(patch_size=8, embed_dim=192, depth=4, num_heads=3, **_main_pretrain(kwargs))


VIDEO_MODELS = {"mae_st_vit_tiny": mae_st_vit_tiny, "mae_st_vit_base_patch16": mae_st_vit_base_patch16,
                "mae_st_vit_large_patch16": mae_st_vit_large_patch16,
                "mae_st_vit_huge_patch14": mae_st_vit_huge_patch14}
