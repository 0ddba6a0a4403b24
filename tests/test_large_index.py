"""64-bit index arithmetic: element offsets past 2**31 on every op.

CPU (marked large): views into a storage of more than 2**31 fp16 elements (4 GiB of address space, only the
viewed pages are touched) whose sample stride s and sample index n both fit in int32 while n * s does not, so a
kernel that multiplies them in 32 bits reads the wrong place. Only the viewed rows are read; results are
compared with the reference on contiguous copies of those rows. cpu, triton (interpreter) and reference.

GPU (marked gpu and large): real tensors of more than 2**31 elements (large N, fp16), so that inputs, outputs
and gradients are addressed past 2**31; a few rows at both ends are compared with the reference computed on
just those rows. Each test skips, with the reason, unless the GPU has the free memory it needs.
"""
import gc
import math
import os

import pytest
import torch

import mae_kernels
from mae_kernels import reference

GiB = 1 << 30
INT32_LIMIT = 1 << 31
CPU_BACKENDS = ["cpu", "triton", "reference"]
GPU_BACKENDS = ["cuda", "triton"]
HOST_MEMORY_NEEDED = 12 * GiB


def host_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def need_host_memory():
    free = host_available()
    if free < HOST_MEMORY_NEEDED:
        pytest.skip(f"needs {HOST_MEMORY_NEEDED / GiB:.0f} GiB of available host memory for a 4 GiB storage, "
                    f"{free / GiB:.1f} GiB available")


def need_gpu_memory(nbytes):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gc.collect()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < nbytes:
        pytest.skip(f"needs {nbytes / GiB:.0f} GiB of free GPU memory, {free / GiB:.1f} GiB free")


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- CPU: strided views past 2**31 ----------------------------------------------------------------------------

N_VIEW = 3  # samples 0, 1, 2; sample 2 starts past element 2**31


def past_int32_view(values):
    """`values` ([3, ...]) copied into a view whose sample stride s < 2**31 puts sample 2 at 2 * s > 2**31."""
    assert values.shape[0] == N_VIEW
    inner = math.prod(values.shape[1:])
    s = INT32_LIMIT // (N_VIEW - 1) + 64
    assert s < INT32_LIMIT and (N_VIEW - 1) * s >= INT32_LIMIT
    storage = torch.empty((N_VIEW - 1) * s + inner, dtype=values.dtype)
    view = storage.as_strided(values.shape, (s,) + values.contiguous().stride()[1:])
    view.copy_(values)
    assert view.storage_offset() == 0 and view.stride(0) * (N_VIEW - 1) >= INT32_LIMIT
    return view


C, H, W, P_SIZE, D = 3, 8, 12, 4, 8
L = (H // P_SIZE) * (W // P_SIZE)  # 6
P = P_SIZE * P_SIZE * C
K = 2


def _cpu_cases():
    """{op: (kwargs, name of the argument placed past 2**31, differentiable arguments, exact)} in fp16."""
    f16 = torch.float16
    imgs = torch.randn(N_VIEW, C, H, W).to(f16)
    perm = torch.stack([torch.randperm(L) for _ in range(N_VIEW)])
    keep = perm[:, :K]
    mask = torch.ones(N_VIEW, L).scatter(1, keep, 0.0)
    weight = (torch.randn(D, C, P_SIZE, P_SIZE) * 0.1).to(f16)
    bias, pos = torch.randn(D).to(f16), torch.randn(1, 1 + L, D).to(f16)
    return {
        "random_masking": (dict(x=torch.randn(N_VIEW, L, D).to(f16), mask_ratio=0.6, noise=torch.rand(N_VIEW, L)),
                           "x", ["x"], True),
        "patchify": (dict(imgs=imgs, patch_size=P_SIZE), "imgs", ["imgs"], True),
        "mask_to_indices": (dict(bool_mask=torch.ones(N_VIEW, L, dtype=torch.bool).scatter(1, keep, False),
                                 num_kept=K), "bool_mask", [], True),
        "unpatchify": (dict(x=torch.randn(N_VIEW, L, P).to(f16), patch_size=P_SIZE, image_size=(H, W)), "x", ["x"],
                       True),
        "masked_patchify": (dict(imgs=imgs, ids_keep=keep, patch_size=P_SIZE), "imgs", ["imgs"], True),
        "masked_patch_embed": (dict(imgs=imgs, ids_keep=keep, weight=weight, bias=bias, pos_embed=pos), "imgs",
                               ["imgs"], False),
        "random_masked_patch_embed": (dict(imgs=imgs, weight=weight, bias=bias, pos_embed=pos, mask_ratio=0.6,
                                           noise=torch.rand(N_VIEW, L)), "imgs", [], False),
        "unshuffle_with_mask_tokens": (dict(x=torch.randn(N_VIEW, 1 + K, D).to(f16), mask_token=torch.randn(1, 1, D),
                                            ids_restore=torch.argsort(perm, dim=1), pos_embed=pos,
                                            out_dtype=f16), "x", ["x"], True),
        "append_mask_tokens": (dict(x=torch.randn(N_VIEW, K, D).to(f16), mask_token=torch.randn(1, 1, D),
                                    ids_keep=keep, ids_dec=perm[:, K:], pos_embed=pos[:, 1:], out_dtype=f16),
                               "x", ["x"], True),
        "masked_mse_loss": (dict(pred=torch.randn(N_VIEW, L - K, P).to(f16), imgs=imgs, mask=mask,
                                 patch_size=P_SIZE, ids_shuffle=perm), "imgs", ["pred", "imgs"], False),
        "patch_stats": (dict(imgs=imgs, patch_size=P_SIZE), "imgs", [], False),
        "denormalize_pred": (dict(pred=torch.randn(N_VIEW, L, P).to(f16), imgs=imgs, patch_size=P_SIZE), "imgs", [],
                             False),
    }


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _compare(got, want, exact, what):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-2, atol=1e-2)  # fp16 values, fp32 maths
    torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{what}: {m}")


def _cpu_video_cases():
    """{name: (op, kwargs, argument placed past 2**31, differentiable arguments, exact)}: fp16 videos
    [3, C, T, H, W] in 2x4x4 tubelets (L = 2 * 2 * 3 = 12), full and separable positional tables."""
    f16 = torch.float16
    clip = torch.randn(N_VIEW, C, 4, H, W).to(f16)
    Lv = 2 * (H // P_SIZE) * (W // P_SIZE)
    vperm = torch.stack([torch.randperm(Lv) for _ in range(N_VIEW)])
    keep = vperm[:, :K]
    vmask = torch.ones(N_VIEW, Lv).scatter(1, keep, 0.0)
    weight = (torch.randn(D, C, 2, P_SIZE, P_SIZE) * 0.1).to(f16)
    bias = torch.randn(D).to(f16)
    return {
        "patchify video": ("patchify", dict(imgs=clip, patch_size=(2, P_SIZE, P_SIZE)), "imgs", ["imgs"], True),
        "masked_patchify video": ("masked_patchify", dict(imgs=clip, ids_keep=keep, patch_size=(2, P_SIZE, P_SIZE)),
                                  "imgs", ["imgs"], True),
        "masked_patch_embed video": ("masked_patch_embed", dict(imgs=clip, ids_keep=keep, weight=weight, bias=bias,
                                                                pos_embed=torch.randn(1, Lv, D).to(f16)),
                                     "imgs", ["imgs"], False),
        "masked_patch_embed video separable": ("masked_patch_embed", dict(
            imgs=clip, ids_keep=keep, weight=weight, bias=bias,
            pos_embed=(torch.randn(1, Lv // 2, D).to(f16), torch.randn(1, 2, D).to(f16))), "imgs", ["imgs"], False),
        # mae_st: one target frame per token (frames 0 and 3), all-channel statistics, all L predictions
        "masked_mse_loss video mae_st": ("masked_mse_loss", dict(
            pred=torch.randn(N_VIEW, Lv, P_SIZE * P_SIZE * C).to(f16), imgs=clip, mask=vmask,
            patch_size=(2, P_SIZE, P_SIZE), target_frames=torch.tensor([0, 3])), "imgs", ["pred"], False),
        # VideoMAE: per-channel statistics on un-normalised pixels, predictions of the removed tokens only
        "masked_mse_loss video videomae": ("masked_mse_loss", dict(
            pred=torch.randn(N_VIEW, Lv - K, 2 * P_SIZE * P_SIZE * C).to(f16), imgs=clip, mask=vmask,
            patch_size=(2, P_SIZE, P_SIZE), ids_shuffle=vperm, per_channel=True, pixel_mean=(0.485, 0.456, 0.406),
            pixel_std=(0.229, 0.224, 0.225)), "imgs", ["pred"], False),
    }


@pytest.mark.large
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", sorted(_cpu_cases()))
def test_cpu_strided_view_past_int32(op, backend):
    args, big, grads, exact = _cpu_cases()[op]
    check_past_int32(getattr(mae_kernels, op), op, backend, args, big, grads, exact)


@pytest.mark.large
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", sorted(_cpu_video_cases()))
def test_cpu_video_strided_view_past_int32(case, backend):
    op, args, big, grads, exact = _cpu_video_cases()[case]
    check_past_int32(getattr(mae_kernels, op), case, backend, args, big, grads, exact)


def check_past_int32(fn, op, backend, args, big, grads, exact):
    need_host_memory()
    strided = dict(args, **{big: past_int32_view(args[big])})
    plain = dict(args)
    for name in grads:
        strided[name] = strided[name].detach().requires_grad_()
        plain[name] = plain[name].detach().clone().requires_grad_()
    with mae_kernels.use_backend(backend):
        got = _outputs(fn(**strided))
    with mae_kernels.use_backend("reference"):
        want = _outputs(fn(**plain))
    for i, (g, w) in enumerate(zip(got, want)):
        _compare(g, w, exact, f"{op} output {i}")
    if grads:
        upstream = torch.randn_like(want[0])
        got_g = torch.autograd.grad(got[0], [strided[k] for k in grads], upstream)
        want_g = torch.autograd.grad(want[0], [plain[k] for k in grads], upstream)
        for k, g, w in zip(grads, got_g, want_g):
            _compare(g, w, exact, f"{op} grad {k}")


def test_cpu_cases_cover_every_public_op_but_the_drawn_masks():
    # random_mask_indices and tube_mask_indices take no tensor but noise (float32; covered on the GPU below,
    # where their [N, L] index outputs themselves pass 2**31 elements); decoder_mask_indices's indices come from
    # tube_mask_indices and mask_to_indices (covered here and below), its maps from torch's elementwise ops.
    ops = set(mae_kernels.__all__) - {"BackendUnavailable", "use_backend", "apply", "unapply",
                                         "random_mask_indices", "tube_mask_indices", "mae_st_target_frames",
                                         "decoder_mask_indices"}
    assert set(_cpu_cases()) == ops


# ---- GPU: tensors of more than 2**31 elements ------------------------------------------------------------------

TAIL = slice(-3, None)  # the last samples lie entirely past element 2**31 (see big_n)
HEAD = slice(0, 2)


def big_n(per_sample):
    """A batch size whose last two samples start past element 2**31 of a contiguous tensor."""
    n = INT32_LIMIT // per_sample + 3
    assert (n - 2) * per_sample > INT32_LIMIT
    return n


def big_images(channels=3, size=64, dtype=torch.float16):
    n = big_n(channels * size * size)
    return torch.randn(n, channels, size, size, device="cuda", dtype=dtype)


def random_perms(n, length):
    return torch.rand(n, length, device="cuda").argsort(dim=1)


def assert_rows_equal(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    if not torch.equal(got, want):
        idx = tuple(i.item() for i in (got != want).nonzero()[0])
        raise AssertionError(f"{what}: first mismatch at {idx}: {got[idx].item()} != {want[idx].item()}")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_patchify_unpatchify_past_int32(backend):
    need_gpu_memory(14 * GiB)
    imgs = big_images()
    assert imgs.numel() > INT32_LIMIT
    with mae_kernels.use_backend(backend):
        out = mae_kernels.patchify(imgs, 16)
    for rows in (HEAD, TAIL):
        assert_rows_equal(out[rows], reference.patchify(imgs[rows], 16), "patchify")
    with mae_kernels.use_backend(backend):
        back = mae_kernels.unpatchify(out, 16, 64)
    del out
    for rows in (HEAD, TAIL):
        assert_rows_equal(back[rows], imgs[rows], "unpatchify")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_masked_patchify_past_int32(backend):
    need_gpu_memory(10 * GiB)
    imgs = big_images().requires_grad_()
    ids = random_perms(imgs.shape[0], 16)[:, :2]
    with mae_kernels.use_backend(backend):
        out = mae_kernels.masked_patchify(imgs, ids, 16)
    grad = torch.randn_like(out)
    (grad_imgs,) = torch.autograd.grad(out, imgs, grad)  # [N, C, H, W]: written past 2**31
    for rows in (HEAD, TAIL):
        x = imgs[rows].detach().requires_grad_()
        want = reference.masked_patchify(x, ids[rows], 16)
        assert_rows_equal(out[rows], want, "masked_patchify")
        (want_grad,) = torch.autograd.grad(want, x, grad[rows])
        assert_rows_equal(grad_imgs[rows], want_grad, "masked_patchify grad imgs")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_masked_patch_embed_past_int32(backend, no_tf32):
    need_gpu_memory(12 * GiB)
    imgs = big_images().requires_grad_()
    n = imgs.shape[0]
    weight = (torch.randn(8, 3, 16, 16, device="cuda") * 0.05).half()
    bias = torch.randn(8, device="cuda").half()
    pos = torch.randn(1, 17, 8, device="cuda").half()
    ids = random_perms(n, 16)[:, :1]
    with mae_kernels.use_backend(backend):
        out = mae_kernels.masked_patch_embed(imgs, ids, weight, bias, pos)
    grad = torch.randn_like(out)
    (grad_imgs,) = torch.autograd.grad(out, imgs, grad)
    # Loose tolerances: fp16 GEMMs of 768 terms; an offset error gives unrelated values.
    for rows in (HEAD, TAIL):
        x = imgs[rows].detach().float().requires_grad_()
        want = reference.masked_patch_embed(x, ids[rows], weight.float(), bias.float(), pos.float())
        torch.testing.assert_close(out[rows].float(), want, rtol=2e-2, atol=5e-2)
        (want_grad,) = torch.autograd.grad(want, x, grad[rows].float())
        torch.testing.assert_close(grad_imgs[rows].float(), want_grad, rtol=2e-2, atol=2e-2)
    del out, grad, grad_imgs
    # The one-call front end on the same images (random_mask_indices + masked_patch_embed).
    noise = torch.rand(n, 16, device="cuda")
    with mae_kernels.use_backend(backend):
        tokens, mask, ids_restore, ids_keep = mae_kernels.random_masked_patch_embed(
            imgs.detach(), weight, bias, pos, 0.75, noise=noise)
    for rows in (HEAD, TAIL):
        want_keep, want_restore, want_mask = reference.random_mask_indices(noise[rows].shape[0], 16, 0.75,
                                                                          noise[rows])
        assert_rows_equal(ids_keep[rows], want_keep, "random_masked_patch_embed ids_keep")
        assert_rows_equal(ids_restore[rows], want_restore, "random_masked_patch_embed ids_restore")
        assert_rows_equal(mask[rows], want_mask, "random_masked_patch_embed mask")
        want = reference.masked_patch_embed(imgs[rows].detach().float(), want_keep, weight.float(), bias.float(),
                                            pos.float())
        torch.testing.assert_close(tokens[rows].float(), want, rtol=2e-2, atol=5e-2)


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_random_masking_past_int32(backend):
    need_gpu_memory(12 * GiB)
    L_, D_ = 64, 32
    n = big_n(L_ * D_)
    x = torch.randn(n, L_, D_, device="cuda", dtype=torch.float16).requires_grad_()
    noise = torch.rand(n, L_, device="cuda")
    with mae_kernels.use_backend(backend):
        x_masked, mask, ids_restore = mae_kernels.random_masking(x, 0.75, noise=noise)
    grad = torch.randn_like(x_masked)
    (grad_x,) = torch.autograd.grad(x_masked, x, grad)  # [N, L, D]: written past 2**31
    for rows in (HEAD, TAIL):
        xr = x[rows].detach().requires_grad_()
        want = reference.random_masking(xr, 0.75, noise[rows])
        for name, g, w in zip(("x_masked", "mask", "ids_restore"), (x_masked, mask, ids_restore), want):
            assert_rows_equal(g[rows], w, f"random_masking {name}")
        (want_grad,) = torch.autograd.grad(want[0], xr, grad[rows])
        assert_rows_equal(grad_x[rows], want_grad, "random_masking grad x")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_random_mask_indices_past_int32(backend):
    """[N, L] index outputs of more than 2**31 elements (ids_restore alone is 16 GiB)."""
    need_gpu_memory(42 * GiB)
    L_ = 1024
    n = big_n(L_)
    noise = torch.rand(n, L_, device="cuda")
    with mae_kernels.use_backend(backend):
        ids_keep, ids_restore, mask = mae_kernels.random_mask_indices(n, L_, 0.75, noise=noise)
    assert ids_restore.numel() > INT32_LIMIT
    for rows in (HEAD, TAIL):
        want = reference.random_mask_indices(noise[rows].shape[0], L_, 0.75, noise[rows])
        for name, g, w in zip(("ids_keep", "ids_restore", "mask"), (ids_keep, ids_restore, mask), want):
            assert_rows_equal(g[rows], w, f"random_mask_indices {name}")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_tube_mask_indices_past_int32(backend):
    """[N, t*hw] index outputs of more than 2**31 elements (ids_restore alone is 16 GiB)."""
    need_gpu_memory(42 * GiB)
    t, hw = 8, 128
    n = big_n(t * hw)
    noise = torch.rand(n, hw, device="cuda")
    with mae_kernels.use_backend(backend):
        ids_keep, ids_restore, mask = mae_kernels.tube_mask_indices(n, t, hw, 0.75, noise=noise)
    assert ids_restore.numel() > INT32_LIMIT
    for rows in (HEAD, TAIL):
        want = reference.tube_mask_indices(noise[rows].shape[0], t, hw, 0.75, noise[rows])
        for name, g, w in zip(("ids_keep", "ids_restore", "mask"), (ids_keep, ids_restore, mask), want):
            assert_rows_equal(g[rows], w, f"tube_mask_indices {name}")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_mask_to_indices_past_int32(backend):
    """A boolean mask and [N, L] index outputs of more than 2**31 elements."""
    need_gpu_memory(46 * GiB)
    L_, K_ = 1024, 256
    n = big_n(L_)
    bool_mask = torch.rand(n, L_, device="cuda").argsort(dim=1) >= K_  # K_ kept per row
    with mae_kernels.use_backend(backend):
        ids_keep, ids_restore, mask = mae_kernels.mask_to_indices(bool_mask, K_)
    assert ids_restore.numel() > INT32_LIMIT
    for rows in (HEAD, TAIL):
        want = reference.mask_to_indices(bool_mask[rows], K_)
        for name, g, w in zip(("ids_keep", "ids_restore", "mask"), (ids_keep, ids_restore, mask), want):
            assert_rows_equal(g[rows], w, f"mask_to_indices {name}")


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_unshuffle_with_mask_tokens_past_int32(backend):
    need_gpu_memory(22 * GiB)
    L_, K_, D_ = 64, 16, 32
    n = big_n((1 + L_) * D_)
    x = torch.randn(n, 1 + K_, D_, device="cuda", dtype=torch.float16).requires_grad_()
    mask_token = torch.randn(1, 1, D_, device="cuda", requires_grad=True)
    pos = torch.randn(1, 1 + L_, D_, device="cuda", requires_grad=True)
    ids_restore = random_perms(n, L_)
    with mae_kernels.use_backend(backend):
        out = mae_kernels.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos, out_dtype=torch.float16)
    assert out.numel() > INT32_LIMIT
    grad = torch.randn_like(out)
    grad_x, grad_mask, grad_pos = torch.autograd.grad(out, [x, mask_token, pos], grad)
    for rows in (HEAD, TAIL):
        xr = x[rows].detach().requires_grad_()
        want = reference.unshuffle_with_mask_tokens(xr, mask_token.detach(), ids_restore[rows], pos.detach())
        torch.testing.assert_close(out[rows], want.half(), rtol=0, atol=0)  # fp32 maths, one rounding
        (want_grad,) = torch.autograd.grad(want, xr, grad[rows].float())
        torch.testing.assert_close(grad_x[rows], want_grad.half(), rtol=0, atol=0)
    # The parameter gradients sum over every sample (the whole > 2**31-element gradient).
    torch.testing.assert_close(grad_pos[0], grad.sum(0, dtype=torch.float32), rtol=1e-4, atol=5e-2)
    masked = (ids_restore >= K_).unsqueeze(-1)
    want_mask = torch.where(masked, grad[:, 1:], 0).sum((0, 1), dtype=torch.float32)
    torch.testing.assert_close(grad_mask[0, 0], want_mask, rtol=1e-4, atol=2e-1)


@pytest.mark.gpu
@pytest.mark.large
@pytest.mark.parametrize("layout", ["full", "removed_only"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_masked_mse_loss_past_int32(backend, layout):
    """Only the last samples carry loss (mask 0 elsewhere): the loss and its gradients come from rows past
    2**31, compared with the reference on those samples alone."""
    # full: imgs, pred, the stored pred gradient, its fp32 scaling and both gradients (about 28 GiB at peak).
    need_gpu_memory((36 if layout == "full" else 16) * GiB)
    imgs = big_images().requires_grad_()
    n, L_, P_ = imgs.shape[0], 16, 768
    ids_shuffle = random_perms(n, L_)
    K_ = 12
    mask = torch.zeros(n, L_, device="cuda")
    mask[TAIL] = mask[TAIL].scatter(1, ids_shuffle[TAIL, K_:], 1.0)
    if layout == "full":
        pred = torch.randn(n, L_, P_, device="cuda", dtype=torch.float16).requires_grad_()
        extra = {}
    else:
        pred = torch.randn(n, L_ - K_, P_, device="cuda", dtype=torch.float16).requires_grad_()
        extra = {"ids_shuffle": ids_shuffle}
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(pred, imgs, mask, 16, norm_pix_loss=True, **extra)
    grad_pred, grad_imgs = torch.autograd.grad(loss, [pred, imgs])
    pt = pred[TAIL].detach().requires_grad_()
    it = imgs[TAIL].detach().requires_grad_()
    tail_extra = {"ids_shuffle": ids_shuffle[TAIL]} if extra else {}
    with mae_kernels.use_backend("reference"):
        want = mae_kernels.masked_mse_loss(pt, it, mask[TAIL], 16, norm_pix_loss=True, **tail_extra)
    want_pred, want_imgs = torch.autograd.grad(want, [pt, it])
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_pred[TAIL].float(), want_pred.float(), rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(grad_imgs[TAIL].float(), want_imgs.float(), rtol=1e-2, atol=1e-5)
    assert not grad_pred[HEAD].any() and not grad_imgs[HEAD].any()  # no loss there


@pytest.mark.gpu
@pytest.mark.large
def test_gpu_patch_stats_denormalize_past_int32():
    need_gpu_memory(40 * GiB)  # the reference maths: patchified fp32 copies of the 4 GiB fp16 images
    imgs = big_images()
    mean, std = mae_kernels.patch_stats(imgs, 16)
    pred = torch.randn(imgs.shape[0], 16, 768, device="cuda", dtype=torch.float16)
    pixels = mae_kernels.denormalize_pred(pred, imgs, 16)
    for rows in (HEAD, TAIL):
        want_mean, want_std = reference.patch_stats(imgs[rows], 16)
        torch.testing.assert_close(mean[rows], want_mean)
        torch.testing.assert_close(std[rows], want_std)
        torch.testing.assert_close(pixels[rows], reference.denormalize_pred(pred[rows], imgs[rows], 16))
