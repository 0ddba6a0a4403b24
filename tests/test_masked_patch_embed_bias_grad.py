"""masked_patch_embed_bias_grad, masked_patch_embed's backward pass over grad_out: the GEMM-dtype copy bit-exact
(a cast), the bias gradient bit-exact against the fixed summation order of csrc/masked_patch_embed_bias_grad.h
(the same bits on every backend and thread count) and within the dtype's tolerance of the float64 sum; awkward
sizes (odd D, several chunks per sample, more chunks than one finishing round), strided / sliced / expanded /
misaligned grads; opcheck; and the op at work in masked_patch_embed's backward (the model's sliced gradient under
bf16 autocast, torch.compile)."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops import masked_patch_embed as mpe_ops
from mae_kernels.triton.masked_patch_embed_bias_grad import GROUP, ROWS
from op_cases import RTOL

BACKENDS = ["cpu", "triton"]
# (N, K, D): two chunks per sample (K = 49, ViT-B's), odd D and three chunks, one element, no rows, more than one
# group of chunks, more chunks than the CUDA / Triton finishing round (8 groups of 32), vector-sized D.
SHAPES = [(3, 49, 20), (2, 70, 5), (1, 1, 1), (2, 0, 4), (37, 3, 8), (300, 1, 3), (2, 33, 16)]
# (grad dtype, GEMM dtype, write the copy, bias dtype): autocast's fp32 -> bf16, fp16, no cast, a copy of a
# strided grad in its own dtype.
DTYPES = [(torch.float32, torch.bfloat16, True, torch.bfloat16), (torch.float32, torch.float16, True, torch.float32),
          (torch.bfloat16, torch.bfloat16, False, torch.bfloat16), (torch.float16, torch.float16, True, torch.float16),
          (torch.float32, torch.float32, False, torch.float32)]
LAYOUTS = ["contiguous", "slice", "strided", "expanded", "misaligned"]


def make_grad(N, K, D, dtype, layout, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if layout == "slice":  # the model's: the kept tokens' rows of its cat's gradient
        return torch.randn(N, K + 1, D, generator=gen).to(dtype)[:, 1:]
    if layout == "strided":
        return torch.randn(N, K, 2 * D, generator=gen).to(dtype)[..., ::2]
    if layout == "expanded":  # e.g. the gradient of out.sum()
        return torch.randn(1, 1, D, generator=gen).to(dtype).expand(N, K, D)
    if layout == "misaligned":  # rows off the 16-byte alignment: the scalar paths
        return torch.randn(N * K * D + 1, generator=gen).to(dtype)[1:].view(N, K, D)
    return torch.randn(N, K, D, generator=gen).to(dtype)


def fixed_order_sum(grad):
    """The bias gradient in csrc/masked_patch_embed_bias_grad.h's order, fp32 (elementwise fp32 adds are exact
    IEEE roundings on any CPU). Padding rows and chunks add +0, which leaves a sum that starts at +0 unchanged."""
    N, K, D = grad.shape
    KB = -(-K // ROWS)
    rows = torch.zeros(N, KB * ROWS, D)
    rows[:, :K] = grad.float()
    rows = rows.view(N, KB, ROWS, D)
    partial = torch.zeros(N, KB, D)
    for i in range(ROWS):
        partial = partial + rows[:, :, i]
    chunks = N * KB
    groups = -(-chunks // GROUP)
    padded = torch.zeros(groups * GROUP, D)
    padded[:chunks] = partial.reshape(chunks, D)
    padded = padded.view(groups, GROUP, D)
    group_sums = torch.zeros(groups, D)
    for i in range(GROUP):
        group_sums = group_sums + padded[:, i]
    total = torch.zeros(D)
    for g in range(groups):
        total = total + group_sums[g]
    return total


def assert_cast(name, got, want32, dtype, backend):
    """got == want32 rounded to dtype; the Triton interpreter truncates fp32 -> bf16 (DEVELOPING.md), so there
    each element may also be the truncation."""
    rounded = want32.to(dtype)
    ok = got == rounded
    if backend == "triton" and dtype == torch.bfloat16:
        truncated = (want32.float().view(torch.int32) & -65536).view(torch.float32).to(dtype)
        ok |= got == truncated
    bad = (~ok).nonzero()
    assert not len(bad), f"{name}: first mismatch at {tuple(bad[0].tolist())}: {got[tuple(bad[0])]} != " \
                         f"{rounded[tuple(bad[0])]}"


def run_op(backend, grad, gemm_dtype, write, bias_dtype):
    return mpe_ops.BIAS_GRAD_OPS[backend](grad, gemm_dtype, write, bias_dtype)


def check_op(backend, N, K, D, dtypes, layout):
    g_dtype, gemm_dtype, write, bias_dtype = dtypes
    grad = make_grad(N, K, D, g_dtype, layout)
    copy, grad_bias = run_op(backend, grad, gemm_dtype, write, bias_dtype)
    assert copy.shape == ((N * K, D) if write else (0, D)) and copy.dtype == gemm_dtype and copy.is_contiguous()
    assert grad_bias.shape == (D,) and grad_bias.dtype == bias_dtype
    if write:
        assert_cast(f"{layout} copy", copy, grad.reshape(N * K, D).float(), gemm_dtype, backend)
    assert_cast(f"{layout} grad_bias", grad_bias, fixed_order_sum(grad), bias_dtype, backend)
    exact = grad.double().sum((0, 1))
    scale = grad.double().abs().sum((0, 1)).clamp_min(1.0)
    err = ((grad_bias.double() - exact).abs() / scale).max().item() if D else 0.0
    assert err <= RTOL[bias_dtype], f"{layout}: grad_bias off the float64 sum by {err:.3g} (relative)"


@pytest.mark.parametrize("N,K,D", SHAPES)
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"{d[0]}-{d[1]}-{'copy' if d[2] else 'nocopy'}-{d[3]}")
def test_bias_grad_cpu(N, K, D, dtypes):
    for layout in LAYOUTS if (N, K, D) in ((3, 49, 20), (2, 33, 16)) else ["contiguous", "slice"]:
        check_op("cpu", N, K, D, dtypes, layout)


# The Triton interpreter takes about a second per call here: each shape, dtype combination and layout once.
TRITON_CASES = [((3, 49, 20), DTYPES[0], layout) for layout in LAYOUTS] + [
    ((2, 70, 5), DTYPES[2], "slice"), ((2, 33, 16), DTYPES[3], "strided"), ((2, 0, 4), DTYPES[1], "contiguous"),
    ((1, 1, 1), DTYPES[4], "contiguous"), ((300, 1, 3), DTYPES[1], "slice")]


@pytest.mark.parametrize("shape,dtypes,layout", TRITON_CASES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_bias_grad_triton(shape, dtypes, layout):
    check_op("triton", *shape, dtypes, layout)


def test_same_bits_on_every_backend_and_thread_count():
    """fp32 sums: cpu (or the emulated CUDA kernels) and triton agree bit for bit, the cpu kernel with 1 and 2
    threads too."""
    grad = make_grad(40, 49, 24, torch.float32, "slice", seed=3) * 1e3
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_op("cpu", grad, torch.bfloat16, True, torch.float32)
        torch.set_num_threads(2)
        two = run_op("cpu", grad, torch.bfloat16, True, torch.float32)
    finally:
        torch.set_num_threads(threads)
    tri = run_op("triton", grad, torch.float32, False, torch.float32)
    for got in (two[1], tri[1]):
        assert torch.equal(got.view(torch.int32), one[1].view(torch.int32))
    assert torch.equal(one[0], two[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    samples = [((3, 49, 20), "slice", DTYPES[0]), ((2, 0, 4), "contiguous", DTYPES[1])]
    if backend == "cpu":
        samples += [((2, 5, 3), "contiguous", DTYPES[2]), ((2, 4, 6), "strided", DTYPES[3])]
    for (N, K, D), layout, (g_dtype, gemm_dtype, write, bias_dtype) in samples:
        grad = make_grad(N, K, D, g_dtype, layout)
        torch.library.opcheck(mpe_ops.BIAS_GRAD_OPS[backend], (grad, gemm_dtype, write, bias_dtype))


def _model_grads(fn, imgs, ids, weight, bias, pos, cls, g, autocast):
    """The MAE model's use: cat((cls, tokens)) makes tokens' gradient a non-contiguous slice."""
    leaves = [t.detach().clone().requires_grad_() for t in (imgs, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = fn(leaves[0], ids, leaves[1], leaves[2], pos)
        x = torch.cat((cls.expand(out.shape[0], -1, -1).to(out.dtype), out), dim=1)
    return out, torch.autograd.grad(x, leaves, g.to(x.dtype))


@pytest.mark.parametrize("backend,autocast", [("cpu", False), ("cpu", True), ("triton", True)])
def test_backward_of_the_models_slice(backend, autocast):
    """Gradients of every input through the model's cat, fp32 and bf16 autocast (fp32 pos_embed: fp32 grad_out
    cast to the bf16 GEMMs in the same pass), against the float64 reference; the bias gradient is the op's."""
    N, C, H, W, D, p = 3, 3, 16, 12, 40, 2  # L = 48, K = 40: two chunks per sample
    gen = torch.Generator().manual_seed(5)
    imgs = torch.randn(N, C, H, W, generator=gen)
    weight = torch.randn(D, C, p, p, generator=gen) / (C * p * p) ** 0.5
    bias, cls = torch.randn(D, generator=gen), torch.randn(1, 1, D, generator=gen)
    pos = torch.randn(1, 1 + 48, D, generator=gen)
    ids = torch.stack([torch.randperm(48, generator=gen)[:40] for _ in range(N)])
    g = torch.randn(N, 41, D, generator=gen)
    with mae_kernels.use_backend(backend):
        out, got = _model_grads(mae_kernels.masked_patch_embed, imgs, ids, weight, bias, pos, cls, g, autocast)
    _, exact = _model_grads(reference.masked_patch_embed, imgs.double(), ids, weight.double(), bias.double(),
                            pos.double(), cls.double(), g.double(), False)
    tol = RTOL[torch.bfloat16 if autocast else torch.float32]
    for name, a, e in zip(("imgs", "weight", "bias"), got, exact):
        assert a.dtype == torch.float32, name
        err = (a.double() - e).abs().max().item() / max(e.abs().max().item(), 1.0)
        assert err <= tol, f"{name}: error {err:.3g} > {tol}"
    dtype = torch.bfloat16 if autocast else torch.float32  # the bias was cast to it: its gradient rounded there
    assert_cast("grad_bias", got[2].to(dtype), fixed_order_sum(g[:, 1:]), dtype, backend)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compile_fullgraph_bias_grad(backend):
    """The backward traced with the op's fake kernel: the compiled graph's gradients are the eager ones."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(7)
    imgs = torch.randn(2, 3, 8, 6, generator=gen)
    weight = (torch.randn(16, 3, 2, 2, generator=gen) / 12 ** 0.5).requires_grad_()
    bias = torch.randn(16, generator=gen).requires_grad_()
    pos = torch.randn(1, 13, 16, generator=gen)
    ids = torch.stack([torch.randperm(12, generator=gen)[:5] for _ in range(2)])

    def f(imgs, ids, weight, bias, pos):
        return mae_kernels.masked_patch_embed(imgs, ids, weight, bias, pos)[:, 1:] * 3

    with mae_kernels.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(imgs, ids, weight, bias, pos)
        want = f(imgs, ids, weight, bias, pos)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    g = torch.randn(got.shape, generator=gen)
    for a, b in zip(torch.autograd.grad(got, (weight, bias), g), torch.autograd.grad(want, (weight, bias), g)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
