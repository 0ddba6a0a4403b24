"""Times one op for one provider and one mode.

Providers: "reference" (the eager official code, mae_kernels/reference.py), "compile" (torch.compile of that
same function), and the mae_kernels backends "cpu", "triton", "cuda" (the public function run inside
mae_kernels.use_backend(name)). Modes: "forward", "backward" (autograd backward of a saved forward), "full"
(forward + backward). Timing: CUDA events around each call with the L2 cache flushed before it (as
triton.testing.do_bench does) on GPU; wall clock (time.perf_counter) on CPU. Warm-up first (which is where
torch.compile compiles), then repeats until a time budget: median and 20th/80th percentiles in ms.
"""
import dataclasses
import importlib.util
import time

import torch

from .. import backends

PROVIDERS = ("reference", "compile", "cpu", "triton", "cuda")
MODES = ("forward", "backward", "full")


@dataclasses.dataclass
class Case:
    """One op at one shape, built by cases/<op>.py's setup(). `reference` and `function` take *args and return
    a tuple of tensors; `function` is the public mae_kernels function (run under use_backend(provider))."""
    op: str                      # kernel name: torch.ops.mae_kernels.<op>, mae_kernels/triton/<op>.py
    shape: str                   # e.g. "N=256 L=196 D=768"
    dtype: torch.dtype
    reference: callable
    function: callable
    args: tuple                  # timed inputs (tensors needing gradients have requires_grad=True)
    bytes: dict                  # {"forward": n, "backward": n}: the least traffic each pass must move
    check_args: tuple = None     # deterministic inputs for correctness checks (default: args)
    differentiable: tuple = (0,)  # indices of the outputs that receive gradients
    # Reference and providers must agree exactly unless tolerances are given: {dtype: (rtol, atol)}.
    tolerances: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.check_args is None:
            self.check_args = self.args
        self.bytes = dict(self.bytes, full=self.bytes["forward"] + self.bytes["backward"])

    @property
    def modes(self):
        """The modes this op has: all of MODES, or forward only for ops without a gradient (index outputs)."""
        return MODES if self.differentiable else ("forward",)

    @property
    def device(self):
        # check_args too: ops timed without a tensor input (masks drawn from N and sizes) check with one
        return next(a.device for a in self.args + self.check_args if isinstance(a, torch.Tensor))

    def leaves(self, args=None):
        """The inputs whose .grad the backward pass fills (cleared before each timed call)."""
        return [a for a in (args or self.args) if isinstance(a, torch.Tensor) and a.requires_grad]


def _kernel_missing(op, provider):
    """Why this checkout has no `provider` kernel for `op` (None when it has one)."""
    if provider == "triton":
        try:
            found = importlib.util.find_spec(f"mae_kernels.triton.{op}") is not None
        except ModuleNotFoundError:
            found = False
        return None if found else f"mae_kernels/triton/{op}.py is not in this checkout"
    key = {"cpu": "CPU", "cuda": "CUDA"}[provider]
    try:
        found = torch._C._dispatch_has_kernel_for_dispatch_key(f"mae_kernels::{op}", key)
    except RuntimeError:
        found = False
    return None if found else f"no {key} kernel is registered for mae_kernels::{op} in this build"


def why_not(case, provider, allow_interpreter=False):
    """Why `provider` cannot run `case` here (None when it can)."""
    if provider not in PROVIDERS:
        return f"unknown provider (expected one of {PROVIDERS})"
    if provider in ("reference", "compile"):
        return None
    device_type = case.device.type
    reason = backends.why_not(provider, device_type)
    if reason is None:
        reason = _kernel_missing(case.op, provider)
    if reason is None and provider == "triton" and device_type == "cpu" and not allow_interpreter:
        reason = "Triton on CPU runs through its interpreter (about 1 ms per program): tested, not timed"
    return reason


def provider_function(case, provider):
    """The callable that runs `case` for `provider` (torch.compile happens lazily, at the first call)."""
    if provider == "reference":
        return case.reference
    if provider == "compile":
        torch._dynamo.reset()  # a fresh cache per case: no recompile limits, no dynamic shapes carried over
        return torch.compile(case.reference, dynamic=False)
    function = case.function

    def run(*args):
        with backends.use_backend(provider):
            return function(*args)
    return run


def mode_step(case, fn, mode, grad_outputs=None):
    """(step, grad_outputs): a no-argument callable doing one `mode` pass of fn on case.args."""
    if mode == "forward":
        return (lambda: fn(*case.args)), None
    outputs = [fn(*case.args)[i] for i in case.differentiable] if mode == "backward" else None
    if grad_outputs is None:
        probe = outputs or [fn(*case.args)[i] for i in case.differentiable]
        gen = torch.Generator(device=probe[0].device).manual_seed(1)
        grad_outputs = [torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen) for o in probe]
    if mode == "backward":
        def step():
            torch.autograd.backward(outputs, grad_outputs, retain_graph=True)
    elif mode == "full":
        def step():
            out = fn(*case.args)
            torch.autograd.backward([out[i] for i in case.differentiable], grad_outputs)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return step, grad_outputs


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def synchronized_timer():
    """time.perf_counter after waiting for the GPU: the timer for pytest-benchmark (bench/conftest.py)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


_L2_FLUSH = {}


def _flush_buffer(device):
    if device not in _L2_FLUSH:
        _L2_FLUSH[device] = torch.empty(256 << 20, dtype=torch.int8, device=device)  # larger than any L2
    return _L2_FLUSH[device]


def measure(step, device, leaves=(), warmup_ms=25.0, rep_ms=100.0, min_reps=5, max_reps=1000):
    """{median_ms, p20_ms, p80_ms, reps} of step() after warm-up; .grad of `leaves` is cleared before each call
    (outside the timed region)."""
    device = torch.device(device)
    cuda = device.type == "cuda"

    def clear():
        for t in leaves:
            t.grad = None

    # Estimate the time of one call to size warm-up and repeats.
    clear()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(3):
        clear()
        step()
    synchronize(device)
    estimate_ms = max((time.perf_counter() - t0) * 1e3 / 3, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate_ms))):
        clear()
        step()
    reps = min(max_reps, max(min_reps, int(rep_ms / estimate_ms)))
    times = []
    if cuda:
        flush = _flush_buffer(device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            clear()
            flush.zero_()
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    else:
        for _ in range(reps):
            clear()
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return {**quantiles(times), "reps": reps}


def quantiles(times):
    """{median_ms, p20_ms, p80_ms} of a list of times in ms."""
    q = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return {"median_ms": q[0].item(), "p20_ms": q[1].item(), "p80_ms": q[2].item()}


def peak_memory_mb(step, device, leaves=()):
    """Extra CUDA memory one call allocates at its peak (max_memory_allocated delta), in MB; None on CPU
    (no allocator statistics there: reported as n/a rather than guessed)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 1e6


def copy_bandwidth_gbps(device, nbytes=None, **timing):
    """GB/s of a device-to-device copy (read + write counted), the floor a memory-bound op is compared with."""
    device = torch.device(device)
    nbytes = nbytes or ((512 << 20) if device.type == "cuda" else (64 << 20))
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, **timing)
    return 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9


def check(case, fn, with_grad=True):
    """Assert that fn agrees with the reference on case.check_args: outputs and (with_grad) input gradients."""
    def run(f):
        args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                for a in case.check_args]
        out = f(*args)
        grads = []
        if with_grad and case.leaves(args):
            gen = torch.Generator(device=case.device).manual_seed(2)
            gouts = [torch.randn(out[i].shape, dtype=out[i].dtype, device=out[i].device, generator=gen)
                     for i in case.differentiable]
            grads = torch.autograd.grad([out[i] for i in case.differentiable], case.leaves(args), gouts)
        return [o.detach() for o in out], list(grads)

    expected, expected_grads = run(case.reference)
    got, got_grads = run(fn)
    rtol, atol = case.tolerances.get(case.dtype, (0.0, 0.0))
    for what, a, b in [("output", g, e) for g, e in zip(got, expected)] + \
                      [("gradient", g, e) for g, e in zip(got_grads, expected_grads)]:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{case.op} {case.shape} {case.dtype}: {what} differs: {m}")


def run_case(case, providers=PROVIDERS, modes=MODES, copy_gbps=None, log=print, **timing):
    """Benchmark `case` for each provider and mode: a list of result rows (dicts)."""
    device = case.device
    rows = []
    for provider in providers:
        base = {"op": case.op, "shape": case.shape, "dtype": str(case.dtype).replace("torch.", ""),
                "provider": provider}
        reason = why_not(case, provider)
        if reason is not None:
            rows.append(dict(base, mode=None, status="unavailable", reason=reason))
            continue
        fn = provider_function(case, provider)
        grad_outputs = None
        for mode in modes:
            row = dict(base, mode=mode, bytes=case.bytes[mode])
            if mode not in case.modes:
                rows.append(dict(row, status="unavailable", reason="no gradient (index outputs): forward only"))
                continue
            try:
                step, grad_outputs = mode_step(case, fn, mode, grad_outputs)
                stats = measure(step, device, case.leaves(), **timing)
                peak = peak_memory_mb(step, device, case.leaves())
            except Exception as e:  # noqa: BLE001  (a provider that breaks is reported, the others go on)
                rows.append(dict(row, status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"))
                log(f"  {case.op} {case.shape} {provider} {mode}: FAILED ({rows[-1]['reason']})")
                continue
            gbps = case.bytes[mode] / (stats["median_ms"] * 1e-3) / 1e9
            rows.append(dict(row, status="ok", **stats, gbps=gbps,
                             copy_fraction=gbps / copy_gbps if copy_gbps else None, peak_mb=peak))
            log(f"  {case.op} {case.shape} {row['dtype']} {provider:<9} {mode:<8} {stats['median_ms']:9.3f} ms")
    _add_speedups(rows)
    return rows


def _add_speedups(rows):
    ref = {(r["op"], r["shape"], r["dtype"], r["mode"]): r["median_ms"]
           for r in rows if r["provider"] == "reference" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok":
            t = ref.get((r["op"], r["shape"], r["dtype"], r["mode"]))
            r["speedup"] = t / r["median_ms"] if t else None
