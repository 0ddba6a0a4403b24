"""unshuffle_with_mask_tokens for every provider and mode (smoke runs in CI; timed with --benchmark-enable)."""
import pytest

from mae_kernels.benchmark import harness
from mae_kernels.benchmark.cases import unshuffle_with_mask_tokens as CASE


@pytest.mark.parametrize("mode", harness.MODES)
@pytest.mark.parametrize("provider", harness.PROVIDERS)
def test_unshuffle_with_mask_tokens(bench_op, shape, provider, mode):
    bench_op(CASE, shape, provider, mode)
