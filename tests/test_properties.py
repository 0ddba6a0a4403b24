"""Property-based tests (hypothesis): random shapes, dtypes and ratios for every op and backend usable on this
machine, against the reference. A fixed example budget keeps CI fast."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mae_kernels
from mae_kernels import reference

CPU_BACKENDS = ["cpu", "triton", "reference"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(N=st.integers(1, 3), L=st.integers(1, 70), D=st.integers(0, 9), ratio=st.floats(0.0, 0.99),
       dtype=st.sampled_from(DTYPES), ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_masking_matches_reference(backend, N, L, D, ratio, dtype, ties, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, L, D, generator=g).to(dtype)
    noise = torch.rand(N, L, generator=g)
    if ties:  # few distinct levels: many equal noise values
        noise = (noise * 4).floor() / 4
    with mae_kernels.use_backend(backend):
        got = mae_kernels.random_masking(x, ratio, noise)
    want = reference.random_masking(x, ratio, noise)
    for name, a, b in zip(("x_masked", "mask", "ids_restore"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs (N={N} L={L} D={D} ratio={ratio})"
