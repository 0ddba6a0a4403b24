"""masked_mse_loss: the official forward_loss, pred [N, L, P] + imgs [N, C, H, W] + mask [N, L] -> fp32 scalar;
and the video losses (MAE_SPEC_VIDEO.md) at 16 frames of 224 px, tubelets 2x16x16 (L=1568), ratio 0.9:
mode="videomae" (tube mask, predictions of the 1408 masked tokens, P=1536, per-channel target on ImageNet-
un-normalised pixels; the reference is VideoMAE's engine code) and mode="mae_st" (random mask, predictions for all
L tokens from linspace target frames, P=768; the reference is mae_st's forward_loss).

As in MAE training: norm_pix_loss on, pred from the decoder (bf16 under autocast on GPU), the input images
fp32, mask from random masking (ratio 0.75); the gradient is for pred only. The sums run in another order
than the reference's: the tolerances are per dtype (bf16: the pred gradient is rounded to bf16 once by the
reference, and by the fused kernel at grad_loss = 1 before its scaling: 1 ulp apart at most)."""
import torch

from ... import reference
from ...ops.masked_mse_loss import masked_mse_loss
from ..harness import Case

OP = "masked_mse_loss"
_VIDEO = dict(C=3, T=16, H=224, W=224, u=2, p=16)
SHAPES = {
    "cuda": [dict(N=256, C=3, H=224, W=224, p=16, dtype=torch.bfloat16),   # ViT-B/16 at 224, P=768
             dict(N=32, **_VIDEO, dtype=torch.bfloat16, mode="videomae"),
             dict(N=32, **_VIDEO, dtype=torch.bfloat16, mode="mae_st")],
    "cpu": [dict(N=16, C=3, H=224, W=224, p=16, dtype=torch.float32),
            dict(N=8, **_VIDEO, dtype=torch.float32, mode="videomae"),
            dict(N=8, **_VIDEO, dtype=torch.float32, mode="mae_st")],
}
SMOKE = [dict(N=2, C=3, H=8, W=12, p=4, dtype=torch.float32),
         dict(N=2, C=3, T=4, H=8, W=8, u=2, p=4, dtype=torch.float32, mode="videomae"),
         dict(N=2, C=3, T=4, H=8, W=8, u=2, p=4, dtype=torch.float32, mode="mae_st")]
MASK_RATIO = 0.75
VIDEO_MASK_RATIO = 0.9
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def videomae_loss(pred, videos, bool_masked_pos, u, p):
    """VideoMAE's engine_for_pretraining target and loss (eager): un-normalise, per-patch-per-channel
    normalisation (eps on the std), labels of the masked tokens, nn.MSELoss."""
    with torch.no_grad():
        mean = torch.as_tensor(IMAGENET_MEAN, device=videos.device)[None, :, None, None, None]
        std = torch.as_tensor(IMAGENET_STD, device=videos.device)[None, :, None, None, None]
        unnorm = videos * std + mean
        N, C, T, H, W = unnorm.shape
        x = unnorm.reshape(N, C, T // u, u, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        squeeze = x.reshape(N, -1, u * p * p, C)  # 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c'
        norm = (squeeze - squeeze.mean(dim=-2, keepdim=True)) / (
            squeeze.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        patch = norm.reshape(N, -1, u * p * p * C)
        labels = patch[bool_masked_pos].reshape(N, -1, u * p * p * C)
    return torch.nn.functional.mse_loss(pred.float(), labels)


def _video_setup(device, N, C, T, H, W, u, p, dtype, mode):
    L, hw = (T // u) * (H // p) * (W // p), (H // p) * (W // p)
    imgs = torch.randn(N, C, T, H, W, device=device)
    shape = f"{mode} N={N} T={T} L={L}"
    if mode == "videomae":
        masked = int(VIDEO_MASK_RATIO * hw)  # tube masking: per frame, repeated over time
        spatial = torch.rand(N, hw, device=device).argsort(dim=1).argsort(dim=1) < masked
        bool_masked_pos = spatial.repeat(1, T // u)
        ids_shuffle = torch.argsort(bool_masked_pos.byte(), dim=1, stable=True)
        P = u * p * p * C
        pred = torch.randn(N, masked * (T // u), P, device=device, dtype=dtype, requires_grad=True)
        kw = dict(ids_shuffle=ids_shuffle, per_channel=True, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        reference_fn = lambda pred, imgs, mask: (videomae_loss(pred, imgs, mask, u, p),)
        function = lambda pred, imgs, mask: (masked_mse_loss(pred, imgs, mask, (u, p, p), **kw),)
        mask, rows = bool_masked_pos, masked * (T // u)
    else:
        frames = reference.mae_st_target_frames(T, T // u, device=device)  # pred_t_dim = t: u' = 1
        K = reference.len_keep(L, VIDEO_MASK_RATIO)
        mask = torch.ones(N, L, device=device)
        mask[:, :K] = 0
        mask = torch.gather(mask, 1, torch.argsort(torch.rand(N, L, device=device), dim=1))
        P = p * p * C
        pred = torch.randn(N, L, P, device=device, dtype=dtype, requires_grad=True)
        reference_fn = lambda pred, imgs, mask: (reference.masked_mse_loss(pred, imgs, mask, (u, p, p), True,
                                                                          target_frames=frames),)
        function = lambda pred, imgs, mask: (masked_mse_loss(pred, imgs, mask, (u, p, p), target_frames=frames),)
        rows = L - K
    scale = 2.0 / (P * N * rows)
    return Case(
        op=OP, shape=shape, dtype=dtype, reference=reference_fn, function=function, args=(pred, imgs, mask),
        differentiable=(0,),
        tolerances={torch.float32: (1e-4, 1e-5 * scale), torch.bfloat16: (1.6e-2, 1e-3 * scale),
                    torch.float16: (2e-3, 1e-4 * scale)},
        bytes={
            # read pred, the target pixels of the loss rows (u' frames of T read for mae_st) and the mask
            "forward": pred.numel() * pred.element_size() + N * rows * P * 4 + N * L * 4,
            "backward": pred.numel() * pred.element_size(),
        },
    )


def setup(device, N, C, H, W, p, dtype, T=None, u=None, mode="image"):
    if mode != "image":
        return _video_setup(device, N, C, T, H, W, u, p, dtype, mode)
    L, P = (H // p) * (W // p), p * p * C
    pred = torch.randn(N, L, P, device=device, dtype=dtype, requires_grad=True)
    imgs = torch.randn(N, C, H, W, device=device)
    K = reference.len_keep(L, MASK_RATIO)
    mask = torch.ones(N, L, device=device)
    mask[:, :K] = 0
    mask = torch.gather(mask, 1, torch.argsort(torch.rand(N, L, device=device), dim=1))
    scale = 2.0 / (P * N * (L - K))
    return Case(
        op=OP, shape=f"N={N} L={L} P={P}", dtype=dtype,
        reference=lambda pred, imgs, mask: (reference.masked_mse_loss(pred, imgs, mask, p, True),),
        function=lambda pred, imgs, mask: (masked_mse_loss(pred, imgs, mask, p, True),),
        args=(pred, imgs, mask),
        differentiable=(0,),
        # pred's gradient is of order 2 / (P * removed patches): atol is a fraction of that scale (for the
        # elements where pred nearly equals the target), rtol covers the loss and the rest
        tolerances={torch.float32: (1e-4, 1e-5 * scale), torch.bfloat16: (1.6e-2, 1e-3 * scale),
                    torch.float16: (2e-3, 1e-4 * scale)},
        bytes={
            # read pred, imgs and mask
            "forward": pred.numel() * pred.element_size() + imgs.numel() * 4 + N * L * 4,
            # write grad_pred (a backward that recomputes also reads pred and imgs again)
            "backward": pred.numel() * pred.element_size(),
        },
    )
