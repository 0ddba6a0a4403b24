"""pytest-benchmark suites of mae_kernels (bench/test_bench_<op>.py); see bench/README.md.

Benchmarks disabled (pyproject's default --benchmark-disable, plain CI): each test is one smoke run of its
provider at the op's tiny SMOKE shapes, checked against the eager reference. With --benchmark-enable: the
official shapes of the device (cases/<op>.py SHAPES), timed with a timer that synchronises the GPU; results
and baselines are keyed by device: --benchmark-storage gets /<device-slug> appended."""
import os

import pytest
import torch

from mae_kernels.benchmark import cases, environment, harness

DEVICE = torch.device(environment.default_device())
_FUNCTIONS = {}  # (op, shape, provider) -> callable: torch.compile compiles once per session, not per test


def _enabled(config):
    return not config.getoption("benchmark_disable", default=True) or config.getoption(
        "benchmark_enable", default=False)


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads the storage option
def pytest_configure(config):
    if not _enabled(config) and DEVICE.type == "cpu":
        # Smoke runs of the Triton kernels on CPU go through the interpreter (set before any @triton.jit).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    storage = config.getoption("benchmark_storage", default=None)
    if storage:
        config.option.benchmark_storage = storage.rstrip("/") + "/" + environment.device_slug(DEVICE)


def pytest_benchmark_update_machine_info(config, machine_info):
    env = environment.collect(DEVICE)
    machine_info["mae_kernels"] = {k: env[k] for k in ("device", "device_slug", "torch", "torch_cuda", "triton",
                                                        "torch_threads", "git_commit")}


def pytest_generate_tests(metafunc):
    """`shape`: the official shapes of this device when benchmarking, else the op's tiny smoke shapes."""
    if "shape" in metafunc.fixturenames:
        module = metafunc.module.CASE
        shapes = cases.shapes(module, DEVICE.type, quick=not _enabled(metafunc.config))
        ids = ["-".join(f"{k}{v}" for k, v in s.items()).replace("torch.", "") for s in shapes]
        metafunc.parametrize("shape", shapes, ids=ids)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()) and item.get_closest_marker("benchmark") is None:
            item.add_marker(pytest.mark.benchmark(timer=harness.synchronized_timer, disable_gc=True))


@pytest.fixture
def bench_op(benchmark):
    """bench_op(module, shape, provider, mode): skip with the reason when the provider cannot run; check it
    against the reference (outputs, and gradients unless mode is forward); then, when benchmarks are enabled,
    time the mode."""
    def run(module, shape, provider, mode):
        torch.manual_seed(0)
        case = module.setup(DEVICE, **shape)
        enabled = not benchmark.disabled
        reason = harness.why_not(case, provider, allow_interpreter=not enabled)
        if reason is not None:
            pytest.skip(f"{provider}: {reason}")
        key = (case.op, case.shape, str(case.dtype), provider)
        if key not in _FUNCTIONS:
            _FUNCTIONS[key] = (harness.provider_function(case, provider) if provider != "compile"
                               else torch.compile(case.reference, dynamic=False))
        fn = _FUNCTIONS[key]
        benchmark.extra_info.update(op=case.op, shape=case.shape, dtype=str(case.dtype), provider=provider,
                                    mode=mode, bytes=case.bytes[mode], device=environment.device_name(DEVICE))
        if not enabled:  # one smoke run, checked
            benchmark(harness.check, case, fn, with_grad=mode != "forward")
            return
        harness.check(case, fn, with_grad=mode != "forward")
        step, _ = harness.mode_step(case, fn, mode)
        leaves = case.leaves()

        def clear():
            for t in leaves:
                t.grad = None
        t = harness.measure(step, DEVICE, leaves, warmup_ms=10, rep_ms=10, min_reps=1, max_reps=1)
        rounds = int(min(200, max(10, 300 / max(t["median_ms"], 1e-3))))
        benchmark.pedantic(step, setup=clear, rounds=rounds, warmup_rounds=3)
        benchmark.extra_info["gbps"] = case.bytes[mode] / benchmark.stats.stats.median / 1e9
    return run
