"""Whole MAE training step benchmark (`mae-kernels bench-step`, bench/test_bench_train_step.py).

One step = forward (loss), backward, AdamW step (the reference recipe: betas 0.9/0.95, weight decay 0.05 except
biases and norms), zero_grad(set_to_none=True); bf16 autocast on GPU, fp32 on CPU. Providers: "eager" (the
official eager path, use_fused_ops=False), "fused" (use_fused_ops=True), "compile" and "fused+compile"
(torch.compile of the eager / fused model; the optimizer stays eager, as pretrain --compile). Every provider
starts from the same weights, images and masking noise (norm_pix_loss on, mask ratio 0.75; 0.9 for the video
configs), so their first-step losses must agree: each is checked against eager's (a correctness smoke of the
whole model). Video configs (VideoMaskedAutoencoderViT on clips [N, C, T, H, W]) count clips/s and frames/s.

Timing: warm-up steps first (torch.compile compiles there; their time is recorded as first_step_s, not
counted), then timed steps: CUDA events around each step on GPU, time.perf_counter on CPU; median and
20th/80th percentiles -> images/s (clips/s). On CPU also the process CPU time of each step (all threads), as
cpu_ms_median: a second view of a step's cost on a shared machine (it grows under load too, less than wall time).

Peak memory on GPU: torch.cuda.max_memory_allocated() over the timed steps (stats reset after warm-up) minus
what was allocated before the provider built its model (so: parameters, gradients, optimizer state,
activations; not the shared input batch); step_peak_mb is the same peak minus what was allocated just before
the timed steps. On CPU there are no allocator statistics: step_peak_mb is measured with the torch profiler's
memory events (the high-water mark of tensor memory allocated during one extra, untimed step, above what was
allocated at its start), and peak_mb is n/a.
"""
import dataclasses
import gc
import time

import torch

from ..models import MODELS
from . import harness

PROVIDERS = ("eager", "fused", "compile", "fused+compile")
MASK_RATIO = 0.75
WEIGHT_DECAY = 0.05
BLR = 1.5e-4  # the reference base learning rate (lr = blr * batch / 256); it does not change the step's cost


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    model: str       # a key of mae_kernels.models.MODELS (images) or VIDEO_MODELS (videos, [N, C, T, H, W] clips)
    img_size: int
    batch: dict      # {"cpu": N, "cuda": N}: the default batch per device type (images or clips)
    decoder_mask_ratio: float = 0.0  # dual masking (VideoMAE v2's running cell) when > 0
    full_decoder: str = None         # the config of the same model with the full decoder (compared with)
    mask_ratio: float = MASK_RATIO
    video: dict = None  # video configs: the model's keyword arguments (num_frames, t_patch_size, mask_type, ...)
    decoder_mask_scope: str = "all"  # dual masking: "all" (v2: every decoded position) or "removed" only

    @property
    def dual_masking(self):
        """The model's dual-masking keyword arguments ({} for the full decoder: the models' defaults)."""
        return ({"decoder_mask_ratio": self.decoder_mask_ratio, "decoder_mask_scope": self.decoder_mask_scope}
                if self.decoder_mask_ratio else {})

    @property
    def unit(self):
        return "clips" if self.video is not None else "images"

    @property
    def num_frames(self):
        return self.video["num_frames"] if self.video is not None else None


# Video shapes (issue 15). video-tiny: mae_st_vit_tiny (8 frames of 64x64, 2x8x8 tubelets, L = 256, random
# masking). videomae-b: VideoMAE-B's shape on the mae_st architecture (ViT-B/16, 16 frames of 224, tubelet 2,
# L = 1568, tube masking, a 384-dim 4-block decoder predicting all 16 frames, one joint positional table and no
# cls token as VideoMAE; the target is mae_st's per-patch norm_pix_loss, as the model has no per-channel
# VideoMAE target). mae_st-l: mae_st's ViT-L recipe (16 frames of 224, t_patch 2, 8 target frames, random).
# The -dual configs: VideoMAE v2's dual masking (running cell, ratio 0.5) on the same model, compared with the
# full-decoder config; -dual-removed decodes encoder-removed positions only (decoder_mask_scope="removed").
VIDEO_TINY = dict(num_frames=8, t_patch_size=2, pred_t_dim=4, mask_type="random")
VIDEOMAE_B = dict(num_frames=16, t_patch_size=2, pred_t_dim=16, mask_type="tube", sep_pos_embed=False,
                  cls_embed=False, decoder_embed_dim=384, decoder_depth=4, decoder_num_heads=6)
MAE_ST_L = dict(num_frames=16, t_patch_size=2, pred_t_dim=8, mask_type="random")

CONFIGS = {c.name: c for c in (
    Config("tiny", "mae_vit_tiny", 64, {"cpu": 64, "cuda": 256}),
    Config("base", "mae_vit_base_patch16", 224, {"cuda": 256, "cpu": 8}),
    Config("large", "mae_vit_large_patch16", 224, {"cuda": 128, "cpu": 4}),  # 128 leaves ample room in 80 GB
    Config("tiny-dual", "mae_vit_tiny", 64, {"cpu": 64, "cuda": 256}, 0.5, "tiny"),
    Config("base-dual", "mae_vit_base_patch16", 224, {"cuda": 256, "cpu": 8}, 0.5, "base"),
    Config("video-tiny", "mae_st_vit_tiny", 64, {"cpu": 16, "cuda": 128}, mask_ratio=0.9, video=VIDEO_TINY),
    # VideoMAE's per-GPU batch (32); mae_st-L at 16 clips (mae_st: 2 clips x 4 repeated augmentations per GPU).
    Config("videomae-b", "mae_st_vit_base_patch16", 224, {"cuda": 32, "cpu": 2}, mask_ratio=0.9,
           video=VIDEOMAE_B),
    Config("mae_st-l", "mae_st_vit_large_patch16", 224, {"cuda": 16, "cpu": 1}, mask_ratio=0.9, video=MAE_ST_L),
    Config("tiny-dual-removed", "mae_vit_tiny", 64, {"cpu": 64, "cuda": 256}, 0.5, "tiny",
           decoder_mask_scope="removed"),
    Config("video-tiny-dual", "mae_st_vit_tiny", 64, {"cpu": 16, "cuda": 128}, 0.5, "video-tiny", mask_ratio=0.9,
           video=VIDEO_TINY),
    Config("videomae-b-dual", "mae_st_vit_base_patch16", 224, {"cuda": 32, "cpu": 2}, 0.5, "videomae-b",
           mask_ratio=0.9, video=VIDEOMAE_B),
)}
DECODER_MASK_SEED = 7  # dual-masking configs draw the same decoder mask at every step of every provider
# GPU: videomae-b second, so that a time budget spent on eager runs cuts large's and mae_st-l's fused runs first.
DEFAULT_CONFIGS = {"cpu": ("tiny",), "cuda": ("base", "videomae-b", "large", "mae_st-l")}

# Targets from issue 6 (H100, bf16): fused >= 1.10x eager images/s, peak memory <= 0.9x eager's, and ahead of
# torch.compile of the eager model. On CPU the same ratios are reported as a comparison. Dual masking (issue 16):
# the fused model >= 1.25x (CPU, tiny) / 1.3x (GPU) the images/s of the same provider with the full decoder.
# Video (issue 15): CPU video-tiny fused >= 1.2x eager clips/s at <= 0.9x its step peak memory; GPU VideoMAE-B at
# ratio 0.9 >= 1.3x eager clips/s and ahead of torch.compile of the eager model (unverified: no GPU lent).
TARGETS = {"speed_vs_eager": 1.10, "peak_vs_eager": 0.90, "speed_vs_compile": 1.0}
VIDEO_TARGETS = {("video-tiny", "cpu"): {"speed_vs_eager": 1.2, "peak_vs_eager": 0.90},
                 ("videomae-b", "cuda"): {"speed_vs_eager": 1.3, "speed_vs_compile": 1.0}}
DUAL_TARGET = {"cpu": 1.25, "cuda": 1.30}


def targets(config_name, device_type):
    """(the fused model's targets {ratio: bound}, whether they are the issue's targets for this device (else a
    comparison only)). Image configs: issue 6's, stated for the GPU; video configs: issue 15's where it states
    one ({} otherwise: the ratios are still in the rows)."""
    config = CONFIGS.get(config_name)
    if config is not None and config.video is not None:
        stated = VIDEO_TARGETS.get((config_name, device_type))
        return dict(stated or {}), stated is not None
    return dict(TARGETS), device_type == "cuda"


def build_model(config, **kwargs):
    """The config's model (its factory's defaults, the config's video arguments, then kwargs)."""
    if config.video is None:
        return MODELS[config.model](img_size=config.img_size, **kwargs)
    from ..models.video_mae import VIDEO_MODELS

    model = VIDEO_MODELS[config.model](img_size=config.img_size, **config.video, **kwargs)
    ratio = kwargs.get("decoder_mask_ratio", 0.0)
    if ratio and getattr(model, "decoder_mask_ratio", None) != ratio:  # a model's **kwargs would swallow it silently
        raise ValueError(f"config {config.name}: this video model does not take decoder_mask_ratio")
    return model


def autocast_dtype(device):
    return torch.bfloat16 if torch.device(device).type == "cuda" else None


def loss_tolerance(device, provider):
    """(rtol, atol) of a provider's first-step loss against eager's: those of tests/test_model.py (bf16
    autocast: the GPU test's; fp32: fused vs eager, looser for inductor's reordered sums)."""
    if autocast_dtype(device) is not None:
        return 0.05, 0.02
    return (1e-4, 1e-5) if "compile" in provider else (1e-5, 1e-6)


def make_inputs(config, batch, device, seed=0):
    """(initial weights on CPU, images [N, C, H, W] or clips [N, C, T, H, W], noise): the same for every
    provider. noise: [N, L] ([N, h*w] for tube masking: one spatial mask per clip)."""
    torch.manual_seed(seed)
    model = build_model(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    if config.video is None:
        shape, n_noise = (config.img_size, config.img_size), model.patch_embed.num_patches
    else:
        t, h, w = model.input_size
        shape = (config.num_frames, config.img_size, config.img_size)
        n_noise = h * w if model.mask_type == "tube" else t * h * w
    imgs = torch.randn(batch, model.in_chans, *shape, generator=gen).to(device)
    noise = torch.rand(batch, n_noise, generator=gen).to(device)
    return state, imgs, noise


class TrainStep:
    """One provider's model and optimizer; step() runs one training step and returns the loss (a tensor)."""

    def __init__(self, config, provider, state, imgs, noise):
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
        self.config, self.provider, self.imgs, self.noise = config, provider, imgs, noise
        self.device = imgs.device
        model = build_model(config, norm_pix_loss=True, use_fused_ops=provider.startswith("fused"),
                            **config.dual_masking)
        model.load_state_dict(state)
        self.model = model.to(self.device).train()
        self.net = torch.compile(self.model) if provider.endswith("compile") else self.model
        from ..pretrain import param_groups  # the reference's groups; imported here: pretrain needs numpy
        lr = BLR * imgs.shape[0] / 256
        self.optimizer = torch.optim.AdamW(param_groups(self.model, WEIGHT_DECAY), lr=lr, betas=(0.9, 0.95))
        self.amp = autocast_dtype(self.device)

    def step(self):
        if self.config.decoder_mask_ratio:
            torch.manual_seed(DECODER_MASK_SEED)  # the model draws its decoder mask from torch's generator
        if self.amp is not None:
            with torch.autocast(self.device.type, dtype=self.amp):
                loss, _, _ = self.net(self.imgs, mask_ratio=self.config.mask_ratio, noise=self.noise)
        else:
            loss, _, _ = self.net(self.imgs, mask_ratio=self.config.mask_ratio, noise=self.noise)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def state_mb(self):
        """Parameters and optimizer state (bytes of those tensors), MB."""
        tensors = list(self.model.parameters()) + [t for s in self.optimizer.state.values() for t in s.values()
                                                   if isinstance(t, torch.Tensor)]
        return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def time_steps(step, device, steps):
    """(milliseconds of each of `steps` consecutive steps, CPU milliseconds of each or None): CUDA events on
    GPU; on CPU time.perf_counter, and time.process_time (CPU time of all the process's threads)."""
    device = torch.device(device)
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        for start, end in zip(starts, ends):
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)], None
    times, cpu_times = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
        cpu_times.append((time.process_time() - c0) * 1e3)
    return times, cpu_times


def cpu_step_peak_mb(step):
    """High-water mark of CPU tensor memory allocated during one step above what was allocated at its start,
    from the torch profiler's allocation records (MB); None when the profiler does not give them."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        records = [e for e in prof.profiler.kineto_results.events()
                   if e.name() == "[memory]" and "CPU" in str(e.device_type())]
    except (AttributeError, RuntimeError):
        return None
    current = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 1e6 if records else None


def free_device_memory(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _failed(row, e):
    row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")


class _Run:
    """One (config, provider): build, warm up (first-step loss checked against eager's), time, measure memory."""

    def __init__(self, config, provider, batch, inputs, device):
        self.device = torch.device(device)
        self.row = {"config": config.name, "model": config.model, "img_size": config.img_size, "batch": batch,
                    "unit": config.unit, "num_frames": config.num_frames, "mask_ratio": config.mask_ratio,
                    "mask_type": config.video["mask_type"] if config.video is not None else "random",
                    "decoder_mask_ratio": config.decoder_mask_ratio,
                    "dtype": "bf16 autocast" if autocast_dtype(device) is not None else "fp32",
                    "provider": provider, "status": "ok", "times_ms": [], "round_medians_ms": [],
                    "device_type": self.device.type}
        self.config, self.provider, self.inputs, self.step = config, provider, inputs, None

    def prepare(self, warmup, eager_loss):
        row = self.row
        cuda = self.device.type == "cuda"
        try:
            free_device_memory(self.device)
            self.base_alloc = torch.cuda.memory_allocated(self.device) if cuda else 0
            self.step = TrainStep(self.config, self.provider, *self.inputs)
            t0 = time.perf_counter()
            first = self.step.step().float().item()  # .item() waits for the device
            row["first_step_s"] = time.perf_counter() - t0  # includes torch.compile's compilation
            row["first_loss"] = first
            row["loss_checked_against_eager"] = eager_loss is not None and self.provider != "eager"
            if row["loss_checked_against_eager"]:
                rtol, atol = loss_tolerance(self.device, self.provider)
                row["loss_diff_vs_eager"] = abs(first - eager_loss)
                if not abs(first - eager_loss) <= atol + rtol * abs(eager_loss):
                    raise AssertionError(f"first-step loss {first:.6g} differs from eager's {eager_loss:.6g} "
                                         f"(rtol {rtol}, atol {atol})")
            for _ in range(max(0, warmup - 1)):
                self.step.step()
            row["state_mb"] = self.step.state_mb()  # AdamW creates its state at the first step
            harness.synchronize(self.device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
                self.before_step = torch.cuda.memory_allocated(self.device)
        except Exception as e:  # noqa: BLE001  (a provider that breaks is reported, the others go on)
            _failed(row, e)
            self.close()
        return row["status"] == "ok"

    def time(self, steps):
        try:
            times, cpu_times = time_steps(self.step.step, self.device, steps)
        except Exception as e:  # noqa: BLE001
            _failed(self.row, e)
            self.close()
            return False
        self.row["times_ms"] += times
        if cpu_times is not None:
            self.row.setdefault("cpu_times_ms", []).extend(cpu_times)
        self.row["round_medians_ms"].append(harness.quantiles(times)["median_ms"])
        return True

    def finish(self):
        """Peak memory, last loss finite, statistics; frees the model."""
        row = self.row
        try:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                peak = torch.cuda.max_memory_allocated(self.device)
                row["peak_mb"] = (peak - self.base_alloc) / 1e6
                row["step_peak_mb"] = (peak - self.before_step) / 1e6
            else:
                row["peak_mb"] = None
                row["step_peak_mb"] = cpu_step_peak_mb(self.step.step)
            last = self.step.step().float().item()
            row["last_loss"] = last
            if not torch.isfinite(torch.tensor(last)):
                raise FloatingPointError(f"loss is {last} at the end of the run")
        except Exception as e:  # noqa: BLE001
            _failed(row, e)
        if row["status"] == "ok":
            stats = harness.quantiles(row["times_ms"])
            batch = row["batch"]
            unit = row["unit"]  # images/s, or clips/s (and frames/s) for video configs
            row.update(stats, steps=len(row["times_ms"]), rounds=len(row["round_medians_ms"]))
            row.update({f"{unit}_per_s": batch / stats["median_ms"] * 1e3,
                        f"{unit}_per_s_p20": batch / stats["p80_ms"] * 1e3,  # the slower steps: fewer per s
                        f"{unit}_per_s_p80": batch / stats["p20_ms"] * 1e3})
            if row["num_frames"]:
                row["frames_per_s"] = row["clips_per_s"] * row["num_frames"]
            if row.get("cpu_times_ms"):
                row["cpu_ms_median"] = harness.quantiles(row["cpu_times_ms"])["median_ms"]
        self.close()

    def close(self):
        self.step = None
        if self.provider.endswith("compile") and self.device.type == "cuda":
            torch._dynamo.reset()  # drop the compiled graphs (and what they hold) before the next provider
        free_device_memory(self.device)


def run(config_names, providers=PROVIDERS, device="cpu", batch=None, warmup=3, steps=10, rounds=1,
        time_budget_s=None, log=print, on_update=None):
    """Benchmark each (config, provider): a list of rows (dicts), ratios added by summarize().

    Providers run one after another (all rounds of one, then the next; provider-major across configs, so
    that a time budget cuts the slow compiled ones first), except on CPU with several rounds, where the
    providers of a config are kept alive and their rounds interleaved, so that load from other processes
    falls on all of them alike. A provider not started within time_budget_s is skipped, saying so.
    on_update(rows) is called after each provider (the CLI rewrites its JSON there)."""
    device = torch.device(device)
    configs = [CONFIGS[name] for name in config_names]
    start = time.time()
    torch._dynamo.reset()
    rows, eager_loss = [], {}

    def over_budget():
        return time_budget_s is not None and time.time() - start > time_budget_s

    def update():
        if on_update is not None:
            on_update(rows)

    inputs = {c.name: make_inputs(c, batch or c.batch[device.type], device) for c in configs}
    interleave = device.type == "cpu" and rounds > 1
    groups = [[(c, p) for p in providers] for c in configs] if interleave else \
             [[(c, p)] for p in providers for c in configs]
    for group in groups:
        runs = []
        for config, provider in group:
            n = batch or config.batch[device.type]
            r = _Run(config, provider, n, inputs[config.name], device)
            rows.append(r.row)
            if over_budget():
                r.row.update(status="skipped", reason=f"time budget of {time_budget_s:.0f} s spent")
                log(f"  {config.name} {provider}: skipped (time budget)")
                continue
            log(f"  {config.name} N={n} {provider}: building, {warmup} warm-up steps ...")
            if r.prepare(warmup, eager_loss.get(config.name)):
                if provider == "eager":
                    eager_loss[config.name] = r.row["first_loss"]
                log(f"  {config.name} N={n} {provider}: first step {r.row['first_step_s']:.1f} s, "
                    f"loss {r.row['first_loss']:.5f}")
                runs.append(r)
            else:
                log(f"  {config.name} N={n} {provider}: FAILED ({r.row['reason']})")
        for i in range(rounds):
            if i > 0 and over_budget():
                log(f"  time budget spent after {i} round(s)")
                break
            for r in runs:
                if r.step is not None and r.time(steps):
                    log(f"  {r.config.name} {r.provider} round {i + 1}: median {r.row['round_medians_ms'][-1]:.2f} ms")
        for r in runs:
            if r.step is not None:
                r.finish()
            if r.row["status"] != "ok":
                log(f"  {r.config.name} {r.provider}: FAILED ({r.row['reason']})")
        summarize(rows)
        update()
    return rows


def summarize(rows):
    """Add speed_vs_eager, speed_vs_compile and peak_vs_eager to the ok rows; return one summary per config with
    the fused model's targets. Memory ratios use peak_mb when both rows have it (GPU), else step_peak_mb (CPU)."""
    summaries = []
    for name in dict.fromkeys(r["config"] for r in rows):
        ok = {r["provider"]: r for r in rows if r["config"] == name and r["status"] == "ok"}
        eager, compiled = ok.get("eager"), ok.get("compile")
        for r in ok.values():
            r["speed_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
            r["speed_vs_compile"] = compiled["median_ms"] / r["median_ms"] if compiled else None
            if eager and eager.get("cpu_ms_median") and r.get("cpu_ms_median"):
                r["cpu_time_vs_eager"] = eager["cpu_ms_median"] / r["cpu_ms_median"]
            key = "peak_mb" if eager and eager.get("peak_mb") and r.get("peak_mb") else "step_peak_mb"
            r["peak_vs_eager"] = r[key] / eager[key] if eager and eager.get(key) and r.get(key) else None
            r["peak_vs_eager_of"] = key if r["peak_vs_eager"] is not None else None
        config = CONFIGS.get(name)
        if config is not None and config.full_decoder is not None:
            full = {r["provider"]: r for r in rows if r["config"] == config.full_decoder and r["status"] == "ok"}
            for provider, r in ok.items():
                r["speed_vs_full_decoder"] = (full[provider]["median_ms"] / r["median_ms"] if provider in full
                                              else None)
        fused = ok.get("fused")
        device_type = next(iter(ok.values())).get("device_type", "cpu") if ok else "cpu"
        bounds, apply = targets(name, device_type)
        summary = {"config": name, "targets": {}, "targets_apply": apply}
        if fused:
            for key, bound in bounds.items():
                value = fused.get(key)
                met = None if value is None else (value <= bound if key == "peak_vs_eager" else
                                                  value > bound if key == "speed_vs_compile" else value >= bound)
                summary["targets"][key] = {"value": value, "target": ("<= " if key == "peak_vs_eager" else
                                                                       "> " if key == "speed_vs_compile" else
                                                                       ">= ") + f"{bound:.2f}", "met": met}
            if "peak_vs_eager" in summary["targets"]:
                summary["targets"]["peak_vs_eager"]["of"] = fused.get("peak_vs_eager_of")
            if fused.get("speed_vs_full_decoder") is not None:
                bound = DUAL_TARGET[device_type]
                value = fused["speed_vs_full_decoder"]
                summary["targets"]["speed_vs_full_decoder"] = {"value": value, "target": f">= {bound:.2f}",
                                                               "met": value >= bound}
        summaries.append(summary)
    return summaries
