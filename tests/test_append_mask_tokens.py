"""append_mask_tokens (VideoMAE v2's dual-masking decoder input) on every backend against the eager reference
and float64: the forward and grad_x are copies plus one fp32 add (bit-exact against the reference, computed the
same way), grad_mask_token and grad_pos_embed are sums (within tolerance of float64, tests/op_cases.assert_same).
The spec's counts (MAE_SPEC_VIDEO.md, VideoMAEv2): 224 px, 16 frames, tube ratio 0.9, run-cell ratio 0.5 ->
160 encoder tokens + 784 mask tokens = 944 decoder rows, of which 80 positions appear twice."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference, use_backend
from mae_kernels.backends import why_not
from mae_kernels.ops import append_mask_tokens as op_module

import op_cases as oc

CPU_BACKENDS = [b for b in ("cpu", "triton", "reference") if why_not(b, "cpu") is None]
# (N, L, K, M, D): no mask token, no kept token, every position decoded, D = 1, awkward and decoder sizes.
SHAPES = [(2, 9, 3, 0, 5), (2, 9, 0, 4, 5), (2, 9, 3, 9, 5), (3, 13, 5, 6, 1), (1, 40, 7, 20, 384)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", oc.DTYPES, ids=str)
@pytest.mark.parametrize("has_cls, pos", [(False, "grad"), (True, "fixed"), (False, None)])
def test_matches_reference_and_float64(backend, shape, dtype, has_cls, pos):
    N, L, K, M, D = shape
    case = oc.append_mask_tokens_case(N, L, K, M, D, dtype, torch.float32, has_cls, pos, seed=sum(shape))
    got = oc.run(case, backend)
    oc.assert_results_equal(case, got, oc.run(case, "reference"), want64=oc.run64(case))
    # The forward is a copy + one fp32 add rounded once: bit-exact (the Triton interpreter truncates to bf16).
    if not (backend == "triton" and dtype == torch.bfloat16):
        assert torch.equal(got[0][0], oc.run(case, "reference")[0][0])
    assert torch.equal(got[1][0], oc.run(case, "reference")[1][0])  # grad_x: a copy


def test_videomae_v2_counts_and_rows():
    """The spec's 944-row decoder input: rows 0..159 the encoder tokens + pos at their positions, rows 160..943
    the mask token + pos at the decoder-visible positions, 80 positions twice (encoder- and decoder-visible)."""
    t, hw, D = 8, 196, 4
    spatial_keep = torch.randperm(hw)[:hw - int(0.9 * hw)]  # tube: 20 visible per frame
    ids_keep = (torch.arange(t)[:, None] * hw + spatial_keep.sort().values).reshape(1, -1)
    cell = torch.tensor([[1, 0], [0, 1]]).repeat(7, 7).reshape(-1)  # one run-cell map: 98 of 196 decoded
    ids_dec = torch.cat([ti * hw + (cell if ti % 2 else 1 - cell).nonzero()[:, 0] for ti in range(t)])[None]
    x, mt, pos = torch.randn(1, ids_keep.shape[1], D), torch.randn(1, 1, D), torch.randn(1, t * hw, D)
    out = mae_kernels.append_mask_tokens(x, mt, ids_keep, ids_dec, pos)
    assert (ids_keep.shape[1], ids_dec.shape[1], out.shape[1]) == (160, 784, 944)
    assert len(set(ids_keep[0].tolist()) & set(ids_dec[0].tolist())) == 80
    assert torch.equal(out[0, :160], x[0] + pos[0, ids_keep[0]])
    assert torch.equal(out[0, 160:], mt[0] + pos[0, ids_dec[0]])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_x_and_low_precision_output(backend):
    """x read through strides (a transposed view); out_dtype emits bf16 directly (the fp32 result rounded once)."""
    N, K, M, L, D = 2, 4, 3, 10, 6
    x = torch.randn(N, D, 2 * K)[:, :, ::2].transpose(1, 2)
    mt, pos = torch.randn(1, 1, D), torch.randn(1, L, D)
    ids_keep, ids_dec = torch.rand(N, L).argsort(1)[:, :K], torch.rand(N, L).argsort(1)[:, :M]
    want = reference.append_mask_tokens(x, mt, ids_keep, ids_dec, pos)
    with use_backend(backend):
        out = mae_kernels.append_mask_tokens(x, mt, ids_keep, ids_dec, pos, out_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    if backend == "triton":  # the interpreter truncates fp32 -> bf16
        want = (want.contiguous().view(torch.int32) & ~0xFFFF).view(torch.float32)
    assert torch.equal(out, want.to(torch.bfloat16))


def test_out_of_range_positions_rejected():
    x, mt, pos = torch.randn(1, 2, 3), torch.randn(1, 1, 3), torch.randn(1, 5, 3)
    with pytest.raises(ValueError, match=r"ids_dec values must be positions in \[0, 5\).*got values in \[0, 5\]"):
        mae_kernels.append_mask_tokens(x, mt, torch.tensor([[0, 1]]), torch.tensor([[5, 0]]), pos)


def _samples():
    out = []
    for (N, L, K, M, D), has_cls, pos, dtype, out_dtype in [
            ((2, 9, 3, 4, 5), False, "grad", torch.bfloat16, torch.float32),
            ((2, 7, 0, 3, 3), True, None, torch.float16, torch.float16),
            ((1, 9, 4, 9, 4), True, "fixed", torch.float32, torch.bfloat16)]:
        case = oc.append_mask_tokens_case(N, L, K, M, D, dtype, torch.float32, has_cls, pos)
        i = case.inputs
        x = i["x"].requires_grad_()
        mt = i["mask_token"].requires_grad_()
        p = i["pos_embed"].requires_grad_(pos == "grad") if pos else None
        out.append((x, mt, i["ids_keep"], i["ids_dec"], p, has_cls, out_dtype))
    return out


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if why_not(b, "cpu") is None])
def test_opcheck(backend):
    for args in _samples():
        torch.library.opcheck(op_module.OPS[backend], args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    case = oc.append_mask_tokens_case(N=2, L=9, K=3, M=5, D=6, dtype=torch.bfloat16)
    torch._dynamo.reset()
    compiled = oc.dataclasses.replace(case, fn=torch.compile(case.fn, fullgraph=True))
    oc.assert_bitwise_equal(case, oc.run(compiled, backend), oc.run(case, backend))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_matches_reference(backend):
    for case in (oc.append_mask_tokens_case(N=32, L=1568, K=160, M=784, D=384, dtype=torch.bfloat16),
                 oc.append_mask_tokens_case(N=4, L=196, K=49, M=98, D=512, has_cls=True, pos="fixed")):
        case = case.to("cuda")
        oc.assert_results_equal(case, oc.run(case, backend), oc.run(case, "reference"), want64=oc.run64(case))
    for args in _samples():
        torch.library.opcheck(op_module.OPS[backend], tuple(
            a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a for a in args))
