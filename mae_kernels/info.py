"""`mae-kernels info`: versions, how the extension was built, and which backends can run here (and why not)."""
import argparse
import platform

import torch

from . import _ext, backends

# The oldest versions tested (the CI floor leg, `make test-floor`); pyproject.toml states the same lower bounds
# (tests/test_backends.py checks that they agree).
FLOORS = {"torch": (2, 11), "triton": (3, 6)}


def version_warnings(versions):
    """A warning for each package in FLOORS whose version in `versions` (name -> version or None) is older."""
    return [f"{name} {versions[name]} is older than {'.'.join(map(str, floor))}, the oldest version mae_kernels "
            f"is tested with: upgrade it" for name, floor in FLOORS.items()
            if versions.get(name) is not None and backends.release(versions[name]) < floor]


def collect():
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "gpu": gpu,
        "extension": _ext.build_info() or {"error": _ext.load_error},
        "backends": {dev: backends.report(dev) for dev in devices},
        # Static: the order is the same whether or not a GPU is here; `chosen` only where one is.
        "cuda_order": {op: dict(order=list(backends.auto_order(op, "cuda")[0]),
                                reason=backends.auto_order(op, "cuda")[1],
                                chosen=(next((b for b, why in backends.report("cuda", op).items() if why is None),
                                             None) if "cuda" in devices else None))
                       for op in list(backends.CUDA_ORDER) + ["other ops"]},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mae-kernels info", description=__doc__)
    parser.parse_args(argv)
    info = collect()
    from . import __version__
    print(f"mae_kernels {__version__}")
    for key in ("python", "torch", "torch_cuda", "triton", "gpu"):
        print(f"  {key:<11} {info[key]}")
    for warning in version_warnings(info):
        print(f"  WARNING: {warning}")
    print("  extension   " + ", ".join(f"{k}={v}" for k, v in info["extension"].items()))
    if not torch.cuda.is_available():
        print("  (no CUDA device visible: the cuda backend, and triton on GPU, cannot run here)")
    for dev, report in info["backends"].items():
        print(f"backends for {dev} tensors:")
        for name, reason in report.items():
            print(f"  {name:<10} {'usable' if reason is None else 'unusable: ' + reason}")
    print("automatic order per op for cuda tensors (cpu tensors: cpu > reference), from static predictions, not GPU "
          "measurements:")
    for op, entry in info["cuda_order"].items():
        chosen = f" [chosen here: {entry['chosen']}]" if entry["chosen"] else ""
        print(f"  {op:<27} {' > '.join(entry['order'])}{chosen}: {entry['reason']}")
    return 0
