"""NaN and infinities in the inputs propagate exactly as in the reference: the same positions are NaN, +inf or
-inf in every output and gradient, on every backend, never hidden (and never invented). For results computed
with arithmetic (GEMMs, sums) the positions are those of the float64 reference (exact maths, the same on every
CPU), because the low-precision eager reference's own pattern depends on the CPU's oneDNN kernels.

By design the fused ops never read values that cannot change their result: the pixels and predictions of kept
patches in masked_mse_loss (loss weight 0) and the pixels of removed patches in masked_patch_embed. The official
code multiplies those by 0 and so turns a NaN or an infinity there into a NaN loss or weight gradient; the fused
ops ignore them (test_unread_values_are_ignored states that rule). Likewise the image gradient of
masked_patch_embed is exactly 0 on removed patches even when the weight holds NaN or infinities (the official
conv backward gives 0 * NaN = NaN there). NaN in random_masking's noise sorts last
(test_properties covers it, with infinities and ties).
"""
import dataclasses

import pytest
import torch

import op_cases as oc
from mae_kernels import reference

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
BACKENDS = oc.backend_params(cpu=("cpu", "triton", "reference"), gpu=("cuda", "triton"))
SPECIALS = (float("nan"), float("inf"), float("-inf"))


def _poison(t, allowed=None, seed=0):
    """A copy of t with one NaN, one +inf and one -inf at random positions (where `allowed`, a bool mask)."""
    t = t.clone()
    where = (allowed if allowed is not None else torch.ones(t.shape, dtype=torch.bool)).reshape(-1).nonzero()[:, 0]
    pick = where[torch.randperm(len(where), generator=torch.Generator().manual_seed(seed))[:len(SPECIALS)]]
    t.view(-1)[pick] = torch.tensor(SPECIALS[:len(pick)], dtype=t.dtype)
    return t


def _pixels_of(patches, p, H, W):
    """[N, L] bool per patch -> [N, 1, H, W] bool per pixel."""
    N, L = patches.shape
    return reference.unpatchify(patches[..., None].expand(N, L, p * p).float(), p, (H, W)) > 0


def _poisoned_cases(dtype):
    """(case, name of the poisoned input, where (None: anywhere), the documented change to the reference's
    results or None): every float input of every op, at positions the op reads."""
    out = []
    geo = dict(N=2, C=3, h=2, w=3, p=2)
    p, H, W = 2, 4, 6
    for case in (oc.random_masking_case(dtype=dtype), oc.patchify_case(dtype=dtype),
                 oc.unpatchify_case(dtype=dtype), oc.unshuffle_case(dtype=dtype),
                 oc.unshuffle_case(dtype=dtype, has_cls=False), oc.patch_stats_case(dtype=dtype),
                 oc.denormalize_pred_case(dtype=dtype)):
        for name in case.grad:
            out.append((case, name, None, None))
    gather = oc.masked_patchify_case(**geo, K=3, dtype=dtype)
    kept = torch.zeros(2, 6, dtype=torch.bool).scatter(1, gather.inputs["ids_keep"], True)
    out.append((gather, "imgs", _pixels_of(kept, p, H, W).expand(2, 3, H, W), None))
    embed = oc.masked_patch_embed_case(**geo, K=3, dtype=dtype, pos="grad")
    kept = torch.zeros(2, 6, dtype=torch.bool).scatter(1, embed.inputs["ids_keep"], True)
    kept_pixels = _pixels_of(kept, p, H, W).expand(2, 3, H, W)
    out.append((embed, "imgs", kept_pixels, None))
    out.append((embed, "weight", None, lambda outs, grads: (outs, (grads[0].masked_fill(~kept_pixels, 0),)
                                                                   + grads[1:])))
    for name in ("bias", "pos_embed"):
        out.append((embed, name, None, None))
    for removed_only in (False, True):
        for norm in (True, False):
            loss = oc.masked_mse_loss_case(**geo, K=2, dtype=dtype, norm=norm, removed_only=removed_only)
            removed = loss.inputs["mask"] > 0
            rows = removed if not removed_only else torch.ones(loss.inputs["pred"].shape[:2], dtype=torch.bool)
            out.append((loss, "pred", rows[..., None].expand(loss.inputs["pred"].shape), None))
            out.append((loss, "imgs", _pixels_of(removed, p, H, W).expand(2, 3, H, W), None))
    return out


CASES = [c for dtype in (torch.float32, torch.bfloat16) for c in _poisoned_cases(dtype)]
IDS = [f"{c.name}-{n}-{c.inputs[n].dtype}-{i}" for i, (c, n, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case,name,allowed,documented", CASES, ids=IDS)
def test_nan_and_inf_propagate_as_in_the_reference(backend, device, case, name, allowed, documented):
    case = dataclasses.replace(case, inputs={**case.inputs, name: _poison(case.inputs[name], allowed)})
    want = oc.run(case, "reference")
    # Non-finite patterns of results that involve arithmetic are judged against float64 maths (see
    # op_cases.assert_same: the bf16 eager reference's depends on the CPU). The reference backend is that eager
    # code, CPU dependence included, so it is only compared with itself.
    want64 = None if case.exact or backend == "reference" else oc.run64(case)
    if documented is not None and backend != "reference":
        want = documented(*want)
        want64 = want64 and documented(*want64)
    assert any(not t.isfinite().all() for t in want[0] + want[1] if t is not None and t.is_floating_point()), \
        "the poisoned input reaches no result: a useless case"
    got = oc.run(case.to(device), backend)
    oc.assert_results_equal(case, got, want, want64=want64)


def _unread_cases():
    geo = dict(N=2, C=3, h=2, w=3, p=2)
    p, H, W = 2, 4, 6
    embed = oc.masked_patch_embed_case(**geo, K=3, pos=None)
    kept = torch.zeros(2, 6, dtype=torch.bool).scatter(1, embed.inputs["ids_keep"], True)
    out = [(embed, "imgs", _pixels_of(~kept, p, H, W).expand(2, 3, H, W))]
    loss = oc.masked_mse_loss_case(**geo, K=2)
    kept = loss.inputs["mask"] == 0
    out.append((loss, "pred", kept[..., None].expand(loss.inputs["pred"].shape)))
    out.append((loss, "imgs", _pixels_of(kept, p, H, W).expand(2, 3, H, W)))
    return out


UNREAD = _unread_cases()


@pytest.mark.parametrize("backend,device", oc.backend_params(cpu=("cpu", "triton"), gpu=("cuda", "triton")))
@pytest.mark.parametrize("case,name,unread", UNREAD, ids=[f"{c.name}-{n}" for c, n, _ in UNREAD])
def test_unread_values_are_ignored(backend, device, case, name, unread):
    """NaN and infinities where the op reads nothing (kept patches in the loss, removed patches in the patch
    embedding) leave the results those of zeros there, finite; the official code gives NaN (0 * NaN)."""
    poisoned = dataclasses.replace(case, inputs={**case.inputs, name: _poison(case.inputs[name], unread)})
    zeroed = dataclasses.replace(case, inputs={**case.inputs, name: case.inputs[name].masked_fill(unread, 0.0)})
    got = oc.run(poisoned.to(device), backend)
    for t in got[0] + got[1]:
        assert t is None or t.isfinite().all(), "an unread NaN or infinity reached a result"
    oc.assert_results_equal(case, got, oc.run(zeroed, "reference"), want64=oc.run64(zeroed))
    official = oc.run(poisoned, "reference")
    assert any(not t.isfinite().all() for t in official[0] + official[1] if t is not None), \
        "the reference ignores these values too: the documented difference is gone"


def test_non_finite_positions_are_judged_by_float64_maths():
    """The oracle itself: an eager reference whose non-finite pattern differs from exact maths (as oneDNN's
    AVX-512 bf16 convolution's does) does not fail a correct result, and a result with that wrong pattern fails
    even though the eager reference shares it."""
    exact = torch.tensor([1.0, float("inf"), -2.0, float("nan")], dtype=torch.float64)
    eager = torch.tensor([1.0, float("nan"), -2.0, float("nan")]).bfloat16()
    oc.assert_same("x", exact.bfloat16(), eager, exact=False, want64=exact)
    with pytest.raises(AssertionError, match="NaN pattern differs from exact maths"):
        oc.assert_same("x", eager, eager, exact=False, want64=exact)
    with pytest.raises(AssertionError, match="infinities differ"):
        oc.assert_same("x", -exact.bfloat16(), eager, exact=False, want64=exact)
