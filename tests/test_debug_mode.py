"""MAE_KERNELS_DEBUG=1 (read at call time) checks the structure of index inputs before any backend runs:
ids_keep distinct per row, ids_restore / ids_shuffle permutations per row, masked_mse_loss's mask 0 on the kept
patches. Index ranges are checked with or without it (and under torch.compile, by an async assert). With debug
mode off the valid path gives the same results."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops import _validate

CPU_BACKENDS = ["cpu", "triton", "reference"]
N, C, H, W, P_SIZE, D = 2, 3, 8, 6, 2, 8
L = (H // P_SIZE) * (W // P_SIZE)  # 12
K = 4


@pytest.fixture
def debug(monkeypatch):
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "1")


@pytest.fixture
def no_debug(monkeypatch):
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "0")


def _perms():
    return torch.stack([torch.randperm(L) for _ in range(N)])


def _with_row1(ids, row):
    out = ids.clone()
    out[1] = torch.tensor(row)
    return out


def _patchify_call(ids_keep, device="cpu"):
    imgs = torch.randn(N, C, H, W, device=device)
    return lambda: mae_kernels.masked_patchify(imgs, ids_keep.to(device), P_SIZE)


def _embed_call(ids_keep, device="cpu"):
    imgs, w = torch.randn(N, C, H, W, device=device), torch.randn(D, C, P_SIZE, P_SIZE, device=device)
    b, pos = torch.randn(D, device=device), torch.randn(1, 1 + L, D, device=device)
    return lambda: mae_kernels.masked_patch_embed(imgs, ids_keep.to(device), w, b, pos)


def _unshuffle_call(ids_restore, device="cpu"):
    x, mt = torch.randn(N, 1 + K, D, device=device), torch.randn(1, 1, D, device=device)
    pos = torch.randn(1, 1 + L, D, device=device)
    return lambda: mae_kernels.unshuffle_with_mask_tokens(x, mt, ids_restore.to(device), pos)


def _mse_call(ids_shuffle, mask=None, device="cpu"):
    if mask is None:
        mask = torch.ones(N, L).scatter(1, ids_shuffle[:, :K].clamp(0, L - 1), 0.0)
    pred = torch.randn(N, L - K, P_SIZE * P_SIZE * C, device=device)
    imgs = torch.randn(N, C, H, W, device=device)
    return lambda: mae_kernels.masked_mse_loss(pred, imgs, mask.to(device), P_SIZE, ids_shuffle=ids_shuffle.to(device))


KEEP = _perms()[:, :K]
DUP_KEEP = _with_row1(KEEP, [5, 7, 5, 0])
PERM = _perms()
# (what, make(device) -> call with bad indices, regex naming the argument) for every op that takes indices.
BAD_WITH_DEBUG = [
    ("masked_patchify duplicate", lambda dev: _patchify_call(DUP_KEEP, dev),
     r"ids_keep must hold distinct patch indices within each row .*got row 1: \[5, 7, 5, 0\]"),
    ("masked_patchify out of range", lambda dev: _patchify_call(_with_row1(KEEP, [1, 2, 3, L]), dev),
     r"ids_keep values must be patch indices in \[0, 12\)"),
    ("masked_patch_embed duplicate", lambda dev: _embed_call(DUP_KEEP, dev),
     r"ids_keep must hold distinct patch indices .*row 1"),
    ("masked_patch_embed out of range", lambda dev: _embed_call(_with_row1(KEEP, [-1, 2, 3, 4]), dev),
     r"ids_keep values must be patch indices in \[0, 12\).*got values in \[-1, "),
    ("unshuffle duplicate", lambda dev: _unshuffle_call(_with_row1(PERM, [0] * L), dev),
     r"ids_restore must hold a permutation of 0..11 in every row, got row 1: \[0, 0, "),
    ("unshuffle out of range", lambda dev: _unshuffle_call(_with_row1(PERM, list(range(1, L + 1))), dev),
     r"ids_restore must hold a permutation of 0..11 in every row, got row 1"),
    ("unshuffle negative", lambda dev: _unshuffle_call(_with_row1(PERM, [-1] + list(range(1, L))), dev),
     r"ids_restore must hold a permutation of 0..11 in every row, got row 1: \[-1, 1, "),
    ("masked_mse_loss duplicate", lambda dev: _mse_call(_with_row1(PERM, [0, 0] + list(range(2, L))), device=dev),
     r"ids_shuffle must hold a permutation of 0..11 in every row, got row 1: \[0, 0, 2"),
    ("masked_mse_loss out of range in the removed part",
     lambda dev: _mse_call(_with_row1(PERM, list(range(L - 1)) + [L]), device=dev),
     r"ids_shuffle values must be patch indices in \[0, 12\)"),
    ("masked_mse_loss out of range in the kept part",
     lambda dev: _mse_call(_with_row1(PERM, [L] + list(range(1, L))), device=dev),
     r"ids_shuffle must hold a permutation of 0..11 in every row, got row 1: \[12, 1, "),
    ("masked_mse_loss mask on a kept patch", lambda dev: _mse_call(PERM, torch.ones(N, L), device=dev),
     r"mask must be 0 on the kept patches ids_shuffle\[:, :K\] \(K = L - pred rows = 4.*row 0"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("what,call,regex", BAD_WITH_DEBUG, ids=[c[0] for c in BAD_WITH_DEBUG])
def test_debug_mode_rejects_bad_indices(debug, backend, what, call, regex):
    with mae_kernels.use_backend(backend), pytest.raises(ValueError, match=regex):
        call("cpu")()


# Without debug mode: out-of-range indices are still rejected where a kernel would index with them (ids_keep,
# the removed rows of ids_shuffle); the structure is not checked (no device sync): duplicates and
# non-permutations run, in bounds. unshuffle's kernels treat out-of-range ids_restore as mask tokens.
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_without_debug_only_ranges_are_checked(no_debug, backend):
    with mae_kernels.use_backend(backend):
        with pytest.raises(ValueError, match=r"ids_keep values must be patch indices in \[0, 12\)"):
            _patchify_call(_with_row1(KEEP, [1, 2, 3, L]))()
        with pytest.raises(ValueError, match=r"ids_shuffle values must be patch indices in \[0, 12\)"):
            _mse_call(_with_row1(PERM, list(range(L - 1)) + [L]))()
        imgs = torch.randn(N, C, H, W)
        got = mae_kernels.masked_patchify(imgs, DUP_KEEP, P_SIZE)  # a gather: duplicates are fine forward
        torch.testing.assert_close(got, reference.masked_patchify(imgs, DUP_KEEP, P_SIZE), rtol=0, atol=0)
        # unshuffle: out-of-range ids_restore read the mask token (as an id in [K, L) does), in bounds.
        x, mt, pos = torch.randn(N, 1 + K, D), torch.randn(1, 1, D), torch.randn(1, 1 + L, D)
        ids = _with_row1(PERM, [L + 5, -3] + list(range(2, L)))
        got = mae_kernels.unshuffle_with_mask_tokens(x, mt, ids, pos)
        want = reference.unshuffle_with_mask_tokens(x, mt, _with_row1(PERM, [K, K] + list(range(2, L))), pos)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_debug_mode_leaves_valid_results_unchanged(monkeypatch, backend):
    imgs = torch.randn(N, C, H, W)
    w, b, pos = torch.randn(D, C, P_SIZE, P_SIZE), torch.randn(D), torch.randn(1, 1 + L, D)
    x, mt = torch.randn(N, 1 + K, D), torch.randn(1, 1, D)
    mask = torch.ones(N, L).scatter(1, PERM[:, :K], 0.0)
    pred = torch.randn(N, L - K, P_SIZE * P_SIZE * C)
    ids_restore = torch.argsort(PERM, dim=1)

    def run():
        with mae_kernels.use_backend(backend):
            return (mae_kernels.masked_patchify(imgs, KEEP, P_SIZE),
                    mae_kernels.masked_patch_embed(imgs, KEEP, w, b, pos),
                    mae_kernels.unshuffle_with_mask_tokens(x, mt, ids_restore, pos),
                    mae_kernels.masked_mse_loss(pred, imgs, mask, P_SIZE, ids_shuffle=PERM))

    monkeypatch.setenv("MAE_KERNELS_DEBUG", "0")
    off = run()
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "1")
    on = run()
    for a, b_ in zip(off, on):
        torch.testing.assert_close(a, b_, rtol=0, atol=0)


def test_debug_flag_is_read_at_call_time(monkeypatch):
    call = _patchify_call(DUP_KEEP)
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "0")
    call()
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "1")
    with pytest.raises(ValueError, match="distinct"):
        call()
    monkeypatch.delenv("MAE_KERNELS_DEBUG")
    call()


def test_out_of_range_ids_under_torch_compile_raise(no_debug):
    """Under torch.compile the range check is an async assert (no host sync): still an error, never an
    out-of-bounds read (on CUDA it is a device-side assert)."""
    torch._dynamo.reset()
    f = torch.compile(mae_kernels.masked_patchify, fullgraph=True)
    imgs = torch.randn(N, C, H, W)
    torch.testing.assert_close(f(imgs, KEEP, P_SIZE), reference.masked_patchify(imgs, KEEP, P_SIZE))
    with pytest.raises(RuntimeError, match=r"ids_keep values must be patch indices in \[0, 12\)"):
        f(imgs, _with_row1(KEEP, [1, 2, 3, L]), P_SIZE)


# ---- GPU ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("what,call,regex", BAD_WITH_DEBUG, ids=[c[0] for c in BAD_WITH_DEBUG])
def test_gpu_debug_mode_rejects_bad_indices(debug, backend, what, call, regex):
    """The same calls on CUDA tensors: the checks run before the CUDA / Triton kernels."""
    with mae_kernels.use_backend(backend), pytest.raises(ValueError, match=regex):
        call("cuda")()
    torch.cuda.synchronize()  # nothing was launched with the bad indices: no device-side error pending


def test_range_check_is_an_async_assert_while_a_cuda_graph_is_captured(no_debug, monkeypatch):
    """A host sync is illegal during a CUDA graph capture: the range check becomes torch._assert_async there
    (on CPU tensors, as here, it raises at once; on CUDA, a device-side assert at replay)."""
    calls, _assert_async = [], torch._assert_async
    monkeypatch.setattr(torch, "_assert_async", lambda *args: calls.append(args) or _assert_async(*args))
    monkeypatch.setattr(_validate, "cuda_graph_capturing", lambda t: True)
    imgs, ids = torch.randn(2, 3, 8, 8), torch.tensor([[0, 3], [1, 4]])
    with pytest.raises(RuntimeError):
        mae_kernels.masked_patchify(imgs, ids, 4)
    assert len(calls) == 1
    ok = mae_kernels.masked_patchify(imgs, ids.clamp(max=3), 4)
    assert torch.equal(ok, reference.masked_patchify(imgs, ids.clamp(max=3), 4))
