"""mask_to_indices on every backend: bit-exact against the reference and against the spec's restatement of
VideoMAE's x[~mask] (ids_shuffle = argsort(mask.float(), stable=True)), any strides, the equal-count rule (a
ValueError after the one host sync, an async assert without it), in-bounds kernels on masks the wrapper would
reject, opcheck, torch.compile and bad input."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.backends import use_backend
from mae_kernels.ops import mask_to_indices as mi_ops
from mae_kernels.ops.mask_to_indices import mask_to_indices
from test_random_masking import _assert_equal

CPU_BACKENDS = [("cpu", "cpu"), ("triton", "cpu"), ("reference", "cpu")]
GPU_BACKENDS = [pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                pytest.param("triton", "cuda", marks=pytest.mark.gpu)]


def _mask(N, L, K, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(N, L, generator=g).argsort(dim=1)[:, :K]
    return torch.ones(N, L, dtype=torch.bool).scatter(1, keep, False).to(device)


def _spec(bool_mask):
    """MAE_SPEC_VIDEO.md: ids_shuffle = argsort(mask.float(), dim=1, stable=True), ids_keep = its first n_vis."""
    K = int((~bool_mask[0]).sum())
    ids_shuffle = torch.argsort(bool_mask.float().cpu(), dim=1, stable=True)
    return ids_shuffle[:, :K], torch.argsort(ids_shuffle, dim=1), bool_mask.float().cpu()


def _check(backend, device, bool_mask, given):
    K = int((~bool_mask[0]).sum())
    with use_backend(backend):
        got = mask_to_indices(bool_mask, K if given else None)
    for name, g, w in zip(("ids_keep", "ids_restore", "mask"), got, reference.mask_to_indices(bool_mask.cpu(), K)):
        _assert_equal(name, g.cpu(), w)
    for name, g, w in zip(("ids_keep (spec)", "ids_restore (spec)", "mask (spec)"), got, _spec(bool_mask)):
        _assert_equal(name, g.cpu(), w)
    # VideoMAE's encoder input: x[~mask] in ascending token order.
    x = torch.randn(*bool_mask.shape, 3)
    vis = x[~bool_mask.cpu()].reshape(bool_mask.shape[0], K, 3)
    _assert_equal("x[~mask]", torch.gather(x, 1, got[0].cpu()[..., None].expand(-1, -1, 3)), vis)
    return got


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("N,L,K", [(1, 1, 0), (1, 1, 1), (3, 7, 3), (2, 12, 0), (2, 12, 12), (2, 196, 49),
                                   (2, 1568, 160), (1, 2500, 7)])
@pytest.mark.parametrize("given", [True, False])
def test_matches_reference(backend, device, N, L, K, given):
    _check(backend, device, _mask(N, L, K, device), given)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
def test_strided_masks(backend, device):
    base = _mask(5, 40, 10, device)
    wide = torch.zeros(5, 81, dtype=torch.bool, device=device)
    wide[:, 1::2] = base
    _check(backend, device, wide[:, 1::2], True)                   # column stride 2
    _check(backend, device, base.t().contiguous().t(), True)       # column-major
    _check(backend, device, base[:1].expand(4, 40), False)         # row stride 0


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
def test_videomae_tube_masks(backend, device):
    """The data-loader's tube masks (hw = 196, ratio 0.9, 8 temporal tokens: 160 kept) give tube_mask_indices's
    indices."""
    noise = torch.rand(2, 196, device=device)
    want = reference.tube_mask_indices(2, 8, 196, 0.9, noise.cpu())
    got = _check(backend, device, want[2].bool().to(device), True)
    assert got[0].shape == (2, 160)
    for name, g, w in zip(("ids_keep", "ids_restore", "mask"), got, want):
        _assert_equal(name, g.cpu(), w)


def test_unequal_counts_raise():
    bad = _mask(4, 10, 3)
    bad[2, bad[2].nonzero()[0, 0]] = False  # row 2 keeps 4
    for backend in ("cpu", "triton", "reference"):
        with use_backend(backend):
            with pytest.raises(ValueError, match=r"bool_mask must keep .* same number .* got 3 in row 0 and 4 "
                                                 r"in row 2 \(counts from 3 to 4\)"):
                mask_to_indices(bad)
            # num_kept given: no host sync; the async assert is a RuntimeError at once on CPU tensors.
            with pytest.raises(RuntimeError, match="bool_mask must keep .* num_kept = 3 patches in every row"):
                mask_to_indices(bad, 3)
            with pytest.raises(RuntimeError, match="num_kept = 2 patches in every row"):
                mask_to_indices(_mask(4, 10, 3), 2)


@pytest.mark.parametrize("kernel", [
    pytest.param(lambda *args: mi_ops.OPS["triton"](*args), id="triton"),
    pytest.param(lambda *args: torch.ops.mae_kernels.mask_to_indices(*args), id="cpu"),
])
def test_kernels_stay_in_bounds_on_rejected_masks(kernel):
    """The wrapper rejects unequal rows, but a kernel run on one (a device assert fires asynchronously on CUDA,
    after the kernel) must not write outside its outputs: rows with the right count are still right. Under the
    CUDA emulator (the `cpu` id there) and ASan, out-of-bounds writes fail the run."""
    good = _mask(4, 30, 6)
    bad = good.clone()
    bad[1] = False                               # keeps all 30
    bad[2] = True                                # keeps none
    got = kernel(bad, 6)
    want = reference.mask_to_indices(good, 6)
    for name, g, w in zip(("ids_keep", "ids_restore", "mask"), got, want):
        _assert_equal(name, g[[0, 3]], w[[0, 3]])
    assert torch.equal(got[0][1], torch.arange(6))


def test_images():
    """Any [N, L]: an image mask of 14 x 14 patches, 49 kept."""
    _check("cpu", "cpu", _mask(3, 196, 49, seed=4), True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_no_host_sync_when_num_kept_is_given(backend):
    bool_mask = _mask(8, 1568, 160, "cuda")
    with use_backend(backend):
        mask_to_indices(bool_mask, 160)  # warm up (compilation) outside the check
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = mask_to_indices(bool_mask, 160)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _assert_equal("ids_keep", got[0].cpu(), _spec(bool_mask)[0])


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_opcheck(backend, device):
    for N, L, K in [(2, 7, 3), (1, 16, 0), (3, 5, 5)]:
        torch.library.opcheck(mi_ops.OPS[backend], (_mask(N, L, K, device), K))


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    bool_mask = _mask(3, 20, 5, device)

    def f(bool_mask):
        ids_keep, ids_restore, mask = mae_kernels.mask_to_indices(bool_mask, 5)
        return ids_keep + 1, ids_restore, mask

    with use_backend(backend):
        got = torch.compile(f, fullgraph=True)(bool_mask)
    want = reference.mask_to_indices(bool_mask.cpu(), 5)
    _assert_equal("ids_keep", got[0].cpu(), want[0] + 1)
    _assert_equal("ids_restore", got[1].cpu(), want[1])
    _assert_equal("mask", got[2].cpu(), want[2])


def test_compile_needs_num_kept():
    torch._dynamo.reset()
    with pytest.raises(Exception, match="num_kept must be given under torch.compile"):
        torch.compile(lambda m: mae_kernels.mask_to_indices(m), fullgraph=True)(_mask(2, 8, 3))


def test_bad_input():
    with pytest.raises(TypeError, match="bool_mask must be a torch.Tensor, got list"):
        mask_to_indices([[True, False]])
    with pytest.raises(TypeError, match=r"bool_mask must have dtype torch.bool, got torch.float32"):
        mask_to_indices(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="bool_mask must have 2 dimensions, got 3"):
        mask_to_indices(torch.zeros(2, 3, 1, dtype=torch.bool))
    with pytest.raises(TypeError, match="num_kept must be an int, got float"):
        mask_to_indices(_mask(2, 8, 3), 3.0)
    with pytest.raises(ValueError, match=r"num_kept must be an int >= 0, got -1"):
        mask_to_indices(_mask(2, 8, 3), -1)
    with pytest.raises(ValueError, match=r"num_kept must be at most L = 8 .*got 9"):
        mask_to_indices(_mask(2, 8, 3), 9)
    with pytest.raises(ValueError, match="num_kept must be given when bool_mask has no data"):
        mask_to_indices(torch.zeros(2, 8, dtype=torch.bool, device="meta"))
