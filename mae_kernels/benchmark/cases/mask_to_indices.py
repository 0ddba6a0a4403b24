"""mask_to_indices: a given boolean mask [N, L] (HF's bool_masked_pos; VideoMAE's tube masks at hw = 196, t = 8,
ratio 0.9: 160 kept of 1568) -> ids_keep [N, 160], ids_restore [N, L], mask [N, L] float32, with the kept count
given (no host sync). The reference: the stable argsorts of the spec. Forward only: the outputs are indices."""
import torch

from ... import reference
from ...ops.mask_to_indices import mask_to_indices
from ..harness import Case

OP = "mask_to_indices"
SHAPES = {
    "cuda": [dict(N=32, t=8, hw=196, ratio=0.9)],
    "cpu": [dict(N=8, t=8, hw=196, ratio=0.9)],
}
SMOKE = [dict(N=3, t=2, hw=10, ratio=0.5)]


def setup(device, N, t, hw, ratio):
    bool_mask = reference.tube_mask(N, t, hw, ratio, torch.rand(N, hw)).to(device)
    L = t * hw
    K = L - int(bool_mask[0].sum())
    return Case(
        op=OP, shape=f"N={N} L={L} K={K}", dtype=torch.float32,
        reference=lambda m: reference.mask_to_indices(m, K),
        function=lambda m: mask_to_indices(m, K),
        args=(bool_mask,),
        differentiable=(),
        # read the mask (bytes), write ids_keep, ids_restore (int64) and mask (fp32)
        bytes={"forward": N * L + N * K * 8 + N * L * (8 + 4), "backward": 0},
    )
