"""decoder_mask_indices: VideoMAEv2's decoder masks (dual masking, MAE_SPEC_VIDEO.md) on the device, as indices.

No kernel of its own: a decoder mask is a tube mask with t = 1 over all L positions (mask_type "random") or a
running-cell map, a closed form of (start, ti, hi, wi) computed with a few elementwise torch ops on the device;
the indices then come from the tube_mask_indices / mask_to_indices ops (one launch each, cpu / cuda / triton /
reference backends, no host sync: the decoded count is known from the sizes).

run_cell (v2's RunningCellMaskingGenerator; m = int(4 r) of every 2x2 cell not decoded, 0 < m < 4): position
(hi, wi) of frame ti is NOT decoded iff ((hi % 2) * 2 + wi % 2 + start + ti + 1) % 4 < m, start in 0..3 drawn
per sample with torch.randint (v2: np.random.randint(4) per sample). h and w must be even. At r = 0.5 every frame
decodes half of its positions (98 of 196) and each position is decoded in 2 of any 4 consecutive frames.
random: int(r * L) positions not decoded, a uniformly random subset per sample (VideoMAE's RandomMaskingGenerator
rule; v2 itself only ships run_cell).

scope (which positions the decoder mask ranges over):
- "all" (v2's rule, the default): the map covers all L positions; mask tokens go to ALL decoder-visible positions
  (ids_dec), encoder-visible ones included; the loss takes the encoder-masked ones among them
  (mask_enc.gather(1, ids_dec) as weights). At 224 px, 16 frames, tube 0.9, run_cell 0.5: 784 mask tokens, 704
  of them in the loss, 80 at encoder-visible positions (they carry no loss but take part in attention).
- "removed" (the alternative): only encoder-removed positions are decoded (every mask token is in the loss):
  n_dec = n_rem - n_rem * m // 4 (run_cell) or n_rem - int(r * n_rem) (random) of the n_rem encoder-removed
  positions. random: the n_dec removed positions of smallest noise (a uniform subset). run_cell: the removed
  positions the map decodes; where a row has more or fewer of them than n_dec (an encoder mask that is not a tube
  over a multiple of 4 frames, e.g. mae_st's random masking), the extra ones are dropped / the missing ones taken
  from the removed positions the map leaves out, by smallest tie-break noise. With a tube mask over t % 4 == 0
  frames the set is exactly v2's loss set (704 at the sizes above), with 80 fewer decoder rows (864, not 944).
Both give equal counts per sample (the decoder's rows are a dense [N, K + n_dec] batch) and need no host sync
when num_removed is given."""
import torch

from .. import reference
from ._validate import (FLOAT_DTYPES, check_int, check_mask_ratio, check_tensor, common_row_count,
                        cuda_graph_capturing)
from .mask_to_indices import mask_to_indices
from .tube_mask_indices import tube_mask_indices

MASK_TYPES = ("run_cell", "random")
SCOPES = ("all", "removed")


def running_cell_mask(start, t, h, w, mask_ratio):
    """bool [N, t*h*w], True = not decoded: v2's map of start[n] for each sample (closed form, on start's device)."""
    m = int(4 * mask_ratio)
    dev = start.device
    cell = ((torch.arange(h, device=dev) % 2)[:, None] * 2 + (torch.arange(w, device=dev) % 2)[None, :]).reshape(-1)
    ptr = start[:, None] + torch.arange(1, t + 1, device=dev)[None, :]           # [N, t]: the queue pointer
    return ((cell[None, None, :] + ptr[:, :, None]) % 4 < m).reshape(start.shape[0], t * h * w)


def num_decoded(L, mask_ratio, mask_type="run_cell", scope="all", num_removed=None):
    """The decoded count per sample: scope "all" over L positions, "removed" over num_removed positions;
    run_cell leaves n * int(4 r) // 4 of n undecoded, random int(r * n)."""
    n = L if scope == "all" else num_removed
    return n - (n * int(4 * mask_ratio) // 4 if mask_type == "run_cell" else int(mask_ratio * n))


def _removed_scope(decoded_first, encoder_mask, noise, n_dec):
    """The n_dec positions of smallest (class, noise, index): class 0 = encoder-removed and preferred by the
    decoder mask, 1 = removed and not preferred, 2 = encoder-visible (never taken: n_dec <= removed count).
    Two stable sorts (noise, then class): exact for any noise values."""
    removed = encoder_mask.bool()
    cls = (~removed).to(torch.int8) * 2 + (~decoded_first).to(torch.int8)
    order = torch.argsort(noise, dim=1, stable=True)
    order = order.gather(1, torch.argsort(cls.gather(1, order), dim=1, stable=True))
    not_decoded = torch.ones_like(removed).scatter(1, order[:, :n_dec], False)
    return mask_to_indices(not_decoded, n_dec)


def decoder_mask_indices(N, t, h, w, mask_ratio, mask_type="run_cell", start=None, noise=None, generator=None,
                         device=None, scope="all", encoder_mask=None, num_removed=None):
    """Decoder masks for N clips of t x h x w tokens (t = 1: images): (ids_dec [N, n_dec] int64, the decoder-visible
    positions in ascending token index; ids_restore [N, L] int64, consistent with ids_shuffle = decoded ascending
    then the others ascending; mask [N, L] float32, 1 = NOT decoded, ``mask.bool()`` is v2's decode_masked_pos).

    mask_type "run_cell": n_dec = L - L * int(4 * mask_ratio) // 4 (r = 0.5, 8 x 14 x 14: 784); start: optional
    [N] int64 in 0..3 on `device` (default torch.randint(4) from `generator`). "random": n_dec = L - int(r * L);
    noise: optional [N, L] float32 (the L - int(r L) positions of smallest noise are decoded).
    scope "all" (v2) or "removed" (only encoder-removed positions decoded; see the module doc): with "removed",
    encoder_mask [N, L] float or bool (1 / True = removed by the encoder) is required, num_removed (the removed
    count of every row; read from encoder_mask with one host sync when None, as mask_to_indices) gives
    n_dec = num_decoded(...), and noise [N, L] float32 (default torch.rand from `generator`) is the selection
    (random) or the tie-break (run_cell)."""
    for name, value in (("N", N), ("t", t), ("h", h), ("w", w)):
        check_int(name, value, minimum=1)
    check_mask_ratio(mask_ratio)
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    removed_scope = scope == "removed"
    if removed_scope and encoder_mask is None:
        raise ValueError("scope='removed' decodes encoder-removed positions only: pass encoder_mask [N, L] "
                         "(1 / True = removed by the encoder)")
    if not removed_scope and (encoder_mask is not None or num_removed is not None):
        raise ValueError("encoder_mask and num_removed are for scope='removed'; scope='all' (v2) ignores the "
                         "encoder mask")
    if device is None:
        given = encoder_mask if removed_scope else start if mask_type == "run_cell" else noise
        device = given.device if isinstance(given, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    L = t * h * w
    if removed_scope:
        check_tensor("encoder_mask", encoder_mask, ndim=2, dtypes=FLOAT_DTYPES + (torch.bool,), device=device,
                     shape=(N, L))
        num_removed = _num_removed(encoder_mask, num_removed, L)
    if mask_type == "random":
        if start is not None:
            raise ValueError("start is for mask_type='run_cell'; mask_type='random' takes noise")
        if not removed_scope:
            return tube_mask_indices(N, 1, L, mask_ratio, noise=noise, generator=generator, device=device)
    elif noise is not None and not removed_scope:
        raise ValueError("noise is for mask_type='random' (or scope='removed'); mask_type='run_cell' takes start")
    if mask_type == "run_cell":
        m = int(4 * mask_ratio)
        if not 0 < m < 4:
            raise ValueError(f"mask_ratio must leave 1 to 3 of the 4 positions of a running cell undecoded "
                             f"(int(4 * mask_ratio) in 1..3, VideoMAEv2's assert), got mask_ratio={mask_ratio} "
                             f"(m = {m})")
        if h % 2 or w % 2:
            raise ValueError(f"h and w must be even for running cells (2x2 cells tile the grid), got h={h}, w={w}")
        if start is None:
            start = torch.randint(0, 4, (N,), device=device, generator=generator)
        else:
            check_tensor("start", start, ndim=1, dtypes=(torch.int64,), device=device, shape=(N,))
            if start.device.type != "meta":
                torch._assert_async(((start >= 0) & (start < 4)).all(), "start values must be in 0..3")
        cells = running_cell_mask(start, t, h, w, mask_ratio)
        if not removed_scope:
            return mask_to_indices(cells, L - L * m // 4)
    if noise is None:
        noise = torch.rand(N, L, device=device, generator=generator)
    else:
        check_tensor("noise", noise, ndim=2, dtypes=(torch.float32,), device=device, shape=(N, L))
    n_dec = num_decoded(L, mask_ratio, mask_type, scope, num_removed)
    preferred = ~cells if mask_type == "run_cell" else torch.ones_like(noise, dtype=torch.bool)
    return _removed_scope(preferred, encoder_mask, noise, n_dec)


def _num_removed(encoder_mask, num_removed, L):
    """The removed count of every row of encoder_mask: read with one host sync when num_removed is None (not
    under torch.compile or CUDA graph capture), else checked on the device (torch._assert_async)."""
    counts = encoder_mask.bool().sum(1)
    has_data = encoder_mask.shape[0] > 0 and encoder_mask.device.type != "meta"
    if num_removed is None:
        if torch.compiler.is_compiling() or cuda_graph_capturing(encoder_mask) or not has_data:
            raise ValueError("num_removed must be given under torch.compile, CUDA graph capture or for an "
                             "encoder_mask without data (the removed count sets the output shape)")
        return common_row_count(counts, "encoder_mask must remove the same number of positions")
    check_int("num_removed", num_removed, minimum=0)
    if num_removed > L:
        raise ValueError(f"num_removed must be at most L = {L}, got {num_removed}")
    if has_data:
        torch._assert_async((counts == num_removed).all(),
                            f"encoder_mask must remove num_removed = {num_removed} positions in every row")
    return num_removed
