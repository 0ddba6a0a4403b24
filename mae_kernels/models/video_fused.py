"""The steps of the video MAE forward (models/video_mae.py) that mae_kernels ops replace, one function per step:

- mask_indices: random masking over all L = t*h*w tokens (random_mask_indices) or VideoMAE's tube masking
  (tube_mask_indices), one launch each.
- embed_kept_tubelets: the Conv3d tubelet embedding of the kept tubelets only, + their positional embedding
  (masked_patch_embed; mae_st's separable table added per kept token, never summed to [L, D]).
- decoder_input: mask tokens, unshuffle, decoder cls row, decoder positional embedding
  (unshuffle_with_mask_tokens, with a cls row).
- decoder_input_subset: dual masking's decoder input (VideoMAE v2): the kept tokens and mask tokens at the
  decoded positions only, decoder cls row, decoder positional embedding (append_mask_tokens, one pass).
- loss: the masked MSE against mae_st's temporally subsampled target (masked_mse_loss with target_frames: the
  frames are read in place, never gathered into a copy).
"""
import torch

import mae_kernels
from .. import reference


def mask_indices(model, N, mask_ratio, noise=None, device=None, fused=True):
    """(ids_keep [N, K] int64, ids_restore [N, L] int64, mask [N, L] float32, 1 = removed).
    random: mae_st's random_masking over L = t*h*w (noise [N, L]; kept ids in ascending noise order).
    tube: VideoMAE's tube masking (noise [N, h*w]; kept ids in ascending token index)."""
    t, h, w = model.input_size
    ops = mae_kernels if fused else reference
    if model.mask_type == "tube":
        return ops.tube_mask_indices(N, t, h * w, mask_ratio, noise=noise, device=device)
    return ops.random_mask_indices(N, t * h * w, mask_ratio, noise=noise, device=device)


def embed_kept_tubelets(x, ids_keep, proj, pos):
    """Conv3d tubelet embedding of the kept tubelets only, + pos: [N, K, D], row k = W . tubelet(ids_keep[n, k])
    + b + pos(ids_keep[n, k]). x: [N, C, T, H, W]; proj: the Conv3d (kernel = stride = (u, ph, pw)); pos: a table
    [1, L, D] or [1, 1 + L, D] (row 0, the cls token's, skipped), or mae_st's separable pair (spatial [1, h*w, D],
    temporal [1, t, D])."""
    return mae_kernels.masked_patch_embed(x, ids_keep, proj.weight, proj.bias, pos)


def decoder_input(y, mask_token, ids_restore, cls_token, pos):
    """The decoder input [N, (1 +) L, Dd]: y [N, K, Dd] (the embedded kept tokens, in ids_keep order) with mask
    tokens, unshuffled by ids_restore, the decoder cls token first when cls_token [1, 1, Dd] is given, + pos
    [1, (1 +) L, Dd] (cls row first)."""
    if cls_token is None:
        return mae_kernels.unshuffle_with_mask_tokens(y, mask_token, ids_restore, pos, has_cls=False)
    y = torch.cat((cls_token.expand(y.shape[0], -1, -1), y), dim=1)  # cat promotes as the eager path
    return mae_kernels.unshuffle_with_mask_tokens(y, mask_token, ids_restore, pos, has_cls=True)


def decoder_input_subset(y, mask_token, ids_keep, ids_dec, cls_token, pos):
    """Dual masking's decoder input [N, (1 +) K + M, Dd]: the decoder cls token first when cls_token [1, 1, Dd] is
    given, y [N, K, Dd] (rows at positions ids_keep [N, K]), then mask tokens at the decoded positions ids_dec
    [N, M], each + its row of pos [1, (1 +) L, Dd] (cls row first)."""
    if cls_token is not None:
        y = torch.cat((cls_token.expand(y.shape[0], -1, -1), y), dim=1)  # cat promotes as the eager path
    return mae_kernels.append_mask_tokens(y, mask_token, ids_keep, ids_dec, pos, has_cls=cls_token is not None)


def loss(x, pred, mask, target_frames, patch_size, norm_pix_loss, ids_shuffle=None):
    """mae_st's forward_loss: fp32 scalar. Token (ti, hi, wi) of the (u, ph, pw) tubelet grid targets the frames
    target_frames[ti*u' + a], a < u', patchified (u' = len(target_frames) / t), read in place from x. With
    ids_shuffle, pred holds the rows of the positions ids_shuffle[:, L - R:] only (dual masking)."""
    return mae_kernels.masked_mse_loss(pred, x, mask, patch_size, norm_pix_loss=bool(norm_pix_loss),
                                       target_frames=target_frames, ids_shuffle=ids_shuffle)
