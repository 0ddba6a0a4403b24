"""Which backend runs an op, and why the others cannot.

Backends: "cuda" (compiled CUDA kernels), "triton", "cpu" (compiled C++), "reference" (eager PyTorch, the spec).
Automatic choice: CPU tensors -> cpu, then reference; CUDA tensors -> the op's order in CUDA_ORDER (cuda, then
triton, then reference unless the evidence says otherwise: each entry states it), the first that can run. An op's
backward runs on the backend its forward chose (autograd is registered per backend's op). Override with the
environment variable MAE_KERNELS_BACKEND or `with mae_kernels.use_backend("triton"):`. An explicitly requested
backend that cannot run raises BackendUnavailable saying why; report(device_type, op) says why each backend was or
was not chosen.
"""
import contextlib
import os
import re
import threading

from . import _ext

BACKENDS = ("cuda", "triton", "cpu", "reference")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}

# The automatic order for CUDA tensors per op, with its evidence. The evidence is the static per-kernel report
# (bench/results/static_report.md, python/static_report.py: predictions for an H100 at ViT-B/16 224, N = 256,
# bf16, from the compiled SASS / PTX and a bytes model), NOT GPU measurements: revisit each entry when the report
# is regenerated or a GPU measures the two paths (bench: `make gpu-check`). Ops not listed: DEFAULT_CUDA_ORDER.
STATIC_REPORT = ("bench/results/static_report.md as of session 7 (19511f5f; static predictions for an H100, not GPU "
                 "measurements)")
DEFAULT_CUDA_ORDER = (("cuda", "triton", "reference"),
                      "cuda first by default: no static prediction favours another backend for this op (the compiled "
                      "launcher also has no Python launch overhead)")
CUDA_ORDER = {
    "masked_patch_embed": (
        ("triton", "cuda", "reference"),
        "triton first: its kernel is one fused GEMM that loads its tiles from the pixels (1.00x the minimum bytes), "
        "predicted at 87% of copy bandwidth against 79% for the cuda path (gather, bf16 GEMM, positional epilogue "
        "and the weight's layout copy: 3 more launches) at ViT-B/16 bf16, p = 16; the backward is the same code on "
        "both (33-35%)"),
    "random_masking": (
        ("cuda", "triton", "reference"),
        "cuda first: both predicted alike (forward and backward 100% of copy bandwidth, one launch each), and the "
        "compiled launcher has no Python launch overhead"),
    "masked_patchify": (
        ("cuda", "triton", "reference"),
        "cuda first: both predicted alike (forward 72%: the index check's launches; backward 99%, one launch), and "
        "the compiled launcher has no Python launch overhead"),
    "unshuffle_with_mask_tokens": (
        ("cuda", "triton", "reference"),
        "cuda first: forward alike (100%), backward 81% for cuda against 52% for triton (its mask-token sum runs on "
        "8 programs)"),
    "masked_mse_loss": (
        ("cuda", "triton", "reference"),
        "cuda first: forward 80% against 60% for triton (both 3 launches; triton's rows kernel issues more "
        "instructions per element), backward alike (50%)"),
}
_state = threading.local()


class BackendUnavailable(RuntimeError):
    pass


def release(version):
    """(major, minor) of a version string such as "2.11.0+cu130" or "3.6.0"; (0, 0) when unreadable."""
    m = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(m[1]), int(m[2])) if m else (0, 0)


def interpreter_numpy_problem(triton_version, numpy_version):
    """triton 3.6's interpreter (and older) turns a runtime loop bound into a Python int with int() of a
    1-element numpy array, which numpy >= 2.4 refuses (triton-lang/triton#9171; triton 3.8 squeezes it first).
    No loop form avoids it (range and tl.range alike), so such a pair cannot run our kernels on CPU tensors."""
    if release(triton_version) < (3, 7) and release(numpy_version) >= (2, 4):
        return (f"the Triton interpreter of triton {triton_version} fails with numpy {numpy_version} "
                "(triton-lang/triton#9171): install numpy<2.4 or a newer triton")
    return None


def _check_name(name, source):
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} (or 'auto'), got {name!r}")
    return name


def requested_backend():
    """The backend forced by use_backend() or MAE_KERNELS_BACKEND, or None for automatic choice."""
    forced = getattr(_state, "forced", None)
    if forced is not None:
        return forced
    env = os.environ.get("MAE_KERNELS_BACKEND", "").strip().lower()
    if env in ("", "auto"):
        return None
    return _check_name(env, "MAE_KERNELS_BACKEND")


@contextlib.contextmanager
def use_backend(name):
    """Force a backend for the ops called inside the block ("auto" restores the automatic choice)."""
    name = None if name in (None, "auto") else _check_name(name, "use_backend(name)")
    previous = getattr(_state, "forced", None)
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = previous


def triton_problem(device_type):
    """Why Triton cannot run on this device type, or None."""
    try:
        import triton
    except ImportError as e:
        return f"triton is not installed ({e})"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton"
    if device_type == "cpu":
        import numpy

        problem = interpreter_numpy_problem(triton.__version__, numpy.__version__)
        if problem is not None:
            return problem
    if device_type not in ("cpu", "cuda"):
        return f"no Triton support for device type {device_type!r}"
    return None


def why_not(backend, device_type, implemented=BACKENDS):
    """The reason `backend` cannot run an op on `device_type`, or None when it can."""
    if backend not in implemented:
        return "this op has no such backend"
    if backend == "reference":
        return None
    if backend == "triton":
        return triton_problem(device_type)
    if _ext.load_error is not None:
        return _ext.load_error
    if backend == "cpu":
        return None if device_type == "cpu" else f"tensors are on {device_type}, the cpu backend needs CPU tensors"
    if backend == "cuda":
        if device_type != "cuda":
            return f"tensors are on {device_type}, the cuda backend needs CUDA tensors"
        if not _ext.has_cuda_kernels():
            return "mae_kernels._C was built without CUDA kernels (" + str(
                (_ext.build_info() or {}).get("cuda_reason", "no nvcc")) + ")"
        return None
    raise AssertionError(backend)


def select(op, device_type, implemented=BACKENDS):
    """The backend that runs `op` for tensors on `device_type`."""
    forced = requested_backend()
    if forced is not None:
        reason = why_not(forced, device_type, implemented)
        if reason is not None:
            raise BackendUnavailable(f"mae_kernels.{op}: backend {forced!r} cannot run: {reason}")
        return forced
    order = auto_order(op, device_type)[0]
    reasons = []
    for name in order:
        reason = why_not(name, device_type, implemented)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailable(f"mae_kernels.{op}: no backend can run on {device_type}: " + "; ".join(reasons))


def auto_order(op, device_type):
    """(the backends tried in order for `op` on `device_type` when none is forced, why that order)."""
    if device_type == "cuda":
        order, reason = CUDA_ORDER.get(op, DEFAULT_CUDA_ORDER)
        return order, f"{reason} [evidence: {STATIC_REPORT}]" if op in CUDA_ORDER else reason
    if device_type == "cpu":
        return _AUTO_ORDER["cpu"], "the compiled C++ kernels, the reference if they are not built"
    return ("reference",), f"no compiled or Triton backend runs on {device_type!r}"


def report(device_type, op=None):
    """{backend: None or the reason it cannot run} for `device_type`. With `op`: why each backend was or was not
    chosen for it (as xformers' dispatch explains itself), in the op's automatic order then the others: None for
    the backend select() picks, else the reason it cannot run, or that it comes after the chosen one in the op's
    order (and why that order), or that it is not in that order, or that another backend is forced."""
    if op is None:
        return {name: why_not(name, device_type) for name in BACKENDS}
    order, reason = auto_order(op, device_type)
    forced = requested_backend()
    chosen = forced if forced is not None and why_not(forced, device_type) is None else None
    if forced is None:
        chosen = next((name for name in order if why_not(name, device_type) is None), None)
    out = {}
    for name in list(order) + [b for b in BACKENDS if b not in order]:
        cannot = why_not(name, device_type)
        if cannot is not None:
            out[name] = f"cannot run: {cannot}"
        elif name == chosen:
            out[name] = None
        elif forced is not None:
            out[name] = f"not chosen: backend {forced!r} is forced (use_backend / MAE_KERNELS_BACKEND)"
        elif name in order:
            out[name] = (f"not chosen: {chosen} comes first for {op} on {device_type} tensors (order "
                         f"{' > '.join(order)}: {reason})")
        else:
            out[name] = f"not chosen: not in the automatic order for {device_type} tensors ({' > '.join(order)})"
    return out
