"""mask_to_indices for every provider, forward only (indices have no gradient); smoke runs in CI."""
import pytest

from mae_kernels.benchmark import harness
from mae_kernels.benchmark.cases import mask_to_indices as CASE


@pytest.mark.parametrize("provider", harness.PROVIDERS)
def test_mask_to_indices(bench_op, shape, provider):
    bench_op(CASE, shape, provider, "forward")
