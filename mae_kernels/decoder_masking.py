"""Decoder masking (VideoMAE v2's dual masking, ../shared/MAE_SPEC_VIDEO.md "VideoMAEv2"): which positions the
decoder sees. Masks are bool [N, L] with True = NOT decoded (v2's decode_masked_pos), drawn on the device from
torch's generator (no host sync, no numpy), for videos [t, h, w] grids and images (t = 1).

- running_cell_mask: v2's RunningCellMaskingGenerator exactly. A 2x2 cell queue [1]*m + [0]*(4 - m),
  m = int(4 * ratio) (0 < m < 4); for a start k in 0..3 drawn per sample, frame ti uses the queue rotated left by
  (k + ti + 1) mod 4, laid out row-major over each 2x2 cell of the grid. Every frame leaves m/4 of its positions
  undecoded (98 of 196 at ratio 0.5), each position is decoded in 2 of any 4 consecutive frames at 0.5.
- random_decoder_mask: int(ratio * L) positions per sample left undecoded, uniformly at random.
- decoder_indices: the decoded positions in ascending order (the rows a v2 decoder predicts), and the row order
  masked_mse_loss's ids_shuffle takes for predictions of those positions only.
v2's rule, which MaskedAutoencoderViT follows: mask tokens go to every decoded position, encoder-visible ones
included; the loss covers the encoder-removed positions among the decoded ones (batch-global mean).
"""
import torch

from .ops._validate import check_int, check_mask_ratio, check_tensor

DECODER_MASK_TYPES = ("run_cell", "random")


def _device(generator, device):
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def running_cell_mask(N, t, h, w, ratio=0.5, generator=None, device=None):
    """VideoMAE v2's running-cell decoder mask for N samples of a [t, h, w] token grid: bool [N, t*h*w],
    True = not decoded. h and w must be even (v2 silently builds a map of the wrong size otherwise)."""
    for name, value in (("N", N), ("t", t), ("h", h), ("w", w)):
        check_int(name, value, minimum=0 if name == "N" else 1)
    check_mask_ratio(ratio)
    m = int(4 * ratio)
    if not 0 < m < 4:
        raise ValueError(f"ratio must give 0 < int(4 * ratio) < 4 undecoded positions per 2x2 cell (0.25 <= ratio "
                         f"< 1), got ratio={ratio} (int(4 * ratio) = {m})")
    if h % 2 or w % 2:
        raise ValueError(f"running-cell masks need an even token grid (2x2 cells), got h={h}, w={w}")
    device = _device(generator, device)
    start = torch.randint(4, (N, 1, 1), generator=generator, device=device)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    cell = ((rows[:, None] % 2) * 2 + cols[None, :] % 2).reshape(1, 1, h * w)  # place in the 2x2 cell, row-major
    frame = torch.arange(t, device=device).reshape(1, t, 1)
    return ((cell + start + frame + 1) % 4 < m).reshape(N, t * h * w)  # queue[i] = 1 for i < m


def random_decoder_mask(N, L, ratio=0.5, generator=None, device=None):
    """int(ratio * L) positions of L left undecoded per sample, uniformly at random: bool [N, L], True = not
    decoded."""
    check_int("N", N, minimum=0)
    check_int("L", L, minimum=1)
    check_mask_ratio(ratio)
    device = _device(generator, device)
    ranks = torch.rand(N, L, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    return ranks < int(ratio * L)


def decoder_mask(kind, N, t, h, w, ratio, generator=None, device=None):
    """running_cell_mask or random_decoder_mask by name (DECODER_MASK_TYPES)."""
    if kind == "run_cell":
        return running_cell_mask(N, t, h, w, ratio, generator, device)
    if kind == "random":
        return random_decoder_mask(N, t * h * w, ratio, generator, device)
    raise ValueError(f"decoder_mask_type must be one of {DECODER_MASK_TYPES}, got {kind!r}")


def decoded_count(kind, t, h, w, ratio):
    """M, the positions each mask of decoder_mask(kind, ...) leaves decoded (a Python int: known without reading
    the mask)."""
    L = t * h * w
    return L - L * int(4 * ratio) // 4 if kind == "run_cell" else L - int(ratio * L)


def decoder_indices(not_decoded, num_decoded):
    """(ids_dec [N, M] int64, the decoded positions ascending; ids_shuffle [N, L] int64, the undecoded positions
    then the decoded ones, each ascending: masked_mse_loss(pred [N, M, P], ..., ids_shuffle=ids_shuffle) reads
    pred row j as position ids_dec[:, j]). Every row must decode exactly M = num_decoded positions (an async
    assert: no host sync on a GPU)."""
    check_tensor("not_decoded", not_decoded, ndim=2, dtypes=(torch.bool,))
    N, L = not_decoded.shape
    check_int("num_decoded", num_decoded, minimum=0)
    if num_decoded > L:
        raise ValueError(f"num_decoded must be at most L={L}, got {num_decoded}")
    if N:
        torch._assert_async(((~not_decoded).sum(dim=1) == num_decoded).all(),
                            f"every row of the decoder mask must decode num_decoded={num_decoded} positions")
    ids_shuffle = torch.argsort((~not_decoded).to(torch.uint8), dim=1, stable=True)
    return ids_shuffle[:, L - num_decoded:], ids_shuffle
