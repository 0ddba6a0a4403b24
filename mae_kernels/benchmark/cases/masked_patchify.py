"""masked_patchify: imgs [N, C, H, W], ids_keep [N, K] -> the kept patch vectors [N, K, p*p*C].

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
SMOKE = [dict(N=2, C=3, H=8, W=12, p=4, K=2, dtype=torch.float32)]


def setup(device, N, C, H, W, p, K, dtype):
    L = (H // p) * (W // p)
    imgs = torch.randn(N, C, H, W, device=device, dtype=dtype, requires_grad=True)
    ids_keep = torch.argsort(torch.rand(N, L, device=device), dim=1)[:, :K].contiguous()
    patch = p * p * C * imgs.element_size()
    return Case(
        op=OP, shape=f"N={N} C={C} {H}x{W} p={p} K={K}", dtype=dtype,
        reference=lambda imgs, ids_keep: (reference.masked_patchify(imgs, ids_keep, p),),
        function=lambda imgs, ids_keep: (masked_patchify(imgs, ids_keep, p),),
        args=(imgs, ids_keep),
        differentiable=(0,),
        bytes={
            # read the K kept patches (and ids_keep), write them
            "forward": 2 * N * K * patch + N * K * 8,
            # read grad [N, K, P] and ids_keep, write the whole grad_imgs (zeros where removed)
            "backward": N * K * patch + N * K * 8 + imgs.numel() * imgs.element_size(),
        },
    )
