"""tube_mask_indices: VideoMAE tube masks for N clips of t x hw tokens -> ids_keep [N, t*(hw - m)],
ids_restore [N, t*hw], mask [N, t*hw] float32 (m = int(0.9 * 196) = 176 masked per frame: 160 kept of 1568).

Timed as in training: no noise passed, so each provider draws its own (the reference torch.rand, then argsorts and
a tiled mask; the GPU kernels Philox in one launch). Checked with one shared noise tensor, against which every
backend is bit-exact. Forward only: the outputs are indices."""
import torch

from ... import reference
from ...ops.tube_mask_indices import tube_mask_indices
from ..harness import Case

OP = "tube_mask_indices"
MASK_RATIO = 0.9
SHAPES = {
    "cuda": [dict(N=32, t=8, hw=196)],   # VideoMAE ViT-B: 16 frames of 224 x 224, tubelet 2x16x16
    "cpu": [dict(N=8, t=8, hw=196)],
}
SMOKE = [dict(N=3, t=2, hw=10)]


def setup(device, N, t, hw):
    noise = torch.rand(N, hw, device=device)
    L, K = t * hw, t * (hw - reference.tube_num_masked(hw, MASK_RATIO))
    return Case(
        op=OP, shape=f"N={N} t={t} hw={hw} r={MASK_RATIO}", dtype=torch.float32,
        reference=lambda noise: reference.tube_mask_indices(N, t, hw, MASK_RATIO, noise, device=device),
        function=lambda noise: tube_mask_indices(N, t, hw, MASK_RATIO, noise=noise, device=device),
        args=(None,),
        check_args=(noise,),
        differentiable=(),
        # write ids_keep, ids_restore (int64) and mask (fp32)
        bytes={"forward": N * K * 8 + N * L * (8 + 4), "backward": 0},
    )
