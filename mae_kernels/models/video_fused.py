"""The steps of the video MAE forward (models/video_mae.py) that mae_kernels ops replace, one function per step:

- mask_indices: masking indices from noise (random over all L = t*h*w tokens: the image op
  random_mask_indices applies as is) or tube masking (eager torch, video_mae.tube_mask_indices).
- embed_kept_tubelets: the tubelet embedding of the kept tubelets only, + their positional embedding.
- decoder_input: mask tokens, unshuffle, decoder cls row, decoder positional embedding (the image op
  unshuffle_with_mask_tokens applies as is, with a cls row).
- loss: the masked MSE against mae_st's temporally subsampled target (the image op masked_mse_loss applies
  when the target tubelet is one frame, u' = 1: mae_st's default).

The image ops serve video here through exact re-layouts (no approximation; see each function). Each function is
the single place to call a fused video op from once one exists.
"""
import torch
import torch.nn.functional as F

import mae_kernels
from .. import reference
from ..ops import masked_patch_embed as _patch_embed_op


def mask_indices(model, N, mask_ratio, noise=None, device=None, fused=True):
    """(ids_keep [N, K] int64, ids_restore [N, L] int64, mask [N, L] float32, 1 = removed).
    random: mae_st's random_masking over L = t*h*w (noise [N, L]; kept ids in ascending noise order).
    tube: VideoMAE's tube masking (noise [N, h*w]; kept ids in ascending token index)."""
    from .video_mae import tube_mask_indices

    t, h, w = model.input_size
    if model.mask_type == "tube":
        return tube_mask_indices(N, t, h * w, mask_ratio, noise=noise, device=device)
    if fused:
        return mae_kernels.random_mask_indices(N, t * h * w, mask_ratio, noise=noise, device=device)
    return reference.random_mask_indices(N, t * h * w, mask_ratio, noise=noise, device=device)


def embed_kept_tubelets(x, ids_keep, proj, pos):
    """Conv3d tubelet embedding of the kept tubelets only, + pos: [N, K, D], row k = W . tubelet(ids_keep[n, k])
    + b + pos[0, ids_keep[n, k]]. x: [N, C, T, H, W]; proj: the Conv3d (kernel = stride = (u, ph, pw));
    pos: [1, L, D].

    Through the image op: the clip viewed as one tall image [N, C, T*H, W] (the frames stacked; a view for a
    contiguous clip) has a (T*h) x w patch grid, and the tubelet (ti, hi, wi) is the sum over its frames a of
    the image patches ((ti*u + a)*h + hi)*w + wi embedded with the Conv3d weight's slice W[:, :, a]."""
    N, C, T, H, W = x.shape
    u, ph, pw = proj.kernel_size
    pos_kept = F.embedding(ids_keep, pos[0])  # [N, K, D]
    if ph != pw:  # the image op takes square patches
        tokens = proj(x).flatten(2).transpose(1, 2)
        return torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[2])) + pos_kept
    hw = (H // ph) * (W // pw)
    frames = x.reshape(N, C, T * H, W)
    t_idx, s_idx = ids_keep // hw, ids_keep % hw
    no_ids = ids_keep[:, :0]
    out = None
    for a in range(u):
        ids_a = (t_idx * u + a) * hw + s_idx  # valid by construction: no range check (no host sync)
        weight = proj.weight[:, :, a]
        bias = proj.bias if a == 0 and proj.bias is not None else None
        imgs, weight, bias = _patch_embed_op._prepare(frames, no_ids, weight, bias, None)
        e = _patch_embed_op._run(imgs, ids_a, weight, bias, None)
        out = e if out is None else out + e
    return out + pos_kept


def decoder_input(y, mask_token, ids_restore, cls_token, pos):
    """The decoder input [N, (1 +) L, Dd]: y [N, K, Dd] (the embedded kept tokens, in ids_keep order) with mask
    tokens, unshuffled by ids_restore, the decoder cls token first when cls_token [1, 1, Dd] is given, + pos
    [1, (1 +) L, Dd] (cls row first)."""
    if cls_token is None:
        return mae_kernels.unshuffle_with_mask_tokens(y, mask_token, ids_restore, pos, has_cls=False)
    y = torch.cat((cls_token.expand(y.shape[0], -1, -1), y), dim=1)  # cat promotes as the eager path
    return mae_kernels.unshuffle_with_mask_tokens(y, mask_token, ids_restore, pos, has_cls=True)


def loss(x, pred, mask, target_frames, target_patch_size, norm_pix_loss):
    """mae_st's forward_loss: fp32 scalar. The target clip x[:, :, target_frames] patchified with
    target_patch_size (u', ph, pw); with u' = 1 and square patches it is the tall image [N, C, t*H, W] whose
    square patches are exactly the target tokens (same order l = (ti*h + hi)*w + wi, same (p_row, p_col, c)
    vectors), so the image op reads it in place."""
    target = torch.index_select(x, 2, target_frames)
    u, ph, pw = target_patch_size
    if u == 1 and ph == pw:
        N, C, t, H, W = target.shape
        return mae_kernels.masked_mse_loss(pred, target.reshape(N, C, t * H, W), mask, ph,
                                           norm_pix_loss=bool(norm_pix_loss))
    return reference.masked_mse_loss(pred, target, mask, target_patch_size, norm_pix_loss=bool(norm_pix_loss))
