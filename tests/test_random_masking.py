"""random_masking on every backend against the reference (torch.argsort stable): bit-exact outputs and grads."""

import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.backends import BackendUnavailable, use_backend
from mae_kernels.ops import random_masking as rm_ops
from mae_kernels.ops.random_masking import random_mask_indices, random_masking

HAS_GPU = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
RATIOS = [0.0, 0.5, 0.75, 0.9]
LS = [1, 4, 196, 256, 1568]

# (backend, device, full matrix?): the Triton interpreter costs about 1 ms per program and its tl.sort is slow,
# so triton on CPU runs a subset (N <= 3, L < 1568 except one case below).
CPU_BACKENDS = [("cpu", "cpu"), ("reference", "cpu")]
GPU_BACKENDS = [pytest.param("cuda", "cuda", marks=pytest.mark.gpu), pytest.param("triton", "cuda", marks=pytest.mark.gpu)]


def _reference(x, ratio, noise):
    keep = reference.len_keep(x.shape[1], ratio)
    # Sorted on the CPU: torch's CUDA sort of rows longer than 4096 is a radix sort on the raw bits (-0.0 before
    # +0.0, NaNs with the sign bit first), not the comparison order of the spec (-0.0 == +0.0, every NaN last).
    ids_shuffle = torch.argsort(noise.cpu(), dim=1, stable=True).to(noise.device)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :keep]
    x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    mask = (ids_restore >= keep).to(torch.float32)
    return x_masked, mask, ids_restore, ids_keep


def _assert_equal(name, got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype, want.dtype)
    eq = (got == want) | (got.isnan() & want.isnan()) if got.is_floating_point() else got == want
    if not bool(eq.all()):
        first = tuple(int(i) for i in (~eq).nonzero()[0])
        raise AssertionError(f"{name}: first mismatch at {first}: got {got[first]}, want {want[first]}")


def _check(backend, device, N, L, D, ratio, dtype, noise=None):
    x = torch.randn(N, L, D, dtype=torch.float32, device=device).to(dtype).requires_grad_(True)
    if noise is None:
        noise = torch.rand(N, L, device=device)
    with use_backend(backend):
        x_masked, mask, ids_restore = random_masking(x, ratio, noise=noise)
        ids_keep, ids_restore2, mask2 = random_mask_indices(N, L, ratio, noise=noise, device=device)
    want = _reference(x.detach(), ratio, noise)
    _assert_equal("x_masked", x_masked.detach(), want[0])
    _assert_equal("mask", mask, want[1])
    _assert_equal("ids_restore", ids_restore, want[2])
    _assert_equal("ids_keep", ids_keep, want[3])
    _assert_equal("ids_restore (indices)", ids_restore2, want[2])
    _assert_equal("mask (indices)", mask2, want[1])
    # The official reference agrees too (same noise, stable ties).
    ref_masked, ref_mask, ref_restore = reference.random_masking(x.detach(), ratio, noise)
    _assert_equal("reference.random_masking", x_masked.detach(), ref_masked)
    # Gradient of x through x_masked vs reference autograd.
    g = torch.randn_like(x_masked)
    (gx,) = torch.autograd.grad(x_masked, x, g)
    xr = x.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(reference.random_masking(xr, ratio, noise)[0], xr, g)
    _assert_equal("grad_x", gx, gr)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("L", LS)
@pytest.mark.parametrize("N,D", [(1, 5), (3, 8), (64, 3)])
def test_matches_reference(backend, device, N, D, L, ratio, dtype):
    _check(backend, device, N, L, D, ratio, dtype)


# The interpreter costs about 1 s per row at L = 196-256 (the sort): every (L, ratio) in fp32 with one row where L is
# long, several rows once, and the half dtypes (which change only the gather) on two cases each.
TRITON_CASES = ([(3, 8, L, r, torch.float32) for L in (1, 4) for r in (0.0, 0.75, 0.9)]
                + [(1, 5, L, r, torch.float32) for L in (196, 256) for r in (0.0, 0.75, 0.9)]
                + [(3, 8, 196, 0.75, torch.float32)]
                + [c for dt in (torch.float16, torch.bfloat16) for c in ((1, 5, 196, 0.75, dt), (3, 8, 4, 0.75, dt))])


@pytest.mark.parametrize("N,D,L,ratio,dtype", TRITON_CASES)
def test_triton_interpreter_matches_reference(N, D, L, ratio, dtype):
    _check("triton", "cpu", N, L, D, ratio, dtype)


def test_triton_interpreter_long_row():
    _check("triton", "cpu", 1, 1568, 3, 0.75, torch.float32)


def _tied_noise(N, L, device, nan=True):
    noise = torch.rand(N, L, device=device)
    noise[:, ::3] = noise[:, :1].clone()          # many exact ties
    noise[:, 1::7] = 0.5
    if L > 8:
        noise[0, 2] = float("nan")
        noise[0, 4] = torch.tensor(-4194304, dtype=torch.int32).view(torch.float32)  # NaN, sign bit set
        noise[0, 5] = 0.0
        noise[0, 6] = -0.0                        # ties with +0.0: the lower index (5) first
        noise[-1, 7] = float("-inf")
        noise[-1, 8] = float("inf")
    if L > 12:  # denormals: a flush-to-zero compare would tie 1e-40 with 0.0 (index 10 before 12)
        noise[-1, 10] = 1e-40
        noise[-1, 11] = -1e-40
        noise[-1, 12] = 0.0
    if not nan:
        noise = torch.nan_to_num(noise, nan=0.25)
    return noise


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + [("triton", "cpu")] + GPU_BACKENDS)
@pytest.mark.parametrize("L", [4, 50, 196])
def test_ties_and_nan(backend, device, L):
    _check(backend, device, 3, L, 6, 0.75, torch.float32, noise=_tied_noise(3, L, device))


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + [("triton", "cpu")] + GPU_BACKENDS)
def test_non_contiguous_x(backend, device):
    base = torch.randn(2, 9, 50, device=device)
    x = base.transpose(1, 2)[:, :, 1:8]           # [2, 50, 7], strided
    noise = torch.rand(2, 50, device=device)
    with use_backend(backend):
        x_masked, mask, ids_restore = random_masking(x, 0.5, noise=noise)
    want = _reference(x, 0.5, noise)
    _assert_equal("x_masked", x_masked, want[0])
    _assert_equal("ids_restore", ids_restore, want[2])


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + [("triton", "cpu")] + GPU_BACKENDS)
@pytest.mark.parametrize("dtype,D", [(torch.uint8, 3), (torch.bool, 5), (torch.int16, 7), (torch.int64, 2)])
def test_integer_and_bool_x(backend, device, dtype, D):
    # Rows of odd byte counts take the kernels' narrowest copy words (1 byte for uint8 and bool).
    x = torch.randint(0, 2 if dtype == torch.bool else 100, (3, 20, D), device=device).to(dtype)
    noise = torch.rand(3, 20, device=device)
    with use_backend(backend):
        got = random_masking(x, 0.5, noise=noise)
    for name, u, v in zip(("x_masked", "mask", "ids_restore"), got, _reference(x, 0.5, noise)):
        _assert_equal(name, u, v)


@pytest.mark.parametrize("L,ratio,keep", [(196, 0.75, 49), (196, 0.9, 19), (50, 0.9, 4), (10, 0.9, 0),
                                          (196, 0.0, 196), (1, 0.5, 0), (1, 0.0, 1)])
@pytest.mark.parametrize("backend,device", CPU_BACKENDS + [("triton", "cpu")] + GPU_BACKENDS)
def test_len_keep(backend, device, L, ratio, keep):
    assert reference.len_keep(L, ratio) == keep
    with use_backend(backend):
        x_masked, mask, ids_restore = random_masking(torch.randn(2, L, 3, device=device), ratio)
    assert x_masked.shape == (2, keep, 3)
    assert int((mask == 0).sum()) == 2 * keep


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_noise_none_reproducible(backend, device):
    x = torch.randn(3, 196, 4, device=device)
    with use_backend(backend):
        torch.manual_seed(1)
        a = random_masking(x, 0.75)
        b = random_masking(x, 0.75)               # the generator moved on: a different mask
        torch.manual_seed(1)
        c = random_masking(x, 0.75)
        torch.manual_seed(2)
        d = random_masking(x, 0.75)
    for name, u, v in zip(("x_masked", "mask", "ids_restore"), a, c):
        _assert_equal(name, u, v)
    assert not torch.equal(a[2], b[2]) and not torch.equal(a[2], d[2])
    # A valid permutation, consistent outputs.
    ids_shuffle = torch.argsort(a[2], dim=1)
    assert torch.equal(torch.sort(a[2], dim=1).values, torch.arange(196, device=device).expand(3, -1))
    _assert_equal("mask vs ids_restore", a[1], (a[2] >= 49).float())
    _assert_equal("x_masked vs ids", a[0], torch.gather(x, 1, ids_shuffle[:, :49, None].expand(-1, -1, 4)))


def test_cpu_noise_none_equals_official_torch_rand():
    x = torch.randn(2, 196, 3)
    torch.manual_seed(5)
    got = random_masking(x, 0.75)
    torch.manual_seed(5)
    want = reference.random_masking(x, 0.75, torch.rand(2, 196))
    for u, v in zip(got, want):
        _assert_equal("output", u, v)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_noise_none_uniform(backend):
    N, L, draws, ratio = 64, 196, 64, 0.75
    keep = reference.len_keep(L, ratio)
    counts = torch.zeros(L, device="cuda")
    with use_backend(backend):
        for _ in range(draws):
            _, mask, ids_restore = random_masking(torch.empty(N, L, 2, device="cuda"), ratio)
            assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(L, device="cuda").expand(N, -1))
            counts += (mask == 0).sum(0)
    freq = counts / (N * draws)                   # each index kept with probability keep / L = 0.25
    # 4096 Bernoulli(0.25) draws per index: std 0.0068; 6 sigma.
    assert float((freq - keep / L).abs().max()) < 0.041, freq


def test_noise_drawn_with_torch_rand_while_a_cuda_graph_is_captured(monkeypatch):
    # A (seed, offset) read from the generator at capture would be frozen into the graph: every replay would draw
    # the same masks. While capturing, the noise comes from torch.rand, which CUDA graphs replay with fresh numbers.
    monkeypatch.setattr(rm_ops, "cuda_graph_capturing", lambda t: True)
    x = torch.randn(3, 50, 4)
    with use_backend("triton"):
        torch.manual_seed(7)
        got = random_masking(x, 0.75)
    torch.manual_seed(7)
    want = reference.random_masking(x, 0.75, torch.rand(3, 50))
    for name, u, v in zip(("x_masked", "mask", "ids_restore"), got, want):
        _assert_equal(name, u, v)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_cuda_graph_replays_draw_new_masks(backend):
    x = torch.randn(8, 196, 16, device="cuda")
    with use_backend(backend):
        random_masking(x, 0.75)  # compile / warm up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            x_masked, mask, ids_restore = random_masking(x, 0.75)
    masks = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(196, device="cuda").expand(8, -1))
        _assert_equal("x_masked", x_masked, torch.gather(x, 1, torch.argsort(ids_restore, dim=1)[:, :49, None]
                                                         .expand(-1, -1, 16)))
        masks.append(mask.clone())
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


@pytest.mark.gpu
def test_gpu_cuda_and_triton_draw_the_same_noise():
    x = torch.randn(4, 300, 8, device="cuda")
    out = {}
    for backend in ("cuda", "triton"):
        with use_backend(backend):
            torch.manual_seed(3)
            out[backend] = random_masking(x, 0.75)
    for name, u, v in zip(("x_masked", "mask", "ids_restore"), out["cuda"], out["triton"]):
        _assert_equal(name, u, v)


@pytest.mark.parametrize("L", [4096, 8192])
def test_cpu_long_rows(L):
    # Under the CUDA emulator (tests/test_cuda_emulation.py) this runs the CUDA kernel: L > 6144 needs 64 KiB of
    # shared keys, above the 48 KiB a launch gets without the opt-in attribute.
    _check("cpu", "cpu", 2, L, 12, 0.75, torch.bfloat16, noise=_tied_noise(2, L, "cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("L", [4096, 8192])
def test_gpu_long_rows(backend, L):
    _check(backend, "cuda", 2, L, 12, 0.75, torch.bfloat16, noise=_tied_noise(2, L, "cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_too_long_row_raises(backend):
    with use_backend(backend), pytest.raises(ValueError, match="at most L = 8192"):
        random_masking(torch.randn(1, 8193, 2, device="cuda"), 0.5)


def test_bad_input():
    x = torch.randn(2, 8, 3)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        random_masking(torch.randn(8, 3), 0.5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        random_masking([1, 2], 0.5)
    for ratio in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="mask_ratio must be in"):
            random_masking(x, ratio)
    with pytest.raises(TypeError, match="mask_ratio"):
        random_masking(x, torch.tensor(0.5))
    with pytest.raises(ValueError, match="noise must have shape"):
        random_masking(x, 0.5, noise=torch.rand(2, 7))
    with pytest.raises(ValueError, match="noise must have 2 dimensions"):
        random_masking(x, 0.5, noise=torch.rand(2, 8, 1))
    with pytest.raises(TypeError, match="noise must have dtype"):
        random_masking(x, 0.5, noise=torch.rand(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise must be on"):
        random_masking(x, 0.5, noise=torch.rand(2, 8, device="meta"))
    with pytest.raises(ValueError, match="N must be a positive int"):
        random_mask_indices(0, 8, 0.5)


def test_triton_row_limit_on_cpu():
    with use_backend("triton"), pytest.raises(ValueError, match="at most L = 8192"):
        random_masking(torch.randn(1, 8193, 1), 0.5)


def test_backend_forcing(monkeypatch):
    x = torch.randn(2, 8, 3)
    noise = torch.rand(2, 8)
    want = _reference(x, 0.5, noise)
    calls = []
    real = rm_ops.OPS["triton"]
    monkeypatch.setitem(rm_ops.OPS, "triton", lambda *a: calls.append("triton") or real(*a))
    with use_backend("triton"):
        _assert_equal("ids_restore", random_masking(x, 0.5, noise)[2], want[2])
    assert calls == ["triton"]
    monkeypatch.setenv("MAE_KERNELS_BACKEND", "triton")
    _assert_equal("ids_restore", random_masking(x, 0.5, noise)[2], want[2])
    assert calls == ["triton", "triton"]
    monkeypatch.setenv("MAE_KERNELS_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot run: tensors are on cpu"):
        random_masking(x, 0.5, noise)
    with use_backend("cpu"):                      # use_backend wins over the environment
        _assert_equal("ids_restore", random_masking(x, 0.5, noise)[2], want[2])
    monkeypatch.setenv("MAE_KERNELS_BACKEND", "bogus")
    with pytest.raises(ValueError, match="MAE_KERNELS_BACKEND must be one of"):
        random_masking(x, 0.5, noise)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="Triton interpreter"):
        random_masking(x, 0.5, noise)


def _opcheck_samples(device, noise_none):
    out = []
    for N, L, D, keep, dtype in [(2, 7, 3, 3, torch.float32), (1, 16, 4, 0, torch.float16), (3, 5, 0, 5, torch.bfloat16)]:
        x = torch.randn(N, L, D, device=device).to(dtype).requires_grad_(D > 0)
        noise = None if noise_none else torch.rand(N, L, device=device)
        out.append((x, noise, keep, 11, 4))
    return out


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_opcheck(backend, device):
    op, bop = rm_ops.OPS[backend], rm_ops.BACKWARD_OPS[backend]
    samples = _opcheck_samples(device, False)
    if backend != "cpu":  # the cpu kernel always gets noise
        samples += _opcheck_samples(device, True)  # Philox in the kernel: deterministic for a given seed
    for args in samples:
        torch.library.opcheck(op, args)
        x, keep = args[0], args[2]
        grad = torch.randn(x.shape[0], keep, x.shape[2], device=device).to(x.dtype)
        ids_keep = torch.stack([torch.randperm(x.shape[1], device=device)[:keep] for _ in range(x.shape[0])])
        torch.library.opcheck(bop, (grad, ids_keep, x.shape[1]))


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_compile_fullgraph(backend, device):
    torch._dynamo.reset()
    x = torch.randn(2, 16, 5, device=device, requires_grad=True)
    noise = torch.rand(2, 16, device=device)

    def f(x, noise):
        x_masked, mask, ids_restore = mae_kernels.random_masking(x, 0.75, noise)
        return x_masked * 2, mask, ids_restore

    with use_backend(backend):
        got = torch.compile(f, fullgraph=True)(x, noise)
        (gx,) = torch.autograd.grad(got[0].sum(), x)
    want = _reference(x.detach(), 0.75, noise)
    _assert_equal("x_masked", got[0].detach(), want[0] * 2)
    _assert_equal("mask", got[1], want[1])
    _assert_equal("ids_restore", got[2], want[2])
    gr = torch.zeros_like(x).scatter_(1, want[3][:, :, None].expand(-1, -1, 5), 2.0)
    _assert_equal("grad_x", gx, gr)


def _philox_uniform(seed, offset, subsequences):
    """The documented noise stream (mae_kernels/triton/random_masking.py), torch's curand_init(seed, s, offset)
    convention: Philox4x32-10 keyed by seed at counter (offset / 4 lo32, hi32, s lo32, s hi32), first output
    >> 8, times 2^-24. Plain Python, for a few hundred subsequences."""
    M = 0xFFFFFFFF
    out = []
    for s in subsequences:
        c0, c1, c2, c3 = (offset // 4) & M, (offset // 4) >> 32, s & M, (s >> 32) & M
        k0, k1 = seed & M, (seed >> 32) & M
        for _ in range(10):
            p0, p1 = 0xCD9E8D57 * c2, 0xD2511F53 * c0
            c0, c1, c2, c3 = (p0 >> 32) ^ c1 ^ k0, p0 & M, (p1 >> 32) ^ c3 ^ k1, p1 & M
            k0, k1 = (k0 + 0x9E3779B9) & M, (k1 + 0xBB67AE85) & M
        out.append((c0 >> 8) / 16777216.0)
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("kernel", [
    pytest.param(lambda *args: rm_ops.OPS["triton"](*args), id="triton"),
    # The CUDA kernel, run by the emulator (tests/test_cuda_emulation.py), whose compiled op takes CPU tensors;
    # test_gpu_cuda_and_triton_draw_the_same_noise checks the two agree on a GPU.
    pytest.param(lambda *args: torch.ops.mae_kernels.random_masking(*args), id="cuda",
                 marks=pytest.mark.cuda_emulation)])
@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789, 8), ((1 << 62) + 12345, (1 << 35) - 40)])
def test_noise_is_the_documented_philox_stream(kernel, seed, offset):
    N, L, keep = 2, 300, 75
    x = torch.randn(N, L, 3)
    got = kernel(x, None, keep, seed, offset)
    noise = _philox_uniform(seed, offset, range(N * L)).view(N, L)
    want = _reference(x, 0.75, noise)
    for name, u, v in zip(("x_masked", "mask", "ids_restore", "ids_keep"), got, want):
        _assert_equal(name, u, v)


# ---- mae_st spacetime masking: random_masking over all L = t*h*w tokens (MAE_SPEC_VIDEO.md) ---------------------
def _check_spacetime(backend, device, N, ratio, keep):
    L = 1568
    assert reference.len_keep(L, ratio) == keep
    noise = torch.rand(N, L, device=device)
    with use_backend(backend):
        ids_keep, ids_restore, mask = random_mask_indices(N, L, ratio, noise=noise, device=device)
    want = _reference(torch.empty(N, L, 0, device=device), ratio, noise)
    assert ids_keep.shape == (N, keep)
    _assert_equal("ids_keep", ids_keep, want[3])
    _assert_equal("ids_restore", ids_restore, want[2])
    _assert_equal("mask", mask, want[1])
    assert torch.equal(mask.sum(1).cpu(), torch.full((N,), float(L - keep)))


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("ratio,keep", [(0.9, 156), (0.95, 78), (0.75, 392)])
def test_spacetime_masking_at_video_length(backend, device, ratio, keep):
    """L = 8 x 14 x 14 = 1568 spacetime tokens (16 frames of 224 x 224, tubelet 2x16x16): mae_st's
    len_keep = int(L * (1 - r)) kept (156 / 78 / 392), in ascending noise order, bit-exact ids on every backend
    (the kept rows themselves at L = 1568: test_matches_reference)."""
    _check_spacetime(backend, device, 3, ratio, keep)


def test_triton_interpreter_spacetime_masking_at_video_length():
    # One row: the interpreter sorts 2048 keys in about 15 s (test_triton_interpreter_long_row has r = 0.75).
    _check_spacetime("triton", "cpu", 1, 0.9, 156)
