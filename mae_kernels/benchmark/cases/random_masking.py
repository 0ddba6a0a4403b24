"""random_masking: x [N, L, D] -> x_masked [N, K, D], mask [N, L], ids_restore [N, L] (K = L/4 at ratio 0.75).

Timed as in training: no noise passed, so each provider draws its own (the official code torch.rand; the GPU
kernels Philox in-kernel). Checked with one shared noise tensor, against which every backend is bit-exact."""
import torch

from ... import reference
from ...ops.random_masking import random_masking
from ..harness import Case

OP = "random_masking"
MASK_RATIO = 0.75
SHAPES = {
    "cuda": [dict(N=256, L=196, D=768, dtype=torch.bfloat16),     # ViT-B/16 at 224
             dict(N=256, L=1568, D=768, dtype=torch.bfloat16)],   # video-length sequences
    "cpu": [dict(N=64, L=196, D=768, dtype=torch.float32)],
}
SMOKE = [dict(N=3, L=10, D=5, dtype=torch.float32)]


def setup(device, N, L, D, dtype):
    x = torch.randn(N, L, D, device=device, dtype=dtype, requires_grad=True)
    noise = torch.rand(N, L, device=device)
    K = reference.len_keep(L, MASK_RATIO)
    row = D * x.element_size()
    return Case(
        op=OP, shape=f"N={N} L={L} D={D}", dtype=dtype,
        reference=lambda x, noise: reference.random_masking(x, MASK_RATIO, noise),
        function=lambda x, noise: random_masking(x, MASK_RATIO, noise),
        args=(x, None),
        check_args=(x, noise),
        differentiable=(0,),
        bytes={
            # read the kept rows, write x_masked, mask (fp32) and ids_restore (int64)
            "forward": 2 * N * K * row + N * L * (4 + 8),
            # read grad_x_masked and ids_keep, write the whole grad_x (zeros where removed)
            "backward": N * K * row + N * K * 8 + N * L * row,
        },
    )
