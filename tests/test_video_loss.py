"""masked_mse_loss, patch_stats, denormalize_pred on videos (MAE_SPEC_VIDEO.md "Target", "norm_pix_loss", "Loss"):
mae_st's linspace target frames with all-channel statistics, VideoMAE's per-patch-per-channel target on
un-normalised pixels (eps added to the std) with predictions of the masked tokens only, raw targets, per-token
losses (reduction="none") and weights (VideoMAEv2's batch-global weighting). Every mode on every CPU backend
against the spec's formulas written out here in float64 (independently of mae_kernels.reference), gradients,
opcheck and torch.compile."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops import masked_mse_loss as loss_ops
from test_masked_mse_loss import assert_close, fp32_tol, ulp

CPU_BACKENDS = ["cpu", "triton", "reference"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Small clips: T=4 frames of 8x12, tubelet 2x4x4 -> t=2, h=2, w=3, L=12, P=96.
N, C, T, H, W = 3, 3, 4, 8, 12
TUBELET = (2, 4, 4)
L = (T // 2) * (H // 4) * (W // 4)


# --- the spec's formulas, float64 -------------------------------------------------------------------------


def spec_patchify(x, u, p0, p1):
    """'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)' (VideoMAE's rearrange, mae_st's einsum)."""
    n, c, t, h, w = x.shape
    x = x.reshape(n, c, t // u, u, h // p0, p0, w // p1, p1)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(n, (t // u) * (h // p0) * (w // p1), u * p0 * p1 * c)


def mae_st_loss64(pred, x, mask, frames, u_pred, eps=1e-6):
    """mae_st forward_loss: target = patchify_{u'}(x[:, :, idx]), norm over the whole patch (unbiased, eps in the
    sqrt), loss = sum(l * m) / sum(m)."""
    target = spec_patchify(x.double()[:, :, frames], u_pred, TUBELET[1], TUBELET[2])
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.e-6 if eps is None else var + eps) ** .5
    loss = ((pred.double() - target) ** 2).mean(dim=-1)
    return (loss * mask.double()).sum() / mask.double().sum()


def videomae_labels64(x, bool_masked_pos, norm=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, eps=1e-6):
    """VideoMAE engine_for_pretraining: unnorm = x * std + mean; per patch and channel
    (v - mean) / (var_unbiased.sqrt() + eps); labels = patches[bool_masked_pos].reshape(B, -1, P)."""
    x = x.double()
    unnorm = x * torch.tensor(std, dtype=x.dtype)[None, :, None, None, None] + \
        torch.tensor(mean, dtype=x.dtype)[None, :, None, None, None]
    patches = spec_patchify(unnorm, *TUBELET)
    B, Lt, P = patches.shape
    if norm:
        sq = patches.reshape(B, Lt, P // C, C)
        sq = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
        patches = sq.reshape(B, Lt, P)
    return patches[bool_masked_pos].reshape(B, -1, P)


def videomae_loss64(pred, x, bool_masked_pos, norm=True):
    """nn.MSELoss()(pred, labels): the mean over every element."""
    return ((pred.double() - videomae_labels64(x, bool_masked_pos, norm)) ** 2).mean()


# --- inputs -----------------------------------------------------------------------------------------------


def make_video(dtype=torch.float32, seed=0, n=N):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, T, H, W, generator=g).to(dtype)


def tube_mask(n=N, visible_per_frame=2, seed=1):
    """VideoMAE's tube masking: one spatial mask per sample repeated over time, equal counts per sample."""
    g = torch.Generator().manual_seed(seed)
    hw = L // (T // 2)
    rows = []
    for _ in range(n):
        m = torch.ones(hw, dtype=torch.bool)
        m[torch.randperm(hw, generator=g)[:visible_per_frame]] = False
        rows.append(m.repeat(T // 2))
    return torch.stack(rows)


def random_mask(n=N, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, L, generator=g) < 0.7).float()


def videomae_ids(bool_masked_pos):
    """ids_shuffle whose last n_mask entries are the masked tokens in ascending order (x[mask] order)."""
    return torch.argsort(bool_masked_pos.to(torch.uint8), dim=1, stable=True)


def run(backend, pred, x, mask, grad_imgs=False, upstream=None, **kw):
    pr = pred.detach().clone().requires_grad_()
    im = x.detach().clone().requires_grad_(grad_imgs)
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(pr, im, mask, TUBELET, **kw)
    inputs = (pr, im) if grad_imgs else (pr,)
    grads = torch.autograd.grad(loss, inputs, upstream)
    return loss.detach(), grads[0], grads[1] if grad_imgs else None


def fp64_grads(fn, pred, x, grad_imgs=False):
    pr = pred.detach().double().requires_grad_()
    im = x.detach().double().requires_grad_(grad_imgs)
    loss = fn(pr, im)
    grads = torch.autograd.grad(loss, (pr, im) if grad_imgs else (pr,))
    return loss.detach(), grads[0], grads[1] if grad_imgs else None


def tolerance(want, dtype, backend, k):
    """fp32: 1e-5 relative; low precision inputs: the same fp32 maths on the rounded inputs, and the pred gradient
    rounded once to the dtype (the Triton interpreter truncates fp32 -> bf16: 1 ulp)."""
    tol = fp32_tol(want, 2e-5)
    if k == 1 and dtype != torch.float32:
        tol = tol + ulp(want, dtype)
    return tol


def check(got, want, dtype, backend, names=("loss", "grad pred", "grad imgs")):
    for k, name in enumerate(names):
        if got[k] is None:
            continue
        assert_close(name, got[k], want[k], tolerance(want[k], dtype, backend, k))


# --- facts quoted by the spec -----------------------------------------------------------------------------


def test_mae_st_target_frames():
    """MAE_SPEC_VIDEO.md mae_st "Target": the linspace frame lists (float32 linspace, truncation)."""
    assert mae_kernels.mae_st_target_frames(16, 8).tolist() == [0, 2, 4, 6, 8, 10, 12, 15]
    assert mae_kernels.mae_st_target_frames(16, 16).tolist() == list(range(16))
    assert mae_kernels.mae_st_target_frames(32, 8).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert mae_kernels.mae_st_target_frames(16, 8).dtype == torch.int64


def test_per_channel_and_all_channel_targets_differ():
    """The spec's per-channel (VideoMAE) and all-channel (mae_st) targets are different functions of the pixels:
    each channel of a per-channel target has mean 0 and std 1 / (1 + eps / std), the all-channel one does not."""
    x = make_video()
    x[:, 1] += 0.5  # channels with other means: the all-channel target keeps the offsets
    labels = videomae_labels64(x, torch.ones(N, L, dtype=torch.bool)).reshape(N, L, -1, C)
    assert labels.mean(dim=2).abs().max() < 1e-12
    mean, std = mae_kernels.patch_stats(x, TUBELET, per_channel=True, pixel_mean=IMAGENET_MEAN,
                                        pixel_std=IMAGENET_STD)
    assert mean.shape == std.shape == (N, L, C)
    all_mean, all_std = mae_kernels.patch_stats(x, TUBELET)
    assert all_mean.shape == (N, L, 1)
    pred = torch.zeros(N, L, TUBELET[0] * TUBELET[1] * TUBELET[2] * C)
    mask = torch.ones(N, L)
    per_channel = mae_kernels.masked_mse_loss(pred, x, mask, TUBELET, per_channel=True)
    all_channel = mae_kernels.masked_mse_loss(pred, x, mask, TUBELET)
    assert abs(per_channel.item() - all_channel.item()) > 1e-3


# --- every mode on every backend --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mae_st(backend, dtype):
    """mae_st: predictions for all L tokens, u' = 1 frame per token from linspace(0, T - 1, t) (T=4, t=2 ->
    frames [0, 3]: the last token row targets the clip's last frame, not its tubelet's first), norm_pix_loss."""
    x = make_video(dtype)
    frames = mae_kernels.mae_st_target_frames(T, T // 2)
    assert frames.tolist() == [0, 3]
    mask = random_mask()
    pred = torch.randn(N, L, TUBELET[1] * TUBELET[2] * C).to(dtype)
    got = run(backend, pred, x, mask, target_frames=frames)
    want = fp64_grads(lambda p, v: mae_st_loss64(p, v, mask, frames, 1), pred, x)
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype
    check(got, want, dtype, backend)
    # two target frames per token (pred_t_dim = T): frames 0..3, as the tubelets' own frames
    pred2 = torch.randn(N, L, 2 * TUBELET[1] * TUBELET[2] * C).to(dtype)
    frames2 = mae_kernels.mae_st_target_frames(T, T)
    got = run(backend, pred2, x, mask, target_frames=frames2)
    check(got, fp64_grads(lambda p, v: mae_st_loss64(p, v, mask, frames2, 2), pred2, x), dtype, backend)
    own = run(backend, pred2, x, mask)
    assert_close("identity frame table vs own frames", got[0], own[0], fp32_tol(own[0]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_videomae(backend, dtype):
    """VideoMAE / HF: tube mask, predictions of the masked tokens in ascending order (pred [N, n_mask, P]), labels
    normalised per patch and channel on ImageNet-un-normalised pixels, nn.MSELoss mean; and norm off."""
    x = make_video(dtype)
    bool_masked_pos = tube_mask()
    n_mask = int(bool_masked_pos[0].sum())
    P = TUBELET[0] * TUBELET[1] * TUBELET[2] * C
    pred = torch.randn(N, n_mask, P).to(dtype)
    ids = videomae_ids(bool_masked_pos)
    for norm in (True, False):
        got = run(backend, pred, x, bool_masked_pos, norm_pix_loss=norm, per_channel=norm, ids_shuffle=ids,
                  pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        want = fp64_grads(lambda p, v: videomae_loss64(p, v, bool_masked_pos, norm), pred, x)
        check(got, want, dtype, backend)
    # predictions for all L rows: the same loss, and the masked rows' gradient
    full = torch.zeros(N, L, P, dtype=dtype)
    full[bool_masked_pos] = pred.reshape(-1, P)
    got_full = run(backend, full, x, bool_masked_pos, per_channel=True, pixel_mean=IMAGENET_MEAN,
                   pixel_std=IMAGENET_STD)
    got = run(backend, pred, x, bool_masked_pos, per_channel=True, ids_shuffle=ids, pixel_mean=IMAGENET_MEAN,
              pixel_std=IMAGENET_STD)
    assert_close("loss, all rows vs masked rows", got_full[0], got[0], fp32_tol(got[0]))
    assert_close("grad, all rows vs masked rows", got_full[1][bool_masked_pos].reshape(got[1].shape), got[1], 0)
    assert (got_full[1][~bool_masked_pos] == 0).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_hf_layout(backend):
    """HF pixel_values [N, T, C, H, W] read as the permuted view (no copy): the same loss and gradient."""
    x = make_video()
    hf = x.permute(0, 2, 1, 3, 4).contiguous()  # pixel_values as HF holds them
    view = hf.permute(0, 2, 1, 3, 4)
    assert not view.is_contiguous()
    bool_masked_pos = tube_mask()
    ids = videomae_ids(bool_masked_pos)
    pred = torch.randn(N, int(bool_masked_pos[0].sum()), 96)
    kw = dict(per_channel=True, ids_shuffle=ids, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    want = run(backend, pred, x, bool_masked_pos, **kw)
    got = run(backend, pred, view, bool_masked_pos, **kw)
    check(got, want, torch.float32, backend)


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "pix"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_video_imgs_gradient(backend, norm):
    """The image rule on tubelets (all channels, own frames): loss and gradients for pred and imgs in float64."""
    x = make_video()
    mask = random_mask()
    pred = torch.randn(N, L, 96)

    def fn(p, v):
        target = spec_patchify(v, *TUBELET)
        if norm:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** .5
        return ((((p - target) ** 2).mean(-1)) * mask.double()).sum() / mask.double().sum()
    got = run(backend, pred, x, mask, grad_imgs=True, norm_pix_loss=norm)
    check(got, fp64_grads(fn, pred, x, grad_imgs=True), torch.float32, backend)
    # strided: a frame-sliced, channels-last-3d view of a larger clip
    big = torch.randn(N, C, T + 3, H, W).to(memory_format=torch.channels_last_3d)
    big[:, :, 2:T + 2] = x
    got_view = run(backend, pred, big[:, :, 2:T + 2], mask, grad_imgs=True, norm_pix_loss=norm)
    check(got_view, got, torch.float32, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_images_per_channel_rectangular(backend):
    """4-D images with (ph, pw) patches and the per-channel target (no tubelet, u = 1)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 8, 12, generator=g)
    pred = torch.randn(2, 4 * 2, 4 * 3 * 2, generator=g)
    mask = (torch.rand(2, 8, generator=g) < 0.5).float()
    mask[:, 0] = 1

    def fn(p, v):
        t = spec_patchify(v.unsqueeze(2), 1, 4, 3).reshape(2, 8, 12, 2)
        t = ((t - t.mean(2, keepdim=True)) / (t.var(2, keepdim=True).sqrt() + 1e-6)).reshape(2, 8, 24)
        return ((((p - t) ** 2).mean(-1)) * mask.double()).sum() / mask.double().sum()
    pr = pred.clone().requires_grad_()
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(pr, x, mask, (4, 3), per_channel=True)
    (gp,) = torch.autograd.grad(loss, pr)
    check((loss.detach(), gp), fp64_grads(fn, pred, x), torch.float32, backend, names=("loss", "grad pred"))


# --- per-token losses and weights ---------------------------------------------------------------------------


def rounded_twice(want, upstream, dtype):
    """Per-token losses scale the pred gradient stored for grad_loss = ones (rounded to the dtype) by each row's
    upstream gradient, then round again: one ulp of the stored value, scaled."""
    if dtype == torch.float32:
        return 0
    u = upstream.double()[..., None]
    return ulp(want / u, dtype) * u.abs()


def _mode_kwargs(mode):
    if mode == "mae_st":
        return dict(target_frames=mae_kernels.mae_st_target_frames(T, T // 2)), TUBELET[1] * TUBELET[2] * C
    return dict(per_channel=True, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD), 96


def _per_token64(mode, pred, x):
    """[N, L] per-token MSE of the spec's targets, float64."""
    if mode == "mae_st":
        frames = mae_kernels.mae_st_target_frames(T, T // 2)
        target = spec_patchify(x.double()[:, :, frames], 1, TUBELET[1], TUBELET[2])
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** .5
    else:
        target = videomae_labels64(x, torch.ones(N, L, dtype=torch.bool))
    return ((pred.double() - target) ** 2).mean(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["mae_st", "videomae"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_reduction_none_and_weights(backend, mode, dtype):
    """reduction="none": l * w * m per token, [N, L] fp32, 0 where no loss is taken; its gradient for an [N, L]
    upstream gradient; weights in the mean: sum(l * w * m) / sum(w * m); differentiable weights."""
    kw, P = _mode_kwargs(mode)
    x = make_video()
    pred = torch.randn(N, L, P).to(dtype)
    mask = random_mask()
    g = torch.Generator().manual_seed(7)
    weight = torch.rand(N, L, generator=g) + 0.25
    up = torch.randn(N, L, generator=g)
    for w in (None, weight):
        wm = mask.double() * (1 if w is None else w.double())
        got = run(backend, pred, x, mask, upstream=up, reduction="none", weight=w, **kw)
        want = fp64_grads(lambda p, v: (_per_token64(mode, p, v) * wm * up.double()).sum(), pred, x)
        assert got[0].shape == (N, L) and got[0].dtype == torch.float32
        assert (got[0][mask == 0] == 0).all()
        per_tok64 = _per_token64(mode, pred, x) * wm
        assert_close("per-token loss", got[0], per_tok64, fp32_tol(per_tok64, 2e-5))
        assert_close("grad pred (none)", got[1], want[1],
                     tolerance(want[1], dtype, backend, 1) + rounded_twice(want[1], up, dtype))
        got = run(backend, pred, x, mask, weight=w, **kw)
        want = fp64_grads(lambda p, v: (_per_token64(mode, p, v) * wm).sum() / wm.sum(), pred, x)
        check(got, want, dtype, backend)
    # weights with a gradient: d loss / d w_l = m_l (l_l - loss) / sum(w m)
    pr = pred.detach().clone().requires_grad_()
    wt = weight.clone().requires_grad_()
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(pr, x, mask, TUBELET, weight=wt, **kw)
    gp, gw = torch.autograd.grad(loss, (pr, wt))
    w64 = weight.double().requires_grad_()
    pr64 = pred.double().requires_grad_()
    loss64 = (_per_token64(mode, pr64, x) * mask.double() * w64).sum() / (mask.double() * w64).sum()
    gp64, gw64 = torch.autograd.grad(loss64, (pr64, w64))
    assert_close("loss (weights with grad)", loss, loss64, fp32_tol(loss64, 2e-5))
    upstream = weight.double() / (mask.double() * weight.double()).sum()  # of the per-token losses
    assert_close("grad pred (weights with grad)", gp, gp64,
                 tolerance(gp64, dtype, backend, 1) + rounded_twice(gp64, upstream, dtype))
    assert_close("grad weight", gw, gw64, fp32_tol(gw64, 2e-5))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_videomae_v2_weighting(backend):
    """VideoMAEv2: predictions for the decoder-visible tokens (ascending), loss over the encoder-masked ones among
    them, sum(l * w) / sum(w) batch-global. As mask = encoder mask & decoder-visible with ids_shuffle putting the
    decoder-visible tokens last, and as weights over all rows."""
    x = make_video()
    enc_mask = tube_mask()
    g = torch.Generator().manual_seed(3)
    dec_vis = torch.zeros(N, L, dtype=torch.bool)
    for n in range(N):
        dec_vis[n, torch.randperm(L, generator=g)[:L // 2]] = True
    n_dec = L // 2
    pred = torch.randn(N, n_dec, 96, generator=g)
    labels = videomae_labels64(x, dec_vis)                       # patches[~decode_masked_pos]
    w = enc_mask[dec_vis].reshape(N, -1).double()                # bool_masked_pos[~decode_masked_pos]
    loss_l = ((pred.double() - labels) ** 2).mean(-1)
    want = (loss_l * w).sum() / w.sum()
    kw = dict(per_channel=True, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    with mae_kernels.use_backend(backend):
        got = mae_kernels.masked_mse_loss(pred, x, enc_mask & dec_vis, TUBELET,
                                          ids_shuffle=videomae_ids(dec_vis), **kw)
        assert_close("v2 loss (mask subset)", got, want, fp32_tol(want))
        full = torch.zeros(N, L, 96)
        full[dec_vis] = pred.reshape(-1, 96)
        got = mae_kernels.masked_mse_loss(full, x, dec_vis, TUBELET, weight=enc_mask.float(), **kw)
        assert_close("v2 loss (weights)", got, want, fp32_tol(want))


# --- patch_stats / denormalize_pred ------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True], ids=["all-channel", "per-channel"])
def test_video_patch_stats_and_denormalize(per_channel):
    x = make_video()
    frames = mae_kernels.mae_st_target_frames(T, T) if not per_channel else None
    kw = dict(per_channel=per_channel, target_frames=frames,
              pixel_mean=IMAGENET_MEAN if per_channel else None, pixel_std=IMAGENET_STD if per_channel else None)
    mean, std = mae_kernels.patch_stats(x, TUBELET, **kw)
    if per_channel:
        target = videomae_labels64(x, torch.ones(N, L, dtype=torch.bool), norm=False)
        v = target.reshape(N, L, -1, C)
        want_mean, want_std = v.mean(2), v.var(2).sqrt() + 1e-6
        normalized = ((v - want_mean[:, :, None]) / want_std[:, :, None]).reshape(N, L, -1)
    else:
        target = spec_patchify(x.double()[:, :, frames], *TUBELET)
        want_mean, want_std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
        normalized = (target - want_mean) / want_std
    assert mean.dtype == std.dtype == torch.float32
    assert_close("mean", mean, want_mean, fp32_tol(want_mean) + 1e-6)
    assert_close("std", std, want_std, fp32_tol(want_std))
    pixels = mae_kernels.denormalize_pred(normalized.float(), x, TUBELET, **kw)
    assert_close("denormalized", pixels, target, 1e-5 * target.abs().max())
    assert reference.unpatchify(pixels, TUBELET, (T, H, W)).shape == x.shape


# --- bad input, opcheck, torch.compile -----------------------------------------------------------------------


def test_bad_input():
    x = make_video(n=2)
    pred = torch.randn(2, L, 96)
    mask = torch.ones(2, L)
    f = mae_kernels.masked_mse_loss
    frames = mae_kernels.mae_st_target_frames(T, T // 2)
    cases = [
        (ValueError, r"pred must have shape \[N=2, L=12 .*P=u\*ph\*pw\*C=96\], got \(2, 12, 95\)",
         lambda: f(pred[..., :-1], x, mask, TUBELET)),
        (ValueError, r"P=u'\*ph\*pw\*C \(u' = target frames per token\)=48\]",
         lambda: f(pred, x, mask, TUBELET, target_frames=frames)),
        (TypeError, r"patch_size must be a triple \(u, ph, pw\)", lambda: f(pred, x, mask, 4)),
        (ValueError, r"video size \(T x H x W\) 4x8x12 must be divisible", lambda: f(pred, x, mask, (3, 4, 4))),
        (TypeError, r"target_frames must have dtype torch.int64", lambda: f(pred, x, mask, TUBELET,
                                                                           target_frames=frames.int())),
        (ValueError, r"target_frames must hold u' frames for each of the t=2 tubelet positions .* got 3",
         lambda: f(pred, x, mask, TUBELET, target_frames=torch.arange(3))),
        (ValueError,
         r"target_frames values must be frame indices in \[0, 4\) \(T = frames of imgs\), got values in \[0, 4\]",
         lambda: f(pred, x, mask, TUBELET, target_frames=torch.tensor([0, 4]))),
        (ValueError, r"target_frames selects frames of videos .* imgs must have 5 dimensions, got 4",
         lambda: f(torch.randn(2, 6, 48), x[:, :, 0], torch.ones(2, 6), 4, target_frames=frames)),
        (ValueError, r"pixel_mean must have 1 or C=3 values \(one per channel\), got 2",
         lambda: f(pred, x, mask, TUBELET, pixel_mean=(0.5, 0.5))),
        (TypeError, r"pixel_std must be a float, a sequence of C=3 floats or a tensor of C values, got str",
         lambda: f(pred, x, mask, TUBELET, pixel_std="imagenet")),
        (ValueError, r"per_channel=True .* needs norm_pix_loss=True, got norm_pix_loss=False",
         lambda: f(pred, x, mask, TUBELET, norm_pix_loss=False, per_channel=True)),
        (TypeError, r"per_channel must be a bool, got int", lambda: f(pred, x, mask, TUBELET, per_channel=1)),
        (ValueError, r"reduction must be one of \('mean', 'none'\), got 'sum'",
         lambda: f(pred, x, mask, TUBELET, reduction="sum")),
        (ValueError, r"weight must have shape \[2, 12\], got \(2, 11\)",
         lambda: f(pred, x, mask, TUBELET, weight=mask[:, :-1])),
        (TypeError, r"weight must have dtype", lambda: f(pred, x, mask, TUBELET, weight=mask.long())),
        (ValueError, r"imgs requires grad, but the gradient with respect to imgs exists only .* pass imgs.detach\(\)",
         lambda: f(pred, x.clone().requires_grad_(), mask, TUBELET, per_channel=True)),
        (ValueError, r"imgs requires grad, but",
         lambda: f(torch.randn(2, L, 48), x.clone().requires_grad_(), mask, TUBELET, target_frames=frames)),
        (ValueError, r"norm_pix_loss needs at least 2 pixels per patch and channel, got 1",
         lambda: f(torch.randn(2, 96, 1), torch.randn(2, 1, 2, 8, 12), torch.ones(2, 96), (2, 1, 1),
                   target_frames=torch.tensor([0]), per_channel=True)),
        (ValueError, r"pred must have shape \[2, 12, 96\], got \(2, 1, 96\)",
         lambda: mae_kernels.denormalize_pred(pred[:, :1], x, TUBELET, per_channel=True)),
        (ValueError, r"target_frames must hold", lambda: mae_kernels.patch_stats(x, TUBELET,
                                                                                target_frames=torch.arange(3))),
    ]
    for backend in CPU_BACKENDS:
        with mae_kernels.use_backend(backend):
            for exc, msg, call in cases:
                with pytest.raises(exc, match=msg):
                    call()


def op_samples(device="cpu", dtypes=(torch.float32, torch.bfloat16)):
    """Video samples of the compiled op's new arguments: (args, kwargs)."""
    x = make_video(n=2).to(device)
    mask = random_mask(n=2).to(device)
    frames = mae_kernels.mae_st_target_frames(T, T // 2, device=device)
    norm = torch.tensor([IMAGENET_STD, IMAGENET_MEAN], device=device)
    ids = torch.stack([torch.randperm(L)[: L // 2] for _ in range(2)]).to(device)
    out = []
    for dtype in dtypes:
        pred = torch.randn(2, L, 96, device=device).to(dtype)
        pred48 = torch.randn(2, L, 48, device=device).to(dtype)
        out += [
            ((pred.clone().requires_grad_(), x, mask, None, list(TUBELET), True, 1e-6, True),
             dict(pixel_norm=norm, per_channel=True)),
            ((pred48.clone().requires_grad_(), x, mask, None, list(TUBELET), True, 1e-6, True),
             dict(target_frames=frames, per_token=True)),
            ((pred[:, : L // 2].clone().requires_grad_(), x, mask, ids, list(TUBELET), False, 1e-6, True),
             dict(pixel_norm=norm, per_token=True)),
            ((pred.detach(), x.to(dtype).clone().requires_grad_(), mask, None, list(TUBELET), True, 1e-6, False), {}),
        ]
    return out


def backward_samples(device="cpu", dtypes=(torch.float32, torch.bfloat16)):
    out = []
    for args, kw in op_samples(device, dtypes):
        pred, x, mask, ids = (a.detach() if isinstance(a, torch.Tensor) else a for a in args[:4])
        g = torch.randn(2, L, device=device) if kw.get("per_token") else torch.tensor(1.5, device=device)
        need_imgs = not kw
        out.append(((g, pred, x, mask, ids, *args[4:7], True, need_imgs), kw))
    return out


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_opcheck(which):
    fw, bw = loss_ops.OPS[which], loss_ops.BACKWARD_OPS[which]
    if fw is None:
        pytest.fail("mae_kernels._C is not built: " + str(mae_kernels._ext.load_error))
    # the Triton twin through the interpreter: fp32 only (its bf16 launches are covered by the mode tests)
    dtypes = (torch.float32,) if which == "triton" else (torch.float32, torch.bfloat16)
    for args, kw in op_samples(dtypes=dtypes):
        torch.library.opcheck(fw, args, kw)
    for args, kw in backward_samples(dtypes=dtypes):
        torch.library.opcheck(bw, args, kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile(backend):
    """The two recipes, one call each, under torch.compile(fullgraph=True), forward and backward."""
    x = make_video()
    bool_masked_pos = tube_mask()
    ids = videomae_ids(bool_masked_pos)
    frames = mae_kernels.mae_st_target_frames(T, T // 2)
    mask = random_mask()
    pred_v = torch.randn(N, int(bool_masked_pos[0].sum()), 96).to(torch.bfloat16)
    pred_s = torch.randn(N, L, 48)

    def step(pv, ps, x, bool_masked_pos, ids, mask, frames):
        videomae = mae_kernels.masked_mse_loss(pv, x, bool_masked_pos, TUBELET, ids_shuffle=ids, per_channel=True,
                                               pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
        mae_st = mae_kernels.masked_mse_loss(ps, x, mask, TUBELET, target_frames=frames)
        per_token = mae_kernels.masked_mse_loss(ps, x, mask, TUBELET, target_frames=frames, reduction="none")
        return videomae, mae_st, per_token

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    with mae_kernels.use_backend(backend):
        want = [(pred_v.clone().requires_grad_(), pred_s.clone().requires_grad_()) for _ in range(2)]
        outs = []
        for fn, (pv, ps) in zip((step, compiled), want):
            a, b, c = fn(pv, ps, x, bool_masked_pos, ids, mask, frames)
            (a + b + (c * torch.linspace(0, 1, L)).sum()).backward()
            outs.append((a.detach(), b.detach(), c.detach(), pv.grad, ps.grad))
    for name, got, ref in zip(("videomae", "mae_st", "per-token", "grad videomae", "grad mae_st"), *outs[::-1]):
        assert_close(name, got, ref, fp32_tol(ref) + (ulp(ref, torch.bfloat16) if name == "grad videomae" else 0))


def test_spec_shape_mae_st_and_videomae():
    """The spec's shapes: T=16 at 224 px (one sample), tubelet 2x16x16, L=1568: mae_st with pred_t_dim=8 (frames
    [0, 2, ..., 12, 15], P=768, random masking to 156 kept) and VideoMAE (tube mask, 160 visible / 1408 masked,
    P=1536), the cpu backend against the spec's formulas in float64."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(1, 3, 16, 224, 224, generator=g)
    Lf = 1568
    frames = mae_kernels.mae_st_target_frames(16, 8)
    _, _, mask = reference.random_mask_indices(1, Lf, 0.9, generator=g)
    assert int(mask.sum()) == Lf - 156
    pred = torch.randn(1, Lf, 768, generator=g)
    with mae_kernels.use_backend("cpu"):
        got = mae_kernels.masked_mse_loss(pred, x, mask, (2, 16, 16), target_frames=frames)
    target = spec_patchify(x.double()[:, :, frames], 1, 16, 16)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** .5
    want = (((pred.double() - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    assert_close("mae_st loss at L=1568", got, want, fp32_tol(want))
    keep = torch.randperm(196, generator=g)[:196 - int(0.9 * 196)]
    spatial = torch.ones(196, dtype=torch.bool)
    spatial[keep] = False
    bool_masked_pos = spatial.repeat(8)[None]
    assert int((~bool_masked_pos).sum()) == 160 and int(bool_masked_pos.sum()) == 1408
    pred = torch.randn(1, 1408, 1536, generator=g)
    with mae_kernels.use_backend("cpu"):
        got = mae_kernels.masked_mse_loss(pred, x, bool_masked_pos, (2, 16, 16), per_channel=True,
                                          ids_shuffle=videomae_ids(bool_masked_pos), pixel_mean=IMAGENET_MEAN,
                                          pixel_std=IMAGENET_STD)
    unnorm = x.double() * torch.tensor(IMAGENET_STD, dtype=torch.float64)[:, None, None, None] + \
        torch.tensor(IMAGENET_MEAN, dtype=torch.float64)[:, None, None, None]
    v = spec_patchify(unnorm, 2, 16, 16).reshape(1, Lf, 512, 3)
    v = ((v - v.mean(2, keepdim=True)) / (v.var(2, keepdim=True).sqrt() + 1e-6)).reshape(1, Lf, 1536)
    want = ((pred.double() - v[bool_masked_pos].reshape(1, -1, 1536)) ** 2).mean()
    assert_close("VideoMAE loss at L=1568", got, want, fp32_tol(want))


# --- GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_video_modes(backend, dtype):
    """Every mode on the GPU backends against the spec's float64 formulas, and opcheck of the cuda op."""
    x = make_video(dtype).cuda()
    bool_masked_pos = tube_mask().cuda()
    ids = videomae_ids(bool_masked_pos)
    pred = torch.randn(N, int(bool_masked_pos[0].sum().item()), 96, device="cuda").to(dtype)
    got = run(backend, pred, x, bool_masked_pos, per_channel=True, ids_shuffle=ids, pixel_mean=IMAGENET_MEAN,
              pixel_std=IMAGENET_STD)
    check(got, fp64_grads(lambda p, v: videomae_loss64(p.cpu(), v.cpu(), bool_masked_pos.cpu()), pred, x), dtype,
          backend)
    frames = mae_kernels.mae_st_target_frames(T, T // 2, device="cuda")
    mask = random_mask().cuda()
    pred = torch.randn(N, L, 48, device="cuda").to(dtype)
    got = run(backend, pred, x, mask, target_frames=frames)
    check(got, fp64_grads(lambda p, v: mae_st_loss64(p.cpu(), v.cpu(), mask.cpu(), frames.cpu(), 1), pred, x),
          dtype, backend)
    up = torch.randn(N, L, device="cuda")
    got = run(backend, pred, x, mask, upstream=up, target_frames=frames, reduction="none")
    want = fp64_grads(lambda p, v: (_per_token64("mae_st", p.cpu(), v.cpu()) * mask.cpu().double()
                                    * up.cpu().double()).sum(), pred, x)
    assert_close("grad pred (none)", got[1], want[1],
                 tolerance(want[1], dtype, backend, 1) + rounded_twice(want[1], up.cpu(), dtype))
    if backend == "cuda":
        for args, kw in op_samples("cuda"):
            torch.library.opcheck(loss_ops.OPS["cuda"], args, kw)
        for args, kw in backward_samples("cuda"):
            torch.library.opcheck(loss_ops.BACKWARD_OPS["cuda"], args, kw)
