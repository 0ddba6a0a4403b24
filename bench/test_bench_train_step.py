"""Whole MAE training steps (forward, backward, AdamW) for each provider of `mae-kernels bench-step`.

Benchmarks disabled (plain CI): a smoke run at batch 4: the provider's first-step loss is checked against the
eager model's (same weights, images and noise), then one more step must give a finite loss. With
--benchmark-enable: the tiny config at batch 64 and video-tiny at 16 clips on CPU machines, ViT-B/16 224 at batch
256 and VideoMAE-B at 32 clips (bf16 autocast) on GPU, timed per step with benchmark.pedantic; images/s (clips/s)
goes to extra_info. Full comparisons, with peak memory
and the issue's targets: `mae-kernels bench-step`."""
import math

import pytest
import torch

from mae_kernels.benchmark import environment, train_step

SMOKE_BATCH = 4
HAS_GPU = torch.cuda.is_available()
# torch.compile of a whole model takes tens of seconds on a small CPU: deselect with -m "not slow".
PROVIDERS = [pytest.param(p, marks=pytest.mark.slow) if p.endswith("compile") else p for p in train_step.PROVIDERS]


def run_step_bench(benchmark, config_name, provider, device, timed_batch, rounds):
    if device.type == "cpu" and not benchmark.disabled and HAS_GPU:
        pytest.skip("timed on CPU-only machines (results are keyed by the default device); smoke-tested here")
    if benchmark.disabled and device.type == "cpu" and provider.endswith("compile"):
        pytest.skip("compiled providers are timed, not smoke-tested, on CPU (a cold inductor compile of the model "
                    "costs ~10 s; tests/test_model.py checks both compiled models against eager)")
    config = train_step.CONFIGS[config_name]
    batch = SMOKE_BATCH if benchmark.disabled else timed_batch
    state, imgs, noise = train_step.make_inputs(config, batch, device)
    want = train_step.TrainStep(config, "eager", state, imgs, noise).step().float().item()
    runner = train_step.TrainStep(config, provider, state, imgs, noise)
    got = runner.step().float().item()
    rtol, atol = train_step.loss_tolerance(device, provider)
    assert math.isfinite(want) and abs(got - want) <= atol + rtol * abs(want), \
        f"{config_name} {provider}: first-step loss {got} differs from eager's {want} (rtol {rtol}, atol {atol})"
    benchmark.extra_info.update(config=config_name, model=config.model, batch=batch, provider=provider,
                                dtype="bf16 autocast" if train_step.autocast_dtype(device) else "fp32",
                                device=environment.device_name(device), first_loss=got)
    if benchmark.disabled:  # one more step, checked finite
        assert math.isfinite(benchmark(runner.step).float().item())
        return
    for _ in range(2):
        runner.step()
    benchmark.pedantic(runner.step, rounds=rounds, warmup_rounds=1)
    benchmark.extra_info[f"{config.unit}_per_s"] = batch / benchmark.stats.stats.median
    assert math.isfinite(runner.step().float().item())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step_tiny_cpu(benchmark, provider):
    run_step_bench(benchmark, "tiny", provider, torch.device("cpu"), timed_batch=64, rounds=20)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("provider", train_step.PROVIDERS)
def test_train_step_base_gpu(benchmark, provider):
    run_step_bench(benchmark, "base", provider, torch.device("cuda"), timed_batch=256, rounds=15)


# Not the compiled providers, even when timed: a cold torch.compile of the video model costs ~30 s each;
# `mae-kernels bench-step --configs video-tiny` runs them (tests/test_video_model.py: fullgraph, aot_eager).
@pytest.mark.parametrize("provider", ["eager", "fused"])
def test_train_step_video_tiny_cpu(benchmark, provider):
    run_step_bench(benchmark, "video-tiny", provider, torch.device("cpu"), timed_batch=16, rounds=20)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("provider", train_step.PROVIDERS)
def test_train_step_videomae_b_gpu(benchmark, provider):
    run_step_bench(benchmark, "videomae-b", provider, torch.device("cuda"), timed_batch=32, rounds=15)
