"""unshuffle_with_mask_tokens: the decoder input, x [N, 1 + K, D] -> [N, 1 + L, D] (mask tokens for the removed
patches, unshuffled with ids_restore, cls row first, + decoder pos_embed).

As in MAE training: bf16 activations x under autocast, fp32 mask_token (learned) and pos_embed (the fixed sin-cos
table, no gradient), so the output is fp32 (the reference's promotion; the public function's default).
Gradients for x and mask_token. The output and grad_x are gathers (bit-exact); grad_mask_token is an fp32 sum
over the removed positions, whose order differs: the tolerances are for that reduction."""
import torch

from ... import reference
from ...ops.unshuffle_with_mask_tokens import unshuffle_with_mask_tokens
from ..harness import Case

OP = "unshuffle_with_mask_tokens"
SHAPES = {
    "cuda": [dict(N=256, L=196, K=49, D=512, dtype=torch.bfloat16),     # ViT-B/16 decoder, ratio 0.75
             dict(N=256, L=1568, K=156, D=512, dtype=torch.bfloat16)],  # video (VideoMAE), ratio 0.9
    "cpu": [dict(N=16, L=196, K=49, D=512, dtype=torch.float32)],
}
SMOKE = [dict(N=3, L=10, K=3, D=5, dtype=torch.float32)]


def setup(device, N, L, K, D, dtype):
    x = torch.randn(N, 1 + K, D, device=device, dtype=dtype, requires_grad=True)
    mask_token = torch.randn(1, 1, D, device=device, requires_grad=True)
    ids_restore = torch.argsort(torch.argsort(torch.rand(N, L, device=device), dim=1), dim=1)
    pos_embed = torch.randn(1, 1 + L, D, device=device)
    row = D * x.element_size()
    out_row = D * torch.promote_types(dtype, torch.float32).itemsize
    return Case(
        op=OP, shape=f"N={N} L={L} K={K} D={D}", dtype=dtype,
        reference=lambda *a: (reference.unshuffle_with_mask_tokens(*a),),
        function=lambda *a: (unshuffle_with_mask_tokens(*a),),
        args=(x, mask_token, ids_restore, pos_embed),
        differentiable=(0,),
        tolerances={dt: (1e-5, 1e-4) for dt in (torch.float32, torch.bfloat16, torch.float16)},
        bytes={
            # read x, ids_restore and pos_embed; write the output
            "forward": N * (1 + K) * row + N * L * 8 + (1 + L) * D * 4 + N * (1 + L) * out_row,
            # read grad_out and ids_restore; write grad_x (grad_mask_token is D floats)
            "backward": N * (1 + L) * out_row + N * L * 8 + N * (1 + K) * row,
        },
    )
