"""VideoMAE v2's dual masking (../shared/MAE_SPEC_VIDEO.md), the part shared by the image model (models/mae.py)
and the video model (models/video_mae.py): which positions the decoder decodes, and the loss's token set.

The models read decoder_mask_ratio, decoder_mask_type ("run_cell" | "random") and decoder_mask_scope:
- "all" (v2's rule, the default): the decoder mask ranges over all L positions and mask tokens go to every
  decoded position, encoder-visible ones included (those carry no loss but take part in attention).
- "removed": only encoder-removed positions are decoded (every mask token carries a loss; the decoder sequence is
  shorter by the encoder-visible decoded positions: 864 rows instead of 944 at v2's defaults).
The loss covers the encoder-removed positions among the decoded ones in both cases (v2's batch-global
sum(l * w) / sum(w)).
"""
import torch

from ..ops._validate import check_tensor
from ..ops.decoder_mask_indices import MASK_TYPES, SCOPES, decoder_mask_indices
from ..ops.mask_to_indices import mask_to_indices


def check_options(decoder_mask_ratio, decoder_mask_type, decoder_mask_scope):
    if decoder_mask_type not in MASK_TYPES:
        raise ValueError(f"decoder_mask_type must be one of {MASK_TYPES}, got {decoder_mask_type!r}")
    if decoder_mask_scope not in SCOPES:
        raise ValueError(f"decoder_mask_scope must be one of {SCOPES}, got {decoder_mask_scope!r}")
    if not 0.0 <= decoder_mask_ratio < 1.0:
        raise ValueError(f"decoder_mask_ratio must be in [0, 1), got {decoder_mask_ratio}")


def sample(model, N, grid, device, generator=None, encoder_mask=None, num_removed=None):
    """A decoder mask drawn with the model's options for a (t, h, w) token grid, as decoder_mask_indices returns
    it: (ids_dec [N, M], ids_restore [N, L], mask [N, L] float32, 1 = not decoded). Scope "removed" needs the
    encoder mask [N, L] (1 = removed) and, for no host sync, num_removed."""
    t, h, w = grid
    kw = {}
    if model.decoder_mask_scope == "removed":
        kw = dict(scope="removed", encoder_mask=encoder_mask, num_removed=num_removed)
    return decoder_mask_indices(N, t, h, w, model.decoder_mask_ratio, mask_type=model.decoder_mask_type,
                                generator=generator, device=device, **kw)


def plan(model, grid, mask, num_kept, decoder_mask=None):
    """(ids_dec [N, M], ids_shuffle [N, L] with the decoded positions last, loss_mask [N, L]) of one forward, or
    None when the decoder decodes every position (decoder_mask None and not (training and ratio > 0): the
    official model's path). mask: the encoder's [N, L] float32, 1 = removed; num_kept: its kept count.
    decoder_mask: optional bool [N, L], True = not decoded (v2's decode_masked_pos); with scope "removed" the
    encoder-visible positions are left out of it. Its decoded count is read from it (one host sync) and must be
    equal in every row."""
    N, L = mask.shape
    removed_scope = model.decoder_mask_scope == "removed"
    if decoder_mask is not None:
        check_tensor("decoder_mask", decoder_mask, ndim=2, dtypes=(torch.bool,), device=mask.device, shape=(N, L))
        if removed_scope:
            decoder_mask = decoder_mask | ~mask.bool()
        ids_dec, ids_restore_dec, not_decoded = mask_to_indices(decoder_mask)  # decoded = "kept"
    elif model.training and model.decoder_mask_ratio > 0:
        ids_dec, ids_restore_dec, not_decoded = sample(model, N, grid, mask.device, encoder_mask=mask,
                                                       num_removed=L - num_kept)
    else:
        return None
    M = ids_dec.shape[1]
    # masked_mse_loss reads pred row j as position ids_shuffle[:, L - M + j]: the decoded positions last.
    ids_shuffle = torch.roll(torch.argsort(ids_restore_dec, dim=1), -M, dims=1)
    return ids_dec, ids_shuffle, mask * (1 - not_decoded)  # the loss: encoder-removed and decoded
