"""masked_patch_embed: the encoder front end on the kept patches, imgs [N, C, H, W] -> tokens [N, K, D], and the
tubelet embedding of videos [N, C, T, H, W] (shapes with T and u: u x p x p tubelets, Conv3d weights, compared
with Conv3d over all L tubelets + VideoMAE's fixed [1, L, D] sin-cos table, then the gather).

Compared with the official code (reference.masked_patch_embed: Conv2d over all L patches + pos_embed[:, 1:],
then the gather of ids_keep). As in MAE training: gradients for the patch embedding's weight and bias only
(the images need none; pos_embed is the fixed sin-cos table, an fp32 buffer). GPU shapes use bf16 tensors for
imgs, weight and bias (not autocast) with the fp32 pos_embed, so tokens come out fp32 as under autocast.
The GEMM's summation order differs from Conv2d's: checked within per-dtype tolerances."""
import torch

from ... import reference
from ...models.pos_embed import sinusoid_table
from ...ops.masked_patch_embed import masked_patch_embed
from ..harness import Case

OP = "masked_patch_embed"
SHAPES = {
    "cuda": [dict(N=256, C=3, H=224, W=224, p=16, D=768, K=49, dtype=torch.bfloat16),    # ViT-B/16
             dict(N=256, C=3, H=224, W=224, p=14, D=1280, K=64, dtype=torch.bfloat16)],  # ViT-H/14 (P=588)
    "cpu": [dict(N=16, C=3, H=224, W=224, p=16, D=768, K=49, dtype=torch.float32)],
}
# Video (MAE_SPEC_VIDEO.md): 16 frames of 224x224 in 2x16x16 tubelets, L = 1568, ratio 0.9 -> 156 kept, ViT-B.
SHAPES["cuda"].append(dict(N=32, C=3, T=16, u=2, H=224, W=224, p=16, D=768, K=156, dtype=torch.bfloat16))
SHAPES["cpu"].append(dict(N=8, C=3, T=16, u=2, H=224, W=224, p=16, D=768, K=156, dtype=torch.float32))
SMOKE = [dict(N=2, C=3, H=8, W=12, p=4, D=8, K=3, dtype=torch.float32),
         dict(N=2, C=3, T=4, u=2, H=8, W=12, p=4, D=8, K=3, dtype=torch.float32)]


def setup(device, N, C, H, W, p, D, K, dtype, T=None, u=1):
    video = T is not None
    L = (T // u if video else 1) * (H // p) * (W // p)
    P = u * p * p * C
    imgs = torch.randn(N, C, *((T,) if video else ()), H, W, device=device, dtype=dtype)
    ids_keep = torch.argsort(torch.rand(N, L, device=device), dim=1)[:, :K].contiguous()
    kernel = (u, p, p) if video else (p, p)
    weight = (torch.randn(D, C, *kernel, device=device) / P ** 0.5).to(dtype).requires_grad_()
    bias = (0.1 * torch.randn(D, device=device)).to(dtype).requires_grad_()
    pos_embed = sinusoid_table(L, D).to(device) if video else torch.randn(1, 1 + L, D, device=device)
    e = imgs.element_size()
    out = torch.promote_types(dtype, pos_embed.dtype).itemsize
    return Case(
        op=OP, shape=f"N={N} {f'T={T} u={u} ' if video else ''}{H}x{W} p={p} D={D} K={K}", dtype=dtype,
        reference=lambda *a: (reference.masked_patch_embed(*a),),
        function=lambda *a: (masked_patch_embed(*a),),
        args=(imgs, ids_keep, weight, bias, pos_embed),
        differentiable=(0,),
        # bf16: both round GEMM results once from fp32 accumulators (1 ulp apart at most)
        tolerances={torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)},
        bytes={
            # read the kept patches, weight, bias and their pos_embed rows; write the tokens
            "forward": N * K * P * e + (D * P + D) * e + N * K * D * (pos_embed.element_size() + out),
            # read grad_out and the kept patches again; write grad_weight and grad_bias
            "backward": N * K * D * out + N * K * P * e + (D * P + D) * e,
        },
    )
