"""random_masking for every provider and mode (smoke runs in CI; timed with --benchmark-enable)."""
import pytest

from mae_kernels.benchmark import harness
from mae_kernels.benchmark.cases import random_masking as CASE


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("provider", harness.PROVIDERS)
def test_random_masking(bench_op, shape, provider, mode):
    bench_op(CASE, shape, provider, mode)
