"""What to build: CUDA detection, arch flags, compiler flags and build metadata.

setup.py stays thin and calls `extension_kwargs()`; everything that decides how mae_kernels._C is
compiled lives here so that it can be read (and tested) in one place.

Environment switches:
  MAE_KERNELS_BUILD_CUDA  auto (default): build CUDA kernels when torch has CUDA and nvcc is found;
                          0: skip them; 1: force them (fail when they cannot be built).
  TORCH_CUDA_ARCH_LIST    honoured; default DEFAULT_ARCHS below.
  MAX_JOBS                parallel compile jobs (ninja), honoured by torch's BuildExtension.
  MAE_KERNELS_DEBUG       1: -O0 -g, device-side asserts.
"""
import glob
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ampere (A100) and Hopper (H100/H200) SASS, plus PTX so newer GPUs can JIT.
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _env_switch(name, default="auto"):
    value = os.environ.get(name, default).strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "false", "no", "off", "skip"):
        return "off"
    if value in ("1", "true", "yes", "on", "force"):
        return "on"
    raise ValueError(f"{name} must be auto, 0 or 1, got {value!r}")


def find_nvcc():
    """Path to nvcc inside a CUDA toolkit: CUDA_HOME / CUDA_PATH, /usr/local/cuda, then PATH.
    A toolkit directory (with lib64/) is preferred over wrapper scripts found on PATH."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    found = shutil.which("nvcc")
    if found:
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(found))))
    for home in homes:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return found


def nvcc_version(nvcc):
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    for token in out.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return "unknown"


def cuda_decision():
    """(build_cuda: bool, reason: str). Raises when CUDA is forced but cannot be built."""
    import torch

    switch = _env_switch("MAE_KERNELS_BUILD_CUDA")
    if switch == "off":
        return False, "MAE_KERNELS_BUILD_CUDA=0"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    nvcc = find_nvcc()
    if nvcc is None:
        problems.append("nvcc not found (set CUDA_HOME)")
    if problems:
        if switch == "on":
            raise RuntimeError("MAE_KERNELS_BUILD_CUDA=1 but CUDA cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    os.environ["CUDA_HOME"] = os.path.dirname(os.path.dirname(nvcc))
    return True, f"nvcc {nvcc_version(nvcc)} at {nvcc}"


def cuda_include_dirs():
    """The CUDA headers shipped inside the torch wheel (nvidia/cu13/include), needed when the
    system toolkit lacks some of them (cuRAND, cuBLAS headers of the matching version)."""
    import torch

    site = os.path.dirname(os.path.dirname(torch.__file__))
    return sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(d))


def arch_list():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if not archs:
        archs = DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    return archs


def write_build_info(build_cuda, reason):
    """Record what the extension is built against; checked again at import time."""
    import torch

    info = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": build_cuda,
        "cuda_reason": reason,
        "cuda_archs": arch_list() if build_cuda else "",
        "nvcc_version": nvcc_version(find_nvcc()) if build_cuda else "",
        "debug": os.environ.get("MAE_KERNELS_DEBUG", "0") == "1",
    }
    path = os.path.join(ROOT, "mae_kernels", "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py (python/build_config.py); do not edit.\n")
        f.write(f"BUILD_INFO = {info!r}\n")
    return info


def _defines(info):
    def quoted(s):
        return '"' + str(s) + '"'

    return [
        ("MAE_KERNELS_TORCH_VERSION", quoted(info["torch_version"])),
        ("MAE_KERNELS_CUDA_ARCHS", quoted(info["cuda_archs"])),
    ]


def extension_kwargs():
    """Keyword arguments for the mae_kernels._C extension, and the extension class to use."""
    build_cuda, reason = cuda_decision()  # sets CUDA_HOME, which cpp_extension reads at import
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    info = write_build_info(build_cuda, reason)
    debug = info["debug"]
    sources = [os.path.join("csrc", "mae_kernels.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp"]  # the C++ standard is the one torch asks for (C++20 from 2.13)
    define_macros = _defines(info)
    kwargs = dict(name="mae_kernels._C", include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    if build_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("MAE_KERNELS_WITH_CUDA", "1"))
        # No --use_fast_math: the kernels are memory- or integer-bound, and its flush-to-zero adds and approximate
        # division / sqrt would break the bit-exact sums and the fp32 statistics (tests/test_cuda_resources.py).
        nvcc = ["-O0", "-G", "-g"] if debug else ["-O3", "-lineinfo"]
        nvcc += ["--expt-relaxed-constexpr"]
        kwargs["include_dirs"] += cuda_include_dirs()
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": nvcc}
        ext_cls = CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext_cls = CppExtension
    kwargs["sources"] = sources
    kwargs["define_macros"] = define_macros
    print(f"mae_kernels: CUDA kernels {'ON' if build_cuda else 'OFF'} ({reason}); "
          f"archs {info['cuda_archs'] or '-'}; torch {info['torch_version']}")
    return ext_cls, kwargs
