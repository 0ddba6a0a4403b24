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
    flags = ["-O1", "-include", str(HERE / "stubs" / "emu_host.h")]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpp.load(name="mae_kernels_cuda_emulation" + ("_asan" if asan else ""), sources=srcs,
                 build_directory=str(lib), extra_include_paths=[str(HERE / "stubs"), str(HERE), str(csrc)],
                 extra_cflags=flags, extra_ldflags=["-fsanitize=address"] if asan else [],
                 is_python_module=False, verbose=verbose)
