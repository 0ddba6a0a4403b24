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

v2's rule for the decoder input: mask tokens go to ALL decoder-visible positions (ids_dec), encoder-visible ones
included; the loss takes the encoder-masked ones among them (mask_enc.gather(1, ids_dec) as weights)."""
import torch

from .. import reference
from ._validate import check_int, check_mask_ratio, check_tensor
from .mask_to_indices import mask_to_indices
from .tube_mask_indices import tube_mask_indices

MASK_TYPES = ("run_cell", "random")


def running_cell_mask(start, t, h, w, mask_ratio):
    """bool [N, t*h*w], True = not decoded: v2's map of start[n] for each sample (closed form, on start's device)."""
    m = int(4 * mask_ratio)
    dev = start.device
    cell = ((torch.arange(h, device=dev) % 2)[:, None] * 2 + (torch.arange(w, device=dev) % 2)[None, :]).reshape(-1)
    ptr = start[:, None] + torch.arange(1, t + 1, device=dev)[None, :]           # [N, t]: the queue pointer
    return ((cell[None, None, :] + ptr[:, :, None]) % 4 < m).reshape(start.shape[0], t * h * w)


def decoder_mask_indices(N, t, h, w, mask_ratio, mask_type="run_cell", start=None, noise=None, generator=None,
                         device=None):
    """Decoder masks for N clips of t x h x w tokens (t = 1: images): (ids_dec [N, n_dec] int64, the decoder-visible
    positions in ascending token index; ids_restore [N, L] int64, consistent with ids_shuffle = decoded ascending
    then the others ascending; mask [N, L] float32, 1 = NOT decoded, ``mask.bool()`` is v2's decode_masked_pos).

    mask_type "run_cell": n_dec = L - L * int(4 * mask_ratio) / 4 (r = 0.5, 8 x 14 x 14: 784); start: optional
    [N] int64 in 0..3 on `device` (default torch.randint(4) from `generator`). "random": n_dec = L - int(r * L);
    noise: optional [N, L] float32 (the L - int(r L) positions of smallest noise are decoded)."""
    for name, value in (("N", N), ("t", t), ("h", h), ("w", w)):
        check_int(name, value, minimum=1)
    check_mask_ratio(mask_ratio)
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    if device is None:
        given = start if mask_type == "run_cell" else noise
        device = given.device if isinstance(given, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    L = t * h * w
    if mask_type == "random":
        if start is not None:
            raise ValueError("start is for mask_type='run_cell'; mask_type='random' takes noise")
        return tube_mask_indices(N, 1, L, mask_ratio, noise=noise, generator=generator, device=device)
    if noise is not None:
        raise ValueError("noise is for mask_type='random'; mask_type='run_cell' takes start")
    m = int(4 * mask_ratio)
    if not 0 < m < 4:
        raise ValueError(f"mask_ratio must leave 1 to 3 of the 4 positions of a running cell undecoded "
                         f"(int(4 * mask_ratio) in 1..3, VideoMAEv2's assert), got mask_ratio={mask_ratio} (m = {m})")
    if h % 2 or w % 2:
        raise ValueError(f"h and w must be even for running cells (2x2 cells tile the grid), got h={h}, w={w}")
    if start is None:
        start = torch.randint(0, 4, (N,), device=device, generator=generator)
    else:
        check_tensor("start", start, ndim=1, dtypes=(torch.int64,), device=device, shape=(N,))
        if start.device.type != "meta":
            torch._assert_async(((start >= 0) & (start < 4)).all(), "start values must be in 0..3")
    return mask_to_indices(running_cell_mask(start, t, h, w, mask_ratio), L - L * m // 4)
