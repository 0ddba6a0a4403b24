"""masked_patchify for every provider and mode (smoke runs in CI; timed with --benchmark-enable)."""
import pytest

from mae_kernels.benchmark import harness
from mae_kernels.benchmark.cases import masked_patchify as CASE


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("provider", harness.PROVIDERS)
def test_masked_patchify(bench_op, shape, provider, mode):
    bench_op(CASE, shape, provider, mode)
