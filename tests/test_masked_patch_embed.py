"""masked_patch_embed / random_masked_patch_embed: every backend against the float64 reference (the official
Conv2d-over-all-patches path), forward and every gradient; low precision within 2x eager's error; autocast;
opcheck; torch.compile; clear errors."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops import masked_patch_embed as mpe_ops

CPU_BACKENDS = ["cpu", "triton", "reference"]
GPU_BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (p, C, H, W, D): patch sizes and channel counts of the spec, non-square images, D not a power of two.
SHAPES = [(1, 3, 4, 3, 8), (2, 1, 6, 4, 24), (14, 3, 28, 42, 40), (16, 13, 32, 16, 20), (16, 3, 224, 160, 32)]
GRADS = ("imgs", "weight", "bias", "pos_embed")


def make_inputs(N, C, H, W, D, p, dtype, device, layout="contiguous", pos_dtype=None):
    imgs = torch.randn(N, C, H, W, device=device)
    if layout == "channels_last":
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        imgs = torch.randn(N, C, H, 2 * W, device=device)[..., ::2]
    weight = torch.randn(D, C, p, p, device=device) / (C * p * p) ** 0.5
    bias = torch.randn(D, device=device)
    pos = torch.randn(1, 1 + (H // p) * (W // p), D, device=device)
    return imgs.to(dtype), weight.to(dtype), bias.to(dtype), pos.to(pos_dtype or dtype)


def random_ids(N, L, K, device):
    return torch.stack([torch.randperm(L)[:K] for _ in range(N)]).to(device)


def forward_and_grads(fn, imgs, ids, weight, bias, pos, grad_out, autocast=None):
    leaves = [t.detach().clone().requires_grad_() for t in (imgs, weight, bias, pos)]
    if autocast is not None:
        with torch.autocast(imgs.device.type, dtype=autocast):
            out = fn(leaves[0], ids, leaves[1], leaves[2], leaves[3])
    else:
        out = fn(leaves[0], ids, leaves[1], leaves[2], leaves[3])
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype), allow_unused=True)
    return out, grads


def max_err(got, want):
    return (got.double() - want).abs().max().item() if got.numel() else 0.0


def check(backend, device, p, C, H, W, D, dtype, K, N=2, layout="contiguous", pos_dtype=None, autocast=None,
          slack=2.0):
    """Output and every gradient vs float64; error at most `slack` x eager PyTorch's error in the same dtype."""
    imgs, weight, bias, pos = make_inputs(N, C, H, W, D, p, dtype, device, layout, pos_dtype)
    L = (H // p) * (W // p)
    ids = random_ids(N, L, min(K, L), device)
    grad_out = torch.randn(N, ids.shape[1], D, device=device)
    with mae_kernels.use_backend(backend):
        got = forward_and_grads(mae_kernels.masked_patch_embed, imgs, ids, weight, bias, pos, grad_out, autocast)
    eager = forward_and_grads(reference.masked_patch_embed, imgs, ids, weight, bias, pos, grad_out, autocast)
    exact = forward_and_grads(reference.masked_patch_embed, *[t.double() if t.is_floating_point() else t for t in
                                                              (imgs, ids, weight, bias, pos)], grad_out.double())
    assert got[0].dtype == eager[0].dtype, f"output dtype {got[0].dtype} != reference's {eager[0].dtype}"
    floor = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    names = ("output",) + GRADS
    for name, g, e, x in zip(names, (got[0],) + got[1], (eager[0],) + eager[1], (exact[0],) + exact[1]):
        assert g.shape == x.shape, f"{name}: shape {tuple(g.shape)} != {tuple(x.shape)}"
        assert g.dtype == e.dtype, f"{name}: dtype {g.dtype} != eager's {e.dtype}"
        scale = max(x.abs().max().item() if x.numel() else 0.0, 1.0)
        err, eager_err = max_err(g, x), max_err(e, x)
        assert err <= slack * eager_err + floor * scale * 0.1, (
            f"{name}: max error {err:.3g} vs float64 > {slack} x eager's {eager_err:.3g} "
            f"(first bad index {tuple((g.double() - x).abs().argmax().unravel_index(x.shape)) if x.numel() else ()})")


def triton_slack(backend, dtype):
    # The CPU interpreter truncates fp32 -> bf16 casts (up to 1 ulp where rounding makes 1/2): allow for it.
    return 3.0 if backend == "triton" and dtype == torch.bfloat16 else 2.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("p,C,H,W,D", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [0, 1, "L"])
def test_masked_patch_embed(backend, p, C, H, W, D, dtype, K):
    L = (H // p) * (W // p)
    N = 1 if H * W > 1000 else 2
    K = L if K == "L" else K
    if H * W > 1000 and K == L and backend == "triton":
        K = 40  # keep the interpreter's program count small
    check(backend, "cpu", p, C, H, W, D, dtype, K, N=N, slack=triton_slack(backend, dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layouts(backend, layout, dtype):
    check(backend, "cpu", 2, 3, 6, 10, 24, dtype, K=7, layout=layout, slack=triton_slack(backend, dtype))
    check(backend, "cpu", 14, 13, 28, 42, 20, dtype, K=3, N=1, layout=layout, slack=triton_slack(backend, dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_autocast_cpu_bf16(backend):
    """fp32 parameters and images under CPU autocast: the GEMM runs in bf16 as nn.Conv2d's; the fp32 pos_embed
    promotes the output to fp32, as in the reference."""
    check(backend, "cpu", 2, 3, 6, 10, 24, torch.float32, K=7, autocast=torch.bfloat16,
          slack=triton_slack(backend, torch.bfloat16))


def _rounding_images(shape, dtype, seed):
    """Pixels whose rounding to fp16 / bf16 the last bits decide (exact ties of both, subnormals), finite."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2.0 ** torch.randint(-8, 4, shape, generator=gen)
    bits = x.view(-1).view(torch.int32)
    bits[0::5] = (bits[0::5] & ~0xFFFF) | 0x8000  # bf16 ties
    bits[1::5] = (bits[1::5] & ~0x1FFF) | 0x1000  # fp16 ties
    x.view(-1)[2::97] = 1e-39
    return x.to(dtype)


AUTOCAST_CASES = [(torch.float32, torch.bfloat16), (torch.float32, torch.float16), (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("imgs_dtype,autocast", AUTOCAST_CASES, ids=[f"{a}-{b}" for a, b in AUTOCAST_CASES])
def test_autocast_rounds_in_the_gather(backend, imgs_dtype, autocast):
    """Under autocast imgs are not cast (a full-size copy of which only the kept patches are read): the gather
    rounds each kept pixel to the GEMM dtype. Output and every gradient (imgs' in imgs' own dtype, as autograd's
    cast gave it) are those of the cast-first call bit for bit: 3 channels at p = 8 (the CUDA 16-byte converting
    gather under the emulator), a strided view at p = 2 (the generic one), a video with mae_st's separable pair."""
    gen = torch.Generator().manual_seed(1)
    imgs = _rounding_images((2, 3, 16, 24), imgs_dtype, 0)
    strided = _rounding_images((2, 3, 6, 20), imgs_dtype, 1)[..., ::2]
    clip = _rounding_images((2, 3, 4, 8, 8), imgs_dtype, 2)
    cases = [(imgs, torch.randn(24, 3, 8, 8, generator=gen), torch.randn(1, 7, 24, generator=gen), 6, 4),
             (strided, torch.randn(24, 3, 2, 2, generator=gen), torch.randn(1, 16, 24, generator=gen), 15, 6),
             (clip, torch.randn(24, 3, 2, 4, 4, generator=gen),
              (torch.randn(1, 4, 24, generator=gen), torch.randn(1, 2, 24, generator=gen)), 8, 5)]
    for x, weight, pos, L, K in cases:
        ids = random_ids(2, L, K, "cpu")
        bias = torch.randn(24, generator=gen)
        tables = list(pos) if isinstance(pos, tuple) else [pos]
        grad_out = torch.randn(2, K, 24, generator=gen)
        results = []
        for cast_first in (True, False):
            leaves = [t.detach().clone().requires_grad_() for t in [x, weight, bias] + tables]
            with mae_kernels.use_backend(backend), torch.autocast("cpu", dtype=autocast):
                first = leaves[0].to(autocast) if cast_first else leaves[0]
                table = tuple(leaves[3:]) if len(tables) == 2 else leaves[3]
                out = mae_kernels.masked_patch_embed(first, ids, leaves[1], leaves[2], table)
            results.append((out,) + torch.autograd.grad(out, leaves, grad_out))
        for name, want, got in zip(("output", "imgs", "weight", "bias", "pos", "pos_t"), *results):
            assert got.dtype == want.dtype and torch.equal(got, want), (
                f"{name} (imgs {tuple(x.shape)}): {got.dtype} vs cast-first {want.dtype}, "
                f"{(got != want).sum().item() if got.shape == want.shape else 'shapes differ'} elements differ")
        assert results[1][1].dtype == imgs_dtype


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_autocast_reads_imgs_in_place(backend):
    """Under autocast no aten op takes the whole image (no full-size cast of it, forward or backward; the kept
    pixels are rounded by the gather), and the weight gradient is the cast-first call's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class ImageOps(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.seen = shape, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "aten" and any(isinstance(a, torch.Tensor) and a.shape == self.shape for a in args):
                self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    imgs, weight, bias, pos = make_inputs(2, 3, 16, 24, 24, 8, torch.float32, "cpu")
    ids = random_ids(2, 6, 3, "cpu")
    weight.requires_grad_()
    with mae_kernels.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        with ImageOps(imgs.shape) as mode:
            out = mae_kernels.masked_patch_embed(imgs, ids, weight, bias, pos)
            (grad,) = torch.autograd.grad(out.sum(), weight)
        want = mae_kernels.masked_patch_embed(imgs.bfloat16(), ids, weight, bias, pos)
    assert not mode.seen, f"aten ops on the whole image under autocast: {mode.seen}"
    assert torch.equal(grad, torch.autograd.grad(want.sum(), weight)[0])


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compile_fullgraph_autocast(backend):
    """torch.compile of the autocast call (fp32 imgs, GEMM in bf16): forward and gradients as eager's."""
    torch._dynamo.reset()
    imgs, weight, bias, pos = make_inputs(2, 3, 8, 6, 16, 2, torch.float32, "cpu")
    imgs.requires_grad_()
    weight.requires_grad_()
    ids = random_ids(2, 12, 5, "cpu")

    def f(imgs, ids, weight, bias, pos):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return mae_kernels.masked_patch_embed(imgs, ids, weight, bias, pos)

    with mae_kernels.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(imgs, ids, weight, bias, pos)
        want = f(imgs, ids, weight, bias, pos)
    assert got.dtype == want.dtype == torch.float32 and torch.equal(got, want)
    for g, w in zip(torch.autograd.grad(got.sum(), (imgs, weight)), torch.autograd.grad(want.sum(), (imgs, weight))):
        assert g.dtype == w.dtype and torch.equal(g, w)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_mixed_pos_dtype(backend):
    check(backend, "cpu", 2, 3, 6, 10, 24, torch.bfloat16, K=5, pos_dtype=torch.float32,
          slack=triton_slack(backend, torch.bfloat16))


@pytest.mark.parametrize("pos_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pos_epilogue_is_eager_add_bitwise_cpu(dtype, pos_dtype):
    """The compiled op's positional epilogue (one pass over the GEMM output, csrc/masked_patch_embed_gemm.h) gives
    eager's `gemm + rows` bit for bit: every dtype pair's promotion, the separable pair's sum rounded to its own
    dtype first, overflow to inf and subnormal rows; 16-byte packs (D = 16) and the element fallback (D = 7; a
    table starting one element off its alignment). Under the CUDA emulator this runs the CUDA kernel."""
    op = torch.ops.mae_kernels.masked_patch_embed
    gen = torch.Generator().manual_seed(0)
    N, C, T, H, W, u, p, K = 2, 2, 4, 4, 6, 2, 2, 5  # t, h, w = 2, 2, 3: L = 12, hw = 6
    hw, L = 6, 12
    ids = torch.stack([torch.randperm(L, generator=gen)[:K] for _ in range(N)])
    for D, shift in ((16, 0), (7, 0), (16, 1)):
        def table(rows, table_dtype):
            flat = torch.randn(shift + rows * D, generator=gen)
            flat[shift::D] = 6e4  # overflows fp16 once the GEMM adds to it
            flat[shift + 1::D] = 1e-39  # fp32 subnormal
            return flat.to(table_dtype)[shift:].view(1, rows, D)

        imgs = torch.randn(N, C, T, H, W, generator=gen).to(dtype)
        weight = (torch.randn(D, C, u, p, p, generator=gen) * 100).to(dtype)
        bias = torch.randn(D, generator=gen).to(dtype)
        gemm = op(imgs, ids, weight, bias, None)
        flat_ids = ids.reshape(-1)
        pos = table(1 + L, pos_dtype)
        want = gemm + pos[0].index_select(0, flat_ids + 1).view(N, K, D)
        got = op(imgs, ids, weight, bias, pos)
        assert got.dtype == want.dtype and torch.equal(got, want), (D, shift)
        spatial, temporal = table(hw, pos_dtype), table(2, dtype)  # the pair in two dtypes when they differ
        rows = spatial[0].index_select(0, flat_ids % hw) + temporal[0].index_select(0, flat_ids // hw)
        want = gemm + rows.view(N, K, D)
        got = op(imgs, ids, weight, bias, spatial, temporal)
        assert got.dtype == want.dtype and torch.equal(got, want), (D, shift)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_pos_embed_and_no_bias(backend):
    imgs, weight, bias, _ = make_inputs(2, 3, 6, 4, 8, 2, torch.float32, "cpu")
    ids = random_ids(2, 6, 4, "cpu")
    with mae_kernels.use_backend(backend):
        got = mae_kernels.masked_patch_embed(imgs, ids, weight, None)
        got_b = mae_kernels.masked_patch_embed(imgs, ids, weight, bias)
    torch.testing.assert_close(got, reference.masked_patch_embed(imgs, ids, weight, None))
    torch.testing.assert_close(got_b, reference.masked_patch_embed(imgs, ids, weight, bias))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_masked_patch_embed(backend):
    if backend == "triton":
        pytest.importorskip("mae_kernels.triton.random_masking", reason="random_masking has no Triton kernel here")
    imgs, weight, bias, pos = make_inputs(2, 3, 8, 6, 16, 2, torch.float32, "cpu")
    noise = torch.rand(2, 12)
    with mae_kernels.use_backend(backend):
        tokens, mask, ids_restore, ids_keep = mae_kernels.random_masked_patch_embed(imgs, weight, bias, pos, 0.75,
                                                                                    noise=noise)
    want_keep, want_restore, want_mask = reference.random_mask_indices(2, 12, 0.75, noise)
    assert torch.equal(ids_keep, want_keep) and torch.equal(ids_restore, want_restore)
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(tokens, reference.masked_patch_embed(imgs, want_keep, weight, bias, pos))
    tokens, mask, ids_restore, ids_keep = mae_kernels.random_masked_patch_embed(imgs, weight, bias, pos, 0.5)
    assert tokens.shape == (2, 6, 16) and mask.sum().item() == 12


def sample_inputs(device):
    imgs, weight, bias, pos = make_inputs(2, 3, 6, 4, 24, 2, torch.float32, device)
    cl, w13, b13, pos13 = make_inputs(1, 13, 28, 14, 20, 14, torch.float32, device, "channels_last")
    req = [t.requires_grad_() for t in (imgs, weight, bias, pos, cl, w13, b13)]  # noqa: F841
    ids = random_ids(2, 6, 3, device)
    # fp32 imgs with a bf16 weight: the autocast call (the gather rounds the pixels to the GEMM dtype)
    w16, b16 = (t.detach().bfloat16().requires_grad_() for t in (weight, bias))
    return [(imgs, ids, weight, bias, pos), (imgs, ids, weight, bias, None), (imgs, ids[:, :0], weight, bias, pos),
            (cl, random_ids(1, 2, 1, device), w13, b13, pos13), (imgs, ids, w16, b16, pos)]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_opcheck(backend):
    if mpe_ops.OPS[backend] is None:
        pytest.fail("mae_kernels._C is not built: " + str(mae_kernels._ext.load_error))
    for args in sample_inputs("cpu"):
        torch.library.opcheck(mpe_ops.OPS[backend], args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    imgs, weight, bias, pos = make_inputs(2, 3, 8, 6, 16, 2, torch.float32, "cpu")
    weight.requires_grad_()
    ids = random_ids(2, 12, 5, "cpu")
    f = mae_kernels.masked_patch_embed
    with mae_kernels.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(imgs, ids, weight, bias, pos)
        want = f(imgs, ids, weight, bias, pos)
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got.sum(), weight)
    (g_want,) = torch.autograd.grad(want.sum(), weight)
    torch.testing.assert_close(g_got, g_want)


def test_errors():
    imgs, weight, bias, pos = make_inputs(2, 3, 8, 6, 16, 2, torch.float32, "cpu")
    ids = random_ids(2, 12, 3, "cpu")
    f = mae_kernels.masked_patch_embed
    with pytest.raises(ValueError, match="divisible by patch_size=2"):
        f(imgs[:, :, :7], ids, weight, bias, pos)
    with pytest.raises(ValueError, match=r"ids_keep values must be patch indices in \[0, 12\)"):
        f(imgs, ids + 12, weight, bias, pos)
    with pytest.raises(TypeError, match="ids_keep must have dtype torch.int64"):
        f(imgs, ids.int(), weight, bias, pos)
    with pytest.raises(ValueError, match=r"ids_keep must have shape \[2, \*\]"):
        f(imgs, ids[:1], weight, bias, pos)
    with pytest.raises(ValueError, match=r"imgs must have shape \[\*, 4\]"):
        f(imgs, ids, torch.randn(16, 4, 2, 2), bias, pos)
    with pytest.raises(ValueError, match="weight must be a Conv2d patch embedding weight"):
        f(imgs, ids, torch.randn(16, 3, 2, 3), bias, pos)
    with pytest.raises(ValueError, match=r"bias must have shape \[16\]"):
        f(imgs, ids, weight, bias[:5], pos)
    with pytest.raises(ValueError, match=r"pos_embed must have shape \[1, 13, 16\]"):
        f(imgs, ids, weight, bias, pos[:, 1:])
    with pytest.raises(TypeError, match="imgs must have dtype torch.float32, got torch.float16"):
        f(imgs.half(), ids, weight, bias, pos)
    with pytest.raises(TypeError, match="mask_ratio must be a Python float"):
        mae_kernels.random_masked_patch_embed(imgs, weight, bias, pos, "0.75")


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("p,C,H,W,D", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_gpu_masked_patch_embed(backend, p, C, H, W, D, dtype, layout):
    L = (H // p) * (W // p)
    for K in (0, 1, L):
        check(backend, "cuda", p, C, H, W, D, dtype, K, N=2, layout=layout)
    check(backend, "cuda", p, C, H, W, D, dtype, L // 4, N=1, layout=layout)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_autocast(backend, dtype):
    check(backend, "cuda", 16, 3, 64, 48, 64, torch.float32, K=5, autocast=dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_opcheck(backend):
    for args in sample_inputs("cuda"):
        torch.library.opcheck(mpe_ops.OPS[backend], args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_vit_b16_shape(backend):
    """ViT-B/16 at 224, batch 256, bf16, 49 of 196 patches kept, fp32 pos_embed (as in pre-training)."""
    check(backend, "cuda", 16, 3, 224, 224, 768, torch.bfloat16, K=49, N=256, pos_dtype=torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_vit_h14_shape(backend, dtype):
    """ViT-H/14 at 224 (p=14, D=1280, 64 of 256 patches kept): strides divisible by 16, so the compiled Triton
    kernel loads the pixels in aligned pairs (4 B in 16-bit, 8 B in fp32), half of the patch rows starting 4 bytes
    past an 8-byte boundary; the smaller p=14 shapes above have unaligned strides and take scalar loads."""
    check(backend, "cuda", 14, 3, 224, 224, 1280, dtype, K=64, N=4)
