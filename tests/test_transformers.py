"""transformers' ViTMAEForPreTraining patched in place with the fused ops: outputs and gradients equal the
unpatched model's for the same noise. Skipped when transformers is not installed.
The fused path needs mae_kernels' fused ops (random_masked_patch_embed, unshuffle_with_mask_tokens,
masked_mse_loss, denormalize_pred), merged from other branches."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

from mae_kernels.integrations.transformers import patch_vit_mae, unpatch_vit_mae  # noqa: E402


def make(norm_pix_loss=True, channels=3, mask_ratio=0.75):
    cfg = transformers.ViTMAEConfig(image_size=32, patch_size=8, num_channels=channels, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                    decoder_num_attention_heads=2, decoder_intermediate_size=32,
                                    mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)
    torch.manual_seed(0)
    return transformers.ViTMAEForPreTraining(cfg).eval()


@pytest.mark.parametrize("norm_pix_loss, channels, mask_ratio", [(True, 3, 0.75), (False, 1, 0.5), (True, 5, 0.9)])
def test_patched_matches_unpatched(norm_pix_loss, channels, mask_ratio):
    ref = make(norm_pix_loss, channels, mask_ratio)
    fused = patch_vit_mae(copy.deepcopy(ref))
    x = torch.randn(3, channels, 32, 32)
    noise = torch.rand(3, 16)
    outs = []
    for m in (ref, fused):
        m.zero_grad()
        o = m(pixel_values=x, noise=noise)
        (o.loss + 0.1 * o.logits.square().mean()).backward()
        outs.append((o, {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}))
    (o1, g1), (o2, g2) = outs
    assert torch.equal(o1.mask, o2.mask) and torch.equal(o1.ids_restore, o2.ids_restore)
    torch.testing.assert_close(o2.loss, o1.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o2.logits, o1.logits, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 10
    # The fused kernels sum in another order (fp32 reductions over N*L rows, then through every layer's backward):
    # differences of a few 1e-5 relative show up in the gradients that gather the most terms (cls_token).
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-3, atol=1e-5, msg=lambda s, k=k: f"grad of {k}: {s}")


def test_unpatch_and_errors():
    m = make()
    patch_vit_mae(m)
    assert "forward" in m.__dict__
    unpatch_vit_mae(m)
    assert "forward" not in m.__dict__ and "forward" not in m.decoder.__dict__
    patch_vit_mae(m)
    with pytest.raises(ValueError, match="Expected 3 but got 1"):
        m(pixel_values=torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="ViTMAEForPreTraining"):
        patch_vit_mae(torch.nn.Linear(2, 2))


def test_apply_patches_vit_mae_and_video_mae():
    import mae_kernels

    ref = make()
    m = mae_kernels.apply(copy.deepcopy(ref))
    assert "forward" in m.__dict__ and "forward" in m.decoder.__dict__
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(pixel_values=x, noise=noise).loss, ref(pixel_values=x, noise=noise).loss,
                                   rtol=1e-5, atol=1e-6)
    mae_kernels.unapply(m)
    assert "forward" not in m.__dict__ and "forward" not in m.decoder.__dict__
    cfg = transformers.VideoMAEConfig(image_size=16, patch_size=8, num_frames=2, tubelet_size=2, hidden_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                      decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                      decoder_num_attention_heads=2, decoder_intermediate_size=32)
    video = mae_kernels.apply(transformers.VideoMAEForPreTraining(cfg))  # tests/test_transformers_videomae.py
    assert "forward" in video.__dict__ and "forward" in video.videomae.__dict__
    mae_kernels.unapply(video)
    assert "forward" not in video.__dict__ and "forward" not in video.videomae.__dict__
