"""decoder_mask_indices (VideoMAEv2 dual masking's decoder masks) on every backend: v2's running-cell maps exactly
as its code builds them (reference.running_cell_maps, the spec's start-0 patterns, periods and counts), the
combination with tube masking (160 / 784 / 944 / 704 / 80 at 224 px, 16 frames, r 0.9 and 0.5), uniform random
decoder masks, torch's seeds, torch.compile and bad input; scope="removed" (encoder-removed positions only: the
per-sample loop of the reference, v2's loss set with a tube mask, 864 decoder rows at v2's sizes; its
torch.compile runs in the video model's test, tests/test_decoder_masking.py)."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.backends import use_backend
from mae_kernels.ops.decoder_mask_indices import decoder_mask_indices, running_cell_mask
from test_random_masking import _assert_equal

CPU_BACKENDS = [("cpu", "cpu"), ("triton", "cpu"), ("reference", "cpu")]
GPU_BACKENDS = [pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
                pytest.param("triton", "cuda", marks=pytest.mark.gpu)]


def test_running_cell_maps_are_v2s():
    """MAE_SPEC_VIDEO.md: 2x2 cells (row-major) for start 0, ti = 0..3: [1,0,0,1], [0,0,1,1], [0,1,1,0],
    [1,1,0,0], then repeating (period 4 in time, 2 in space); every frame leaves m/4 of the positions undecoded
    (98 of 196 at r = 0.5); each position is decoded in exactly 2 of any 4 consecutive frames."""
    maps = reference.running_cell_maps(8, 14, 14, 0.5)
    assert maps.shape == (4, 8, 196) and maps.dtype == torch.bool
    cells = maps[0].view(8, 14, 14)[:, :2, :2].reshape(8, 4).int().tolist()
    assert cells[:4] == [[1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]] and cells[4:] == cells[:4]
    grid = maps.view(4, 8, 14, 14)
    assert torch.equal(grid, grid[:, :, :2, :2].repeat(1, 1, 7, 7))             # period 2 in space
    assert torch.equal(grid[:, 4:], grid[:, :4])                                 # period 4 in time
    assert torch.equal(maps.sum(2), torch.full((4, 8), 98))
    windows = (~maps).unfold(1, 4, 1).sum(-1)                                    # decoded in 4 consecutive frames
    assert torch.equal(windows, torch.full_like(windows, 2))
    for k in range(1, 4):                                                        # start k = start 0 shifted by k
        assert torch.equal(maps[k, :8 - k], maps[0, k:])
    # m = 1 and 3 (r = 0.25, 0.75): a quarter / three quarters undecoded per frame
    for r, per_frame in ((0.25, 49), (0.75, 147)):
        assert torch.equal(reference.running_cell_maps(3, 14, 14, r).sum(2), torch.full((4, 3), per_frame))


@pytest.mark.parametrize("t,h,w,r", [(8, 14, 14, 0.5), (3, 4, 6, 0.25), (5, 2, 2, 0.75), (1, 16, 16, 0.5)])
def test_closed_form_equals_v2s_construction(t, h, w, r):
    maps = reference.running_cell_maps(t, h, w, r)
    got = running_cell_mask(torch.arange(4), t, h, w, r)
    _assert_equal("running_cell_mask", got, maps.reshape(4, -1))


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("t,h,w,r", [(8, 14, 14, 0.5), (3, 4, 6, 0.25), (1, 14, 14, 0.75)])
def test_run_cell_matches_reference(backend, device, t, h, w, r):
    start = torch.tensor([0, 3, 1, 2, 2], device=device)
    with use_backend(backend):
        got = decoder_mask_indices(5, t, h, w, r, start=start)
    want = reference.decoder_mask_indices(5, t, h, w, r, start=start.cpu())
    for name, g, u in zip(("ids_dec", "ids_restore", "mask"), got, want):
        _assert_equal(name, g.cpu(), u)
    maps = reference.running_cell_maps(t, h, w, r)
    _assert_equal("mask = v2's map of each start", got[2].cpu().bool(), maps[start.cpu()].reshape(5, -1))
    decoded = (~maps[start.cpu()].reshape(5, -1)).nonzero()[:, 1].view(5, -1)
    _assert_equal("ids_dec = decoded positions ascending", got[0].cpu(), decoded)


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
def test_random_matches_reference(backend, device):
    noise = torch.rand(3, 2 * 36, device=device)
    with use_backend(backend):
        got = decoder_mask_indices(3, 2, 6, 6, 0.5, mask_type="random", noise=noise)
    want = reference.decoder_mask_indices(3, 2, 6, 6, 0.5, mask_type="random", noise=noise.cpu())
    for name, g, u in zip(("ids_dec", "ids_restore", "mask"), got, want):
        _assert_equal(name, g.cpu(), u)
    assert torch.equal(got[2].sum(1).cpu(), torch.full((3,), 36.0))  # int(0.5 * 72) not decoded


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("reference", "cpu")] + GPU_BACKENDS)
def test_dual_masking_counts(backend, device):
    """v2 at 224 px, 16 frames, tube r 0.9, run_cell 0.5: the encoder sees 160, the decoder 160 + 784 = 944,
    784 predictions, 704 in the loss (encoder-masked and decoder-visible), 80 encoder-visible x decoder-visible."""
    N = 3
    with use_backend(backend):
        ids_keep, _, enc_mask = mae_kernels.tube_mask_indices(N, 8, 196, 0.9, device=device)
        ids_dec, _, dec_mask = decoder_mask_indices(N, 8, 14, 14, 0.5, device=device)
    assert ids_keep.shape == (N, 160) and ids_dec.shape == (N, 784)
    assert ids_keep.shape[1] + ids_dec.shape[1] == 944
    w = enc_mask.gather(1, ids_dec)                     # loss weights: encoder-masked among the decoded
    assert torch.equal(w.sum(1).cpu(), torch.full((N,), 704.0))
    assert torch.equal((1 - w).sum(1).cpu(), torch.full((N,), 80.0))


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
@pytest.mark.parametrize("mask_type", ["run_cell", "random"])
def test_seeded(backend, device, mask_type):
    def draw(**kw):
        with use_backend(backend):
            # random: N = 3 (the interpreter sorts slowly); run_cell: N = 16 (4**-16 for equal draws)
            return decoder_mask_indices(3 if mask_type == "random" else 16, 2, 4, 4, 0.5, mask_type=mask_type,
                                        device=device, **kw)
    torch.manual_seed(1)
    a, b = draw(), draw()
    torch.manual_seed(1)
    c = draw()
    gen = torch.Generator(device=device)
    d, e = draw(generator=gen.manual_seed(3)), draw(generator=gen.manual_seed(3))
    for u, v in zip(a + d, c + e):
        _assert_equal("same seed", u, v)
    assert not torch.equal(a[2], b[2])


def test_run_cell_starts_are_uniform():
    """start ~ randint(4): each of the 4 maps drawn about N / 4 times (N = 8000: std 39; bound 8 std, seeded)."""
    _, _, mask = decoder_mask_indices(8000, 4, 2, 2, 0.5, generator=torch.Generator().manual_seed(0))
    maps = reference.running_cell_maps(4, 2, 2, 0.5).reshape(4, -1).float()
    which = (mask[:, None, :] == maps[None]).all(2)
    assert torch.equal(which.sum(1), torch.ones(8000, dtype=torch.long))  # every sample is one of v2's maps
    assert float((which.sum(0) - 2000).abs().max()) < 320


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("triton", "cpu")] + GPU_BACKENDS)
@pytest.mark.parametrize("mask_type", ["run_cell", "random"])
def test_compile_fullgraph(backend, device, mask_type):
    torch._dynamo.reset()
    start = torch.tensor([2, 0], device=device)
    noise = torch.rand(2, 32, device=device)

    def f(start, noise):
        kw = dict(start=start) if mask_type == "run_cell" else dict(noise=noise)
        ids_dec, ids_restore, mask = mae_kernels.decoder_mask_indices(2, 2, 4, 4, 0.5, mask_type=mask_type, **kw)
        return ids_dec + 1, ids_restore, mask

    with use_backend(backend):
        got = torch.compile(f, fullgraph=True)(start, noise)
    kw = dict(start=start.cpu()) if mask_type == "run_cell" else dict(noise=noise.cpu())
    want = reference.decoder_mask_indices(2, 2, 4, 4, 0.5, mask_type=mask_type, **kw)
    _assert_equal("ids_dec", got[0].cpu(), want[0] + 1)
    _assert_equal("ids_restore", got[1].cpu(), want[1])
    _assert_equal("mask", got[2].cpu(), want[2])


def test_bad_input():
    with pytest.raises(ValueError, match=r"mask_type must be one of \('run_cell', 'random'\), got 'cells'"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, mask_type="cells")
    with pytest.raises(ValueError, match=r"int\(4 \* mask_ratio\) in 1..3.*got mask_ratio=0.2 \(m = 0\)"):
        decoder_mask_indices(2, 2, 4, 4, 0.2)
    with pytest.raises(ValueError, match="h and w must be even for running cells.*got h=7, w=4"):
        decoder_mask_indices(2, 2, 7, 4, 0.5)
    with pytest.raises(ValueError, match=r"start must have shape \[2\], got \(3,\)"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, start=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="start must have dtype torch.int64, got torch.int32"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, start=torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="start values must be in 0..3"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, start=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="noise is for mask_type='random'"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, noise=torch.rand(2, 32))
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 32\]"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, mask_type="random", noise=torch.rand(2, 16))
    with pytest.raises(ValueError, match="N must be a positive int, got 0"):
        decoder_mask_indices(0, 2, 4, 4, 0.5)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\), got 1.0"):
        decoder_mask_indices(2, 2, 4, 4, 1.0)


# --- scope="removed": only encoder-removed positions decoded -------------------------------------------------


def _encoder_mask(kind, N, t, hw, gen):
    """A tube mask (VideoMAE) or a random mask over all L tokens (mae_st), float32 [N, t*hw], 1 = removed,
    0.75 removed either way."""
    if kind == "tube":
        return reference.tube_mask_indices(N, t, hw, 0.75, generator=gen)[2]
    return reference.random_mask_indices(N, t * hw, 0.75, torch.rand(N, t * hw, generator=gen))[2]


@pytest.mark.parametrize("backend,device", CPU_BACKENDS + GPU_BACKENDS)
@pytest.mark.parametrize("mask_type", ["run_cell", "random"])
@pytest.mark.parametrize("encoder", ["tube", "random"])
def test_removed_scope_matches_reference(backend, device, mask_type, encoder):
    """Every backend == the per-sample loop of reference.decoder_mask_indices; only encoder-removed positions,
    n_rem - n_rem * m // 4 (run_cell) / n_rem - int(r * n_rem) (random) of them. With a tube mask over t = 4 frames
    the run_cell set is exactly v2's loss set: encoder-removed and decoded by the map of each start."""
    N, t, h, w = 3, 4, 4, 6
    L = t * h * w
    gen = torch.Generator().manual_seed(2)
    enc = _encoder_mask(encoder, N, t, h * w, gen)
    noise, start = torch.rand(N, L, generator=gen), torch.tensor([0, 3, 1])
    kw = dict(mask_type=mask_type, noise=noise, scope="removed", encoder_mask=enc, num_removed=72)
    if mask_type == "run_cell":
        kw["start"] = start
    with use_backend(backend):
        got = decoder_mask_indices(N, t, h, w, 0.5, **{k: v.to(device) if isinstance(v, torch.Tensor) else v
                                                       for k, v in kw.items()})
    want = reference.decoder_mask_indices(N, t, h, w, 0.5, **kw)
    for name, g, u in zip(("ids_dec", "ids_restore", "mask"), got, want):
        _assert_equal(name, g.cpu(), u)
    ids_dec, _, not_decoded = (g.cpu() for g in got)
    assert ids_dec.shape == (N, 36)                                   # 72 removed, half of them decoded
    assert torch.all(enc.gather(1, ids_dec) == 1)                     # encoder-removed only
    assert torch.equal(ids_dec, torch.sort(ids_dec, 1).values)
    maps = reference.running_cell_maps(t, h, w, 0.5)[start].reshape(N, L)
    if mask_type == "run_cell" and encoder == "tube":
        _assert_equal("v2's loss set", ~not_decoded.bool(), enc.bool() & ~maps)
    elif mask_type == "run_cell":  # the map's decoded removed positions first: all of them, or only them
        preferred = enc.bool() & ~maps
        taken = (~not_decoded.bool() & preferred).sum(1)
        assert torch.equal(taken, preferred.sum(1).clamp(max=36))
        assert 0 < int((preferred.sum(1) - 36).abs().sum())  # the random encoder mask leaves rows uneven
    else:  # the 36 removed positions of smallest noise
        order = torch.where(enc.bool(), noise, torch.full_like(noise, 2.0)).argsort(1)[:, :36]
        assert torch.equal(ids_dec, torch.sort(order, 1).values)


@pytest.mark.parametrize("backend,device", [("cpu", "cpu"), ("reference", "cpu")] + GPU_BACKENDS)
def test_removed_scope_counts(backend, device):
    """224 px, 16 frames, tube 0.9, run_cell 0.5, scope 'removed': v2's 704 loss positions are decoded, all of
    them in the loss, and nothing else: the decoder gets 160 + 704 = 864 rows instead of 944."""
    N, start = 2, torch.tensor([1, 2], device=device)
    with use_backend(backend):
        ids_keep, _, enc_mask = mae_kernels.tube_mask_indices(N, 8, 196, 0.9, device=device)
        ids_dec, _, _ = decoder_mask_indices(N, 8, 14, 14, 0.5, start=start, scope="removed", encoder_mask=enc_mask)
        v2_dec, _, _ = decoder_mask_indices(N, 8, 14, 14, 0.5, start=start)
    assert ids_keep.shape[1] + ids_dec.shape[1] == 160 + 704 == 864
    assert torch.all(enc_mask.gather(1, ids_dec) == 1)
    v2_loss = enc_mask.bool() & torch.zeros_like(enc_mask, dtype=torch.bool).scatter(1, v2_dec, True)
    _assert_equal("v2's loss set", torch.zeros_like(v2_loss).scatter(1, ids_dec, True).cpu(), v2_loss.cpu())


def test_removed_scope_num_removed_read_or_given():
    gen = torch.Generator().manual_seed(4)
    enc = _encoder_mask("random", 2, 2, 16, gen)
    a = decoder_mask_indices(2, 2, 4, 4, 0.5, scope="removed", encoder_mask=enc.bool(), generator=gen.manual_seed(5))
    b = decoder_mask_indices(2, 2, 4, 4, 0.5, scope="removed", encoder_mask=enc, num_removed=24,
                             generator=gen.manual_seed(5))
    for u, v in zip(a, b):
        _assert_equal("num_removed read == given", u, v)
    uneven = enc.clone()
    uneven[1, (uneven[1] == 0).nonzero()[0, 0]] = 1
    with pytest.raises(ValueError, match="encoder_mask must remove the same number of positions in every row, "
                                         "got 24 in row 0 and 25 in row 1"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, scope="removed", encoder_mask=uneven)
    with pytest.raises(RuntimeError, match="encoder_mask must remove num_removed = 24 positions in every row"):
        decoder_mask_indices(2, 2, 4, 4, 0.5, scope="removed", encoder_mask=uneven, num_removed=24)

