"""Structured encoder masks on the device: random masking over mask units (SimMIM's mask patches, Hiera's mask
units), feeding the same ids_keep / ids_restore / mask path as random masking.

BEiT's block-wise masking is not provided: it places random rectangles one after another, rejecting overlaps,
until a target count is reached, a data-dependent sequential loop per sample (tens of iterations) that has no
one-launch form on a GPU and cannot keep random_mask_indices' contract (a fixed kept count per sample) without
a final correction step. Mask units give structured masks with the exact counts and the ids_keep contract.
"""
import torch

from .ops._validate import check_int
from .ops.random_masking import random_mask_indices


def _triple(name, value):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise TypeError(f"{name} must be an int or a tuple (h, w) or (t, h, w), got {value!r}")
    for v in value:
        check_int(f"{name} entries", v, minimum=1)
    return (1, *value) if len(value) == 2 else tuple(value)


def mask_unit_indices(N, grid, unit, mask_ratio, noise=None, generator=None, device=None):
    """Random masking of whole mask units: the token grid (h, w) (or (t, h, w) for videos) is cut into units of
    unit = (uh, uw) (or (ut, uh, uw)) tokens, int(U * (1 - mask_ratio)) of its U units are kept per sample, chosen
    by random_mask_indices over the units (noise [N, U] optional, ties and NaN as there), and every token of a kept
    unit is kept. Returns (ids_keep [N, K * |unit|] int64: kept units in ascending noise order, the tokens of a
    unit in ascending index; ids_restore [N, L] int64; mask [N, L] float32, 1 = removed), the contract of
    random_mask_indices, so masked_patch_embed, unshuffle_with_mask_tokens and masked_mse_loss take them as they
    are. Token l of the grid is (ti * h + hi) * w + wi. No host sync."""
    check_int("N", N, minimum=1)
    t, h, w = _triple("grid", grid)
    ut, uh, uw = _triple("unit", unit)
    if t % ut or h % uh or w % uw:
        raise ValueError(f"unit {ut}x{uh}x{uw} must divide the token grid {t}x{h}x{w}")
    gt, gh, gw = t // ut, h // uh, w // uw
    U, size = gt * gh * gw, ut * uh * uw
    unit_keep, unit_restore, unit_mask = random_mask_indices(N, U, mask_ratio, noise=noise, generator=generator,
                                                             device=device)
    dev = unit_mask.device
    unit_shuffle = torch.empty_like(unit_restore).scatter_(
        1, unit_restore, torch.arange(U, device=dev).expand(N, U))  # the inverse permutation: units, noise order
    u = torch.arange(U, device=dev)
    corner = ((u // (gh * gw) * ut) * h + (u // gw % gh) * uh) * w + (u % gw) * uw  # first token of each unit
    a, i, j = torch.meshgrid(torch.arange(ut, device=dev), torch.arange(uh, device=dev),
                             torch.arange(uw, device=dev), indexing="ij")
    within = ((a * h + i) * w + j).reshape(size)  # ascending
    ids_shuffle = (corner[unit_shuffle].unsqueeze(-1) + within).reshape(N, U * size)
    L = t * h * w
    ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, torch.arange(L, device=dev).expand(N, L))
    tokens = torch.arange(L, device=dev)
    unit_of_token = ((tokens // (h * w) // ut) * gh + (tokens // w % h) // uh) * gw + (tokens % w) // uw
    return ids_shuffle[:, :unit_keep.shape[1] * size], ids_restore, unit_mask[:, unit_of_token]
