"""Which backend runs an op, and why the others cannot.

Backends: "cuda" (compiled CUDA kernels), "triton", "cpu" (compiled C++), "reference" (eager PyTorch, the spec).
Automatic choice by device: CUDA tensors -> cuda, then triton; CPU tensors -> cpu; reference last.
Override with the environment variable MAE_KERNELS_BACKEND or `with mae_kernels.use_backend("triton"):`.
An explicitly requested backend that cannot run raises BackendUnavailable saying why.
"""
import contextlib
import os
import re
import threading

from . import _ext

BACKENDS = ("cuda", "triton", "cpu", "reference")
_AUTO_ORDER = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}
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
    order = _AUTO_ORDER.get(device_type, ("reference",))
    reasons = []
    for name in order:
        reason = why_not(name, device_type, implemented)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    raise BackendUnavailable(f"mae_kernels.{op}: no backend can run on {device_type}: " + "; ".join(reasons))


def report(device_type):
    """{backend: None or the reason it cannot run} for `device_type`."""
    return {name: why_not(name, device_type) for name in BACKENDS}
