"""tube_mask_indices (VideoMAE / VideoMAEv2 tube masking) on every backend: bit-exact against the reference, the
spec's counts (MAE_SPEC_VIDEO.md, TubeMaskingGenerator), VideoMAE's x[~mask] order, uniform spatial subsets, the
documented Philox stream, torch's seeds, opcheck, torch.compile, CUDA graphs and bad input."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.backends import use_backend
from mae_kernels.ops import tube_mask_indices as tm_ops
from mae_kernels.ops.tube_mask_indices import tube_mask_indices
from test_random_masking import _assert_equal, _philox_uniform, _tied_noise

CPU_BACKENDS = [("cpu", "cpu"), ("triton", "cpu"), ("reference", "cpu")]
GPU_BACKENDS = [pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                pytest.param("triton", "cuda", marks=pytest.mark.gpu)]


def _spec_indices(mask_bool):
    """The spec's restatement: ids_shuffle = argsort(mask.float(), stable=True), ids_keep its first n_vis."""
    ids_shuffle = torch.argsort(mask_bool.float().cpu(), dim=1, stable=True).to(mask_bool.device)
    keep = int((~mask_bool[0]).sum())
    return ids_shuffle[:, :keep], torch.argsort(ids_shuffle, dim=1), mask_bool.float()


def _check(backend, device, N, t, hw, ratio, noise=None):
    if noise is None:
        noise = torch.rand(N, hw, device=device)
    with use_backend(backend):
        got = tube_mask_indices(N, t, hw, ratio, noise=noise)
    want = reference.tube_mask_indices(N, t, hw, ratio, noise.cpu())
    for name, g, w in zip(("ids_keep", "ids_restore", "mask"), got, want):
        _assert_equal(name, g.cpu(), w)
    # The structure, from the outputs alone: m masked per frame, the same positions in every frame, kept tokens
    # ascending, and the indices are those of the spec's stable argsort of the mask.
    m = int(ratio * hw)
    mask = got[2].cpu().view(N, t, hw)
    assert torch.equal(mask.sum(2), torch.full((N, t), float(m))), "masked count per frame"
    assert torch.equal(mask, mask[:, :1].expand(N, t, hw)), "the spatial mask differs between frames"
    for name, g, w in zip(("ids_keep (spec)", "ids_restore (spec)"), got, _spec_indices(got[2].cpu().bool())):
        _assert_equal(name, g.cpu(), w)
    return got


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("N,t,hw,ratio", [(1, 1, 1, 0.0), (1, 1, 1, 0.9), (3, 2, 7, 0.5), (2, 3, 50, 0.95),
                                          (2, 8, 196, 0.9), (1, 4, 256, 0.9), (2, 5, 13, 0.0)])
def test_matches_reference(backend, device, N, t, hw, ratio):
    _check(backend, device, N, t, hw, ratio)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("hw", [5, 50])
def test_ties_and_nan(backend, device, hw):
    _check(backend, device, 3, 2, hw, 0.75, noise=_tied_noise(3, hw, device))


@pytest.mark.parametrize("hw,ratio,masked,kept_total", [(196, 0.9, 176, 160), (196, 0.75, 147, 392),
                                                        (196, 0.95, 186, 80), (256, 0.9, 230, 208)])
@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("reference", "cpu")] + GPU_BACKENDS)
def test_spec_counts(backend, device, hw, ratio, masked, kept_total):
    """MAE_SPEC_VIDEO.md: int(r * hw) MASKED per frame (the masked count truncated), t = 8 temporal tokens."""
    assert reference.tube_num_masked(hw, ratio) == masked
    with use_backend(backend):
        ids_keep, ids_restore, mask = tube_mask_indices(2, 8, hw, ratio, device=device)
    assert ids_keep.shape == (2, kept_total) and ids_restore.shape == mask.shape == (2, 8 * hw)
    assert ids_keep.dtype == ids_restore.dtype == torch.int64 and mask.dtype == torch.float32
    assert torch.equal(mask.sum(1).cpu(), torch.full((2,), 8.0 * masked))
    assert torch.equal(mask.view(2, 8, hw), mask.view(2, 8, hw)[:, :1].expand(2, 8, hw))


def test_triton_interpreter_spec_counts():
    test_spec_counts("triton", "cpu", 196, 0.9, 176, 160)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS)
def test_videomae_consumers(backend, device):
    """gather(x, ids_keep) == x[~bool_masked_pos] (VideoMAE's encoder input); the decoder input built with
    ids_restore holds the visible tokens at their positions and mask tokens elsewhere; masked_mse_loss with
    ids_shuffle = argsort(ids_restore) and predictions of the masked tokens in ascending order (VideoMAE's
    layout) equals the loss on the full layout."""
    N, t, hw, D = 2, 4, 16, 3
    with use_backend(backend):
        ids_keep, ids_restore, mask = tube_mask_indices(N, t, hw, 0.75, device=device)
    bool_masked_pos = mask.bool()
    x = torch.randn(N, t * hw, D)
    vis = x[~bool_masked_pos].reshape(N, -1, D)
    _assert_equal("x[~mask]", torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D)), vis)
    token = torch.randn(1, 1, D)
    dec = mae_kernels.unshuffle_with_mask_tokens(vis, token, ids_restore, has_cls=False)
    _assert_equal("decoder visible rows", dec[~bool_masked_pos].reshape(N, -1, D), vis)
    _assert_equal("decoder mask rows", dec[bool_masked_pos], token[0].expand(int(mask.sum()), D))
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    _assert_equal("ids_shuffle kept part", ids_shuffle[:, :ids_keep.shape[1]], ids_keep)
    # The loss with predictions of the masked tokens only, in ascending order (VideoMAE's head output), through
    # ids_shuffle; one frame of 4x4 patches of 2x2 pixels (an image geometry: t = 1).
    imgs = torch.randn(N, 3, 8, 8)
    with use_backend(backend):
        ids_keep, ids_restore, mask = tube_mask_indices(N, 1, 16, 0.75, device=device)
    full = torch.randn(N, 16, 12)
    masked_only = full[mask.bool()].reshape(N, -1, 12)
    with use_backend(backend):
        got = mae_kernels.masked_mse_loss(masked_only, imgs, mask, 2, ids_shuffle=torch.argsort(ids_restore, dim=1))
    want = reference.masked_mse_loss(full, imgs, mask, 2)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=0)


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_noise_none_reproducible(backend, device):
    with use_backend(backend):
        torch.manual_seed(1)
        a = tube_mask_indices(2, 2, 20, 0.75, device=device)
        b = tube_mask_indices(2, 2, 20, 0.75, device=device)  # the generator moved on
        torch.manual_seed(1)
        c = tube_mask_indices(2, 2, 20, 0.75, device=device)
        gen = torch.Generator(device=device)
        d = tube_mask_indices(2, 2, 20, 0.75, generator=gen.manual_seed(9), device=device)
        e = tube_mask_indices(2, 2, 20, 0.75, generator=gen.manual_seed(9), device=device)
    for name, u, v in zip(("ids_keep", "ids_restore", "mask"), a, c):
        _assert_equal(name, u, v)
    for name, u, v in zip(("ids_keep", "ids_restore", "mask"), d, e):
        _assert_equal(name + " (generator)", u, v)
    assert not torch.equal(a[2], b[2]) and not torch.equal(a[2], d[2])
    for name, g, w in zip(("ids_keep", "ids_restore"), a, _spec_indices(a[2].bool())):
        _assert_equal(name + " vs its mask", g, w)


def test_cpu_noise_none_equals_reference_with_torch_rand():
    torch.manual_seed(5)
    got = tube_mask_indices(2, 3, 196, 0.9)
    torch.manual_seed(5)
    want = reference.tube_mask_indices(2, 3, 196, 0.9, torch.rand(2, 196))
    for name, u, v in zip(("ids_keep", "ids_restore", "mask"), got, want):
        _assert_equal(name, u, v)


def test_spatial_mask_is_a_uniform_subset():
    """Every sample masks exactly m positions (all frames alike), and each position is masked with frequency
    m / hw. 20000 samples of hw = 49 (m = 36): a frequency's std is sqrt(p (1 - p) / 20000) = 0.0031; the bound
    0.025 is 8 std (a fixed seed besides: the test cannot flake)."""
    N, hw, ratio = 20000, 49, 0.75
    m = int(ratio * hw)
    ids_keep, ids_restore, mask = tube_mask_indices(N, 2, hw, ratio, generator=torch.Generator().manual_seed(0))
    spatial = mask.view(N, 2, hw)
    assert torch.equal(spatial[:, 0], spatial[:, 1])
    assert torch.equal(spatial[:, 0].sum(1), torch.full((N,), float(m)))
    freq = spatial[:, 0].mean(0)
    assert float((freq - m / hw).abs().max()) < 0.025, freq
    # Pairs too (a fixed subset shape would pass the marginals): P(both masked) = m (m - 1) / (hw (hw - 1)).
    both = (spatial[:, 0, :, None] * spatial[:, 0, None, :]).mean(0)
    off = ~torch.eye(hw, dtype=torch.bool)
    assert float((both[off] - m * (m - 1) / (hw * (hw - 1))).abs().max()) < 0.03


@pytest.mark.parametrize("kernel", [
    pytest.param(lambda *args: tm_ops.OPS["triton"](*args), id="triton"),
    # The CUDA kernel under the emulator (tests/test_cuda_emulation.py), whose compiled op takes CPU tensors.
    pytest.param(lambda *args: torch.ops.mae_kernels.tube_mask_indices(*args), id="cuda",
                 marks=pytest.mark.cuda_emulation)])
@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789, 8), ((1 << 62) + 12345, (1 << 35) - 40)])
def test_noise_is_the_documented_philox_stream(kernel, seed, offset):
    """With noise None the kernels draw random_masking's stream, subsequence n*hw + s: each position's noise is a
    24-bit uniform, so the argsort is a uniformly random permutation (ties aside) and the kept set a uniform
    subset."""
    N, t, hw, m = 2, 3, 60, 45
    got = kernel(torch.empty(N, hw, 0), None, t, m, seed, offset)
    noise = _philox_uniform(seed, offset, range(N * hw)).view(N, hw)
    want = reference.tube_mask_indices(N, t, hw, 0.75, noise)
    for name, u, v in zip(("ids_keep", "ids_restore", "mask"), got, want):
        _assert_equal(name, u, v)


@pytest.mark.cuda_emulation
def test_cpu_longest_row():
    # Under the CUDA emulator: hw = MAX_HW needs 64 KiB of keys and ranks, above the 48 KiB without the opt-in.
    _check("cpu", "cpu", 1, 2, tm_ops.MAX_HW, 0.9, noise=_tied_noise(1, tm_ops.MAX_HW, "cpu"))


def test_noise_drawn_with_torch_rand_while_a_cuda_graph_is_captured(monkeypatch):
    # A (seed, offset) read at capture would be frozen into the graph: every replay would draw the same masks.
    monkeypatch.setattr(tm_ops, "cuda_graph_capturing", lambda t: True)
    with use_backend("triton"):
        torch.manual_seed(7)
        got = tube_mask_indices(3, 2, 50, 0.75)
    torch.manual_seed(7)
    want = reference.tube_mask_indices(3, 2, 50, 0.75, torch.rand(3, 50))
    for name, u, v in zip(("ids_keep", "ids_restore", "mask"), got, want):
        _assert_equal(name, u, v)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_cuda_graph_replays_draw_new_masks(backend):
    with use_backend(backend):
        tube_mask_indices(8, 8, 196, 0.9, device="cuda")  # compile / warm up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ids_keep, ids_restore, mask = tube_mask_indices(8, 8, 196, 0.9, device="cuda")
    masks = []
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        for name, g, w in zip(("ids_keep", "ids_restore"), (ids_keep, ids_restore), _spec_indices(mask.bool())):
            _assert_equal(name, g, w)
        masks.append(mask.clone())
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


@pytest.mark.gpu
def test_gpu_cuda_and_triton_draw_the_same_noise():
    out = {}
    for backend in ("cuda", "triton"):
        with use_backend(backend):
            torch.manual_seed(3)
            out[backend] = tube_mask_indices(4, 8, 196, 0.9, device="cuda")
    for name, u, v in zip(("ids_keep", "ids_restore", "mask"), out["cuda"], out["triton"]):
        _assert_equal(name, u, v)


@pytest.mark.gpu
def test_gpu_no_host_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("cuda", "triton"):
            with use_backend(backend):
                tube_mask_indices(8, 8, 196, 0.9, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _opcheck_samples(device, noise_none):
    out = []
    for N, t, hw, m in [(2, 3, 7, 5), (1, 1, 16, 0)] + ([(3, 2, 5, 5)] if not noise_none else []):
        noise = None if noise_none else torch.rand(N, hw, device=device)
        out.append((torch.empty(N, hw, 0, device=device), noise, t, m, 11, 4))
    return out


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
def test_opcheck(backend, device):
    samples = _opcheck_samples(device, False)
    if backend != "cpu":  # the cpu kernel always gets noise
        samples += _opcheck_samples(device, True)
    for args in samples:
        torch.library.opcheck(tm_ops.OPS[backend], args)


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
@pytest.mark.parametrize("with_noise", [True, False])
def test_compile_fullgraph(backend, device, with_noise):
    torch._dynamo.reset()
    noise = torch.rand(2, 16, device=device) if with_noise else None

    def f(noise):
        ids_keep, ids_restore, mask = mae_kernels.tube_mask_indices(2, 3, 16, 0.75, noise=noise, device=device)
        return ids_keep + 1, ids_restore, mask.bool()

    with use_backend(backend):
        got = torch.compile(f, fullgraph=True)(noise)
    if with_noise:  # without, the compiled graph draws torch.rand with inductor's own generator
        want = reference.tube_mask_indices(2, 3, 16, 0.75, noise)
        _assert_equal("ids_keep", got[0], want[0] + 1)
        _assert_equal("ids_restore", got[1], want[1])
        _assert_equal("mask", got[2], want[2].bool())
    for name, g, w in zip(("ids_keep", "ids_restore"), (got[0] - 1, got[1]), _spec_indices(got[2])):
        _assert_equal(name + " vs its mask", g, w)
    assert torch.equal(got[2].view(2, 3, 16).sum(2).cpu(), torch.full((2, 3), 12))


def test_bad_input():
    with pytest.raises(ValueError, match="N must be a positive int, got 0"):
        tube_mask_indices(0, 2, 4, 0.5)
    with pytest.raises(TypeError, match="t must be an int, got float"):
        tube_mask_indices(2, 2.0, 4, 0.5)
    with pytest.raises(ValueError, match="hw must be a positive int, got -1"):
        tube_mask_indices(2, 2, -1, 0.5)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1.0"):
        tube_mask_indices(2, 2, 4, 1.0)
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 4\], got \(2, 5\)"):
        tube_mask_indices(2, 2, 4, 0.5, noise=torch.rand(2, 5))
    with pytest.raises(TypeError, match="noise must have dtype torch.float32, got torch.float64"):
        tube_mask_indices(2, 2, 4, 0.5, noise=torch.rand(2, 4).double())
    with pytest.raises(ValueError, match="noise must be on cpu"):
        tube_mask_indices(2, 2, 4, 0.5, noise=torch.rand(2, 4, device="meta"), device="cpu")
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        tube_mask_indices(2, 2, 4, 0.5, generator=3)


def test_triton_spatial_limit_on_cpu():
    with use_backend("triton"), pytest.raises(ValueError, match="at most hw = 4096"):
        tube_mask_indices(1, 1, 4097, 0.5)
