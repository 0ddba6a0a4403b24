import importlib.util
import os

import torch

# Triton kernels run compiled on CUDA tensors when there is a GPU; without one they run on CPU tensors through
# the Triton interpreter. Decided before any @triton.jit runs (mae_kernels imports its Triton modules lazily).
# An explicit TRITON_INTERPRET wins: python/gpu_check.sh runs the GPU tests with 0 and the CPU tests with 1.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")
INTERPRET = os.environ["TRITON_INTERPRET"] == "1"
if INTERPRET:
    os.environ.pop("MAE_KERNELS_BACKEND", None)

import pytest  # noqa: E402

HAS_GPU = torch.cuda.is_available()

# MAE_KERNELS_CUDA_EMULATION=1 (tests/test_cuda_emulation.py): the compiled ops on CPU tensors run csrc/cuda's
# host code and kernels in the CUDA emulator, so the `cpu` backend's tests test the CUDA sources.
EMULATION = os.environ.get("MAE_KERNELS_CUDA_EMULATION") == "1"
if EMULATION:
    from cuda_emulation import build as _emulation

    _emulation.load()

# Raised (backends.triton_problem) when Triton is asked to run on CPU tensors without the interpreter.
_NO_INTERPRETER = "CPU tensors need the Triton interpreter"


# Test modules that need an optional package are not collected without it (an import error would stop the whole
# session); the summary says which. tests/test_transformers.py skips itself (pytest.importorskip).
_OPTIONAL = {"test_properties*.py": "hypothesis"}
collect_ignore_glob = [g for g, module in _OPTIONAL.items() if importlib.util.find_spec(module) is None]


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_cpu_isa())  # also under -q, which hides the header
    for g in collect_ignore_glob:
        terminalreporter.write_line(f"NOT COLLECTED: tests/{g} ({_OPTIONAL[g]} is not installed)")


def _cpu_isa():
    """Which CPU kernels ran: ATen's vector ISA (ATEN_CPU_CAPABILITY can only lower it) and oneDNN's cap."""
    return (f"CPU ISA: ATen {torch.backends.cpu.get_cpu_capability()} (ATEN_CPU_CAPABILITY="
            f"{os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}), oneDNN cap ONEDNN_MAX_CPU_ISA="
            f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}")


def pytest_report_header(config):
    return _cpu_isa()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if EMULATION:  # only what runs the compiled ops on CPU tensors: the emulated CUDA code
        def other_backend(item):
            params = item.callspec.params.values() if hasattr(item, "callspec") else ()
            return ("gpu" in item.keywords or "triton" in item.originalname
                    or any(isinstance(v, str) and v in ("triton", "reference", "cuda") for v in params))
        keep, other = [], []
        for item in items:
            (other if other_backend(item) else keep).append(item)
        config.hook.pytest_deselected(items=other)
        items[:] = keep
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_emulation = pytest.mark.skip(reason="runs in tests/test_cuda_emulation.py's emulated session")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "cuda_emulation" in item.keywords and not EMULATION:
            item.add_marker(skip_emulation)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With TRITON_INTERPRET=0 (compiled Triton, the GPU run), a test that runs Triton on CPU tensors is skipped
    with the reason instead of failing: those tests belong to the interpreter run (TRITON_INTERPRET=1)."""
    outcome = yield
    report = outcome.get_result()
    if (not INTERPRET and call.when == "call" and call.excinfo is not None
            and _NO_INTERPRETER in str(call.excinfo.value)):  # BackendUnavailable, or opcheck's wrapping of it
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           "Skipped: Triton on CPU tensors runs only with TRITON_INTERPRET=1 (this run compiles "
                           "Triton for the GPU)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def no_tf32():
    """fp32 GEMMs and convolutions in true fp32 (as the reference on CPU), restored afterwards. Plain
    assignments: pytest's monkeypatch cannot restore these torch.backends attributes."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
