"""tube_mask_indices: VideoMAE / VideoMAEv2 tube masking (MAE_SPEC_VIDEO.md, TubeMaskingGenerator) drawn on the
device in one launch, as indices.

Compiled op mae_kernels::tube_mask_indices (CPU, CUDA) and its Triton twin tube_mask_indices_triton share one
schema:
  (like [N, hw, 0] (gives N, hw and the device), noise [N, hw] float32 or None, t, num_masked, seed, offset) ->
      (ids_keep [N, t*(hw - m)] int64, ids_restore [N, t*hw] int64, mask [N, t*hw] float32, 1 = removed)
Per sample the hw - m spatial positions of smallest noise are kept (ties: lower index first, NaN last, as
random_masking), in every frame: token ti*hw + s is masked iff position s is. m = int(mask_ratio * hw) (the
MASKED count truncated, VideoMAE's rule: hw = 196, ratio 0.9 -> 176 masked, 20 kept per frame). Kept tokens in
ascending token index (VideoMAE's x[~mask] order); ids_restore is consistent with ids_shuffle = kept ascending
then masked ascending, exactly mask_to_indices(mask.bool(), t*(hw - m)).
With noise None the cuda and triton kernels draw random_masking's Philox stream (subsequence n*hw + s) from
(seed, offset) taken from torch's generator; the cpu backend, torch.compile and CUDA graph capture draw the noise
with torch.rand (as the reference does). The cuda and triton kernels sort one sample per block: hw <= MAX_HW.
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._rng import seed_offset
from ._validate import check_int, check_mask_ratio, check_tensor, cuda_graph_capturing

MAX_HW = 4096  # csrc/cuda/kernels/tube_mask_indices.cuh and mae_kernels/triton/tube_mask_indices.py agree

_SCHEMA = ("(Tensor like, Tensor? noise, int t, int num_masked, int seed, int offset) -> "
           "(Tensor ids_keep, Tensor ids_restore, Tensor mask)")


def _triton(like, noise, t, num_masked, seed, offset):
    from ..triton.tube_mask_indices import tube_mask_indices as launch
    return launch(like, noise, t, num_masked, seed, offset)


OPS = {"cpu": compiled_op("tube_mask_indices"), "cuda": compiled_op("tube_mask_indices"),
       "triton": define_triton_op("tube_mask_indices", _SCHEMA, _triton)}


def _fake(like, noise, t, num_masked, seed, offset):
    N, hw = like.shape[0], like.shape[1]
    L, K = t * hw, t * (hw - num_masked)
    return (like.new_empty(N, K, dtype=torch.long), like.new_empty(N, L, dtype=torch.long),
            like.new_empty(N, L, dtype=torch.float32))


register([OPS["cuda"], OPS["triton"]], _fake)  # integer indices and a 0/1 mask: no autograd


def tube_mask_indices(N, t, hw, mask_ratio, noise=None, generator=None, device=None):
    """VideoMAE tube masking of N clips of t x hw tokens (t temporal tokens, hw = h*w spatial positions):
    (ids_keep [N, t*(hw - m)] int64, ids_restore [N, t*hw] int64, mask [N, t*hw] float32, 1 = removed) with
    m = int(mask_ratio * hw) masked positions per frame, one uniformly random spatial mask per sample shared by
    all t frames, kept tokens in ascending token index. ``mask.bool()`` is VideoMAE's / HF's bool_masked_pos
    (True = masked); ids_shuffle (kept ascending, then masked ascending) is torch.argsort(ids_restore, dim=1).

    noise: optional [N, hw] float32 on `device` (the hw - m positions of smallest noise are kept); generator: the
    torch.Generator the noise (or the kernels' Philox seed) comes from; device: default noise's device or CPU."""
    check_int("N", N, minimum=1)
    check_int("t", t, minimum=1)
    check_int("hw", hw, minimum=1)
    check_mask_ratio(mask_ratio)
    if device is None:
        device = noise.device if isinstance(noise, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if noise is not None:
        check_tensor("noise", noise, ndim=2, dtypes=(torch.float32,), device=device, shape=(N, hw))
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if noise is None and generator.device.type != device.type:
            raise ValueError(f"generator must be a {device.type} generator (the device of the outputs), got one "
                             f"on {generator.device}")
    m = reference.tube_num_masked(hw, mask_ratio)
    backend = select("tube_mask_indices", device.type)
    if backend in ("cuda", "triton") and hw > MAX_HW:
        raise ValueError(f"tube_mask_indices: the {backend} backend sorts at most hw = {MAX_HW} spatial positions "
                         f"per sample, got hw = {hw}; use the cpu or reference backend (mae_kernels.use_backend)")
    if backend == "reference":
        return reference.tube_mask_indices(N, t, hw, mask_ratio, noise, generator, device)
    like = torch.empty(N, hw, 0, device=device)  # no data: N, hw and the device for the op's dispatch
    seed = offset = 0
    if noise is None:
        if backend == "cpu" or torch.compiler.is_compiling() or cuda_graph_capturing(like):
            # torch.rand: the reference's masks for the same seed, traceable, and fresh at every CUDA graph replay
            # (a seed/offset pair read here would be frozen into the graph)
            noise = torch.rand(N, hw, device=device, generator=generator)
        else:
            seed, offset = seed_offset(device, generator, 4)  # one Philox block of 4 per position
    return OPS[backend](like, noise, t, m, seed, offset)
