"""Builds csrc/cuda as C++ for the CUDA emulator (emu.h) and loads it in place of the compiled CPU kernels.

The real .cu/.cuh sources are copied with a few mechanical rewrites (kernel launches, __shared__ declarations,
__launch_bounds__ as a check in the kernel, `is_cuda()`, and the dispatch key CUDA -> CPU), compiled with g++
against emu.h and the stub CUDA headers in stubs/, and registered with TORCH_LIBRARY_IMPL(mae_kernels, CPU):
once `load()` has run, every call of a compiled op on CPU tensors (the `cpu` backend) runs the CUDA host code
and kernels, thread by thread.
"""
import os
import pathlib
import re
import warnings

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\(([^()]*)\)\s*")
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
_SHARED = re.compile(r"__shared__\s+([\w:]+)\s+(\w+)\s*\[([^\]]+)\]\s*;")


def _check_launch_bounds(text):
    """`__launch_bounds__(n)` kernels check, in their first statement, that the launch has at most n threads."""
    out, pos = [], 0
    for m in _LAUNCH_BOUNDS.finditer(text):
        body = text.index("{", m.end())
        out += [text[pos:m.start()], text[m.end():body + 1], f" ::emu::check_launch_bounds({m.group(1)});"]
        pos = body + 1
    return "".join(out) + text[pos:]


def rewrite(text):
    """The emulator's C++ for one CUDA source file."""
    text = _check_launch_bounds(text)
    text = _LAUNCH.sub(lambda m: f"::emu::launch(::emu::LaunchConfig({m.group(2)}), {m.group(1)}, ", text)
    text = _EXTERN_SHARED.sub(r"auto \2 = ::emu::dynamic_shared<\1>();", text)
    sites = iter(range(1, 1 << 20))
    text = _SHARED.sub(lambda m: f"auto {m.group(2)} = ::emu::static_shared<{m.group(1)}>({m.group(3)}, "
                                 f"{next(sites)});", text)
    text = text.replace("is_cuda()", "is_cpu()")
    text = text.replace("TORCH_LIBRARY_IMPL(mae_kernels, CUDA, m)", "TORCH_LIBRARY_IMPL(mae_kernels, CPU, m)")
    for left in ("<<<", ">>>", "__shared__"):
        if left in text:
            raise ValueError(f"cuda emulation: a construct the rewriter does not handle is left: {left}")
    return text


def _write_if_changed(path, text):
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def sources(out_dir):
    """Rewritten copies of csrc (headers as they are, CUDA files rewritten) under out_dir; the .cpp to compile."""
    out_dir = pathlib.Path(out_dir)
    compiled = []
    for src in sorted(CSRC.rglob("*")):
        if src.suffix not in (".h", ".cuh", ".cu"):
            continue
        rel = src.relative_to(CSRC)
        text = src.read_text()
        if src.suffix == ".h":
            _write_if_changed(out_dir / rel, text)
        elif src.suffix == ".cuh":
            _write_if_changed(out_dir / rel, rewrite(text))
        else:
            dst = (out_dir / rel).with_suffix(".emu.cpp")
            _write_if_changed(dst, rewrite(text))
            compiled.append(str(dst))
    return compiled


def load(verbose=False):
    """Compiles (incrementally, with ninja) and loads the emulated CUDA kernels."""
    import torch.utils.cpp_extension as cpp

    import mae_kernels  # noqa: F401  (its own CPU kernels first: the emulated ones replace them)

    build = ROOT / "build" / "cuda_emulation"
    # MAE_KERNELS_EMU_ASAN=1: AddressSanitizer on the emulated code (global-memory bounds; the process must run
    # with libasan preloaded, as tests/test_cuda_emulation_asan.py does). Each variant rewrites the sources into
    # its own folder: the two runs may build at the same time.
    asan = os.environ.get("MAE_KERNELS_EMU_ASAN") == "1"
    csrc = build / ("csrc-asan" if asan else "csrc")
    srcs = sources(csrc)
    lib = build / ("lib-asan" if asan else "lib")
    lib.mkdir(parents=True, exist_ok=True)
    name = "mae_kernels_cuda_emulation" + ("_asan" if asan else "")
    flags = ["-fPIC", "-std=c++20", "-O1"]  # the standard given here (last wins), so the header below matches it
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    includes = [str(HERE / "stubs"), str(HERE), str(csrc)]
    header = _precompiled_header(lib, name, flags, includes, verbose)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpp.load(name=name, sources=srcs, build_directory=str(lib), extra_include_paths=includes,
                 extra_cflags=[*flags, "-include", str(header)], extra_ldflags=["-fsanitize=address"] if asan else [],
                 is_python_module=False, verbose=verbose)


# What every emulated file includes first: parsing these is about 10 s of each file's 14 s compile.
_PCH_INCLUDES = ("emu_host.h", "ATen/ATen.h", "ATen/cuda/CUDAContext.h", "c10/cuda/CUDAGuard.h", "torch/library.h")


def _precompiled_header(lib, name, flags, includes, verbose):
    """lib/emu_pch.h (the headers above, stubs first) and its precompiled form, made with the macros and flags the
    extension's files compile with (torch.utils.cpp_extension's). gcc ignores a precompiled header that does not
    match them and parses the header instead: a mismatch costs time, never correctness."""
    import subprocess
    import sysconfig

    import torch
    import torch.utils.cpp_extension as cpp

    header = lib / "emu_pch.h"
    _write_if_changed(header, "".join(f"#include <{h}>\n" for h in _PCH_INCLUDES))
    cmd = [os.environ.get("CXX", "c++"), "-x", "c++-header", f"-DTORCH_EXTENSION_NAME={name}",
           "-DTORCH_API_INCLUDE_EXTENSION_H", *[f"-I{d}" for d in includes],
           *[a for d in [*cpp.include_paths(), sysconfig.get_path("include")] for a in ("-isystem", d)], *flags,
           str(header), "-o", str(header) + ".gch"]
    stamp = lib / "emu_pch.cmd"
    key = "\n".join([torch.__version__, *cmd])
    if not (lib / "emu_pch.h.gch").exists() or not stamp.exists() or stamp.read_text() != key:
        if verbose:
            print(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"cuda emulation: the precompiled header did not build:\n{proc.stderr[-3000:]}")
        stamp.write_text(key)
    return header
