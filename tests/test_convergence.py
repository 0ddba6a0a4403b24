"""Convergence (Liger-Kernel style): a mini MAE trained for STEPS AdamW steps on the fused ops and on the official
eager path, from the same weights, on the same images and masks (the same noise every step), in fp32 and in bf16
autocast. The loss curves must agree step by step and the final weights must agree: a gradient slightly wrong in
a way one step's tolerance cannot show (a small bias that Adam accumulates, a wrong sum in a rarely hit row)
drifts the trajectories apart. test_perturbed_gradient_is_caught checks that the comparisons can fail."""
import functools

import pytest
import torch

from mae_kernels.models import MaskedAutoencoderViT

STEPS = 100
N, SIZE, P = 8, 32, 8
L = (SIZE // P) ** 2


def mini_mae(use_fused_ops):
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=SIZE, patch_size=P, embed_dim=64, depth=2, num_heads=4,
                                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True,
                                use_fused_ops=use_fused_ops)


@functools.lru_cache(maxsize=None)
def batches():
    """Each image a random linear ramp per channel plus noise: a removed patch's normalised pixels follow from
    the visible ones, so the loss falls from about 1.2 to 0.6 within STEPS and the gradients carry signal.
    And the noise of each step (the same masks for both runs)."""
    g = torch.Generator().manual_seed(1)
    coef = torch.randn(3, STEPS, N, 3, 1, 1, generator=g)
    ramp = torch.linspace(-1, 1, SIZE)
    imgs = coef[0] * ramp + coef[1] * ramp[:, None] + coef[2] + 0.1 * torch.randn(STEPS, N, 3, SIZE, SIZE, generator=g)
    return imgs, torch.rand(STEPS, N, L, generator=g)


@functools.lru_cache(maxsize=None)
def trajectory(fused, precision, perturb=0.0):
    """(per-step losses [STEPS] float64, initial and final parameters). perturb > 0 adds to the patch embedding
    weight's gradient a fixed direction of perturb x its norm: the kind of small, consistent error a kernel bug
    makes. One thread: the tiny ops gain nothing from two, and it makes the run repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = mini_mae(fused)
        init = {k: v.detach().clone() for k, v in model.named_parameters()}
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05)  # the MAE recipe's
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
    finally:
        torch.set_num_threads(threads)
    final = {k: v.detach().clone() for k, v in model.named_parameters()}
    return torch.tensor(losses, dtype=torch.float64), init, final


def travelled(traj, ref):
    """Per parameter: ||traj's final - ref's final|| / ||how far ref's training moved it||. The key bias (middle
    third of attn.qkv.bias) is left out: softmax ignores a per-query constant, so its exact gradient is zero and
    both runs move it by Adam-normalised rounding noise (in fp32 already 2% of its travel, unrelated to the ops)."""
    def strip(k, v):
        d = v.shape[0] // 3
        return torch.cat((v[:d], v[2 * d:])) if k.endswith("attn.qkv.bias") else v
    (_, _, final), (_, init, want) = traj, ref
    return {k: ((strip(k, final[k]) - strip(k, want[k])).norm() / (strip(k, want[k]) - strip(k, init[k])).norm())
            .item() for k in want if not torch.equal(want[k], init[k])}


def check_fp32(fused, eager):
    """fp32: the fused ops sum in another order than eager PyTorch (1e-7 relative per sum). Measured over the
    STEPS steps: losses within 3e-7 relative, each tensor's final distance within 2e-5 of its travel. The bounds
    leave 30x and 10x that, and a gradient error of 1e-4 of its norm in one tensor (far below the one-step tests'
    rtol 1e-3) already moves the losses by 3e-5 and that tensor by 1.3e-3 (test_perturbed_gradient_is_caught)."""
    rel = (fused[0] - eager[0]).abs() / eager[0].abs()
    step = rel.argmax().item()
    assert rel.max() <= 1e-5, (f"loss curves part at step {step}: fused {fused[0][step].item():.8g} vs eager "
                               f"{eager[0][step].item():.8g} (relative {rel.max().item():.3g} > 1e-5)")
    far = {k: v for k, v in travelled(fused, eager).items() if v > 2e-4}
    assert not far, f"final weights part (distance / travel > 2e-4): {far}"


def check_bf16(fused, eager, fp32):
    """bf16 autocast: every matmul rounds to 8 bits; the eager path convolves all patches in bf16 where the fused
    GEMM accumulates in fp32, so the runs differ by bf16 rounding every step. Judged as the low-precision ops are
    (STYLE.md): against the fp32 eager run, the fused bf16 run's error is at most twice the eager bf16 run's, for
    the mean loss error (measured 0.8x), and at most three times for each tensor's final weights: per-tensor
    ratios after 100 chaotic steps scatter more than one op's error (measured at most 1.4x; a gradient error of
    1e-2 of its norm gives 7x). Plus each step's loss within 1e-2 of the eager bf16 run's (measured 2e-3)."""
    rel = (fused[0] - eager[0]).abs() / eager[0].abs()
    step = rel.argmax().item()
    assert rel.max() <= 1e-2, (f"loss curves part at step {step}: fused {fused[0][step].item():.8g} vs eager "
                               f"{eager[0][step].item():.8g} (relative {rel.max().item():.3g} > 1e-2)")
    err = {name: ((run[0] - fp32[0]).abs() / fp32[0]).mean().item() for name, run in (("fused", fused),
                                                                                        ("eager", eager))}
    assert err["fused"] <= 2 * err["eager"], f"mean loss error against fp32: {err}"
    got, floor = travelled(fused, fp32), travelled(eager, fp32)
    # 1e-3 of the travel: a floor for tensors the eager bf16 run happens to bring very close to fp32's.
    far = {k: (got[k], floor[k]) for k in got if got[k] > max(3 * floor[k], 1e-3)}
    assert not far, f"final weights farther from fp32's than three times eager bf16's (fused, eager): {far}"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_training_matches_eager(precision):
    fused, eager = trajectory(True, precision), trajectory(False, precision)
    losses = eager[0]
    assert losses[-10:].mean() < 0.7 * losses[:10].mean(), losses  # it learns: the gradients carry signal
    if precision == "fp32":
        check_fp32(fused, eager)
    else:
        check_bf16(fused, eager, trajectory(False, "fp32"))


@pytest.mark.slow
@pytest.mark.parametrize("precision, perturb", [("fp32", 1e-4), ("bf16", 1e-2)])
def test_perturbed_gradient_is_caught(precision, perturb):
    """The comparisons can fail: a small error in one gradient (patch_embed.proj.weight's, relative to its norm)
    breaks them."""
    broken, eager = trajectory(True, precision, perturb), trajectory(False, precision)
    with pytest.raises(AssertionError, match="part|farther"):
        check_fp32(broken, eager) if precision == "fp32" else check_bf16(broken, eager, trajectory(False, "fp32"))
