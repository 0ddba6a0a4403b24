"""Convergence (Liger-Kernel style): a mini MAE trained for STEPS AdamW steps on the fused ops and on the official
eager path, from the same weights, on the same images and masks (the same noise every step), in fp32 and in bf16
autocast. The loss curves must agree step by step and the final weights must agree: a gradient slightly wrong in
a way one step's tolerance cannot show (a small bias that Adam accumulates, a wrong sum in a rarely hit row)
drifts the trajectories apart. test_perturbed_gradient_is_caught checks that the tolerances can fail."""
import copy
import functools

import pytest
import torch

from mae_kernels.models import MaskedAutoencoderViT

STEPS = 80
N, SIZE, P = 8, 32, 8
L = (SIZE // P) ** 2


def mini_mae(use_fused_ops):
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=SIZE, patch_size=P, embed_dim=64, depth=2, num_heads=4,
                                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True,
                                use_fused_ops=use_fused_ops)


@functools.lru_cache(maxsize=None)
def batches():
    """Smooth images (bilinear 4x4 -> 32x32 random fields: removed patches are predictable from their
    neighbours, so the loss falls and the gradients carry signal) and the noise of each step."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(STEPS, N, 3, 4, 4, generator=g)
    imgs = torch.nn.functional.interpolate(coarse.flatten(0, 1), size=(SIZE, SIZE), mode="bilinear",
                                           align_corners=False).view(STEPS, N, 3, SIZE, SIZE)
    return imgs, torch.rand(STEPS, N, L, generator=g)


@functools.lru_cache(maxsize=None)
def trajectory(fused, precision, perturb=0.0):
    """(per-step losses [STEPS] float64, final parameters). perturb > 0 adds to the patch embedding weight's
    gradient a fixed direction of perturb x its norm: the kind of small, consistent error a kernel bug makes."""
    model = mini_mae(fused)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)  # the MAE recipe's AdamW
    w = model.patch_embed.proj.weight
    direction = torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
    imgs, noise = batches()
    losses = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _, _ = model(imgs[step], 0.75, noise[step])
        loss.backward()
        if perturb:
            w.grad += perturb * w.grad.norm() / direction.norm() * direction
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64), {k: v.detach().clone() for k, v in model.named_parameters()}


# Tolerances. fp32: the fused ops sum in another order than eager PyTorch (relative 1e-7 per sum); through 80
# AdamW steps the trajectories separate slowly (measured: losses within 2e-6 relative, weights within 2e-5
# absolute); the bounds below leave 10x that, and stay 30x below what a gradient error of 1e-3 of the norm does
# to the same run (test_perturbed_gradient_is_caught). bf16 autocast: every matmul rounds to 8 bits (relative
# 4e-3), the eager path convolves all patches in bf16 where the fused one gathers kept patches and runs its GEMM
# with fp32 accumulation, so the two differ by bf16 rounding each step and Adam turns sign-level gradient noise of
# tiny components into full-size updates: losses within 1e-2 relative, weights within 5e-3 absolute (measured
# about a fifth of that); the loss curves themselves fall by half, 100x more than the bound.
TOL = {"fp32": dict(loss_rtol=2e-5, weight_atol=2e-4), "bf16": dict(loss_rtol=1e-2, weight_atol=5e-3)}


def compare(got, want, loss_rtol, weight_atol):
    (lg, wg), (lw, ww) = got, want
    rel = (lg - lw).abs() / lw.abs()
    bad = torch.nonzero(rel > loss_rtol)
    assert bad.numel() == 0, (f"loss curves part at step {bad[0].item()}: fused {lg[bad[0]].item():.8g} vs eager "
                              f"{lw[bad[0]].item():.8g} (rtol {loss_rtol}, max {rel.max().item():.3g})")
    for k in ww:
        torch.testing.assert_close(wg[k], ww[k], rtol=0, atol=weight_atol, msg=lambda s, k=k: f"final {k}: {s}")


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_training_matches_eager(precision):
    eager, fused = trajectory(False, precision), trajectory(True, precision)
    losses = eager[0]
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses  # it learns: the gradients carry signal
    compare(fused, eager, **TOL[precision])


@pytest.mark.slow
def test_perturbed_gradient_is_caught():
    """A 1e-3 (relative to its norm) error in one gradient, invisible to a one-step comparison at rtol 1e-3,
    fails the fp32 convergence comparison."""
    with pytest.raises(AssertionError):
        compare(trajectory(True, "fp32", perturb=1e-3), trajectory(False, "fp32"), **TOL["fp32"])
