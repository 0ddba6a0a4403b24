"""The op suites against the emulated CUDA kernels in reverse thread order under AddressSanitizer: results that
depend on the order reveal races in global memory, ASan out-of-bounds accesses. A file of its own so that
`make test` runs it beside the forward whole-suite run of tests/test_cuda_emulation.py (they build apart)."""
import pytest

from test_cuda_emulation import _OP_SUITES, _libasan, run_emulated_suite


@pytest.mark.slow
def test_cuda_sources_pass_the_op_suites_reversed_under_asan(tmp_path):
    if _libasan() is None:
        pytest.skip("g++ has no libasan here: no AddressSanitizer run of the emulated kernels")
    # opcheck and torch.compile cases test registration and tracing, which the forward run covers; here they
    # would only rerun the same kernels many times under ASan.
    run_emulated_suite("reverse", True, [*_OP_SUITES, "-k", "not opcheck and not compile"], tmp_path)
