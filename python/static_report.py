"""Static per-kernel report (issue 13): what the compiled kernels of the MAE image ops should do on an H100,
predicted without a GPU. Writes bench/results/static_report.md and static_report.json (`make static-report`).

Every figure is an estimate read from compiled code and a bytes model, never a measurement:
- launches per op call: counted by running the op at a small batch (N = 4, and N = 8 to check they do not depend
  on N) with torch.profiler: the CUDA path through the CUDA emulator (tests/cuda_emulation: the launchers of
  csrc/cuda run on CPU; the emulator counts the launches of each __global__ kernel, MAE_KERNELS_EMU_STATS), ATen
  kernels from the profiler's op tree (the outermost op that computes; views and allocations launch nothing);
  the Triton path through the interpreter (each kernel launch wrapped in a `triton::<kernel>` profiler range).
- bytes: the op's minimum (the benchmark case's `bytes`, mae_kernels/benchmark/cases/: inputs read once,
  outputs written once) against what the kernels read and write: a model per kernel written from its source
  (KERNEL_BYTES), ATen kernels from the profiler's shapes and dtypes, extrapolated linearly from N = 4, 8 to 256.
- instructions per element, vector width, registers / shared memory / blocks per SM: from the SASS of the sm_90
  build of mae_kernels._C (cuobjdump) and of the Triton kernels compiled ahead of time for sm_90 at the benchmark
  shapes (mae_kernels.triton.compile_check's recorder and compiler).
- the bound: time = max(bytes / copy bandwidth / latency hiding, instructions / issue rate, FLOPs / tensor peak,
  launch floor); predicted fraction of copy bandwidth = (bytes / copy bandwidth) / time.

    TRITON_INTERPRET=0 python python/static_report.py [--ops masked_patchify ...] [--out bench/results/static_report]

Needs an sm_90 CUDA build in place (TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace); the CUDA
emulator builds itself (tests/cuda_emulation/build.py)."""
import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# --- the machine (NVIDIA H100 SXM5 80 GB data sheet figures; the copy bandwidth is the issue's ~3 TB/s, about
# 90% of the 3.35 TB/s HBM3 peak) -------------------------------------------------------------------------------
H100 = dict(
    name="H100 SXM5", copy_bandwidth=3.0e12, sms=132, clock=1.98e9, warp_issue_per_sm_clock=4,
    # DRAM latency to hide (Little's law: bytes in flight = bandwidth x latency), and the floor of one kernel
    # (launch and ramp/tail of a back-to-back launch).
    latency=700e-9, launch_floor=2.5e-6, tensor_flops=800e12,  # dense bf16 GEMMs as cuBLAS reaches (989 peak)
)
ISSUE_RATE = H100["sms"] * H100["warp_issue_per_sm_clock"] * H100["clock"] * 32  # thread instructions / s
IN_FLIGHT_PER_SM = H100["copy_bandwidth"] * H100["latency"] / H100["sms"]  # bytes each SM must have in flight
TARGET_FRACTION = 0.70
TARGET_RATIO = 1.3

# --- the benchmark shapes: ViT-B/16 at 224, N = 256, mask ratio 0.75 (K = 49), bf16, decoder D = 512 ------------
N, C, HW, PATCH, L, K, D_ENC, D_DEC = 256, 3, 224, 16, 196, 49, 768, 512
P = PATCH * PATCH * C
BF16 = 2
# (op, benchmark case module, setup kwargs without N): the shapes of mae_kernels/benchmark/cases at ViT-B/16.
OPS = {
    "random_masking": dict(L=L, D=D_ENC),
    "masked_patchify": dict(C=C, H=HW, W=HW, p=PATCH, K=K),
    "masked_patch_embed": dict(C=C, H=HW, W=HW, p=PATCH, D=D_ENC, K=K),
    "unshuffle_with_mask_tokens": dict(L=L, K=K, D=D_DEC),
    "masked_mse_loss": dict(C=C, H=HW, W=HW, p=PATCH),
}
# Fewest kernels each pass needs: one, and two where a deterministic reduction across blocks is part of the op
# (the loss total; the mask-token gradient's column sum; the patch embedding's weight gradient is a GEMM beside the
# bias sum).
MIN_LAUNCHES = {("masked_mse_loss", "forward"): 2, ("unshuffle_with_mask_tokens", "backward"): 2,
                ("masked_patch_embed", "backward"): 2}


def case_bytes(op):
    """{"forward": bytes, "backward": bytes} the benchmark case says the op must move at the report's shapes."""
    import torch

    from mae_kernels.benchmark import cases

    mod = importlib.import_module(f"mae_kernels.benchmark.cases.{op}")
    del cases
    case = mod.setup("meta", N=N, dtype=torch.bfloat16, **OPS[op])
    return {k: int(v) for k, v in case.bytes.items() if k in ("forward", "backward")}


# --- bytes the custom kernels read and write at the benchmark shapes (from their sources) ------------------------
# name -> (read bytes, written bytes, main elements, element bytes, note). `main elements` are the elements of the
# kernel's main output or, for the LOAD_SIDE kernels (reductions), of its main input: the main loop's stores (loads)
# divided by the element bytes give the elements one iteration handles (instructions per element).
_R = 1 + L  # decoder rows with the cls token
_CHUNKS = -(-N // 32)  # unshuffle backward: samples summed per chunk (kSumChunk, Triton's 32)
_BIAS_CHUNKS = N * -(-K // 32)  # masked_patch_embed backward: chunks of kBiasGradRows rows within a sample


def kernel_bytes():
    NK, NL = N * K, N * L
    gather = (NK * P * BF16 + NK * 8, NK * P * BF16, NK * P, BF16, "kept patches read (32 B image rows) and written")
    bands = (NK * P * BF16 + N * (HW // PATCH) * K * 8, NL * P * BF16, NL * P, BF16,
             "kept patches read, each band's ids (L2); the whole image written, zeros for the removed patches")
    mse_rows = (N * (L - K) * P * (BF16 + 4) + NL * 4 + 4, NL * P * BF16 + NL * 4, NL * P, BF16,
                "removed rows: pred + fp32 target read (the 2-3 target passes hit L1/L2); grad_pred written for all "
                "rows (zeros for kept ones), one partial per row")
    return {
        "random_masking_forward_kernel": (NK * D_ENC * BF16, NK * D_ENC * BF16 + NL * (4 + 8) + NK * 8, NK * D_ENC,
                                          BF16, "kept rows copied; mask, ids_restore, ids_keep written"),
        "random_masking_backward_kernel": (NK * D_ENC * BF16 + NK * 8, NL * D_ENC * BF16, NL * D_ENC, BF16,
                                           "grad rows read, every grad_x row written (zeros for removed)"),
        "_random_masking_fwd_kernel": (NK * D_ENC * BF16, NK * D_ENC * BF16 + NL * (4 + 8) + NK * 8, NK * D_ENC,
                                       BF16, "as the CUDA kernel"),
        "_random_masking_bwd_kernel": (NK * D_ENC * BF16 + NK * 8, NL * D_ENC * BF16, NL * D_ENC, BF16,
                                       "as the CUDA kernel"),
        "copy_patches_kernel<false": gather,
        "copy_patches_vec_kernel<false": gather,
        "copy_patches_vec_kernel<true": (NK * P * BF16 + NK * 8, NK * P * BF16, NK * P, BF16,
                                         "kept patches scattered into the zeroed image (the zeros: an ATen fill)"),
        "copy_patches_kernel<true": (NK * P * BF16 + NK * 8, NK * P * BF16, NK * P, BF16,
                                     "kept patches scattered into the zeroed image (the zeros: an ATen fill)"),
        "scatter_bands_vec_kernel": bands,
        "_scatter_bands_kernel": bands,
        "_copy_kernel[TO_IMAGE=False]": gather,
        "_copy_kernel[TO_IMAGE=True]": (NK * P * BF16 + NK * 8, NK * P * BF16, NK * P, BF16, "as the CUDA scatter"),
        "_masked_patch_embed_kernel": (NK * P * BF16 + D_ENC * P * BF16 + NK * 8 + NK * D_ENC * 4,
                                       NK * D_ENC * 4, NK * D_ENC, 4,
                                       "kept patches gathered from the image, weight (L2-resident), pos_embed rows "
                                       "(fp32) read; fp32 tokens written; 2 N K P D FLOPs"),
        "unshuffle_forward_kernel": (N * (1 + K) * D_DEC * BF16 + NL * 8 + _R * D_DEC * 4, N * _R * D_DEC * 4,
                                     N * _R * D_DEC, 4, "kept + cls rows read, pos_embed once (L2), fp32 rows written"),
        "_forward_kernel": (N * (1 + K) * D_DEC * BF16 + NL * 8 + _R * D_DEC * 4, N * _R * D_DEC * 4,
                            N * _R * D_DEC, 4, "as the CUDA kernel"),
        "unshuffle_backward_rows_kernel": (N * _R * D_DEC * 4 + NL * 8, N * (1 + K) * D_DEC * BF16
                                           + 2 * _CHUNKS * _R * D_DEC * 4, N * _R * D_DEC, 4,
                                           "fp32 grad_out read once; grad_x and two [chunks, R, D] fp32 partials "
                                           "written"),
        "unshuffle_backward_chunks_kernel": (2 * _CHUNKS * _R * D_DEC * 4, _R * D_DEC * 4, _CHUNKS * _R * D_DEC, 4,
                                             "chunk partials summed in a fixed order"),
        "unshuffle_backward_mask_sum_kernel": (_R * D_DEC * 4, D_DEC * 4, _R * D_DEC, 4, "column sum over rows"),
        "_backward_rows_kernel": (N * _R * D_DEC * 4 + NL * 8, N * (1 + K) * D_DEC * BF16
                                  + _CHUNKS * _R * D_DEC * 4, N * _R * D_DEC, 4,
                                  "fp32 grad_out read once; grad_x and one [chunks, R, D] partial written"),
        "_sum_partials_kernel": (_CHUNKS * _R * D_DEC * 4, D_DEC * 4, _CHUNKS * _R * D_DEC, 4,
                                 "the chunk partials summed in a fixed order"),
        # masked_patch_embed's backward pass over the fp32 grad_out (fp32 pos_embed): the bf16 copy for the GEMMs
        # and per-chunk column sums (chunks of 32 rows within a sample: N * ceil(K / 32)), then their fixed-order sum
        "bias_grad_rows_kernel": (NK * D_ENC * 4, NK * D_ENC * BF16 + _BIAS_CHUNKS * D_ENC * 4, NK * D_ENC, 4,
                                  "fp32 grad_out read once; its bf16 copy and the chunk sums written"),
        "bias_grad_finish_kernel": (_BIAS_CHUNKS * D_ENC * 4, D_ENC * BF16, _BIAS_CHUNKS * D_ENC, 4,
                                    "the chunk sums added in a fixed order"),
        "masked_mse_rows_kernel": mse_rows,
        "_masked_mse_rows_kernel": mse_rows,
        "masked_mse_total_kernel": (NL * 4 * 2, 4, NL, 4, "one block: partials and mask summed"),
        "masked_mse_scale_kernel": (NL * 4, 4, NL, 4, "one block: the mask summed"),
    }


LOAD_SIDE = ("unshuffle_backward_rows_kernel", "unshuffle_backward_chunks_kernel",
             "unshuffle_backward_mask_sum_kernel", "_backward_rows_kernel", "_sum_partials_kernel",
             "masked_mse_total_kernel", "masked_mse_scale_kernel", "bias_grad_rows_kernel", "bias_grad_finish_kernel")


def model_for(name, models):
    """The KERNEL_BYTES entry whose key the kernel's (demangled or Triton) name contains, or None."""
    best = [k for k in models if k in name]
    return max(best, key=len) if best else None


# --- ATen kernels: bytes from the profiler's shapes and dtypes --------------------------------------------------
_ELT = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "long int": 8, "int": 4, "bool": 1,
        "unsigned char": 1, "signed char": 1, "short int": 2}
# Ops that launch nothing (views, allocations, metadata) and ops whose kernels are their children's.
NO_KERNEL = {"empty", "empty_strided", "empty_like", "view", "as_strided", "_reshape_alias", "expand",
             "permute", "transpose", "t", "select", "slice", "unsqueeze", "squeeze", "resolve_conj", "resolve_neg",
             "detach", "detach_", "alias", "lift_fresh", "_unsafe_view", "unbind", "split", "narrow", "chunk",
             "result_type", "set_", "numel", "size", "stride", "new_empty", "new_empty_strided",
             "view_as", "unflatten", "movedim", "split_with_sizes", "expand_as", "record_stream", "is_nonzero",
             "_has_compatible_shallow_copy_type", "_to_dense", "is_same_size", "sym_size", "sym_stride", "dim"}
CONTAINER = {"matmul", "linear", "contiguous", "reshape", "flatten", "to", "_to_copy", "clone", "zeros", "zeros_like", "ones",
             "ones_like", "full", "full_like", "new_zeros", "new_full", "new_ones", "type_as"}
NO_KERNEL |= {"promote_types", "can_cast", "is_floating_point", "is_complex", "_shape_as_tensor"}
SYNC = {"_local_scalar_dense", "item"}
# The profiler range around masked_patch_embed's CPU-only fp32 backward GEMM (ops/masked_patch_embed.py
# CPU_FP32_GEMM; tests/test_static_report.py checks that they agree).
CPU_FP32_GEMM = "mae_kernels::cpu_fp32_gemm"
# The profiler range around each read _count_host_reads counts: the item / _local_scalar_dense events inside it
# are that same read (int(t) calls item()), not a second one.
HOST_READ = "static_report::host_read"


def _tensors(shapes, dtypes):
    return [(s, _ELT[d]) for s, d in zip(shapes, dtypes) if s and d in _ELT]


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def aten_bytes(name, shapes, dtypes):
    """(read, written, flops) an ATen kernel moves, estimated from its inputs' shapes and dtypes."""
    ts = _tensors(shapes, dtypes)
    if not ts:
        return 0, 0, 0
    size = [_numel(s) * e for s, e in ts]
    base = name.split("::")[-1]
    if base in ("fill_", "zero_"):
        return 0, size[0], 0
    if base == "copy_":
        return size[1] if len(size) > 1 else 0, size[0], 0
    if base in ("mm", "addmm", "bmm"):
        a, b = ts[-2], ts[-1]
        out = _numel(a[0][:-1]) * b[0][-1] * a[1]
        return sum(size), out, 2 * _numel(a[0]) * b[0][-1]
    if base in ("sum", "mean", "amax", "amin", "aminmax", "max", "min", "all", "any"):
        return size[0], 8, 0
    if base == "index_select":  # (self, dim, index): index rows of self
        (src, e), (idx, _) = ts[0], ts[-1]
        return _numel(idx) * _numel(src[1:]) * e + size[-1], _numel(idx) * _numel(src[1:]) * e, 0
    if base in ("mul", "add", "sub", "div") and len(ts) == 3:  # out=: reads the operands, writes out
        return size[0] + size[1], size[2], 0
    if base.endswith("_"):  # in place: reads its operands, writes self
        return sum(size), size[0], 0
    shape = max((s for s, _ in ts), key=_numel)  # elementwise: the broadcast shape, in the widest dtype
    return sum(size), _numel(shape) * max(e for _, e in ts), 0


def _tree(events):
    """[(event, children)] roots of the profiler's kineto events (one thread), nested by time."""
    evs = sorted(events, key=lambda e: (e.start_ns(), -e.duration_ns()))
    roots, stack = [], []
    for e in evs:
        node = (e, [])
        end = e.start_ns() + e.duration_ns()
        while stack and stack[-1][1] < end:
            stack.pop()
        (stack[-1][0][1] if stack else roots).append(node)
        stack.append((node, end))
    return roots


def kernels_of(roots):
    """[(kind, name, read, written, flops, within)] of the kernels the op tree launches, in order (within: the
    enclosing ops, outermost first, "/"-joined), and the number of device-to-host syncs (`item`) outside the
    HOST_READ ranges of the reads _count_host_reads counts. kind: aten or triton (emulated CUDA kernels are counted
    by the emulator)."""
    out, syncs = [], 0

    def walk(nodes, within):
        nonlocal syncs
        for e, kids in nodes:
            name = e.name()
            if name.startswith("triton::"):
                out.append(("triton", name[len("triton::"):], 0, 0, 0, within))
                continue
            if name.startswith("aten::"):
                base = name[len("aten::"):]
                if base in SYNC:
                    syncs += HOST_READ not in within  # else counted by _count_host_reads already
                    continue
                if base in NO_KERNEL:
                    continue
                if base in CONTAINER:  # its kernels are its children's (none: e.g. a `to` that returns self)
                    walk(kids, f"{within}/{name}")
                    continue
                r, w, f = aten_bytes(name, e.shapes(), e.dtypes())
                out.append(("aten", name, r, w, f, within))
                continue
            walk(kids, f"{within}/{name}")
    walk(roots, "")
    return out, syncs


# --- counting worker: one op, one backend, one batch size, in its own process -----------------------------------


def _hook_triton_launches():
    """Wrap every interpreted Triton launch in a `triton::<kernel>[constexprs]` profiler range."""
    import torch
    from triton.runtime import interpreter

    run = interpreter.InterpretedFunction.run

    def counted(self, *args, grid, warmup, **kwargs):
        flags = ",".join(f"{k}={v}" for k, v in kwargs.items() if k == "TO_IMAGE")
        with torch.profiler.record_function(f"triton::{self.fn.__name__}" + (f"[{flags}]" if flags else "")):
            return run(self, *args, grid=grid, warmup=warmup, **kwargs)
    interpreter.InterpretedFunction.run = counted


def _count_host_reads():
    """Counts the Python-side reads of tensor values (tolist, item, int(), bool()...): device-to-host copies that
    block on a GPU. Each counted read runs in a HOST_READ profiler range, so that kernels_of does not count its
    aten::item a second time (it did: the seed's int(torch.randint(...)) of the Triton random_masking forward on
    CPU showed as a read left over after the randint's was dropped). Returns the counter ([count])."""
    from torch.profiler import record_function

    import torch

    counter, depth = [0], [0]
    for attr in ("tolist", "item", "__int__", "__float__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, attr)

        def wrapped(self, *a, _original=original, **kw):
            outer = self.device.type != "meta" and depth[0] == 0  # int(t) calls item(): one read
            counter[0] += outer
            depth[0] += 1
            try:
                if outer:
                    with record_function(HOST_READ):
                        return _original(self, *a, **kw)
                return _original(self, *a, **kw)
            finally:
                depth[0] -= 1
        setattr(torch.Tensor, attr, wrapped)
    return counter


def count_worker(op, backend, n, passes, out_path):
    """Runs op's benchmark case at batch n on CPU and writes {pass: {kernels, syncs}} to out_path."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    if backend == "cuda":
        sys.path.insert(0, str(ROOT / "tests"))
        from cuda_emulation import build

        build.load()
    else:
        _hook_triton_launches()
    import mae_kernels
    from mae_kernels.benchmark.cases import __name__ as _cases  # noqa: F401

    mod = importlib.import_module(f"mae_kernels.benchmark.cases.{op}")
    torch.manual_seed(0)
    case = mod.setup("cpu", N=n, dtype=torch.bfloat16, **OPS[op])
    result = {}
    reads = _count_host_reads()
    with mae_kernels.use_backend("cpu" if backend == "cuda" else "triton"):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            outs = case.function(*case.args)
        kernels, syncs = kernels_of(_tree(prof.profiler.kineto_results.events()))
        result["forward"] = dict(kernels=kernels, syncs=syncs + reads[0])
        if passes == "both":
            diff = [outs[i] for i in case.differentiable]
            grads = [torch.ones_like(o) for o in diff]
            reads[0] = 0
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                torch.autograd.backward(diff, grads)
            kernels, syncs = kernels_of(_tree(prof.profiler.kineto_results.events()))
            result["backward"] = dict(kernels=kernels, syncs=syncs + reads[0])
    pathlib.Path(out_path).write_text(json.dumps(result))


def run_counts(op, backend, n, passes):
    """count_worker in a subprocess; for the CUDA path also the emulator's launches {kernel: count}."""
    with tempfile.TemporaryDirectory() as tmp:
        out, stats = pathlib.Path(tmp) / "out.json", pathlib.Path(tmp) / "stats.tsv"
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
        if backend == "cuda":
            env.update(MAE_KERNELS_CUDA_EMULATION="1", MAE_KERNELS_EMU_STATS=str(stats))
        proc = subprocess.run([sys.executable, __file__, "--count", op, backend, str(n), passes, str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"counting {op} ({backend}, N={n}) failed:\n{proc.stderr[-4000:]}")
        result = json.loads(out.read_text())
        emu = {}
        if stats.exists():
            for line in stats.read_text().splitlines():
                count, name = line.split("\t", 1)
                emu[name] = emu.get(name, 0) + int(count)
        return result, emu


# --- compiled code -----------------------------------------------------------------------------------------------


def main_loop(listing, elt=1, load_side=False, max_elements=None):
    """The main loop of one kernel's SASS listing [(address, opcode, operands)]: among the innermost loops (a
    backward branch's span), the one moving the most global bytes per iteration whose elements per iteration do
    not exceed max_elements (the per-thread trip count at the benchmark shapes: nvcc's unrolled body does not run
    when the trip count is below its unroll factor; the remainder loop does), or the whole kernel when no loop
    touches global memory. Returns (instructions, [global load/store opcodes]) of one iteration, NOPs excluded."""
    from mae_kernels.triton.compile_check import sass_access_bytes

    body = [(a, op, arg) for a, op, arg in listing if not op.startswith("NOP")]
    loops = []
    for addr, op, arg in body:
        m = re.match(r"\s*(0x[0-9a-f]+)", arg)
        if op.startswith("BRA") and m and int(m.group(1), 16) <= addr:
            loops.append((int(m.group(1), 16), addr))
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]

    def span(lo, hi):
        return [(a, op) for a, op, _ in body if lo <= a <= hi]

    def moved(ops, kind=("LDG", "STG")):
        return sum(sass_access_bytes(op) for _, op in ops if op.startswith(kind))

    def elements(ops):
        side = moved(ops, ("LDG",)) if load_side or not moved(ops, ("STG",)) else moved(ops, ("STG",))
        return side // elt
    candidates = [sp for sp in map(lambda lp: span(*lp), inner) if moved(sp)]
    fitting = [sp for sp in candidates if max_elements is None or elements(sp) <= max_elements]
    if candidates and not fitting:
        fitting = [min(candidates, key=elements)]
    best = max(fitting, key=lambda sp: (moved(sp, ("LDG",)) > 0, moved(sp), len(sp)), default=None)
    if best is None:
        best = [(a, op) for a, op, _ in body]
    return len(best), [op for _, op in best if op.startswith(("LDG", "STG"))]


def loop_facts(listing, elt, load_side=False, max_elements=None):
    """Instructions per element, load/store widths and bytes in flight per thread of the main loop. Elements per
    iteration: the bytes the loop stores (loads, for load_side kernels) divided by the element bytes."""
    from mae_kernels.triton.compile_check import sass_access_bytes

    n, mem = main_loop(listing, elt, load_side, max_elements)
    loads = [sass_access_bytes(op) for op in mem if op.startswith("LDG")]
    stores = [sass_access_bytes(op) for op in mem if op.startswith("STG")]
    elements = max(sum(loads if load_side or not stores else stores) // elt, 1)
    return dict(loop_instructions=n, instr_per_element=round(n / elements, 2),
                load_width=max(loads, default=0), store_width=max(stores, default=0),
                loads_per_iteration=len(loads), stores_per_iteration=len(stores),
                in_flight_bytes=sum(loads) or sum(stores))  # a store-only loop: its stores


# Elements one CUDA thread handles per visit of its main loop at the benchmark shapes (the trip count times the
# elements per trip), read from the launchers: the loop nvcc unrolled beyond it does not run.
CUDA_TRIP = {
    "copy_patches_kernel": -(-P // 256),                  # threads over the P = 768 entries of a row
    "unshuffle_forward_kernel": -(-D_DEC // 256),          # threads over D
}


def cuda_kernels():
    """{demangled name without parameters: (listing, {REG, SHARED, ...})} of the sm_90 build of mae_kernels._C."""
    import mae_kernels
    from mae_kernels.triton import compile_check as cc

    if not mae_kernels._C.build_info()["with_cuda"]:
        raise SystemExit("mae_kernels._C has no CUDA kernels: build with TORCH_CUDA_ARCH_LIST=9.0 first")
    sass = cc.parse_sass_listing(cc.cuobjdump(["-sass", mae_kernels._C.__file__]))
    res = cc.parse_res_usage(cc.cuobjdump(["-res-usage", mae_kernels._C.__file__]))
    pretty = cc.demangle([m for _, m in sass])
    out = {}
    for (arch, mangled), listing in sass.items():
        if arch == "sm_90":
            out[pretty[mangled].split("(")[0].replace("void ", "")] = (listing, res.get((arch, mangled), {}))
    return out


def _emu_key(name):
    """The emulator's demangled kernel name as cuobjdump's: no parameters, no return type."""
    return name.split("(")[0].replace("void ", "").replace("emu::uint4", "uint4")


def triton_launches(op, pass_):
    """The Triton launches of one op pass at the benchmark shapes (the launchers on meta tensors, recorded)."""
    import torch

    from mae_kernels.triton import compile_check as cc
    from mae_kernels.triton import masked_mse_loss as mse
    from mae_kernels.triton import masked_patch_embed as pe
    from mae_kernels.triton import masked_patch_embed_bias_grad as bg
    from mae_kernels.triton import masked_patchify as pf
    from mae_kernels.triton import random_masking as rm
    from mae_kernels.triton import unshuffle_with_mask_tokens as un

    m, bf, i64 = cc._m, torch.bfloat16, torch.int64
    calls = {
        ("random_masking", "forward"): lambda: rm.random_masking_forward(m(N, L, D_ENC, dtype=bf), None, K, 0, 0),
        ("random_masking", "backward"): lambda: rm.random_masking_backward(m(N, K, D_ENC, dtype=bf),
                                                                           m(N, K, dtype=i64), L),
        ("masked_patchify", "forward"): lambda: pf.gather(m(N, C, HW, HW, dtype=bf), m(N, K, dtype=i64),
                                                          (1, PATCH, PATCH)),
        ("masked_patchify", "backward"): lambda: pf.scatter(m(N, K, P, dtype=bf), m(N, K, dtype=i64),
                                                            (1, PATCH, PATCH), (HW, HW)),
        ("masked_patch_embed", "forward"): lambda: pe.masked_patch_embed(
            m(N, C, HW, HW, dtype=bf), m(N, K, dtype=i64), m(D_ENC, C, PATCH, PATCH, dtype=bf), m(D_ENC, dtype=bf),
            m(1, 1 + L, D_ENC)),
        ("masked_patch_embed", "backward"): lambda: (  # grad_out's bf16 copy and the bias gradient; the patches
            bg.masked_patch_embed_bias_grad(m(N, K, D_ENC), bf, True, bf),
            pf.gather(m(N, C, HW, HW, dtype=bf), m(N, K, dtype=i64), (1, PATCH, PATCH))),
        ("unshuffle_with_mask_tokens", "forward"): lambda: un.unshuffle_with_mask_tokens_forward(
            m(N, 1 + K, D_DEC, dtype=bf), m(1, 1, D_DEC), m(N, L, dtype=i64), m(1, 1 + L, D_DEC), True,
            torch.float32),
        ("unshuffle_with_mask_tokens", "backward"): lambda: un.unshuffle_with_mask_tokens_backward(
            m(N, 1 + L, D_DEC), m(N, L, dtype=i64), K, True, bf, False),
        ("masked_mse_loss", "forward"): lambda: mse.masked_mse_loss_forward(
            m(N, L, P, dtype=bf), m(N, C, HW, HW), m(N, L), None, (1, PATCH, PATCH), True, 1e-6, True),
        ("masked_mse_loss", "backward"): lambda: None,  # the stored gradient times grad_loss: ATen only
    }
    sink, case = [], [f"{op} {pass_}"]
    with cc.recording(sink, case):
        calls[(op, pass_)]()
    return sink


def triton_facts(launch):
    """Compiles one launch for sm_90: registers, shared memory, threads, blocks/SM and the main loop's facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from mae_kernels.triton import compile_check as cc

    src = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(launch.options))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(ck.asm["cubin"])
        f.flush()
        text = cc.cuobjdump(["-sass", f.name])
    listing = next(iter(cc.parse_sass_listing(text).values()))
    regs, local = cc._resource_usage(ck.asm["cubin"], 90, launch.kernel.__name__)
    threads = int(ck.metadata.num_warps) * 32
    return listing, dict(REG=regs, SHARED=int(ck.metadata.shared), LOCAL=local, threads=threads)


def predict(read, written, flops, elements, facts, blocks_per_sm, grid_blocks, threads):
    """Predicted time (s) and the bound that sets it, for one kernel."""
    moved = read + written
    t_bytes = moved / H100["copy_bandwidth"]
    hiding = 1.0
    if facts and threads and blocks_per_sm:
        resident = min(blocks_per_sm, max(grid_blocks / H100["sms"], 1e-9)) * threads
        in_flight = resident * max(facts["in_flight_bytes"], 1)
        hiding = min(1.0, in_flight / IN_FLIGHT_PER_SM)
    bounds = {"memory": t_bytes / hiding, "launch floor": H100["launch_floor"]}
    if facts and not flops:
        bounds["issue"] = elements * facts["instr_per_element"] / ISSUE_RATE
    if flops:
        bounds["tensor cores"] = flops / H100["tensor_flops"]
    bound = max(bounds, key=bounds.get)
    if bound == "memory" and hiding < 1.0:
        bound = f"latency ({hiding:.0%} of the bytes in flight needed)"
    return max(bounds.values()), bound, hiding


# --- the report ----------------------------------------------------------------------------------------------


def host_path_only(op, backend, kernel):
    """Whether an ATen kernel of the CPU run stands for nothing on a GPU: the emulated CUDA path and the
    interpreted Triton path run the ops' CPU-tensor branches in Python and C++. Returns the reason, or None."""
    name, within = kernel["name"], kernel["within"]
    if backend == "cuda" and op == "random_masking" and name == "aten::rand" and "mae_kernels::" not in within:
        return "the cpu backend's noise (the cuda kernel draws Philox numbers itself)"
    if backend == "triton" and name == "aten::randint" and "mae_kernels::" not in within:
        return ("the seed drawn from a CPU generator, and its int() (on CUDA: the generator's seed and offset, "
                "host-side state: no kernel, no device-to-host read)")
    if backend == "cuda" and op == "masked_patch_embed" and name == "aten::copy_" and \
            "mae_kernels::masked_patch_embed" in within and "aten::to" in within:
        return "the CPU GEMM branch's fp32 casts (masked_patch_embed_gemm.h: bf16 GEMM on CUDA)"
    if name == "aten::copy_" and CPU_FP32_GEMM in within:
        return ("the CPU GEMM branch's fp32 casts of the backward (ops/masked_patch_embed.py _matmul: one bf16 GEMM "
                "on CUDA)")
    return None


def gpu_gemm_bytes(op, backend, kernel):
    """A GEMM of the CPU run that runs in fp32 on CPU and in bf16 on a GPU (the forward's at::addmm of the cuda
    path, the backward's _matmul on both paths): on a GPU it reads and writes half the bytes. Returns the kernel
    with its bytes halved, or unchanged."""
    fp32_on_cpu = (backend == "cuda" and op == "masked_patch_embed" and kernel["name"] == "aten::addmm") or (
        kernel["name"] == "aten::mm" and CPU_FP32_GEMM in kernel["within"])
    if fp32_on_cpu:
        return dict(kernel, read=kernel["read"] // 2, written=kernel["written"] // 2)
    return kernel


def analyse(ops):
    import torch  # noqa: F401

    from mae_kernels.triton import compile_check as cc

    threads_table = _cuda_threads()
    cuda = cuda_kernels()
    models = kernel_bytes()
    rows = []
    for op in ops:
        minimum = case_bytes(op)
        for backend in ("cuda", "triton"):
            # The emulator counts launches per process: a forward-only run tells the passes apart.
            emu_f4 = run_counts(op, backend, 4, "forward")[1] if backend == "cuda" else {}
            both4, emu_b4 = run_counts(op, backend, 4, "both")
            both8, emu_b8 = run_counts(op, backend, 8, "both")
            for pass_ in ("forward", "backward"):
                k4, k8 = both4[pass_]["kernels"], both8[pass_]["kernels"]
                if [k[:2] for k in k4] != [k[:2] for k in k8]:
                    raise RuntimeError(f"{op} {backend} {pass_}: the ATen/Triton launches differ at N=4 and 8")
                kernels, dropped, syncs = [], [], both4[pass_]["syncs"]
                for a, b in zip(k4, k8):  # linear in N: a + (b - a) / 4 * (N - 4)
                    ext = [int(x + (y - x) / 4 * (N - 4)) for x, y in zip(a[2:5], b[2:5])]
                    k = dict(kind=a[0], name=a[1], read=ext[0], written=ext[1], flops=ext[2], count=1, within=a[5])
                    why = host_path_only(op, backend, k)
                    if why:
                        dropped.append(f"{k['name']}: {why}")
                        syncs -= k["name"] == "aten::randint"  # and its int()
                        continue
                    kernels.append(gpu_gemm_bytes(op, backend, k))
                if backend == "cuda":
                    emu = emu_f4 if pass_ == "forward" else {k: emu_b4.get(k, 0) - emu_f4.get(k, 0)
                                                             for k in emu_b4}
                    emu8 = {k: v - emu_f4.get(k, 0) for k, v in emu_b8.items()} if pass_ == "backward" else None
                    for name, count in sorted(emu.items()):
                        if count:
                            kernels.append(dict(kind="cuda", name=_emu_key(name), count=count))
                    if pass_ == "backward" and sorted(emu_b8.items()) != sorted(emu_b4.items()):
                        raise RuntimeError(f"{op}: emulated launches differ at N=4 and 8: {emu_b4} {emu_b8}")
                    del emu8
                    for k in kernels:
                        if k["kind"] == "cuda":
                            k.update(_cuda_kernel_facts(k["name"], cuda, models, threads_table))
                else:
                    launches = {ln.kernel.__name__: ln for ln in triton_launches(op, pass_)}
                    for k in kernels:
                        if k["kind"] == "triton":
                            base = k["name"].split("[")[0]
                            k.update(_triton_kernel_facts(k["name"], launches.get(base), models, cc))
                for k in kernels:
                    if k["kind"] == "aten":
                        k.update(_aten_facts(k))
                row = _op_row(op, backend, pass_, minimum.get(pass_, 0), kernels, syncs)
                row["host_path_only"] = dropped
                rows.append(row)
    return rows


def _cuda_threads():
    spec = importlib.util.spec_from_file_location("test_cuda_resources", ROOT / "tests" / "test_cuda_resources.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.THREADS, mod.DYNAMIC_SHARED


def _cuda_kernel_facts(name, cuda, models, threads_table):
    from mae_kernels.triton import compile_check as cc

    threads, dynamic = threads_table
    short = name.split("<")[0].split("::")[-1]
    key = model_for(name, models)
    read, written, elements, elt, note = models[key] if key else (0, 0, 0, 2, "no bytes model")
    listing, res = cuda.get(name, (None, {}))
    if listing is None:
        return dict(read=read, written=written, note=note + "; no SASS found for this instantiation")
    facts = loop_facts(listing, elt, any(x in name for x in LOAD_SIDE), CUDA_TRIP.get(short))
    t = _CUDA_THREADS_AT_SHAPES.get(short, threads.get(short, 256))
    shared = res.get("SHARED", 0) + _CUDA_DYNAMIC_AT_SHAPES.get(short, dynamic.get(short, 0))
    blocks = cc.blocks_per_sm(90, res.get("REG", 0), t, shared)
    grid = _cuda_grid(short, t)
    time, bound, hiding = predict(read, written, 0, elements, facts, blocks, grid, t)
    return dict(read=read, written=written, elements=elements, note=note, registers=res.get("REG"),
                shared=shared, threads=t, blocks_per_sm=blocks, grid=grid, time=time, bound=bound, **facts)


def _cuda_grid(short, threads):
    """Blocks the CUDA launcher starts at the benchmark shapes (read from csrc/cuda/*.cu)."""
    return {"random_masking_forward_kernel": N, "random_masking_backward_kernel": N,
            "copy_patches_kernel": min(N * K, H100["sms"] * 8),
            "copy_patches_vec_kernel": min(-(-N * K * (P // (8 * C)) // 256), H100["sms"] * 8),
            "unshuffle_forward_kernel": N * _R,
            "unshuffle_backward_rows_kernel": _R * -(-D_DEC // threads) * _CHUNKS,
            "unshuffle_backward_chunks_kernel": -(-_R * D_DEC // 256),
            "unshuffle_backward_mask_sum_kernel": -(-D_DEC // 32),  # cuda::kMaskSumThreads per block
            "masked_mse_rows_kernel": N * L, "masked_mse_total_kernel": 1, "masked_mse_scale_kernel": 1,
            "scatter_bands_vec_kernel": min(N * (HW // PATCH), H100["sms"] * 8),  # a block per band of patches
            "bias_grad_rows_kernel": N * -(-K // 32),  # a block per chunk of kBiasGradRows = 32 rows
            "bias_grad_finish_kernel": -(-D_ENC // 32),  # kBiasFinishCols columns per block
            }.get(short, 1)


# Launch sizes at the benchmark shapes where they differ from the launcher's largest (tests/test_cuda_resources.py
# lists those): the band's patch map is 4 bytes per patch of an image row; the bias-gradient rows kernel starts one
# thread per 8-column pack (96 at D = 768).
_CUDA_DYNAMIC_AT_SHAPES = {"scatter_bands_vec_kernel": (HW // PATCH) * 4}
_CUDA_THREADS_AT_SHAPES = {"bias_grad_rows_kernel": D_ENC // 8}


def _triton_kernel_facts(name, launch, models, cc):
    key = model_for(name, models)
    read, written, elements, elt, note = models[key] if key else (0, 0, 0, 2, "no bytes model")
    if launch is None:
        return dict(read=read, written=written, note=note + "; launch not found among the recorded ones")
    listing, res = triton_facts(launch)
    facts = loop_facts(listing, elt, any(x in name for x in LOAD_SIDE))
    blocks = cc.blocks_per_sm(90, res["REG"], res["threads"], res["SHARED"])
    grid = 1
    for g in launch.grid:
        grid *= g
    flops = 2 * N * K * P * D_ENC if name.startswith("_masked_patch_embed") else 0
    time, bound, hiding = predict(read, written, flops, elements, facts, blocks, grid, res["threads"])
    return dict(read=read, written=written, elements=elements, flops=flops, note=note, registers=res["REG"],
                shared=res["SHARED"], threads=res["threads"], blocks_per_sm=blocks, grid=grid, time=time,
                bound=bound, launch=launch.describe(), **facts)


def _aten_facts(k):
    time, bound, _ = predict(k["read"], k["written"], k["flops"], 0, None, 0, 0, 0)
    return dict(time=time, bound=bound, note="ATen kernel: bytes from the profiler's shapes (estimate)")


def _op_row(op, backend, pass_, minimum, kernels, syncs):
    launches = sum(k["count"] for k in kernels)
    moved = sum((k.get("read", 0) + k.get("written", 0)) * k["count"] for k in kernels)
    time = sum(k.get("time", H100["launch_floor"]) * k["count"] for k in kernels)
    ideal = minimum / H100["copy_bandwidth"]
    for k in kernels:
        t = k.get("time")
        k["fraction"] = round((k.get("read", 0) + k.get("written", 0)) / H100["copy_bandwidth"] / t, 3) if t else None
    return dict(op=op, backend=backend, pass_=pass_, minimum_bytes=minimum, kernel_bytes=moved,
                launches=launches, min_launches=MIN_LAUNCHES.get((op, pass_), 1), syncs=syncs,
                time=time, fraction=round(ideal / time, 3) if time else None, kernels=kernels)


def _mb(x):
    return f"{x / 1e6:.1f}"


def markdown(rows, meta):
    lines = [
        "# Static per-kernel report (issue 13): predicted, not measured",
        "",
        "**Every figure below is an estimate** from compiled code and a bytes model; nothing here ran on a GPU. "
        f"Generated by `python python/static_report.py` (`make static-report`) on {meta['date']}, commit "
        f"{meta['commit']}; nvcc {meta['nvcc']}, triton {meta['triton']}, torch {meta['torch']}.",
        "",
        f"Shapes: ViT-B/16 at 224, N = {N}, mask ratio 0.75 (L = {L}, K = {K}), bf16 activations, encoder "
        f"D = {D_ENC}, decoder D = {D_DEC}, P = {P} (the benchmark cases of mae_kernels/benchmark/cases).",
        f"Machine model ({H100['name']}): copy bandwidth {H100['copy_bandwidth'] / 1e12:.1f} TB/s; issue rate "
        f"{H100['sms']} SMs x {H100['warp_issue_per_sm_clock']} warp instructions/clock x "
        f"{H100['clock'] / 1e9:.2f} GHz = {ISSUE_RATE / 1e12:.1f} T thread instructions/s; latency to hide "
        f"{H100['latency'] * 1e9:.0f} ns (each SM needs {IN_FLIGHT_PER_SM / 1024:.1f} KiB of loads in flight); "
        f"{H100['launch_floor'] * 1e6:.1f} us per launch at least; dense bf16 GEMMs at "
        f"{H100['tensor_flops'] / 1e12:.0f} TFLOP/s.",
        "",
        "How each figure was obtained:",
        "- launches: the op's benchmark case run at N = 4 and 8 (same launches at both, checked) under "
        "torch.profiler; CUDA path: the launchers of csrc/cuda executed on CPU by the CUDA emulator, which counts "
        "each __global__ launch; ATen kernels: the outermost computing op of the profiler tree; Triton: the "
        "interpreter, each launch in a profiler range. Syncs: device-to-host reads (`item`).",
        "- bytes: minimum = the benchmark case's `bytes` (inputs read once, outputs written once); kernel bytes = "
        "the per-kernel model in python/static_report.py (kernel_bytes, from the sources), ATen kernels from "
        "their shapes and dtypes, extrapolated linearly from N = 4 and 8 to 256.",
        "- instructions per element, widths, bytes in flight: the main loop of the sm_90 SASS (the innermost "
        "loop moving the most global bytes; cuobjdump of the sm_90 build for CUDA, of the AOT-compiled cubin "
        "for Triton); an element is one element of the kernel's main output (or input) row.",
        "- time = max(bytes / bandwidth / latency hiding, elements x instructions per element / issue rate, "
        "FLOPs / tensor rate, launch floor); fraction = (bytes / bandwidth) / time, per kernel; per op, "
        "(minimum bytes / bandwidth) / (sum of its kernels' times).",
        "",
        f"Target (issue 13): every kernel >= {TARGET_FRACTION:.0%} of copy bandwidth; every op within "
        f"{TARGET_RATIO}x of its minimal launches and bytes.",
        "",
        "## Per op and pass",
        "",
        "| op | backend | pass | launches (min) | syncs | minimum MB | kernels' MB (x min) | predicted us "
        "| fraction of copy bw | meets target |",
        "|---" * 10 + "|",
    ]
    for r in rows:
        ratio = r["kernel_bytes"] / r["minimum_bytes"] if r["minimum_bytes"] else float("nan")
        ok = (r["launches"] <= TARGET_RATIO * r["min_launches"] and ratio <= TARGET_RATIO
              and all((k["fraction"] or 0) >= TARGET_FRACTION for k in r["kernels"]))
        lines.append(f"| {r['op']} | {r['backend']} | {r['pass_']} | {r['launches']} ({r['min_launches']}) | "
                     f"{r['syncs']} | {_mb(r['minimum_bytes'])} | {_mb(r['kernel_bytes'])} ({ratio:.2f}x) | "
                     f"{r['time'] * 1e6:.1f} | {r['fraction']:.0%} | {'yes' if ok else 'no'} |")
    lines += ["", "## Per kernel", "",
              "| op | backend | pass | kernel | x | read MB | written MB | instr/elt | load / store width B "
              "| regs | smem B | threads | blocks/SM | grid | bound | predicted us | fraction |",
              "|---" * 17 + "|"]
    for r in rows:
        for k in r["kernels"]:
            width = (f"{k['load_width']} / {k['store_width']}" if "load_width" in k else "-")
            lines.append(
                f"| {r['op']} | {r['backend']} | {r['pass_']} | `{k['name'][:70]}` | {k['count']} | "
                f"{_mb(k.get('read', 0))} | {_mb(k.get('written', 0))} | {k.get('instr_per_element', '-')} | "
                f"{width} | {k.get('registers', '-')} | {k.get('shared', '-')} | {k.get('threads', '-')} | "
                f"{k.get('blocks_per_sm', '-')} | {k.get('grid', '-')} | {k.get('bound', '-')} | "
                f"{k['time'] * 1e6:.1f} | {k['fraction']:.0%} |" if k.get("time") else
                f"| {r['op']} | {r['backend']} | {r['pass_']} | `{k['name'][:70]}` | {k['count']} | - | - | - | - "
                f"| - | - | - | - | - | {k.get('note', '')} | - | - |")
    dropped = [f"- {r['op']} {r['pass_']} ({r['backend']}): {d}" for r in rows for d in r.get("host_path_only", [])]
    lines += ["", "Not counted: kernels of the CPU run that a GPU does not launch (the CPU-tensor branches the "
              "emulated and interpreted runs take):", ""] + (dropped or ["- none"])
    lines += ["", "## Where and why the target is missed (generated from the tables above)", ""] + below_target(rows)
    lines += ["", "Unverified on a GPU: every number here. The bytes models and launch counts are exact for the code "
              "as written (up to the ATen estimates); the times rest on the machine model above (no caches beyond "
              "'L2-resident' notes, no DRAM page effects, no overlap between kernels).", ""]
    return "\n".join(lines) + "\n"


def _why(k):
    """One line on why a kernel is predicted below the target fraction."""
    bound = k.get("bound", "")
    if bound == "launch floor":
        return (f"moves {_mb(k.get('read', 0) + k.get('written', 0))} MB: a launch costs more than its bytes "
                f"(fuse it or drop it)")
    if bound.startswith("latency"):
        return (f"{bound}: {k.get('load_width')}-byte loads, {k.get('loads_per_iteration')} per main-loop "
                f"iteration, {k.get('threads')} threads x {k.get('blocks_per_sm')} blocks/SM over a grid of "
                f"{k.get('grid')}")
    if bound == "issue":
        return f"integer/issue-bound: {k.get('instr_per_element')} instructions per element in the main loop"
    if bound == "tensor cores":
        return "GEMM-bound (its FLOPs take longer than its bytes)"
    return bound


def below_target(rows):
    out = []
    for r in rows:
        head = f"- **{r['op']} {r['pass_']} ({r['backend']})**"
        notes = []
        if r["launches"] > TARGET_RATIO * r["min_launches"]:
            extra = [k["name"] for k in r["kernels"] if k["kind"] == "aten"]
            notes.append(f"{r['launches']} launches for a minimum of {r['min_launches']}"
                         + (f" (ATen: {', '.join(extra)})" if extra else ""))
        if r["syncs"]:
            notes.append(f"{r['syncs']} device-to-host read(s) of tensor values (blocking on a GPU)")
        if r["minimum_bytes"] and r["kernel_bytes"] > TARGET_RATIO * r["minimum_bytes"]:
            big = sorted(r["kernels"], key=lambda k: -(k.get("read", 0) + k.get("written", 0)))[:3]
            notes.append(f"{r['kernel_bytes'] / r['minimum_bytes']:.2f}x the minimum bytes (largest: "
                         + ", ".join(f"`{k['name'][:60]}` {_mb(k.get('read', 0) + k.get('written', 0))} MB"
                                     for k in big) + ")")
        zeros = [k for k in r["kernels"] if k["name"] == "aten::zero_" and k.get("within", "").endswith(
            "Backward/aten::zeros")]
        if zeros:
            notes.append(f"{len(zeros)} zero fill(s), {_mb(sum(k['written'] for k in zeros))} MB, that autograd "
                         f"makes for the gradients of outputs nobody differentiates (torch.library's backward node "
                         f"materialises them: ctx.set_materialize_grads(False) in setup_context would drop them)")
        for k in r["kernels"]:
            if k.get("fraction") is not None and k["fraction"] < TARGET_FRACTION:
                notes.append(f"`{k['name'][:70]}` at {k['fraction']:.0%}: {_why(k)}")
        if notes:
            out.append(head + ": " + "; ".join(notes) + ".")
    return out or ["- none"]


def metadata():
    import torch
    import triton

    nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release [\d.]+, V([\d.]+)", nvcc)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return dict(date=datetime.date.today().isoformat(), commit=commit + ("+changes" if dirty else ""),
                nvcc=m.group(1) if m else "?", triton=triton.__version__, torch=torch.__version__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "static_report"))
    parser.add_argument("--render", action="store_true", help="rewrite OUT.md from OUT.json (no analysis)")
    parser.add_argument("--count", nargs=5, metavar=("OP", "BACKEND", "N", "PASSES", "OUT"),
                        help=argparse.SUPPRESS)  # the counting worker (run_counts)
    args = parser.parse_args(argv)
    # This checkout's mae_kernels, also in the counting workers (their sys.path[0] is python/: an installed
    # mae_kernels of another checkout would be measured instead).
    sys.path.insert(0, str(ROOT))
    if args.count:
        op, backend, n, passes, out = args.count
        return count_worker(op, backend, int(n), passes, out)
    if args.render:
        data = json.loads(pathlib.Path(args.out + ".json").read_text())
        pathlib.Path(args.out + ".md").write_text(markdown(data["rows"], data["meta"]))
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("run with TRITON_INTERPRET=0 (the report compiles the Triton kernels)")
    rows = analyse(args.ops)
    meta = metadata()
    pathlib.Path(args.out + ".json").write_text(json.dumps(dict(meta=meta, machine=H100, rows=rows), indent=1))
    pathlib.Path(args.out + ".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
