"""No memory growth over 1000 calls of each op (forward and backward where it has one).

CPU (the cpu backend, 1000 calls; the reference backend is eager PyTorch with no native code of ours): the bytes
malloc holds for the process (glibc mallinfo2: every arena plus mmapped blocks, which is where torch's CPU
allocator gets its memory) return to within 64 KB of their level after a warm-up, so a leak of 64 bytes per call shows; no more live Python-visible tensors; every
output and gradient freed as soon as the caller drops it. One intra-op thread: the shared 2-core CI machine
makes thread hand-offs cost milliseconds per call, and the kernels allocate nothing per thread.
Triton on CPU runs through the interpreter (about 1 ms per program instance and much Python per launch), so it
gets 10 calls with the same checks (the exact ones, live tensors and freed results, need no more; malloc then
sees a leak of a few KB per call).
GPU (cuda, triton, 1000 calls): torch.cuda.memory_allocated() exactly equal before and after.
"""
import ctypes
import gc
import weakref

import pytest
import torch

import op_cases as oc

MALLOC_TOLERANCE = 64 << 10
SMALL_CASES = oc.all_cases()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _malloc_in_use():
    """Bytes in use from malloc (all arenas + mmapped chunks), or None without glibc >= 2.33."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _ids(cases):
    return [f"{c.name}-{i}" for i, c in enumerate(cases)]


def _live_tensors():
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))  # type(): no proxy warnings


def _loop(case, backend, calls):
    """`calls` forward + backward runs (the upstream gradients made once, by the first)."""
    seeds = []

    def once(outs):
        if not seeds:
            seeds.extend(oc.upstream(o, 1234 + i) for i, o in enumerate(outs))
        return seeds
    for _ in range(calls):
        outs, grads = oc.run(case, backend, grad_outputs=once)
        del outs, grads


def _assert_freed(case, backend):
    """Every output and gradient is freed as soon as the caller drops it (no reference cycle, no cache)."""
    outs, grads = oc.run(case, backend)
    refs = [weakref.ref(t) for t in outs + grads if t is not None]
    del outs, grads
    alive = [i for i, r in enumerate(refs) if r() is not None]
    assert not alive, f"{case.name}: results {alive} still alive after the caller dropped them"


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("case", SMALL_CASES, ids=_ids(SMALL_CASES))
def test_no_memory_growth_cpu(case, one_thread):
    if _malloc_in_use() is None:
        pytest.fail("glibc mallinfo2 is needed to measure CPU memory (glibc >= 2.33)")
    _loop(case, "cpu", 50)  # warm-up: allocator, caches and autograd reach their steady state
    gc.collect()
    in_use, tensors = _malloc_in_use(), _live_tensors()
    _loop(case, "cpu", 1000)
    gc.collect()
    growth = _malloc_in_use() - in_use
    assert _live_tensors() <= tensors, "more live tensors after 1000 calls"
    assert growth < MALLOC_TOLERANCE, f"malloc holds {growth} bytes more after 1000 calls"
    _assert_freed(case, "cpu")


def test_the_cpu_measure_sees_a_small_leak():
    """The measure used above shows 256 bytes kept per call over 1000 calls."""
    in_use = _malloc_in_use()
    kept = [torch.empty(64) for _ in range(1000)]
    assert _malloc_in_use() - in_use >= MALLOC_TOLERANCE
    del kept


@pytest.mark.parametrize("case", SMALL_CASES, ids=_ids(SMALL_CASES))
def test_no_memory_growth_triton_interpreter(case, one_thread):
    _loop(case, "triton", 3)
    gc.collect()
    in_use, tensors = _malloc_in_use(), _live_tensors()
    _loop(case, "triton", 10)
    gc.collect()
    assert _live_tensors() <= tensors, "more live tensors after 10 calls"
    assert _malloc_in_use() - in_use < MALLOC_TOLERANCE, "malloc holds more after 10 calls"
    _assert_freed(case, "triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("index", range(len(oc.gpu_cases())))
def test_no_memory_growth_gpu(backend, index):
    case = oc.gpu_cases()[index].to("cuda")
    _loop(case, backend, 10)
    torch.cuda.synchronize()
    gc.collect()
    before = torch.cuda.memory_allocated()
    _loop(case, "cpu", 1000)
    torch.cuda.synchronize()
    gc.collect()
    assert torch.cuda.memory_allocated() == before, (
        f"{torch.cuda.memory_allocated() - before} bytes more allocated after 1000 calls")
    _assert_freed(case, backend)
