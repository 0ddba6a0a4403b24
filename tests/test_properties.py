"""Property-based tests (hypothesis): random shapes, dtypes, mask ratios, patch sizes, channel counts, non-square
images, layouts and options for every public op and every backend, against the reference backend run on CPU.
Gathers and scatters (outputs and gradients) must be bit-exact; results with arithmetic within a few units in
the last place of their dtype (op_cases.RTOL). A fixed example budget (derandomized) keeps the suite fast: the
Triton interpreter costs about 1 ms per program instance, so the shapes stay small."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import op_cases as oc

BACKENDS = oc.backend_params(cpu=("cpu", "triton"), gpu=("cuda", "triton"))


def budget(n):
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


dtypes = st.sampled_from(oc.DTYPES)
seeds = st.integers(0, 2**31 - 1)
ratios = st.floats(0.0, 0.99)
fractions = st.floats(0.0, 1.0)  # K = int(fraction * L): 0 and L included
# Image geometry: non-square grids, awkward channel counts (1, 13) and patch sizes.
grids = st.fixed_dictionaries(dict(N=st.integers(1, 3), C=st.sampled_from([1, 2, 3, 4, 13]), h=st.integers(1, 4),
                                   w=st.integers(1, 4), p=st.integers(1, 4)))


def check(case, backend, device):
    """case on `backend` (on `device`) against the reference backend on CPU, outputs and gradients."""
    want = oc.run(case, "reference")
    got = oc.run(case.to(device), backend)
    oc.assert_results_equal(case, got, want, want64=None if case.exact else oc.run64(case))


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(40)
@given(N=st.integers(1, 3), L=st.integers(1, 70), D=st.integers(0, 9), ratio=ratios, dtype=dtypes, seed=seeds,
       noise=st.sampled_from(["rand", "ties", "special"]))
def test_random_masking(backend, device, N, L, D, ratio, dtype, seed, noise):
    check(oc.random_masking_case(N, L, D, ratio, dtype, seed, noise), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(25)
@given(N=st.integers(1, 3), L=st.integers(1, 70), ratio=ratios, seed=seeds)
def test_random_mask_indices(backend, device, N, L, ratio, seed):
    check(oc.random_mask_indices_case(N, L, ratio, seed), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(20)
@given(N=st.integers(1, 3), t=st.integers(1, 4), hw=st.integers(1, 40), ratio=ratios, seed=seeds,
       noise=st.sampled_from(["rand", "ties", "special"]))
def test_tube_mask_indices(backend, device, N, t, hw, ratio, seed, noise):
    check(oc.tube_mask_indices_case(N, t, hw, ratio, seed, noise), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(20)
@given(N=st.integers(1, 3), L=st.integers(1, 70), fraction=fractions, seed=seeds, given_=st.booleans(),
       strided=st.booleans())
def test_mask_to_indices(backend, device, N, L, fraction, seed, given_, strided):
    check(oc.mask_to_indices_case(N, L, int(fraction * L), seed, given_, strided), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(10)
@given(N=st.integers(1, 3), t=st.integers(1, 4), h=st.sampled_from([2, 4]), w=st.sampled_from([2, 6]),
       ratio=st.sampled_from([0.25, 0.5, 0.75]), mask_type=st.sampled_from(["run_cell", "random"]), seed=seeds,
       scope=st.sampled_from(["all", "removed"]))
def test_decoder_mask_indices(backend, device, N, t, h, w, ratio, mask_type, seed, scope):
    check(oc.decoder_mask_indices_case(N, t, h, w, ratio, mask_type, seed, scope), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(40)
@given(g=grids, dtype=dtypes, seed=seeds, channels_last=st.booleans())
def test_patchify(backend, device, g, dtype, seed, channels_last):
    check(oc.patchify_case(**g, dtype=dtype, seed=seed, channels_last=channels_last), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(40)
@given(g=grids, dtype=dtypes, seed=seeds)
def test_unpatchify(backend, device, g, dtype, seed):
    check(oc.unpatchify_case(**g, dtype=dtype, seed=seed), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(40)
@given(g=grids, keep=fractions, dtype=dtypes, seed=seeds, channels_last=st.booleans())
def test_masked_patchify(backend, device, g, keep, dtype, seed, channels_last):
    K = int(keep * g["h"] * g["w"])
    check(oc.masked_patchify_case(**g, K=K, dtype=dtype, seed=seed, channels_last=channels_last), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(30)
@given(g=grids, keep=fractions, D=st.integers(1, 24), dtype=dtypes, seed=seeds,
       pos=st.sampled_from([None, "fixed", "grad"]), fp32_pos=st.booleans(), channels_last=st.booleans())
def test_masked_patch_embed(backend, device, g, keep, D, dtype, seed, pos, fp32_pos, channels_last):
    K = int(keep * g["h"] * g["w"])
    check(oc.masked_patch_embed_case(**g, K=K, D=D, dtype=dtype, seed=seed, pos=pos,
                                     pos_dtype=torch.float32 if fp32_pos else None, channels_last=channels_last),
          backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(20)
@given(g=grids, ratio=ratios, D=st.integers(1, 16), dtype=dtypes, seed=seeds,
       pos=st.sampled_from([None, "fixed", "grad"]))
def test_random_masked_patch_embed(backend, device, g, ratio, D, dtype, seed, pos):
    check(oc.random_masked_patch_embed_case(**g, D=D, ratio=ratio, dtype=dtype, seed=seed, pos=pos), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(40)
@given(N=st.integers(1, 3), L=st.integers(1, 20), keep=fractions, D=st.integers(1, 40), dtype=dtypes,
       fp32_params=st.booleans(), has_cls=st.booleans(), pos=st.sampled_from([None, "fixed", "grad"]), seed=seeds)
def test_unshuffle_with_mask_tokens(backend, device, N, L, keep, D, dtype, fp32_params, has_cls, pos, seed):
    check(oc.unshuffle_case(N, L, int(keep * L), D, dtype, torch.float32 if fp32_params else dtype, has_cls, pos,
                            seed), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(30)
@given(N=st.integers(1, 3), L=st.integers(1, 20), keep=fractions, dec=fractions, D=st.integers(1, 40), dtype=dtypes,
       fp32_params=st.booleans(), has_cls=st.booleans(), pos=st.sampled_from([None, "fixed", "grad"]), seed=seeds)
def test_append_mask_tokens(backend, device, N, L, keep, dec, D, dtype, fp32_params, has_cls, pos, seed):
    check(oc.append_mask_tokens_case(N, L, int(keep * L), int(dec * L), D, dtype,
                                     torch.float32 if fp32_params else dtype, has_cls, pos, seed), backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(40)
@given(g=grids, keep=fractions, dtype=dtypes, fp32_imgs=st.booleans(), norm=st.booleans(),
       removed_only=st.booleans(), seed=seeds, channels_last=st.booleans())
def test_masked_mse_loss(backend, device, g, keep, dtype, fp32_imgs, norm, removed_only, seed, channels_last):
    norm = norm and g["p"] ** 2 * g["C"] >= 2  # the unbiased variance needs two values per patch
    check(oc.masked_mse_loss_case(**g, K=int(keep * g["h"] * g["w"]), dtype=dtype,
                                  img_dtype=torch.float32 if fp32_imgs else None, norm=norm,
                                  removed_only=removed_only, seed=seed, channels_last=channels_last),
          backend, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
@budget(15)
@given(g=grids, dtype=dtypes, seed=seeds)
def test_patch_stats_and_denormalize_pred(backend, device, g, dtype, seed):
    if g["p"] ** 2 * g["C"] < 2:
        g["C"] = 2  # the unbiased variance needs two values per patch
    check(oc.patch_stats_case(**g, dtype=dtype, seed=seed), backend, device)
    check(oc.denormalize_pred_case(**g, dtype=dtype, seed=seed), backend, device)
