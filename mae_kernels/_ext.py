"""Loads the compiled extension mae_kernels._C (which registers the CPU/CUDA kernels of torch.ops.mae_kernels)
and refuses a build made for another torch. The package works without it (triton and reference backends);
`load_error` then says why, and the backend chooser reports it."""
import torch

REBUILD = "rebuild it with: pip install --no-build-isolation -e .  (from the mae_kernels source folder)"

_C = None
load_error = None

try:
    from . import _build_info
except ImportError:
    _build_info = None

try:
    if _build_info is not None and _build_info.BUILD_INFO["torch_version"] != torch.__version__:
        raise ImportError(
            f"mae_kernels._C was built for torch {_build_info.BUILD_INFO['torch_version']} but torch "
            f"{torch.__version__} is installed; {REBUILD}")
    from . import _C  # noqa: F811  (registers the ops with the dispatcher)

    if _C.build_info()["torch_version"] != torch.__version__:
        raise ImportError(
            f"mae_kernels._C was built for torch {_C.build_info()['torch_version']} but torch "
            f"{torch.__version__} is installed; {REBUILD}")
except ImportError as e:  # missing, or built against another torch (undefined symbols)
    _C = None
    load_error = str(e) if "rebuild" in str(e) else f"mae_kernels._C could not be loaded ({e}); {REBUILD}"


def build_info():
    """What the extension was built with, or None when it is not loaded."""
    if _C is None:
        return None
    info = dict(_build_info.BUILD_INFO) if _build_info is not None else {}
    info.update(_C.build_info())
    return info


def has_cuda_kernels():
    return _C is not None and bool(_C.build_info()["with_cuda"])
