"""CUDA and Triton ops run on the current stream and on the device of their inputs (GPU tests).

Two stream tests, each failing if a kernel went to another stream (the legacy default stream, say):
- late inputs: on a side stream, a long sleep, then the inputs (and later the upstream gradients) are written,
  then the op runs there; a kernel on another stream would read the zeros that are there before.
- busy default stream: the default stream sleeps for a second while the op runs on a side stream and its
  results are read back on that stream; the default stream must still be busy when they are compared, so a
  kernel queued on it would not have run (the blocks it should have written were NaN before).
Ops that read their index inputs on the host for validation synchronize the side stream, which makes the first
test weaker for them; the second one covers them.
"""
import dataclasses

import pytest
import torch

import mae_kernels
import op_cases as oc

pytestmark = pytest.mark.gpu
BACKENDS = ["cuda", "triton"]
INDICES = list(range(len(oc.gpu_cases())))
SLEEP_CYCLES = 200_000_000  # about 0.1 s


def _late(tensors):
    """Copies of `tensors` written on the current stream after a long sleep (zeros until then)."""
    out = [torch.zeros_like(t) for t in tensors]
    torch.cuda._sleep(SLEEP_CYCLES)
    for o, t in zip(out, tensors):
        o.copy_(t)
    return out


def _case(index):
    return oc.gpu_cases()[index].to("cuda")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", INDICES)
def test_side_stream_with_late_inputs(backend, index):
    case = _case(index)
    want = oc.run(case, backend)  # on the default stream (compiles the Triton kernels first)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        names = [k for k, v in case.inputs.items() if isinstance(v, torch.Tensor)]
        late = dict(zip(names, _late([case.inputs[k] for k in names])))
        got = oc.run(dataclasses.replace(case, inputs={**case.inputs, **late}), backend, copy=False,
                     grad_outputs=lambda outs: _late([oc.upstream(o, 1234 + i) for i, o in enumerate(outs)]))
    torch.cuda.current_stream().wait_stream(side)
    oc.assert_results_equal(case, got, want)


def _poison(tensors):
    """Allocate and free NaN-filled (or -1) blocks of these sizes on the current stream, so that the next
    allocations of those sizes hold garbage rather than an earlier result."""
    junk = [torch.full_like(t, float("nan") if t.is_floating_point() else -1) for t in tensors for _ in range(2)]
    del junk


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", INDICES)
def test_side_stream_while_default_stream_busy(backend, index):
    case = _case(index)
    want = oc.run(case, backend)
    torch.cuda.synchronize()
    default = torch.cuda.current_stream()
    side = torch.cuda.Stream()
    side.wait_stream(default)
    torch.cuda._sleep(10 * SLEEP_CYCLES)  # about a second on the default stream
    with torch.cuda.stream(side):
        _poison([t for t in want[0] + want[1] if t is not None])
        outs, grads = oc.run(case, backend)
        got = (tuple(t.cpu() for t in outs), tuple(None if g is None else g.cpu() for g in grads))
        still_busy = not default.query()
    torch.cuda.synchronize()
    assert still_busy, "the default stream finished its sleep before the op's results were read: inconclusive"
    oc.assert_results_equal(case, got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_drawn_masks_on_side_stream(backend):
    """noise=None (drawn in the kernel from torch's Philox seed and offset) on a side stream: the same masks."""
    x = torch.randn(16, 196, 8, device="cuda")
    with mae_kernels.use_backend(backend):
        torch.manual_seed(3)
        want = mae_kernels.random_masking(x, 0.75)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.manual_seed(3)
            torch.cuda._sleep(SLEEP_CYCLES)
            got = mae_kernels.random_masking(x, 0.75)
        torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (device guard test)")


@two_gpus
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", INDICES)
def test_inputs_on_second_gpu(backend, index):
    """Inputs on cuda:1 while cuda:0 is current: the results of running with cuda:1 current, on cuda:1."""
    case = oc.gpu_cases()[index].to("cuda:1")
    with torch.cuda.device(1):
        want = oc.run(case, backend)
    torch.cuda.synchronize(1)
    with torch.cuda.device(0):
        got = oc.run(case, backend)
        assert torch.cuda.current_device() == 0, "the op changed the current device"
    torch.cuda.synchronize(1)
    for t in got[0] + got[1]:
        assert t is None or t.device == torch.device("cuda:1"), f"result on {t.device}"
    oc.assert_results_equal(case, got, want)


@two_gpus
@pytest.mark.parametrize("backend", BACKENDS)
def test_drawn_masks_on_second_gpu(backend):
    """noise=None draws from cuda:1's generator whatever device is current."""
    x = torch.randn(16, 196, 8, device="cuda:1")
    with mae_kernels.use_backend(backend):
        torch.manual_seed(3)
        with torch.cuda.device(1):
            want = mae_kernels.random_masking(x, 0.75)
        torch.manual_seed(3)
        with torch.cuda.device(0):
            got = mae_kernels.random_masking(x, 0.75)
    for a, b in zip(got, want):
        assert a.device == x.device and torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", INDICES)
def test_cuda_graph_capture_and_replay(backend, index):
    """Forward and backward captured in a CUDA graph (no host sync inside: index ranges become async asserts)
    and replayed give the eager results."""
    case = _case(index)
    seeds = []

    def grad_outputs(outs):  # made on the device once, before the capture (a host-to-device copy can't be captured)
        if not seeds:
            seeds.extend(oc.upstream(o, 1234 + i) for i, o in enumerate(outs))
        return seeds

    want = oc.run(case, backend, grad_outputs=grad_outputs)  # eager (compiles the Triton kernels first)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        for _ in range(2):
            oc.run(case, backend, grad_outputs=grad_outputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = oc.run(case, backend, grad_outputs=grad_outputs)
    graph.replay()
    torch.cuda.synchronize()
    oc.assert_results_equal(case, got, want)
