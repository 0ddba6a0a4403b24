"""VideoMaskedAutoencoderViT (mae_st's spatiotemporal MAE): mae_st's parameter names and shapes (written here from
MAE_SPEC_VIDEO.md, not read from the model) and a strict state_dict round trip; mae_st's formulas restated
eagerly in this file (separable pos, encoder input in noise order, the decoder's own cls token, linspace target
frames, unbiased norm_pix, the masked mean); fused == eager loss and every gradient; tube masking; compile;
`mae-kernels pretrain --video` on the synthesised clips (resume included; dual masking's flags) and on a folder of
video files. The model's dual masking: tests/test_decoder_masking.py."""
import os

import pytest
import torch
import torch.nn.functional as F

from mae_kernels.models.video_mae import (VIDEO_MODELS, VideoMaskedAutoencoderViT, mae_st_vit_base_patch16,
                                          mae_st_vit_huge_patch14, mae_st_vit_large_patch16, mae_st_vit_tiny,
                                          target_frame_indices, tube_mask_indices)


def small(**kw):
    cfg = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8,
               decoder_depth=1, decoder_num_heads=2, num_frames=4, t_patch_size=2, pred_t_dim=2,
               sep_pos_embed=True, cls_embed=True, norm_pix_loss=True)
    cfg.update(kw)
    return VideoMaskedAutoencoderViT(**cfg)


def block_shapes(prefix, depth, dim, qkv_bias=True):
    out = {}
    for i in range(depth):
        b = f"{prefix}.{i}."
        out.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "norm2.weight": (dim,),
                    b + "norm2.bias": (dim,), b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                    b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                    b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
        for name in "qkv":  # mae_st: separate q, k, v Linears
            out[b + f"attn.{name}.weight"] = (dim, dim)
            if qkv_bias:
                out[b + f"attn.{name}.bias"] = (dim,)
    return out


def mae_st_shapes(D, depth, Dd, dec_depth, p, u, t, h, w, C=3, u_pred=1, sep=True, cls=True, qkv_bias=True):
    """mae_st models_mae.MaskedAutoencoderViT's state_dict names and shapes (MAE_SPEC_VIDEO.md "mae_st")."""
    L, c = t * h * w, int(cls)
    out = {"patch_embed.proj.weight": (D, C, u, p, p), "patch_embed.proj.bias": (D,), "norm.weight": (D,),
           "norm.bias": (D,), "decoder_embed.weight": (Dd, D), "decoder_embed.bias": (Dd,),
           "mask_token": (1, 1, Dd), "decoder_norm.weight": (Dd,), "decoder_norm.bias": (Dd,),
           "decoder_pred.weight": (u_pred * p * p * C, Dd), "decoder_pred.bias": (u_pred * p * p * C,)}
    if cls:
        out.update({"cls_token": (1, 1, D), "decoder_cls_token": (1, 1, Dd)})
    if sep:
        out.update({"pos_embed_spatial": (1, h * w, D), "pos_embed_temporal": (1, t, D),
                    "decoder_pos_embed_spatial": (1, h * w, Dd), "decoder_pos_embed_temporal": (1, t, Dd)})
        if cls:
            out.update({"pos_embed_class": (1, 1, D), "decoder_pos_embed_class": (1, 1, Dd)})
    else:
        out.update({"pos_embed": (1, L + c, D), "decoder_pos_embed": (1, L + c, Dd)})
    out.update(block_shapes("blocks", depth, D, qkv_bias))
    out.update(block_shapes("decoder_blocks", dec_depth, Dd, qkv_bias))
    return out


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("factory, D, depth, p", [(mae_st_vit_base_patch16, 768, 12, 16),
                                                  (mae_st_vit_large_patch16, 1024, 24, 16),
                                                  (mae_st_vit_huge_patch14, 1280, 32, 14)])
def test_factories_have_mae_st_names_and_shapes(factory, D, depth, p):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = factory()
    g = 224 // p  # main_pretrain: 224 px, 16 frames, t_patch_size 2 -> t = 8; decoder 512 / 8
    assert shapes_of(model) == mae_st_shapes(D, depth, 512, 8, p, 2, 8, g, g)
    assert model.target_frames.tolist() == [0, 2, 4, 6, 8, 10, 12, 15]


@pytest.mark.parametrize("kw, shape_kw", [
    ({}, dict(u=2, t=2, h=4, w=4)),
    (dict(sep_pos_embed=False, cls_embed=False, no_qkv_bias=True), dict(u=2, t=2, h=4, w=4, sep=False, cls=False,
                                                                        qkv_bias=False)),
    (dict(sep_pos_embed=False, cls_embed=True), dict(u=2, t=2, h=4, w=4, sep=False)),
    (dict(t_patch_size=4, pred_t_dim=4, num_frames=8), dict(u=4, t=2, h=4, w=4, u_pred=2)),
    (dict(img_size=(8, 20), in_chans=1), dict(u=2, t=2, h=2, w=5, C=1)),  # non-square frames, one channel
])
def test_strict_state_dict_round_trip(kw, shape_kw):
    model = small(**kw)
    assert shapes_of(model) == mae_st_shapes(16, 1, 8, 1, 4, **shape_kw)
    sd = {k: torch.randn(s) for k, s in mae_st_shapes(16, 1, 8, 1, 4, **shape_kw).items()}
    other = small(**kw)
    other.load_state_dict(sd, strict=True)
    model.load_state_dict(other.state_dict(), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert "target_frames" not in model.state_dict()  # a non-persistent buffer: checkpoints stay mae_st's


def test_init_matches_mae_st():
    torch.manual_seed(0)
    m = small(embed_dim=64, num_heads=4)
    for name in ("cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class",
                 "decoder_pos_embed_spatial", "decoder_pos_embed_temporal", "decoder_pos_embed_class"):
        v = getattr(m, name)  # trunc_normal(std 0.02): cut at +-2 (never reached at this std), not zero
        assert v.abs().max() < 0.2 and v.std() > 0.005, name
    assert torch.all(m.decoder_cls_token == 0)  # mae_st never initialises it: zeros
    w = m.patch_embed.proj.weight
    fan_in, fan_out = w[0].numel(), w.shape[0]  # xavier_uniform on the [D, C*u*p*p] view
    assert w.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5
    assert torch.all(m.blocks[0].attn.q.bias == 0) and torch.all(m.decoder_pred.bias == 0)
    assert torch.all(m.norm.weight == 1) and m.norm.eps == 1e-5  # class default norm_layer: nn.LayerNorm
    assert mae_st_vit_tiny().norm.eps == 1e-6  # factories: LayerNorm eps 1e-6 as mae_st's


# --- mae_st's formulas, restated ----------------------------------------------------------------------------


def test_target_frames_linspace():
    assert target_frame_indices(16, 8).tolist() == [0, 2, 4, 6, 8, 10, 12, 15]  # not uniform: the last is 15
    assert target_frame_indices(16, 16).tolist() == list(range(16))
    assert target_frame_indices(32, 8).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert small(num_frames=8, pred_t_dim=4).target_frames.tolist() == [0, 2, 4, 7]
    with pytest.raises(ValueError, match="pred_t_dim 3 must be a multiple"):
        small(num_frames=8, pred_t_dim=3)


@pytest.mark.parametrize("sep", [True, False])
def test_separable_positional_embedding(sep):
    m = small(img_size=(8, 12), sep_pos_embed=sep)
    t, h, w = m.input_size
    hw = h * w
    pos, pos_cls = m.encoder_pos()
    dpos = m.decoder_pos()
    for l in range(t * hw):
        if sep:  # pos[l] = spatial[l % hw] + temporal[l // hw]
            want = m.pos_embed_spatial[0, l % hw] + m.pos_embed_temporal[0, l // hw]
            dwant = m.decoder_pos_embed_spatial[0, l % hw] + m.decoder_pos_embed_temporal[0, l // hw]
        else:  # one table, cls row first
            want, dwant = m.pos_embed[0, 1 + l], m.decoder_pos_embed[0, 1 + l]
        torch.testing.assert_close(pos[0, l], want, rtol=0, atol=0)
        torch.testing.assert_close(dpos[0, 1 + l], dwant, rtol=0, atol=0)
    assert torch.equal(pos_cls, m.pos_embed_class if sep else m.pos_embed[:, :1])
    assert torch.equal(dpos[:, :1], m.decoder_pos_embed_class if sep else m.decoder_pos_embed[:, :1])


def capture_inputs(module):
    seen = []
    handle = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen, handle


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_encoder_and_decoder_inputs(fused):
    """blocks[0] gets [cls + pos_class, W . tubelet(ids_keep[k]) + b + pos[ids_keep[k]]] in ascending noise order;
    decoder_blocks[0] gets [decoder_cls + decoder_pos_class (not the encoder's cls output), the embedded kept
    token or mask_token at each position + decoder pos]."""
    torch.manual_seed(1)
    m = small(img_size=(8, 12), use_fused_ops=fused)
    N, (t, h, w) = 2, m.input_size
    L = t * h * w
    x, noise = torch.randn(N, 3, 4, 8, 12), torch.rand(N, L)
    enc_in, h1 = capture_inputs(m.blocks[0])
    dec_in, h2 = capture_inputs(m.decoder_blocks[0])
    latent_out, h3 = [], m.norm.register_forward_hook(lambda mod, a, out: latent_out.append(out.detach()))
    _, _, mask = m(x, 0.75, noise)
    for hd in (h1, h2, h3):
        hd.remove()
    K = int(L * (1 - 0.75))
    ids_keep = torch.argsort(noise, dim=1)[:, :K]
    w3 = m.patch_embed.proj.weight
    tokens = F.conv3d(x, w3, m.patch_embed.proj.bias, stride=w3.shape[2:]).flatten(2).transpose(1, 2)
    pos = m.pos_embed_spatial.repeat(1, t, 1) + m.pos_embed_temporal.repeat_interleave(h * w, dim=1)
    kept = torch.stack([tokens[n, ids_keep[n]] + pos[0, ids_keep[n]] for n in range(N)])
    want = torch.cat([(m.cls_token + m.pos_embed_class).expand(N, -1, -1), kept], 1)
    torch.testing.assert_close(enc_in[0], want.detach(), rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, (torch.argsort(torch.argsort(noise, 1), 1) >= K).float())
    y = m.decoder_embed(latent_out[0][:, 1:])  # the encoder's cls output is dropped
    dpos = m.decoder_pos_embed_spatial.repeat(1, t, 1) + m.decoder_pos_embed_temporal.repeat_interleave(h * w, 1)
    rank = torch.argsort(torch.argsort(noise, 1), 1)
    for n in range(N):
        torch.testing.assert_close(dec_in[0][n, 0], (m.decoder_cls_token + m.decoder_pos_embed_class)[0, 0].detach())
        for l in range(L):
            body = y[n, rank[n, l]] if rank[n, l] < K else m.mask_token[0, 0]
            torch.testing.assert_close(dec_in[0][n, 1 + l], (body + dpos[0, l]).detach(), rtol=1e-5, atol=1e-5)


def mae_st_loss(x, pred, mask, frames, u, p, norm_pix, unbiased=True):
    """mae_st's forward_loss restated: index_select the linspace frames, 'nctuhpwq->nthwupqc' patchify,
    per-patch normalisation (unbiased var, eps inside the sqrt), masked mean of per-token means."""
    xs = x.index_select(2, frames)
    N, C, T, H, W = xs.shape
    target = torch.einsum("nctuhpwq->nthwupqc", xs.reshape(N, C, T // u, u, H // p, p, W // p, p))
    target = target.reshape(N, -1, u * p * p * C)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=unbiased)
                                                             + 1e-6) ** 0.5
    per_token = ((pred - target) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("kw", [{}, dict(t_patch_size=4, num_frames=8, pred_t_dim=4), dict(norm_pix_loss=False)],
                         ids=["u1", "u2", "raw"])
def test_loss_formula(fused, kw):
    torch.manual_seed(2)
    m = small(use_fused_ops=fused, **kw)
    T = m.num_frames
    x = torch.randn(2, 3, T, 16, 16)
    loss, pred, mask = m(x, 0.75)
    want = mae_st_loss(x, pred, mask, m.target_frames, m.t_pred_patch_size, 4, m.norm_pix_loss)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    if m.norm_pix_loss:  # the biased variance gives another value
        biased = mae_st_loss(x, pred, mask, m.target_frames, m.t_pred_patch_size, 4, True, unbiased=False)
        assert abs(biased.item() - loss.item()) > 1e-5


def test_len_keep_and_noise_order():
    m = small(num_frames=8, pred_t_dim=4)  # L = 4*4*4 = 64
    for ratio, K in ((0.9, 6), (0.75, 16), (0.5, 32)):
        _, _, mask = m(torch.randn(3, 3, 8, 16, 16), ratio)
        assert torch.all(mask.sum(1) == 64 - K)  # int(L * (1 - r)) kept


def test_tube_masking():
    N, t, hw = 3, 4, 16
    noise = torch.rand(N, hw)
    ids_keep, ids_restore, mask = tube_mask_indices(N, t, hw, 0.9, noise)
    per_frame = mask.view(N, t, hw)
    assert torch.equal(per_frame, per_frame[:, :1].expand(-1, t, -1))  # one spatial mask, every frame
    assert torch.all(per_frame.sum(-1) == int(0.9 * hw))  # VideoMAE truncates the masked count: 14 of 16
    kept_s = torch.argsort(noise, 1)[:, :hw - int(0.9 * hw)]  # the smallest noise is kept
    assert torch.all(per_frame[:, 0].gather(1, kept_s) == 0)
    assert torch.equal(ids_keep, torch.sort(ids_keep, 1).values)  # ascending token index (VideoMAE's x[~mask])
    assert torch.all(mask.gather(1, ids_keep) == 0)
    assert torch.equal(torch.argsort(ids_restore, 1)[:, :ids_keep.shape[1]], ids_keep)
    m = small(num_frames=8, pred_t_dim=4, mask_type="tube")
    x = torch.randn(N, 3, 8, 16, 16)
    loss, pred, mask = m(x, 0.9, noise)
    assert torch.equal(mask, tube_mask_indices(N, t, hw, 0.9, noise)[2])
    torch.testing.assert_close(loss, mae_st_loss(x, pred, mask, m.target_frames, 1, 4, True), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"noise must have shape \[3, 16\], got \(3, 64\)"):
        m(x, 0.9, torch.rand(N, 64))
    with pytest.raises(ValueError, match="mask_type must be one of"):
        small(mask_type="block")


# --- fused == eager ------------------------------------------------------------------------------------------


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kw", [
    {},
    dict(sep_pos_embed=False, cls_embed=False),
    dict(t_patch_size=4, num_frames=8, pred_t_dim=8),  # u' = 2: the loss's eager fallback
    dict(img_size=(8, 20), in_chans=4, norm_pix_loss=False),  # non-square frames, 4 channels
    dict(mask_type="tube", num_frames=8, pred_t_dim=4),
    dict(patch_size=(4, 2), img_size=(8, 6)),  # rectangular patches: the embedding's and loss's eager fallbacks
], ids=["mae_st", "nosep-nocls", "u4-upred2", "nonsquare-c4", "tube", "rect-patch"])
def test_fused_equals_eager(kw):
    torch.manual_seed(3)
    eager = small(use_fused_ops=False, **kw)
    fused = small(use_fused_ops=True, **kw)
    fused.load_state_dict(eager.state_dict())
    N, (t, h, w) = 2, eager.input_size
    x = torch.randn(N, eager.in_chans, eager.num_frames, *eager.img_size)
    noise = torch.rand(N, h * w if eager.mask_type == "tube" else t * h * w)
    l1, p1, m1 = eager(x, 0.75, noise)
    l2, p2, m2 = fused(x, 0.75, noise)
    l1.backward()
    l2.backward()
    assert torch.equal(m1, m2)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-5)
    g1, g2 = grads(eager), grads(fused)
    assert g1.keys() == g2.keys() and len(g1) == sum(1 for p in eager.parameters())
    scale = max(g.abs().max() for g in g1.values())
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-5 * scale, msg=lambda s, k=k: f"{k}: {s}")


def test_noise_none_draws_torch_rand():
    """mae_st takes no noise: it draws torch.rand(N, L). With noise None a seed gives the same masks here."""
    m = small(num_frames=8, pred_t_dim=4)
    x = torch.randn(2, 3, 8, 16, 16)
    torch.manual_seed(9)
    _, _, mask = m(x, 0.75)
    torch.manual_seed(9)
    noise = torch.rand(2, 64)
    assert torch.equal(mask, (torch.argsort(torch.argsort(noise, 1), 1) >= 16).float())


def test_compile_fullgraph():
    """The fused forward (masking included: noise given, and drawn inside) traces as one graph."""
    torch.manual_seed(5)
    m = small(use_fused_ops=True)
    x, noise = torch.randn(2, 3, 4, 16, 16), torch.rand(2, 32)
    loss, pred, _ = m(x, 0.75, noise)
    loss.backward()
    want = grads(m)
    m.zero_grad()
    closs, cpred, _ = torch.compile(m, fullgraph=True, backend="aot_eager")(x, 0.75, noise)
    closs.backward()
    torch.testing.assert_close(closs, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cpred, pred, rtol=1e-5, atol=1e-5)
    for k, g in grads(m).items():
        torch.testing.assert_close(g, want[k], rtol=1e-4, atol=1e-6)
    _, _, mask = torch.compile(m, fullgraph=True, backend="aot_eager")(x, 0.75)
    assert torch.all(mask.sum(1) == 24)


def test_bf16_autocast_fused_close_to_fp32():
    torch.manual_seed(7)
    m = small()
    x, noise = torch.randn(2, 3, 4, 16, 16), torch.rand(2, 32)
    with torch.no_grad():
        want, _, _ = m(x, 0.75, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = m(x, 0.75, noise)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, want, rtol=0.05, atol=0.02)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_bad_input():
    m = small()
    with pytest.raises(ValueError, match=r"x must be a video \[N, C, T, H, W\] = \[N, 3, 4, 16, 16\].*\(2, 3, 16, 16\)"):
        m(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="x must be a video"):
        m(torch.randn(2, 3, 8, 16, 16))  # num_frames is fixed (mae_st asserts it too)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m([0.0])
    with pytest.raises(ValueError, match="divisible by t_patch_size"):
        small(num_frames=5)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        small(img_size=18)
    assert set(VIDEO_MODELS) >= {"mae_st_vit_base_patch16", "mae_st_vit_large_patch16", "mae_st_vit_huge_patch14"}


# --- pre-training ------------------------------------------------------------------------------------------

FAST = ["--video", "--device", "cpu", "--input-size", "16", "--num-frames", "4", "--batch-size", "2",
        "--samples-per-epoch", "4", "--num-workers", "0", "--no-progress", "--epochs", "2"]


def pretrain(tmp_path, name, *extra):
    from mae_kernels import pretrain as mpretrain

    pytest.importorskip("matplotlib", reason="matplotlib (the figures) is not installed")
    out = str(tmp_path / name)
    assert mpretrain.main(FAST + ["--output-dir", out] + list(extra)) == 0
    return out, torch.load(os.path.join(out, "checkpoint.pth"), map_location="cpu", weights_only=False)


def test_pretrain_video_embedded_clips_and_resume(tmp_path, capsys):
    pytest.importorskip("skimage", reason="scikit-image (the photographs) is not installed")
    out, full = pretrain(tmp_path, "full", "--max-steps", "3")
    text = capsys.readouterr().out
    assert full["global_step"] == 3 and len(full["losses"]) == 3
    assert "mae_st_vit_tiny" in text and "target frames [0, 3]" in text and "synthesised" in text
    for png in ("reconstruction.png", "loss_curve.png"):
        assert os.path.getsize(os.path.join(out, png)) > 10_000
    # 2 steps, then resume for the 3rd: the same weights as the uninterrupted run (masks seeded per step).
    half, _ = pretrain(tmp_path, "half", "--max-steps", "2", "--no-figures")
    _, resumed = pretrain(tmp_path, "resumed", "--max-steps", "3", "--no-figures", "--resume",
                          os.path.join(half, "checkpoint.pth"))
    assert resumed["losses"] == full["losses"]
    for k, v in full["model"].items():
        assert torch.equal(resumed["model"][k], v), k


def test_pretrain_video_tube_masking_eager(tmp_path, capsys):
    pytest.importorskip("skimage", reason="scikit-image (the photographs) is not installed")
    _, ckpt = pretrain(tmp_path, "tube", "--max-steps", "1", "--mask-type", "tube", "--no-fused", "--no-figures")
    assert ckpt["global_step"] == 1 and "tube masking" in capsys.readouterr().out


def test_pretrain_video_dual_masking(tmp_path, capsys, monkeypatch):
    """--decoder-mask-ratio / -type / -scope (the image CLI's flag definitions): every training step runs the
    dual-masking decoder, the held-out loss (eval: every position decoded) is logged per epoch."""
    pytest.importorskip("skimage", reason="scikit-image (the photographs) is not installed")
    decoded = []
    subset = VideoMaskedAutoencoderViT.forward_decoder_subset

    def spy(self, x, ids_keep, ids_dec):
        decoded.append((x.shape[1], ids_dec.shape[1]))
        return subset(self, x, ids_keep, ids_dec)

    monkeypatch.setattr(VideoMaskedAutoencoderViT, "forward_decoder_subset", spy)
    out, ckpt = pretrain(tmp_path, "dual", "--max-steps", "2", "--no-figures", "--decoder-mask-ratio", "0.5",
                         "--decoder-mask-scope", "removed", "--decoder-mask-type", "random")
    text = capsys.readouterr().out
    # tiny at 16 px / 4 frames: L = 2 x 2 x 2 = 8, 2 kept, 6 removed, 3 of them decoded
    assert decoded == [(2, 3), (2, 3)] and ckpt["global_step"] == 2
    assert "decoder masking 50% (random, scope removed)" in text
    (step, heldout), = ckpt["heldout_losses"]
    assert step == 2 and heldout > 0 and f"held-out loss (fixed clips and masks, every position decoded): " \
        f"{heldout:.4f} at step 2" in text
    with open(os.path.join(out, "log.txt")) as f:
        assert '"heldout_loss"' in f.read()


def test_synthesised_clips_are_deterministic_and_move():
    pytest.importorskip("skimage", reason="scikit-image (the photographs) is not installed")
    from mae_kernels import video_data as vd

    ds = vd.SyntheticClips(vd.photographs(64), 8, (16, 24), length=6, seed=1)
    clip, seconds = ds[3]
    assert clip.shape == (3, 8, 16, 24) and seconds >= 0
    assert torch.equal(clip, ds[3][0]) and not torch.equal(clip, ds[4][0]) and not torch.equal(clip, ds[9][0])
    for k, motion in enumerate(vd.MOTIONS):  # every motion really moves: the last frame differs from the first
        g = torch.Generator().manual_seed(k)
        c, name = vd.synthesize_clip(ds.photos, 8, (16, 24), g, motion)
        assert name == motion and (c[:, -1] - c[:, 0]).abs().mean() > 0.01, motion


def test_frame_sampling_as_mae_st():
    from mae_kernels.video_data import sample_frame_indices

    idx = sample_frame_indices(100, 8, 4, torch.Generator().manual_seed(0))
    start = float(torch.rand(1, generator=torch.Generator().manual_seed(0))) * (100 - 32)  # window of 8 * 4
    assert idx.tolist() == torch.linspace(start, start + 31, 8).long().tolist()
    short = sample_frame_indices(10, 8, 4, torch.Generator())  # shorter than the window: start 0, clamped
    assert short.tolist() == torch.linspace(0, 31, 8).clamp(0, 9).long().tolist()


def test_pretrain_video_folder(tmp_path, capsys):
    pytest.importorskip("av", reason="PyAV is not installed (pip install \"mae_kernels[video]\")")
    from mae_kernels import video_data as vd

    folder = tmp_path / "videos"
    os.makedirs(folder / "sub")
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(48), indexing="ij")
    for i, name in enumerate(("a.mp4", "sub/b.avi", "c.mkv")):
        frames = torch.stack([torch.stack([(xx * 5 + 9 * k + 40 * i) % 256, (yy * 7 + 3 * k) % 256,
                                           ((xx + yy) * 3 + 11 * k) % 256], -1) for k in range(20)])
        vd.write_video(str(folder / name), frames.to(torch.uint8))
    (folder / "notes.txt").write_text("not a video")
    assert len(vd.list_videos(str(folder))) == 3
    clip = vd.read_clip(str(folder / "a.mp4"), 4, 2, torch.Generator().manual_seed(0))
    assert clip.shape == (4, 32, 48, 3) and clip.dtype == torch.uint8
    ds = vd.VideoFolder(vd.list_videos(str(folder)), 4, 2, 16)
    c, seconds = ds[1]
    assert c.shape == (3, 4, 16, 16) and seconds > 0 and torch.equal(c, ds[1][0])
    _, ckpt = pretrain(tmp_path, "folder", "--data", str(folder), "--max-steps", "2", "--sampling-rate", "2",
                       "--epochs", "2")
    text = capsys.readouterr().out
    assert ckpt["global_step"] == 2 and "3 videos, every 2 frames" in text
    os.makedirs(folder / "empty")
    with pytest.raises(ValueError, match="no video files"):
        vd.list_videos(str(folder / "empty"))


def test_pretrain_video_torchrun_two_processes(tmp_path):
    """DDP through torchrun (gloo, 2 CPU processes) as the image path: ranks stay identical, rank 0 writes."""
    import subprocess
    import sys

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    pytest.importorskip("skimage", reason="scikit-image (the photographs) is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "mae_kernels", "pretrain"] + FAST + ["--max-steps", "2", "--no-figures", "--output-dir", str(out)]
    proc = subprocess.run(cmd, cwd=root, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "2 process(es)" in log and "effective batch 4" in log and "ranks in sync: True" in log
    assert log.count("checkpoint:") == 1
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_fused_backends_equal_eager(backend):
    """The fused steps on every CPU-capable backend (triton: its interpreter) give mae_st's eager loss and grads."""
    import mae_kernels

    torch.manual_seed(4)
    eager = small(use_fused_ops=False)
    fused = small(use_fused_ops=True)
    fused.load_state_dict(eager.state_dict())
    x, noise = torch.randn(2, 3, 4, 16, 16), torch.rand(2, 32)
    l1, _, _ = eager(x, 0.75, noise)
    l1.backward()
    with mae_kernels.use_backend(backend):
        l2, _, _ = fused(x, 0.75, noise)
        l2.backward()
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    g1, g2 = grads(eager), grads(fused)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6, msg=lambda s, k=k: f"{k}: {s}")
