"""Eager PyTorch reference for every MAE piece: exactly the official semantics (facebookresearch/mae,
models_mae.py), generalised to any channel count and non-square images. Every fused op is tested against
these functions; the "reference" backend runs them. See ../shared/MAE_SPEC.md.

One deliberate difference from the official code: argsort is stable (ties in the noise broken by the lower
patch index), as on every mae_kernels backend.
"""
import torch
import torch.nn.functional as F


def len_keep(L, mask_ratio):
    """Number of kept patches, with the official Python float arithmetic (truncation, float error included)."""
    return int(L * (1 - mask_ratio))


def random_mask_indices(N, L, mask_ratio, noise=None, generator=None, device=None):
    """(ids_keep [N, K] int64, ids_restore [N, L] int64, mask [N, L] float32, 1 = removed)."""
    if noise is None:
        noise = torch.rand(N, L, device=device, generator=generator)
    keep = len_keep(L, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(N, L, device=noise.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, ids_restore, mask


def tube_num_masked(hw, mask_ratio):
    """Masked positions per frame of VideoMAE's TubeMaskingGenerator: int(mask_ratio * hw), Python float
    truncation of the MASKED count (hw=196: 0.9 -> 176, 0.75 -> 147, 0.95 -> 186; hw=256: 0.9 -> 230)."""
    return min(int(mask_ratio * hw), hw)


def mask_to_indices(bool_mask, num_kept=None):
    """Indices of a given boolean mask [N, L] (True = masked, HF's bool_masked_pos): (ids_keep [N, K] int64,
    ids_restore [N, L] int64, mask [N, L] float32, 1 = removed) with ids_shuffle = argsort(mask, stable=True)
    (kept patches in ascending index, then the masked ones ascending): x[~mask].reshape(N, K, -1) ==
    gather(x, ids_keep). Every row must keep the same count K (= num_kept when given)."""
    N, L = bool_mask.shape
    mask = bool_mask.to(torch.float32)
    ids_shuffle = torch.argsort(mask, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    K = num_kept if num_kept is not None else L - int(bool_mask[0].sum()) if N > 0 else L
    return ids_shuffle[:, :K], ids_restore, mask


def tube_mask(N, t, hw, mask_ratio, noise):
    """VideoMAE's tube mask [N, t*hw] bool (True = masked): per sample the int(mask_ratio * hw) spatial positions
    of LARGEST noise [N, hw] (stable argsort: small noise = kept, as in random_masking) masked in every frame."""
    m = tube_num_masked(hw, mask_ratio)
    ids = torch.argsort(noise, dim=1, stable=True)
    spatial = torch.zeros(N, hw, dtype=torch.bool, device=noise.device)
    spatial.scatter_(1, ids[:, hw - m:], True)
    return spatial.repeat(1, t)  # token ti*hw + s is masked iff spatial position s is


def tube_mask_indices(N, t, hw, mask_ratio, noise=None, generator=None, device=None):
    """VideoMAE / VideoMAEv2 tube masking as indices: (ids_keep [N, t*(hw - m)], ids_restore [N, t*hw],
    mask [N, t*hw] float32, 1 = removed) with m = int(mask_ratio * hw) masked positions per frame, one random
    spatial mask per sample shared by all t frames, kept tokens in ascending token index (x[~mask] order).
    noise: [N, hw] float32 (default torch.rand): the hw - m positions of smallest noise are kept."""
    if noise is None:
        noise = torch.rand(N, hw, device=device, generator=generator)
    m = tube_num_masked(hw, mask_ratio)
    return mask_to_indices(tube_mask(N, t, hw, mask_ratio, noise), t * (hw - m))


def running_cell_maps(t, h, w, mask_ratio):
    """VideoMAEv2's RunningCellMaskingGenerator.all_mask_maps as bool [4, t, h*w] (True = NOT decoded), built as
    its code does: a cell queue [1]*m + [0]*(4 - m), m = int(4 * mask_ratio); for start k the pointer runs to
    k + ti + 1 before frame ti reads the queue at (arange(4) + pointer) % 4, reshaped 2x2 and tiled over
    (h // 2, w // 2). h and w must be even (v2 silently builds a map of the wrong size otherwise)."""
    m = int(4 * mask_ratio)
    queue = torch.tensor([1] * m + [0] * (4 - m), dtype=torch.bool)
    maps = []
    for k in range(4):
        frames = []
        ptr = k
        for _ in range(t):
            ptr += 1
            unit = queue[(torch.arange(4) + ptr) % 4].reshape(2, 2)
            frames.append(unit.repeat(h // 2, w // 2).reshape(h * w))
        maps.append(torch.stack(frames))
    return torch.stack(maps)


def decoder_mask_indices(N, t, h, w, mask_ratio, mask_type="run_cell", start=None, noise=None, generator=None,
                         device=None, scope="all", encoder_mask=None, num_removed=None):
    """VideoMAEv2 decoder masks as indices: (ids_dec [N, n_dec] int64, the decoder-visible positions ascending;
    ids_restore [N, L] int64; mask [N, L] float32, 1 = not decoded), L = t*h*w. run_cell: sample n's map is
    running_cell_maps(...)[start[n]], start [N] in 0..3 (default torch.randint(4)); random: int(mask_ratio * L)
    positions not decoded, uniformly (tube_mask_indices with t = 1 over all L positions, noise [N, L]).
    scope "removed": only encoder-removed positions (encoder_mask [N, L], 1 = removed) are decoded, n_rem - n_rem
    * int(4 r) // 4 (run_cell) or n_rem - int(r * n_rem) (random) of them per sample: each row's removed positions
    sorted by (not decoded by the run_cell map, noise, index), the first taken (a loop over samples)."""
    L = t * h * w
    if scope == "all":
        if mask_type == "random":
            return tube_mask_indices(N, 1, L, mask_ratio, noise, generator, device)
        if start is None:
            start = torch.randint(0, 4, (N,), device=device, generator=generator)
        maps = running_cell_maps(t, h, w, mask_ratio).to(start.device)
        n_dec = L - t * h * w * int(4 * mask_ratio) // 4
        return mask_to_indices(maps[start].reshape(N, L), n_dec)
    removed = encoder_mask.bool().cpu()
    n_rem = int(removed[0].sum()) if num_removed is None else num_removed
    if mask_type == "run_cell":
        if start is None:
            start = torch.randint(0, 4, (N,), device=device, generator=generator)
        left_out = running_cell_maps(t, h, w, mask_ratio)[start.cpu()].reshape(N, L)
        n_dec = n_rem - n_rem * int(4 * mask_ratio) // 4
    else:
        left_out = torch.zeros(N, L, dtype=torch.bool)
        n_dec = n_rem - int(mask_ratio * n_rem)
    if noise is None:
        noise = torch.rand(N, L, device=device, generator=generator)
    not_decoded = torch.ones(N, L, dtype=torch.bool)
    for n in range(N):
        rows = [l for l in range(L) if removed[n, l]]
        rows.sort(key=lambda l: (bool(left_out[n, l]), float(noise[n, l]), l))
        not_decoded[n, rows[:n_dec]] = False
    return mask_to_indices(not_decoded.to(encoder_mask.device), n_dec)


def random_masking(x, mask_ratio, noise=None, generator=None):
    """The official random_masking: (x_masked [N, K, D], mask [N, L] float32, ids_restore [N, L] int64)."""
    N, L, D = x.shape
    if noise is None:
        noise = torch.rand(N, L, device=x.device, generator=generator)
    ids_keep, ids_restore, mask = random_mask_indices(N, L, mask_ratio, noise)
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    return x_masked, mask, ids_restore


def patch_dims(patch_size):
    """(u, ph, pw): an int p is a square 2-D patch (1, p, p), a pair (ph, pw) a 2-D patch, a triple a tubelet."""
    if isinstance(patch_size, int):
        return 1, patch_size, patch_size
    return (1, *patch_size) if len(patch_size) == 2 else tuple(patch_size)


def patchify(imgs, patch_size):
    """Images [N, C, H, W] -> [N, L, ph*pw*C], patch vectors in (p_row, p_col, c) order, token l = hi*w + wi;
    videos [N, C, T, H, W] with patch_size (u, ph, pw) -> [N, L, u*ph*pw*C] in (frame, p_row, p_col, c) order,
    token l = (ti*h + hi)*w + wi (MAE_SPEC_VIDEO.md: mae_st's and VideoMAE's patchify)."""
    u, ph, pw = patch_dims(patch_size)
    x = imgs if imgs.dim() == 5 else imgs.unsqueeze(2)
    N, C, T, H, W = x.shape
    t, h, w = T // u, H // ph, W // pw
    x = x.reshape(N, C, t, u, h, ph, w, pw)
    x = torch.einsum("nctuhpwq->nthwupqc", x)
    return x.reshape(N, t * h * w, u * ph * pw * C)


def unpatchify(x, patch_size, image_size):
    """The inverse of patchify: [N, L, P] -> [N, C, H, W] with image_size (H, W) (or an int for square images),
    or -> [N, C, T, H, W] with image_size (T, H, W) and patch_size (u, ph, pw)."""
    u, ph, pw = patch_dims(patch_size)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    T, H, W = size if len(size) == 3 else (1, *size)
    t, h, w = T // u, H // ph, W // pw
    N, L, P = x.shape
    C = P // (u * ph * pw)
    x = x.reshape(N, t, h, w, u, ph, pw, C)
    x = torch.einsum("nthwupqc->nctuhpwq", x)
    x = x.reshape(N, C, T, H, W)
    return x if len(size) == 3 else x.squeeze(2)


def masked_patchify(imgs, ids_keep, patch_size):
    """The kept patches, in ids_keep order: [N, K, p*p*C]."""
    x = patchify(imgs, patch_size)
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed=None):
    """The official encoder front end restricted to the kept patches: the Conv2d (images, weight [D, C, ph, pw])
    or Conv3d (videos [N, C, T, H, W], weight [D, C, u, ph, pw]) patch embedding over all L patches, + the
    positional embedding, then the gather of ids_keep -> [N, K, D]. pos_embed: None; a table [1, R, D] whose last
    L rows are the tokens' (R = 1 + L: row 0 is the cls token's, as MAE's pos_embed[:, 1:]; R = L: VideoMAE's
    table); or mae_st's separable pair (spatial [1, h*w, D], temporal [1, t, D]), summed as mae_st does:
    spatial.repeat(1, t, 1) + repeat_interleave(temporal, h*w, 1)."""
    conv = F.conv3d if weight.dim() == 5 else F.conv2d
    x = conv(imgs, weight, bias, stride=tuple(weight.shape[2:])).flatten(2).transpose(1, 2)
    if isinstance(pos_embed, (tuple, list)):
        spatial, temporal = pos_embed
        x = x + (spatial.repeat(1, temporal.shape[1], 1)
                 + torch.repeat_interleave(temporal, spatial.shape[1], dim=1))
    elif pos_embed is not None:
        x = x + pos_embed[:, pos_embed.shape[1] - x.shape[1]:, :]
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed=None, has_cls=True):
    """The official decoder input: mask tokens appended, unshuffled with ids_restore, cls row kept first,
    + decoder pos_embed. x: [N, (1 +) K, D]; mask_token: [1, 1, D]; out: [N, (1 +) L, D] with cat's promotion."""
    N, L = ids_restore.shape
    body = x[:, 1:, :] if has_cls else x
    mask_tokens = mask_token.repeat(N, L - body.shape[1], 1)
    x_ = torch.cat([body, mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x_.shape[2]))
    out = torch.cat([x[:, :1, :], x_], dim=1) if has_cls else x_
    if pos_embed is not None:
        out = out + pos_embed
    return out


def append_mask_tokens(x, mask_token, ids_keep, ids_dec, pos_embed=None, has_cls=False):
    """VideoMAE v2's decoder input (dual masking): the kept tokens, then one mask token per decoder-visible
    position, each row + pos_embed at its position: cat([x + pos[ids_keep], mask_token + pos[ids_dec]], 1).
    x: [N, (1 +) K, D] (cls row first with has_cls), ids_keep [N, K], ids_dec [N, M] int64 positions in [0, L),
    pos_embed [1, (1 +) L, D] or None -> [N, (1 +) K + M, D] with cat's type promotion."""
    N, _, D = x.shape
    out = torch.cat([x, mask_token.expand(N, ids_dec.shape[1], D)], dim=1)
    if pos_embed is not None:
        c = int(has_cls)
        rows = torch.cat([ids_keep, ids_dec], dim=1) + c
        if has_cls:
            rows = torch.cat([rows.new_zeros(N, 1), rows], dim=1)
        out = out + pos_embed[0][rows]
    return out


def mae_st_target_frames(num_frames, pred_t_dim, device=None):
    """mae_st's target frames: torch.linspace(0, T - 1, pred_t_dim).long() (float32 linspace, truncation), e.g.
    T=16, pred_t_dim=8 -> [0, 2, 4, 6, 8, 10, 12, 15]. As `target_frames` of the loss ops, token (ti, hi, wi)
    targets frames idx[ti*u' + a], a < u' = pred_t_dim // t (MAE_SPEC_VIDEO.md, mae_st "Target")."""
    return torch.linspace(0, num_frames - 1, pred_t_dim, dtype=torch.float32, device=device).long()


def _pixels(imgs, dtype, pixel_mean=None, pixel_std=None):
    """imgs in `dtype`, un-normalised per channel (x * std + mean) when pixel_mean / pixel_std are given."""
    x = imgs.to(dtype)
    if pixel_mean is None and pixel_std is None:
        return x
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if pixel_std is not None:
        x = x * torch.as_tensor(pixel_std, device=x.device).to(dtype).reshape(shape)
    if pixel_mean is not None:
        x = x + torch.as_tensor(pixel_mean, device=x.device).to(dtype).reshape(shape)
    return x


def target_patches(imgs, patch_size, target_frames=None, pixel_mean=None, pixel_std=None, dtype=None):
    """The un-normalised loss target [N, L, u'*ph*pw*C] in `dtype` (default: fp32, fp64 for fp64 imgs): the
    pixels (un-normalised with pixel_mean / pixel_std when given) patchified; with target_frames (int64 [t*u'])
    token (ti, hi, wi) takes frames target_frames[ti*u' + a], a < u', instead of its own u frames."""
    dtype = dtype or torch.promote_types(imgs.dtype, torch.float32)
    u, ph, pw = patch_dims(patch_size)
    x = _pixels(imgs, dtype, pixel_mean, pixel_std)
    if target_frames is not None:
        t = x.shape[2] // u
        x = x[:, :, target_frames.to(x.device)]
        u = target_frames.numel() // t
    return patchify(x, (u, ph, pw) if imgs.dim() == 5 else (ph, pw))


def _stats(target, C, eps, per_channel):
    """(mean, denominator) of the target normalisation: over the whole patch, sqrt(unbiased var + eps) ([N, L, 1]),
    or per channel over the patch's pixels, sqrt(unbiased var) + eps ([N, L, C], VideoMAE)."""
    if per_channel:
        v = target.reshape(*target.shape[:2], -1, C)
        return v.mean(dim=-2), v.var(dim=-2).sqrt() + eps
    return target.mean(dim=-1, keepdim=True), (target.var(dim=-1, keepdim=True) + eps) ** 0.5


def _normalize(target, mean, denom, C, per_channel, inverse=False):
    if per_channel:
        v = target.reshape(*target.shape[:2], -1, C)
        v = v * denom[:, :, None] + mean[:, :, None] if inverse else (v - mean[:, :, None]) / denom[:, :, None]
        return v.reshape(target.shape)
    return target * denom + mean if inverse else (target - mean) / denom


def patch_stats(imgs, patch_size, eps=1e-6, per_channel=False, target_frames=None, pixel_mean=None,
                pixel_std=None):
    """Per-patch mean and std of the target, fp32: ([N, L, 1], [N, L, 1]) with std = sqrt(unbiased var + eps);
    per_channel (VideoMAE): ([N, L, C], [N, L, C]) with std = sqrt(unbiased var) + eps, over the patch's pixels of
    each channel. target_frames / pixel_mean / pixel_std as in target_patches."""
    target = target_patches(imgs, patch_size, target_frames, pixel_mean, pixel_std)
    return _stats(target, imgs.shape[1], eps, per_channel)


def denormalize_pred(pred, imgs, patch_size, eps=1e-6, per_channel=False, target_frames=None, pixel_mean=None,
                     pixel_std=None):
    """Turn norm_pix_loss predictions back into pixel space (patch vectors) with the target's patch stats."""
    mean, std = patch_stats(imgs, patch_size, eps, per_channel, target_frames, pixel_mean, pixel_std)
    return _normalize(pred.float(), mean, std, imgs.shape[1], per_channel, inverse=True)


def patch_mse(pred, imgs, patch_size, norm_pix_loss=True, eps=1e-6, per_channel=False, target_frames=None,
              pixel_mean=None, pixel_std=None):
    """Per-patch MSE of the official forward_loss, [N, L] in fp32 (fp64 for fp64 inputs, so that tests have a
    float64 reference): ((pred - target) ** 2).mean(-1), the target normalised per patch (unbiased variance, eps
    inside the sqrt) when norm_pix_loss, or per patch and channel (eps added to the std) with per_channel.
    pred: [N, L, P]. Video targets (target_frames, pixel_mean, pixel_std): see target_patches."""
    dtype = torch.promote_types(torch.promote_types(pred.dtype, imgs.dtype), torch.float32)  # fp64 stays fp64
    target = target_patches(imgs, patch_size, target_frames, pixel_mean, pixel_std, dtype)
    if norm_pix_loss:
        mean, denom = _stats(target, imgs.shape[1], eps, per_channel)
        target = _normalize(target, mean, denom, imgs.shape[1], per_channel)
    loss = (pred.to(dtype) - target) ** 2
    return loss.mean(dim=-1)


def scatter_removed_pred(pred, ids_shuffle):
    """Predictions of the removed patches only ([N, L - K, P], row j = patch ids_shuffle[n, K + j]) placed
    in the full layout [N, L, P]; kept patches get zeros (they carry no loss)."""
    N, R, P = pred.shape
    L = ids_shuffle.shape[1]
    full = pred.new_zeros(N, L, P)
    index = ids_shuffle[:, L - R:].unsqueeze(-1).expand(-1, -1, P)
    return full.scatter(1, index, pred)


def masked_mse_loss(pred, imgs, mask, patch_size, norm_pix_loss=True, eps=1e-6, weight=None, **target):
    """The official forward_loss: MSE on removed patches (mask == 1), against per-patch normalised pixels
    when norm_pix_loss. pred: [N, L, P]; mask: [N, L]. Computed in fp32 (as autocast's promotion does).
    A mask without removed patches gives NaN (0 / 0), as in the official code. weight [N, L]: sum(l * w * m) /
    sum(w * m). `target`: per_channel, target_frames, pixel_mean, pixel_std of patch_mse (the video losses)."""
    loss = patch_mse(pred, imgs, patch_size, norm_pix_loss, eps, **target)
    mask = mask.to(loss.dtype)
    if weight is not None:
        mask = mask * weight.to(loss.dtype)
    return (loss * mask).sum() / mask.sum()
