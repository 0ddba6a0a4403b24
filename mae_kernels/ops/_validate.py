"""Input validation shared by every op and backend: errors name the argument, what was expected and what came.

Everything here runs in Python before any kernel launches, so every backend (cpu, cuda, triton, reference)
sees the same checks. Index tensors get two levels of checks:
- always: the values are in range ([0, L)). One reduction and one host sync in eager mode; under torch.compile
  (no host sync possible) the same condition becomes torch._assert_async, a RuntimeError on CPU and a device
  assert on CUDA. So out-of-range indices never reach a kernel that would read or write out of bounds.
- debug mode (MAE_KERNELS_DEBUG=1, read at call time, skipped under torch.compile): the structure MAE's indices
  must have, whose violation gives wrong results rather than out-of-bounds accesses: ids_keep distinct within
  each row, ids_restore and ids_shuffle permutations of 0..L-1 per row, mask 0 on the kept patches.
Meta tensors carry no data: only their metadata is checked.
"""
import math
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def debug_enabled():
    """MAE_KERNELS_DEBUG=1 (read at call time): the index structure checks, which cost a device sync."""
    return os.environ.get("MAE_KERNELS_DEBUG", "0") == "1"


def _has_data(t):
    return t.numel() > 0 and t.device.type != "meta"


def check_tensor(name, t, ndim=None, dtypes=None, device=None, shape=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got {t.dim()} (shape {tuple(t.shape)})")
    if shape is not None:
        for i, (want, got) in enumerate(zip(shape, t.shape)):
            if want is not None and want != got:
                raise ValueError(f"{name} must have shape {_fmt(shape)}, got {tuple(t.shape)} (dimension {i})")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} must be on {device} (the device of the other inputs), got {t.device}")


def _fmt(shape):
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


def check_int(name, value, minimum=None):
    """A Python int (bool excluded): TypeError otherwise; ValueError below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def check_mask_ratio(mask_ratio):
    if (isinstance(mask_ratio, (torch.Tensor, bool)) or not isinstance(mask_ratio, (int, float))):
        raise TypeError(f"mask_ratio must be a Python float in [0, 1), got {type(mask_ratio).__name__} "
                        f"({mask_ratio!r})")
    if math.isnan(mask_ratio) or not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")


def check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a non-negative float, got {type(eps).__name__} ({eps!r})")
    if not eps >= 0:  # NaN included
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")


def check_patch_size(patch_size):
    check_int("patch_size", patch_size, minimum=1)


def patch_dims(patch_size, ndim=4):
    """(u, ph, pw) of a patch_size for inputs of `ndim` dimensions: images [N, C, H, W] take an int p (square
    patches) or a pair (ph, pw), tubelet u = 1; videos [N, C, T, H, W] take a triple (u, ph, pw) (u frames of
    ph x pw pixels). Errors name patch_size, what was expected and what came."""
    if ndim == 5:
        if not isinstance(patch_size, (tuple, list, torch.Size)) or len(patch_size) != 3:
            raise TypeError(f"patch_size must be a triple (u, ph, pw) (tubelet frames, patch height, patch width) "
                            f"for videos [N, C, T, H, W], got {patch_size!r}")
    elif isinstance(patch_size, (tuple, list, torch.Size)):
        if len(patch_size) != 2:
            raise TypeError(f"patch_size must be an int or a pair (ph, pw) for images [N, C, H, W], "
                            f"got {patch_size!r}")
    else:
        check_patch_size(patch_size)
        return 1, patch_size, patch_size
    for size in patch_size:
        check_int("patch_size entries", size, minimum=1)
    return (1, *patch_size) if len(patch_size) == 2 else tuple(patch_size)


def patch_size_text(patch_size):
    return str(patch_size) if isinstance(patch_size, int) else "x".join(str(s) for s in patch_size)


def check_images(name, imgs, patch_size, dtypes=None, device=None, video=False):
    """imgs [N, C, H, W] (or videos [N, C, T, H, W] when `video`), floating point (or one of `dtypes`), each
    patched dimension divisible by its patch size. Returns (u, ph, pw) (patch_dims)."""
    check_tensor(name, imgs, dtypes=dtypes, device=device)
    if imgs.dim() not in ((4, 5) if video else (4,)):
        raise ValueError(f"{name} must have 4 dimensions" + (" [N, C, H, W] or 5 [N, C, T, H, W]" if video else "")
                         + f", got {imgs.dim()} (shape {tuple(imgs.shape)})")
    if not imgs.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {imgs.dtype}")
    dims = patch_dims(patch_size, imgs.dim())
    sizes = tuple(imgs.shape[2:]) if imgs.dim() == 5 else (1, *imgs.shape[2:])
    rem = tuple(s % d for s, d in zip(sizes, dims))
    if any(rem):
        what = "x".join(str(s) for s in imgs.shape[2:])
        kind = "video size (T x H x W)" if imgs.dim() == 5 else "image size"
        rem_text = " and ".join(str(r) for r in (rem if imgs.dim() == 5 else rem[1:]))
        raise ValueError(f"{name}: {kind} {what} must be divisible by patch_size={patch_size_text(patch_size)} "
                         f"(patch_size must divide the image height and width"
                         f"{' and the tubelet the frame count' if imgs.dim() == 5 else ''}), got remainders "
                         f"{rem_text} for {name} of shape {tuple(imgs.shape)}")
    return dims


# --- index tensors ---------------------------------------------------------------------------------------


def cuda_graph_capturing(t):
    """True while a CUDA graph is captured on the current stream of t's CUDA device: no host syncs then (they are
    illegal), and nothing read on the host that the graph's replays should see change."""
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_index_range(name, ids, L, what="patch indices", bound="L = number of patches"):
    """Values of ids in [0, L): always (one host sync in eager mode, an async assert under torch.compile or while
    a CUDA graph is captured). `bound` says what L is in the error."""
    if not _has_data(ids):
        return
    if torch.compiler.is_compiling() or cuda_graph_capturing(ids):
        torch._assert_async(((ids >= 0) & (ids < L)).all(), f"{name} values must be {what} in [0, {L})")
        return
    lo, hi = torch.stack(torch.aminmax(ids)).tolist()  # one device-to-host copy
    if lo < 0 or hi >= L:
        raise ValueError(f"{name} values must be {what} in [0, {L}) ({bound}), "
                         f"got values in [{lo}, {hi}]")


def _row_text(row, limit=16):
    values = row.tolist()
    return f"{values[:limit]}{' ...' if len(values) > limit else ''}"


def _debug_check_applies(t):
    """The structure checks run in debug mode, in eager mode outside CUDA graph captures, on tensors with data."""
    return (debug_enabled() and _has_data(t) and not torch.compiler.is_compiling()
            and not cuda_graph_capturing(t))


def _first_bad_row(bad):
    """Index of the first True in bad [N] (one host sync), or None."""
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def check_distinct_rows(name, ids):
    """Debug mode: no value repeats within a row of ids [N, K] (MAE keeps each patch at most once)."""
    if not _debug_check_applies(ids) or ids.shape[1] < 2:
        return
    s = torch.sort(ids, dim=1).values
    n = _first_bad_row((s[:, 1:] == s[:, :-1]).any(dim=1))
    if n is not None:
        raise ValueError(f"{name} must hold distinct patch indices within each row (MAE_KERNELS_DEBUG=1 check), "
                         f"got row {n}: {_row_text(ids[n])}")


def check_permutation_rows(name, ids):
    """Debug mode: every row of ids [N, L] is a permutation of 0..L-1."""
    if not _debug_check_applies(ids):
        return
    N, L = ids.shape
    expected = torch.arange(L, device=ids.device).expand(N, L)
    n = _first_bad_row((torch.sort(ids, dim=1).values != expected).any(dim=1))
    if n is not None:
        raise ValueError(f"{name} must hold a permutation of 0..{L - 1} in every row, got row {n}: "
                         f"{_row_text(ids[n])}")


def check_ids_keep(ids_keep, N, L, device):
    """ids_keep [N, K] int64 on `device`: values in [0, L) always, distinct per row in debug mode."""
    check_tensor("ids_keep", ids_keep, ndim=2, dtypes=(torch.int64,), device=device, shape=(N, None))
    check_index_range("ids_keep", ids_keep, L)
    check_distinct_rows("ids_keep", ids_keep)


def check_mask_zero_on_kept(mask, ids_shuffle, K):
    """Debug mode: mask [N, L] is 0 on the kept patches ids_shuffle[:, :K] (masked_mse_loss's removed-only
    layout gives them no prediction row). Call after check_permutation_rows (the gather needs valid ids)."""
    if not _debug_check_applies(mask) or K == 0:
        return
    n = _first_bad_row((mask.gather(1, ids_shuffle[:, :K]) != 0).any(dim=1))
    if n is not None:
        raise ValueError(f"mask must be 0 on the kept patches ids_shuffle[:, :K] (K = L - pred rows = {K}: they "
                         f"have no prediction row), got nonzero values at kept patches in row {n}")


def common_row_count(counts, what):
    """The count every row of `counts` [N] shares, read with one host sync; else a ValueError that names the first
    row that differs ("<what> the same number of ... in every row, got a in row 0 and b in row n")."""
    lo, hi = torch.stack(torch.aminmax(counts)).tolist()  # the one host sync
    if lo != hi:
        n = int((counts != counts[0]).nonzero()[0, 0])
        raise ValueError(f"{what} in every row, got {int(counts[0])} in row 0 and {int(counts[n])} in row {n} "
                         f"(counts from {lo} to {hi})")
    return lo
