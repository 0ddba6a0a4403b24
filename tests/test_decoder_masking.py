"""Dual masking (VideoMAE v2, ../shared/MAE_SPEC_VIDEO.md) end to end: the spec's counts at 224 px / 16 frames
through append_mask_tokens and through the video model, and the models' decoder_mask_ratio (0: today's model bit
for bit; > 0: fused == eager, the loss == v2's formula restated here; decoder_mask_scope "all" (v2) and "removed")
for MaskedAutoencoderViT and VideoMaskedAutoencoderViT (eval decodes all, torch.compile). The generators:
tests/test_decoder_mask_indices.py."""
import copy

import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.models.mae import MaskedAutoencoderViT
from mae_kernels.models.video_mae import VideoMaskedAutoencoderViT


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_videomae_v2_counts_at_224_16_frames():
    """Tube 0.9 + run cell 0.5, 8 x 14 x 14 tokens: the encoder sees 160, the decoder 160 + 784 = 944 rows,
    784 predictions, 704 of them in the loss; the 80 others are encoder-visible and decoded."""
    t, hw = 8, 196
    visible = torch.randperm(hw, generator=_gen(5))[:hw - int(0.9 * hw)]
    enc_masked = torch.ones(t, hw, dtype=torch.bool)
    enc_masked[:, visible] = False
    enc_masked = enc_masked.reshape(1, -1)
    ids_dec, _, dec = mae_kernels.decoder_mask_indices(1, t, 14, 14, 0.5, generator=_gen(6))
    dec = dec.bool()
    ids_keep = (~enc_masked).nonzero()[:, 1][None]
    out = mae_kernels.append_mask_tokens(torch.zeros(1, 160, 4), torch.zeros(1, 1, 4), ids_keep, ids_dec,
                                         torch.zeros(1, t * hw, 4))
    in_loss = int((enc_masked & ~dec).sum())
    assert (ids_keep.shape[1], ids_dec.shape[1], out.shape[1], in_loss, 784 - in_loss) == (160, 784, 944, 704, 80)


def _small(**kwargs):
    """32 x 32 images, 8 x 8 patches (a 4 x 4 grid, P = 192), one block each side."""
    return MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                                decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True, **kwargs)


def _models(ratio, fused=True):
    torch.manual_seed(0)
    return _small(decoder_mask_ratio=ratio, use_fused_ops=fused)


def test_ratio_zero_is_the_official_model_bit_for_bit():
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    for fused in (True, False):
        a, b = _models(0.0, fused), _small(use_fused_ops=fused)
        b.load_state_dict(a.state_dict())
        la, pa, ma = a(imgs, 0.75, noise)
        lb, pb, mb = b(imgs, 0.75, noise)
        assert torch.equal(la, lb) and torch.equal(pa, pb) and torch.equal(ma, mb)


@pytest.mark.parametrize("scope", ["all", "removed"])
@pytest.mark.parametrize("kind", ["run_cell", "random"])
def test_dual_masking_fused_equals_eager_and_v2s_loss(kind, scope):
    """Same weights, noise and decoder mask: fused and eager losses, predictions and gradients agree; the loss
    is v2's sum(l * w) / sum(w) over the decoded rows, w = encoder-removed (restated from pred and imgs).
    Scope "removed": only encoder-removed positions decoded (4 x 4 grid, 12 removed: 6), every one in the loss."""
    fused = _models(0.5)
    fused.decoder_mask_type, fused.decoder_mask_scope = kind, scope
    eager = copy.deepcopy(fused)
    eager.use_fused_ops = False
    imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
    enc_mask = reference.random_mask_indices(4, 16, 0.75, noise)[2]
    ids_dec, _, dec = fused.sample_decoder_mask(4, "cpu", _gen(8), encoder_mask=enc_mask, num_removed=12)
    dec, M = dec.bool(), ids_dec.shape[1]
    assert M == (8 if scope == "all" else 6)
    lf, pf, mask = fused(imgs, 0.75, noise, decoder_mask=dec)
    le, pe, _ = eager(imgs, 0.75, noise, decoder_mask=dec)
    assert torch.equal(mask, enc_mask) and pf.shape == (4, M, 192)
    torch.testing.assert_close(pf, pe, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lf, le, rtol=1e-5, atol=1e-6)
    lf.backward()
    le.backward()
    for (name, a), b in zip(fused.named_parameters(), eager.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(ids_dec, torch.stack([(~dec[n]).nonzero()[:, 0] for n in range(4)]))
    target = reference.patchify(imgs, 8).double().gather(1, ids_dec[..., None].expand(-1, -1, 192))
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    rows = ((pf.detach().double() - target) ** 2).mean(-1)
    w = mask.double().gather(1, ids_dec)
    if scope == "all":
        assert 0 < w.sum() < w.numel()  # some decoded positions are encoder-visible, out of the loss
    else:
        assert torch.all(w == 1)  # every mask token carries a loss
    torch.testing.assert_close(lf.double(), (rows * w).sum() / w.sum(), rtol=1e-5, atol=0)


def test_training_mode_draws_the_decoder_mask_eval_decodes_all():
    model = _models(0.5)
    imgs = torch.randn(2, 3, 32, 32)
    assert model(imgs)[1].shape == (2, 8, 192)
    model.eval()
    assert model(imgs)[1].shape == (2, 16, 192)
    with pytest.raises(ValueError, match="decoder_mask_type must be one of"):
        _small(decoder_mask_type="cells")


# --- the video model (mae_st's structure) ------------------------------------------------------------------


def _video(**kw):
    """8 frames of 16 x 16, 2 x 4 x 4 tubelets: t, h, w = 4, 4, 4 (L = 64), one block each side."""
    cfg = dict(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8, decoder_depth=1,
               decoder_num_heads=2, num_frames=8, t_patch_size=2, pred_t_dim=4, sep_pos_embed=True, cls_embed=True,
               norm_pix_loss=True)
    cfg.update(kw)
    return VideoMaskedAutoencoderViT(**cfg)


def _noise(model, N, seed):
    t, h, w = model.input_size
    return torch.rand(N, h * w if model.mask_type == "tube" else t * h * w, generator=_gen(seed))


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _rows_seen(module):
    seen = []
    return seen, module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
@pytest.mark.parametrize("mask_type", ["random", "tube"])
def test_video_ratio_zero_and_eval_are_todays_model_bit_for_bit(fused, mask_type):
    """decoder_mask_ratio 0 in training mode, and 0.5 in eval mode (every position decoded, as v2 reconstructs):
    the same loss, predictions, mask and gradients as the model without the options, for the same noise."""
    torch.manual_seed(0)
    base = _video(use_fused_ops=fused, mask_type=mask_type)
    x, noise = torch.randn(2, 3, 8, 16, 16), _noise(base, 2, 1)
    lb, pb, mb = base(x, 0.75, noise)
    lb.backward()
    want = _grads(base)
    assert len(want) == sum(1 for _ in base.parameters())
    for kw, training in ((dict(decoder_mask_ratio=0.0), True),
                         (dict(decoder_mask_ratio=0.5), False),
                         (dict(decoder_mask_ratio=0.5, decoder_mask_type="random", decoder_mask_scope="removed"),
                          False)):
        m = _video(use_fused_ops=fused, mask_type=mask_type, **kw)
        m.load_state_dict(base.state_dict())
        m.train(training)
        loss, pred, mask = m(x, 0.75, noise)
        loss.backward()
        assert torch.equal(loss, lb) and torch.equal(pred, pb) and torch.equal(mask, mb), kw
        got = _grads(m)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), kw


def v2_loss(x, pred, ids_dec, enc_mask, frames, u, p, norm_pix):
    """VideoMAE v2's loss (MAE_SPEC_VIDEO.md "VideoMAEv2") in float64 with this model's target (mae_st's target
    frames, per-patch normalisation over all channels, unbiased, eps in the sqrt): labels = the target patches of
    the decoded positions (ascending), w = encoder-removed among them, sum(l * w) / sum(w), l = mean over P."""
    xs = x.double().index_select(2, frames)
    N, C, T, H, W = xs.shape
    target = torch.einsum("nctuhpwq->nthwupqc", xs.reshape(N, C, T // u, u, H // p, p, W // p, p))
    target = target.reshape(N, -1, u * p * p * C)
    labels = target.gather(1, ids_dec[..., None].expand(-1, -1, target.shape[-1]))
    if norm_pix:
        labels = (labels - labels.mean(-1, keepdim=True)) / (labels.var(-1, keepdim=True) + 1e-6) ** 0.5
    rows = ((pred.detach().double() - labels) ** 2).mean(-1)
    w = enc_mask.double().gather(1, ids_dec)
    return (rows * w).sum() / w.sum(), w


@pytest.mark.parametrize("scope", ["all", "removed"])
@pytest.mark.parametrize("kw", [
    {},
    dict(mask_type="tube", norm_pix_loss=False),
    dict(mask_type="tube", decoder_mask_type="random", cls_embed=False, sep_pos_embed=False),
    dict(mask_type="tube", pred_t_dim=8),  # u' = u = 2: v2's whole-tubelet target
], ids=["mae_st-run_cell", "tube-raw", "tube-random-nocls", "tube-tubelet"])
def test_video_dual_masking_fused_equals_eager_and_v2s_loss(kw, scope):
    """Training mode, decoder ratio 0.5: the drawn decoder mask (seeded) == a given one; fused and eager agree
    (loss, the decoded rows' predictions, every gradient); the decoder sees (1 +) K + M rows; the loss is v2's
    formula over the encoder-removed decoded positions. Scope "all": M = 32 of L = 64 (some encoder-visible, out
    of the loss); "removed": M = 24 of the 48 removed, all in the loss."""
    torch.manual_seed(3)
    fused = _video(decoder_mask_ratio=0.5, decoder_mask_scope=scope, **kw)
    eager = copy.deepcopy(fused)
    eager.use_fused_ops = False
    N, L, c = 3, 64, int(fused.cls_embed)
    x, noise = torch.randn(N, 3, 8, 16, 16), _noise(fused, N, 4)
    enc_mask = fused.mask_indices(N, 0.75, noise)[2]
    torch.manual_seed(11)
    ids_dec, _, dec = fused.sample_decoder_mask(N, "cpu", encoder_mask=enc_mask, num_removed=48)
    M = ids_dec.shape[1]
    assert M == (32 if scope == "all" else 24)
    rows, hook = _rows_seen(fused.decoder_blocks[0])
    torch.manual_seed(11)  # the forward draws the same decoder mask
    lf, pf, mf = fused(x, 0.75, noise)
    lg, pg, _ = fused(x, 0.75, noise, decoder_mask=dec.bool())
    hook.remove()
    assert torch.equal(lf, lg) and torch.equal(pf, pg) and torch.equal(mf, enc_mask)
    assert rows == [c + 16 + M] * 2 and pf.shape == (N, M, fused.decoder_pred.out_features)
    torch.manual_seed(11)
    le, pe, me = eager(x, 0.75, noise)
    assert torch.equal(me, mf)
    torch.testing.assert_close(pf, pe, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lf, le, rtol=1e-5, atol=1e-6)
    lf.backward()
    le.backward()
    gf, ge = _grads(fused), _grads(eager)
    assert gf.keys() == ge.keys() and len(gf) == sum(1 for _ in fused.parameters())
    scale = max(g.abs().max() for g in ge.values())
    for k in ge:
        torch.testing.assert_close(gf[k], ge[k], rtol=1e-4, atol=1e-5 * scale, msg=lambda s, k=k: f"{k}: {s}")
    want, w = v2_loss(x, pf, ids_dec, enc_mask, fused.target_frames, fused.t_pred_patch_size, 4,
                      fused.norm_pix_loss)
    torch.testing.assert_close(lf.double(), want, rtol=1e-5, atol=0)
    if scope == "all":
        assert 0 < w.sum() < w.numel()  # encoder-visible decoded positions carry no loss
    else:
        assert torch.all(w == 1)


@pytest.mark.parametrize("scope, rows, in_loss, visible", [("all", 944, 704, 80), ("removed", 864, 704, 0)])
def test_video_v2_counts_at_224_16_frames(scope, rows, in_loss, visible):
    """The video model at v2's geometry (224 px, 16 frames, tubelet 2, tube 0.9, run_cell 0.5; no cls, as v2;
    tiny widths): the encoder keeps 160, the decoder sees 160 + 784 = 944 rows (scope "removed": 160 + 704),
    784 (704) predictions of 2 x 16 x 16 x 3 = 1536 values, 704 in the loss, 80 (0) encoder-visible decoded."""
    torch.manual_seed(0)
    m = VideoMaskedAutoencoderViT(img_size=224, patch_size=16, embed_dim=8, depth=1, num_heads=1,
                                  decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=1, num_frames=16,
                                  t_patch_size=2, pred_t_dim=16, sep_pos_embed=True, cls_embed=False,
                                  mask_type="tube", norm_pix_loss=True, decoder_mask_ratio=0.5,
                                  decoder_mask_scope=scope)
    x = torch.randn(1, 3, 16, 224, 224)
    seen, hook = _rows_seen(m.decoder_blocks[0])
    torch.manual_seed(1)
    with torch.no_grad():
        loss, pred, mask = m(x, 0.9)
    hook.remove()
    torch.manual_seed(1)
    noise = torch.rand(1, 196)  # the forward's draws: the tube noise, then the decoder mask
    ids_dec = m.sample_decoder_mask(1, "cpu", encoder_mask=mask, num_removed=1408)[0]
    assert torch.equal(mask, m.mask_indices(1, 0.9, noise)[2])
    w = mask.gather(1, ids_dec)
    assert (int(1568 - mask.sum()), seen, pred.shape) == (160, [rows], (1, rows - 160, 1536))
    assert (int(w.sum()), int((1 - w).sum())) == (in_loss, visible)
    assert torch.isfinite(loss)


def test_video_compile_fullgraph_dual():
    """The training-mode dual-masking forward (decoder mask drawn inside) traces as one graph and gives the
    uncompiled model's loss, predictions and gradients for the same seed. Scope "removed" with run_cell draws
    every op scope "all" does (the start, the running-cell map, mask_to_indices) and more (the tie-break noise,
    the ranking): one compile covers both (compiles cost CI seconds)."""
    scope = "removed"
    torch._dynamo.reset()
    torch.manual_seed(5)
    m = _video(decoder_mask_ratio=0.5, decoder_mask_scope=scope)
    x, noise = torch.randn(2, 3, 8, 16, 16), _noise(m, 2, 6)
    torch.manual_seed(7)
    loss, pred, _ = m(x, 0.75, noise)
    loss.backward()
    want = _grads(m)
    m.zero_grad()
    torch.manual_seed(7)
    closs, cpred, _ = torch.compile(m, fullgraph=True, backend="aot_eager")(x, 0.75, noise)
    closs.backward()
    assert cpred.shape == pred.shape == (2, 32 if scope == "all" else 24, 48)
    torch.testing.assert_close(closs, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cpred, pred, rtol=1e-5, atol=1e-5)
    for k, g in _grads(m).items():
        torch.testing.assert_close(g, want[k], rtol=1e-4, atol=1e-6)


def test_video_bad_options():
    for kw, msg in ((dict(decoder_mask_type="cells"), "decoder_mask_type must be one of"),
                    (dict(decoder_mask_scope="visible"), r"decoder_mask_scope must be one of \('all', 'removed'\)"),
                    (dict(decoder_mask_ratio=1.0), r"decoder_mask_ratio must be in \[0, 1\), got 1.0")):
        with pytest.raises(ValueError, match=msg):
            _video(**kw)
    m = _video(decoder_mask_ratio=0.5)
    with pytest.raises(ValueError, match=r"decoder_mask must have shape \[2, 64\], got \(2, 63\)"):
        m(torch.randn(2, 3, 8, 16, 16), 0.75, decoder_mask=torch.zeros(2, 63, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_video_dual_masking_backends_equal_eager(backend):
    """The fused dual-masking steps (decoder masks, append_mask_tokens, the loss over v2's token set with
    mae_st's target frames) on the other CPU-capable backends (the tests above run cpu's; triton: its
    interpreter) give the eager loss and grads."""
    torch.manual_seed(4)
    fused = _video(decoder_mask_ratio=0.5)
    eager = copy.deepcopy(fused)
    eager.use_fused_ops = False
    x, noise = torch.randn(2, 3, 8, 16, 16), _noise(fused, 2, 5)
    torch.manual_seed(6)
    l1, p1, _ = eager(x, 0.75, noise)
    l1.backward()
    torch.manual_seed(6)
    with mae_kernels.use_backend(backend):
        l2, p2, _ = fused(x, 0.75, noise)
        l2.backward()
    assert p2.shape == (2, 32, 48)
    torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    g1, g2 = _grads(eager), _grads(fused)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6, msg=lambda s, k=k: f"{k}: {s}")
