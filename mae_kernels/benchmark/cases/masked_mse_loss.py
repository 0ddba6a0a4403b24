"""masked_mse_loss: the official forward_loss, pred [N, L, P] + imgs [N, C, H, W] + mask [N, L] -> fp32 scalar.

As in MAE training: norm_pix_loss on, pred from the decoder (bf16 under autocast on GPU), the input images
fp32, mask from random masking (ratio 0.75); the gradient is for pred only. The sums run in another order
than the reference's: the tolerances are per dtype (bf16: the pred gradient is rounded to bf16 once by the
reference, and by the fused kernel at grad_loss = 1 before its scaling: 1 ulp apart at most)."""
import torch

from ... import reference
from ...ops.masked_mse_loss import masked_mse_loss
from ..harness import Case

OP = "masked_mse_loss"
SHAPES = {
    "cuda": [dict(N=256, C=3, H=224, W=224, p=16, dtype=torch.bfloat16)],   # ViT-B/16 at 224, P=768
    "cpu": [dict(N=16, C=3, H=224, W=224, p=16, dtype=torch.float32)],
}
SMOKE = [dict(N=2, C=3, H=8, W=12, p=4, dtype=torch.float32)]
MASK_RATIO = 0.75


def setup(device, N, C, H, W, p, dtype):
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
