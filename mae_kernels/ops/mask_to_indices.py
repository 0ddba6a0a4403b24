"""mask_to_indices: the indices of a given boolean mask (HF's bool_masked_pos, VideoMAE's data-loader masks),
without nonzero and, when the kept count is given, without a host sync.

Compiled op mae_kernels::mask_to_indices (CPU, CUDA) and its Triton twin mask_to_indices_triton share one schema:
  (bool_mask [N, L] bool (True = masked, any strides), num_kept) ->
      (ids_keep [N, num_kept] int64, ids_restore [N, L] int64, mask [N, L] float32, 1 = removed)
ids_shuffle = argsort(mask, dim=1, stable=True): the kept patches in ascending index, then the masked ones in
ascending index, so gather(x, ids_keep) == x[~mask].reshape(N, num_kept, -1) (VideoMAE's encoder order), and
ids_restore feeds unshuffle_with_mask_tokens / masked_mse_loss as for image MAE. One launch (a per-row scan).

Equal counts: every row must keep the same number of patches (the reshape in VideoMAE / HF requires it too).
- num_kept None: the count is read from the device (ONE host sync: the per-row kept counts' min and max), rows
  that differ raise ValueError. Not allowed under torch.compile or CUDA graph capture (the count sets the
  output shape): pass num_kept there.
- num_kept given: no host sync; a row keeping another count fails torch._assert_async (a RuntimeError at once on
  CPU tensors, a device-side assert on CUDA). The kernels stay inside their outputs whatever the mask.
"""
import torch

from .. import reference
from ..backends import select
from ._registry import compiled_op, define_triton_op, register
from ._validate import check_int, check_tensor, common_row_count, cuda_graph_capturing

_SCHEMA = "(Tensor bool_mask, int num_kept) -> (Tensor ids_keep, Tensor ids_restore, Tensor mask)"


def _triton(bool_mask, num_kept):
    from ..triton.mask_to_indices import mask_to_indices as launch
    return launch(bool_mask, num_kept)


OPS = {"cpu": compiled_op("mask_to_indices"), "cuda": compiled_op("mask_to_indices"),
       "triton": define_triton_op("mask_to_indices", _SCHEMA, _triton)}


def _fake(bool_mask, num_kept):
    N, L = bool_mask.shape
    return (bool_mask.new_empty(N, num_kept, dtype=torch.long), bool_mask.new_empty(N, L, dtype=torch.long),
            bool_mask.new_empty(N, L, dtype=torch.float32))


register([OPS["cuda"], OPS["triton"]], _fake)  # integer indices and a 0/1 mask: no autograd


def _kept_counts(bool_mask):
    return bool_mask.shape[1] - bool_mask.sum(dim=1)


def _num_kept(bool_mask, num_kept):
    """The kept count per row, checked equal in every row (see the module doc for when this syncs)."""
    N, L = bool_mask.shape
    no_sync = torch.compiler.is_compiling() or cuda_graph_capturing(bool_mask)
    if num_kept is None:
        if no_sync:
            raise ValueError("mask_to_indices: num_kept must be given under torch.compile and CUDA graph capture "
                             "(the kept count sets the output shape; reading it from the mask needs a host sync)")
        if N == 0 or bool_mask.device.type == "meta":
            raise ValueError("mask_to_indices: num_kept must be given when bool_mask has no data to count "
                             f"(shape {tuple(bool_mask.shape)}, device {bool_mask.device})")
        counts = _kept_counts(bool_mask)
        return common_row_count(counts, "bool_mask must keep (hold False in) the same number of patches")
    check_int("num_kept", num_kept, minimum=0)
    if num_kept > L:
        raise ValueError(f"num_kept must be at most L = {L} (bool_mask has shape {tuple(bool_mask.shape)}), "
                         f"got {num_kept}")
    if N > 0 and bool_mask.device.type != "meta":
        torch._assert_async((_kept_counts(bool_mask) == num_kept).all(),
                            f"bool_mask must keep (hold False in) num_kept = {num_kept} patches in every row")
    return num_kept


def mask_to_indices(bool_mask, num_kept=None):
    """(ids_keep [N, K] int64, ids_restore [N, L] int64, mask [N, L] float32, 1 = removed) of a boolean mask
    bool_mask [N, L] (True = masked, HF's bool_masked_pos; any strides), K kept patches per row.

    Kept patches in ascending index (gather(x, ids_keep) == x[~bool_mask].reshape(N, K, -1)), ids_restore
    consistent with ids_shuffle = argsort(bool_mask, stable=True) (kept ascending, then masked ascending), which is
    torch.argsort(ids_restore, dim=1) when a consumer needs it (masked_mse_loss's ids_shuffle for predictions of
    the masked patches only, VideoMAE's layout). Images work the same ([N, h*w]).

    num_kept: the kept count K of every row. Given: no host sync (rows with another count fail an async assert).
    None: read from the mask with one host sync (unequal rows raise ValueError); required under torch.compile and
    CUDA graph capture."""
    check_tensor("bool_mask", bool_mask, ndim=2, dtypes=(torch.bool,))
    K = _num_kept(bool_mask, num_kept)
    backend = select("mask_to_indices", bool_mask.device.type)
    if backend == "reference":
        return reference.mask_to_indices(bool_mask, K)
    return OPS[backend](bool_mask, K)
