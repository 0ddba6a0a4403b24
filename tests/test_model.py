"""MaskedAutoencoderViT: parameter names/shapes of the official checkpoints, fixed sin-cos embeddings, init,
fused path == official eager path (loss, predictions, every gradient), compile, autocast, validation.

The fused-path tests call mae_kernels.random_masked_patch_embed / unshuffle_with_mask_tokens / masked_mse_loss /
patch_stats / denormalize_pred, which come from other branches (they need the lead's merge)."""
import copy
import math

import pytest
import torch

try:  # numpy only for the official (numpy) pos-embed transcription; torch does not require it
    import numpy as np
except ImportError:
    np = None

import mae_kernels
from mae_kernels import reference
from mae_kernels.models import (MaskedAutoencoderViT, mae_vit_base_patch16, mae_vit_huge_patch14,
                                mae_vit_large_patch16, mae_vit_tiny, sincos_2d)

HAS_GPU = torch.cuda.is_available()


def small_model(**kw):
    cfg = dict(img_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
               decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True)
    cfg.update(kw)
    return MaskedAutoencoderViT(**cfg)


def block_shapes(prefix, depth, dim, hidden):
    out = {}
    for i in range(depth):
        b = f"{prefix}.{i}."
        out.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,),
                    b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                    b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                    b + "norm2.weight": (dim,), b + "norm2.bias": (dim,),
                    b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                    b + "mlp.fc2.weight": (dim, hidden), b + "mlp.fc2.bias": (dim,)})
    return out


def official_state_shapes(p, dim, depth, L, C=3, dec=512, dec_depth=8):
    """The official checkpoint's names and shapes, written from MAE_SPEC.md (not from the model)."""
    out = {"cls_token": (1, 1, dim), "pos_embed": (1, L + 1, dim),
           "patch_embed.proj.weight": (dim, C, p, p), "patch_embed.proj.bias": (dim,)}
    out.update(block_shapes("blocks", depth, dim, 4 * dim))
    out.update({"norm.weight": (dim,), "norm.bias": (dim,), "decoder_embed.weight": (dec, dim),
                "decoder_embed.bias": (dec,), "mask_token": (1, 1, dec), "decoder_pos_embed": (1, L + 1, dec)})
    out.update(block_shapes("decoder_blocks", dec_depth, dec, 4 * dec))
    out.update({"decoder_norm.weight": (dec,), "decoder_norm.bias": (dec,),
                "decoder_pred.weight": (p * p * C, dec), "decoder_pred.bias": (p * p * C,)})
    return out


@pytest.mark.parametrize("factory, p, dim, depth, L", [
    (mae_vit_base_patch16, 16, 768, 12, 196),
    (mae_vit_large_patch16, 16, 1024, 24, 196),
    (mae_vit_huge_patch14, 14, 1280, 32, 256),
])
def test_official_parameter_names_and_shapes(factory, p, dim, depth, L):
    with torch.device("meta"):
        model = factory()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = official_state_shapes(p, dim, depth, L)
    assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))[:10]
    for k in want:
        assert got[k] == want[k], (k, got[k], want[k])
    assert set(dict(model.named_parameters())) == set(want)  # all parameters, no buffers, as the official code
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert all(m.eps == 1e-6 for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    # An official checkpoint (same names and shapes) loads strictly.
    ckpt = {k: torch.empty(s, device="meta") for k, s in want.items()}
    model.load_state_dict(ckpt, strict=True, assign=True)


def test_official_checkpoint_loads_strictly_and_reproduces():
    a = small_model()
    sd = {k: v.clone() for k, v in a.state_dict().items()}
    b = small_model()
    b.load_state_dict(sd, strict=True)
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        assert torch.equal(a(x, noise=noise)[1], b(x, noise=noise)[1])


def official_sincos_2d(embed_dim, grid_size):
    """models_mae / util/pos_embed.py of the official code, transcribed (square grids only, numpy)."""
    pytest.importorskip("numpy", reason="numpy is not installed (the official transcription needs it)")
    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64)
        omega /= d / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


@pytest.mark.parametrize("dim, grid", [(768, 14), (512, 14), (16, 3)])
def test_sincos_matches_official_square(dim, grid):
    got = sincos_2d(dim, grid, cls_token=True)
    want = torch.from_numpy(official_sincos_2d(dim, grid)).float()
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_sincos_non_square_column_first():
    D, gh, gw = 16, 3, 5
    emb = sincos_2d(D, (gh, gw), cls_token=True).double()
    assert torch.equal(emb[0], torch.zeros(D, dtype=torch.float64))
    om = 1.0 / 10000 ** (torch.arange(D // 4, dtype=torch.float64) / (D // 4))
    for h in range(gh):
        for w in range(gw):
            want = torch.cat([torch.sin(w * om), torch.cos(w * om), torch.sin(h * om), torch.cos(h * om)])
            torch.testing.assert_close(emb[1 + h * gw + w], want.float().double(), rtol=0, atol=0)


def test_sincos_rejects_bad_dim():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(18, 4)


def test_init_as_official():
    torch.manual_seed(0)
    m = mae_vit_tiny(img_size=(48, 64))
    assert m.grid_size == (6, 8)
    torch.testing.assert_close(m.pos_embed[0], sincos_2d(192, (6, 8), cls_token=True), rtol=0, atol=0)
    torch.testing.assert_close(m.decoder_pos_embed[0], sincos_2d(128, (6, 8), cls_token=True), rtol=0, atol=0)
    for t in (m.cls_token, m.mask_token):
        assert 0.01 < t.std().item() < 0.03
    w = m.patch_embed.proj.weight
    bound = math.sqrt(6.0 / (w[0].numel() + w.shape[0]))  # xavier_uniform on the [D, C*p*p] view
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            assert torch.count_nonzero(mod.bias) == 0
            b = math.sqrt(6.0 / sum(mod.weight.shape))
            assert mod.weight.abs().max() <= b
        if isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.count_nonzero(mod.bias) == 0


def grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def run_both(model, imgs, mask_ratio, noise):
    fused, eager = model, copy.deepcopy(model)
    fused.use_fused_ops, eager.use_fused_ops = True, False
    outs = []
    for m in (fused, eager):
        m.zero_grad()
        loss, pred, mask = m(imgs, mask_ratio=mask_ratio, noise=noise)
        # With nothing removed the loss is 0/0 = nan (as in the official code): differentiate pred only.
        objective = 0.1 * pred.square().mean() + (loss if mask_ratio > 0 else 0)
        objective.backward()
        outs.append((loss, pred, mask, grads(m)))
    return outs


@pytest.mark.parametrize("cfg, mask_ratio", [
    (dict(), 0.75),
    (dict(norm_pix_loss=False), 0.75),
    (dict(), 0.0),
    (dict(img_size=(24, 40), in_chans=1), 0.6),   # non-square grid, grayscale
    (dict(img_size=(16, 56), in_chans=13, patch_size=8), 0.9),  # C = 13, L = 14 -> 1 kept
    (dict(img_size=14 * 3, patch_size=14), 0.75),  # P = 588, not a power of two
], ids=["default", "no_norm_pix", "ratio0", "nonsquare_c1", "c13", "p14"])
def test_fused_matches_eager(cfg, mask_ratio):
    torch.manual_seed(1)
    model = small_model(**cfg)
    N = 3
    H, W = model.img_size
    imgs = torch.randn(N, model.in_chans, H, W)
    noise = torch.rand(N, model.patch_embed.num_patches)
    (lf, pf, mf, gf), (le, pe, me, ge) = run_both(model, imgs, mask_ratio, noise)
    assert lf.dtype == torch.float32 and lf.dim() == 0
    assert pf.shape == (N, model.patch_embed.num_patches, model.patch_size**2 * model.in_chans)
    assert torch.equal(mf, me)
    keep = reference.len_keep(model.patch_embed.num_patches, mask_ratio)
    assert torch.all(mf.sum(1) == model.patch_embed.num_patches - keep)
    torch.testing.assert_close(pf, pe, rtol=1e-5, atol=1e-5)
    if mask_ratio == 0:
        # Nothing removed: the official forward_loss gives NaN (0/0); the fused loss defines it as 0 with zero
        # gradients (documented in masked_mse_loss), so training steps stay finite.
        assert torch.isnan(le) and lf.item() == 0.0
        assert all(torch.isfinite(g).all() for g in gf.values())
        return
    torch.testing.assert_close(lf, le, rtol=1e-5, atol=1e-6)
    assert gf.keys() == ge.keys()
    for k in gf:
        torch.testing.assert_close(gf[k], ge[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"grad of {k}: {m}")


def test_eager_path_is_the_official_forward():
    """The eager path, step by step as models_mae.py writes it (Conv2d on all patches, random_masking, ...)."""
    torch.manual_seed(2)
    m = small_model(use_fused_ops=False)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    x = m.patch_embed.proj(imgs).flatten(2).transpose(1, 2) + m.pos_embed[:, 1:, :]
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.gather(x, 1, ids_shuffle[:, :4, None].repeat(1, 1, x.shape[2]))
    x = torch.cat([(m.cls_token + m.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
    for blk in m.blocks:
        x = blk(x)
    x = m.decoder_embed(m.norm(x))
    x_ = torch.cat([x[:, 1:], m.mask_token.repeat(2, 16 + 1 - x.shape[1], 1)], dim=1)
    x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1], x_], dim=1) + m.decoder_pos_embed
    for blk in m.decoder_blocks:
        x = blk(x)
    pred = m.decoder_pred(m.decoder_norm(x))[:, 1:]
    loss, got_pred, mask = m(imgs, mask_ratio=0.75, noise=noise)
    torch.testing.assert_close(got_pred, pred, rtol=0, atol=0)
    target = m.patchify(imgs)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    want = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, want)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(3)
    attn = small_model().blocks[0].attn
    x = torch.randn(2, 5, 32)
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q @ k.transpose(-2, -1) * (C // attn.num_heads) ** -0.5).softmax(-1)
    want = attn.proj((a @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(attn(x), want, rtol=1e-5, atol=1e-6)


def test_random_noise_when_not_given():
    torch.manual_seed(4)
    m = small_model()
    imgs = torch.randn(2, 3, 32, 32)
    _, _, m1 = m(imgs)
    _, _, m2 = m(imgs)
    assert torch.all(m1.sum(1) == 12) and not torch.equal(m1, m2)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_compile_fullgraph(fused):
    torch.manual_seed(5)
    m = mae_vit_tiny(img_size=32, norm_pix_loss=True, use_fused_ops=fused)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    loss, pred, _ = m(imgs, 0.75, noise)
    loss.backward()
    want = grads(m)
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    closs, cpred, _ = compiled(imgs, 0.75, noise)
    closs.backward()
    torch.testing.assert_close(closs, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cpred, pred, rtol=1e-5, atol=1e-5)
    for k, g in grads(m).items():
        torch.testing.assert_close(g, want[k], rtol=1e-4, atol=1e-6)


def test_compile_inductor_fused():
    torch.manual_seed(6)
    m = small_model(depth=1, use_fused_ops=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    loss, _, _ = m(imgs, 0.75, noise)
    closs, _, _ = torch.compile(m, fullgraph=True)(imgs, 0.75, noise)
    torch.testing.assert_close(closs, loss, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_bf16_autocast(fused):
    torch.manual_seed(7)
    m = small_model(use_fused_ops=fused)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        want, _, _ = m(imgs, 0.75, noise)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = m(imgs, 0.75, noise)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert pred.dtype == torch.bfloat16 and mask.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=0.05, atol=0.02)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def test_bad_input():
    m = small_model()
    with pytest.raises(ValueError, match=r"imgs must have shape \[N, 3, 32, 32\].*\(2, 1, 32, 32\)"):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="imgs must have shape"):
        m(torch.randn(2, 3, 32, 40))
    with pytest.raises(TypeError, match="imgs must be a torch.Tensor"):
        m([[0.0] * 32] * 32)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        small_model(img_size=30)


@pytest.mark.gpu
@pytest.mark.parametrize("factory, size", [(mae_vit_tiny, 64), (mae_vit_base_patch16, 224)])
def test_gpu_fused_matches_eager_bf16(factory, size, no_tf32):  # the eager Conv2d would use TF32
    torch.manual_seed(8)
    model = factory(img_size=size, norm_pix_loss=True).cuda()
    N = 4
    imgs = torch.randn(N, 3, size, size, device="cuda")
    noise = torch.rand(N, model.patch_embed.num_patches, device="cuda")
    (lf, pf, mf, gf), (le, pe, me, ge) = run_both(model, imgs, 0.75, noise)  # fp32 first
    assert torch.equal(mf, me)
    torch.testing.assert_close(lf, le, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(pf, pe, rtol=1e-3, atol=1e-3)
    for k in gf:
        torch.testing.assert_close(gf[k], ge[k], rtol=1e-2, atol=1e-4, msg=lambda m, k=k: f"grad of {k}: {m}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        (lf, _, _, gf), (le, _, _, ge) = run_both(model, imgs, 0.75, noise)
    assert torch.isfinite(lf) and torch.isfinite(le)
    torch.testing.assert_close(lf, le, rtol=0.05, atol=0.02)
