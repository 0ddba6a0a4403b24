"""Dual masking (VideoMAE v2, ../shared/MAE_SPEC_VIDEO.md) end to end: the spec's counts at 224 px / 16 frames
through append_mask_tokens, and MaskedAutoencoderViT's decoder_mask_ratio (0: the official model bit for bit;
> 0: fused == eager, the loss == v2's formula restated here). The generators: tests/test_decoder_mask_indices.py."""
import copy

import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.models.mae import MaskedAutoencoderViT


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


@pytest.mark.parametrize("kind", ["run_cell", "random"])
def test_dual_masking_fused_equals_eager_and_v2s_loss(kind):
    """Same weights, noise and decoder mask: fused and eager losses, predictions and gradients agree; the loss
    is v2's sum(l * w) / sum(w) over the decoded rows, w = encoder-removed (restated from pred and imgs)."""
    fused = _models(0.5)
    fused.decoder_mask_type = kind
    eager = copy.deepcopy(fused)
    eager.use_fused_ops = False
    imgs, noise = torch.randn(4, 3, 32, 32), torch.rand(4, 16)
    ids_dec, _, dec = fused.sample_decoder_mask(4, "cpu", _gen(8))
    dec, M = dec.bool(), ids_dec.shape[1]
    lf, pf, mask = fused(imgs, 0.75, noise, decoder_mask=dec)
    le, pe, _ = eager(imgs, 0.75, noise, decoder_mask=dec)
    assert pf.shape == (4, M, 192)
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
    assert 0 < w.sum() < w.numel()  # some decoded positions are encoder-visible, out of the loss
    torch.testing.assert_close(lf.double(), (rows * w).sum() / w.sum(), rtol=1e-5, atol=0)


def test_training_mode_draws_the_decoder_mask_eval_decodes_all():
    model = _models(0.5)
    imgs = torch.randn(2, 3, 32, 32)
    assert model(imgs)[1].shape == (2, 8, 192)
    model.eval()
    assert model(imgs)[1].shape == (2, 16, 192)
    with pytest.raises(ValueError, match="decoder_mask_type must be one of"):
        _small(decoder_mask_type="cells")
