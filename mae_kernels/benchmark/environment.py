"""The machine a benchmark ran on: device name and slug (results and baselines are keyed by it), versions, commit."""
import datetime
import os
import platform
import re
import subprocess

import torch


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({cpu_count()} cores)"


def slug(text):
    text = re.sub(r"\((r|tm)\)", "", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def device_slug(device):
    """e.g. nvidia-h100-80gb-hbm3, cpu-intel-xeon-processor-2c."""
    device = torch.device(device)
    if device.type == "cuda":
        return slug(torch.cuda.get_device_name(device))
    return slug(f"cpu {cpu_name().replace('CPU', '')} {cpu_count()}c").replace("-processor", "")


def git_commit():
    """(commit, dirty) of the checkout the package was imported from, or (None, None) outside git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        return commit, bool(status)
    except (OSError, subprocess.SubprocessError):
        return None, None


def collect(device):
    """Everything a result file records about where and with what it ran."""
    from .. import __version__, _ext

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = git_commit()
    device = torch.device(device)
    return {
        "device": device_name(device),
        "device_slug": device_slug(device),
        "device_type": device.type,
        "cpu": cpu_name(),
        "cpu_cores": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "cuda_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda"
        else None,
        "mae_kernels": __version__,
        "extension": _ext.build_info() or {"error": _ext.load_error},
        "git_commit": commit,
        "git_dirty": dirty,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
