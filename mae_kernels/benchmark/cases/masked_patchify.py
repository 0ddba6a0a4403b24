"""masked_patchify: imgs [N, C, H, W], ids_keep [N, K] -> the kept patch vectors [N, K, p*p*C]; videos
[N, C, T, H, W] (shapes with T and u) -> the kept u x p x p tubelets [N, K, u*p*p*C].

Compared with the official way (patchify of all L patches, then the gather of ids_keep). imgs requires grad
so that backward and full have something to time (the gradient is the scatter into a zero image); in MAE the
images need none, so `forward` is the mode that matters. A gather: every backend is bit-exact."""
import torch

from ... import reference
from ...ops.masked_patchify import masked_patchify
from ..harness import Case

OP = "masked_patchify"
SHAPES = {
    "cuda": [dict(N=256, C=3, H=224, W=224, p=16, K=49, dtype=torch.bfloat16)],   # ViT-B/16 at 224, ratio 0.75
    "cpu": [dict(N=16, C=3, H=224, W=224, p=16, K=49, dtype=torch.float32)],
}
# Video (MAE_SPEC_VIDEO.md): 16 frames of 224x224 in 2x16x16 tubelets, L = 1568, ratio 0.9 -> 156 kept.
SHAPES["cuda"].append(dict(N=32, C=3, T=16, u=2, H=224, W=224, p=16, K=156, dtype=torch.bfloat16))
SHAPES["cpu"].append(dict(N=8, C=3, T=16, u=2, H=224, W=224, p=16, K=156, dtype=torch.float32))
SMOKE = [dict(N=2, C=3, H=8, W=12, p=4, K=2, dtype=torch.float32),
         dict(N=2, C=3, T=4, u=2, H=8, W=12, p=4, K=2, dtype=torch.float32)]


def setup(device, N, C, H, W, p, K, dtype, T=None, u=1):
    video = T is not None
    L = (T // u if video else 1) * (H // p) * (W // p)
    size = (u, p, p) if video else p
    imgs = torch.randn(N, C, *((T,) if video else ()), H, W, device=device, dtype=dtype, requires_grad=True)
    ids_keep = torch.argsort(torch.rand(N, L, device=device), dim=1)[:, :K].contiguous()
    patch = u * p * p * C * imgs.element_size()
    return Case(
        op=OP, shape=f"N={N} C={C} {f'T={T} u={u} ' if video else ''}{H}x{W} p={p} K={K}", dtype=dtype,
        reference=lambda imgs, ids_keep: (reference.masked_patchify(imgs, ids_keep, size),),
        function=lambda imgs, ids_keep: (masked_patchify(imgs, ids_keep, size),),
        args=(imgs, ids_keep),
        differentiable=(0,),
        bytes={
            # read the K kept patches (and ids_keep), write them
            "forward": 2 * N * K * patch + N * K * 8,
            # read grad [N, K, P] and ids_keep, write the whole grad_imgs (zeros where removed)
            "backward": N * K * patch + N * K * 8 + imgs.numel() * imgs.element_size(),
        },
    )
