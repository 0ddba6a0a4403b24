"""patchify, unpatchify, masked_patchify (+ backward): bit-exact against mae_kernels.reference on every backend,
dtype, layout and edge case; gradients; opcheck of every op; torch.compile; clear errors."""
import functools

import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops import masked_patchify as mp_ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
CPU_BACKENDS = ["cpu", "triton", "reference"]
GPU_BACKENDS = ["cuda", "triton"]
# (p, C, H, W): every patch size and channel count of the spec, non-square grids, 224x160 at p = 16.
SHAPES = [(1, 3, 5, 3), (2, 1, 6, 4), (14, 3, 28, 42), (16, 13, 32, 16), (16, 3, 224, 160), (2, 13, 4, 10)]


def make_images(N, C, H, W, dtype, device, layout):
    """Images in the given layout: contiguous, channels_last, or a non-contiguous view (strided slice)."""
    if layout == "channels_last":
        return torch.randn(N, C, H, W, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        big = torch.randn(N, C + 1, H + 2, 2 * W, device=device).to(dtype)
        x = big[:, 1:, 1:H + 1, ::2]
        assert not x.is_contiguous()
        return x
    return torch.randn(N, C, H, W, device=device).to(dtype)


def random_ids(N, L, K, device, generator=None):
    return torch.stack([torch.randperm(L, generator=generator)[:K] for _ in range(N)]).to(device)


def assert_equal(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    diff = (got != want) & ~(got.isnan() & want.isnan())
    if diff.any():
        idx = tuple(i.item() for i in diff.nonzero()[0])
        raise AssertionError(f"{what}: first mismatch at {idx}: {got[idx].item()} != {want[idx].item()}")


def run_with(backend, fn, *args):
    with mae_kernels.use_backend(backend):
        return fn(*args)


def check_patchify(backend, device, p, C, H, W, dtype, layout, N=2):
    imgs = make_images(N, C, H, W, dtype, device, layout)
    out = run_with(backend, mae_kernels.patchify, imgs, p)
    assert_equal(out, reference.patchify(imgs, p), "patchify")
    back = run_with(backend, mae_kernels.unpatchify, out, p, (H, W))
    assert_equal(back, imgs.contiguous(), "unpatchify(patchify(imgs))")


def check_masked_patchify(backend, device, p, C, H, W, dtype, layout, K, N=2):
    imgs = make_images(N, C, H, W, dtype, device, layout).requires_grad_()
    L = (H // p) * (W // p)
    ids = random_ids(N, L, min(K, L), device)
    out = run_with(backend, mae_kernels.masked_patchify, imgs, ids, p)
    want = reference.masked_patchify(imgs, ids, p)
    assert_equal(out, want, "masked_patchify")
    grad = torch.randn_like(want)
    (got_grad,) = torch.autograd.grad(out, imgs, grad)
    (want_grad,) = torch.autograd.grad(want, imgs, grad)
    assert_equal(got_grad.contiguous(), want_grad.contiguous(), "masked_patchify grad imgs")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("p,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_patchify_roundtrip(backend, p, C, H, W, dtype):
    check_patchify(backend, "cpu", p, C, H, W, dtype, "contiguous")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_patchify_layouts(backend, layout):
    check_patchify(backend, "cpu", 2, 3, 6, 10, torch.float32, layout)
    check_patchify(backend, "cpu", 16, 13, 32, 48, torch.bfloat16, layout, N=1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("p,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [0, 1, "L"])
def test_masked_patchify(backend, p, C, H, W, dtype, K):
    L = (H // p) * (W // p)
    N = 1 if H * W > 1000 else 2
    check_masked_patchify(backend, "cpu", p, C, H, W, dtype, "contiguous", L if K == "L" else K, N=N)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_patchify_layouts(backend, layout, dtype):
    check_masked_patchify(backend, "cpu", 2, 3, 6, 10, dtype, layout, K=7)
    check_masked_patchify(backend, "cpu", 14, 13, 28, 42, dtype, layout, K=3, N=1)


def _offset_by_one(x):
    """x's values in a tensor whose data starts one element past a 16-byte boundary (same strides)."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype)[1:]
    return flat.view(x.shape).copy_(x)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vector_copy_edges(backend, dtype):
    """The CUDA copy moves 16 bytes per access where the layout allows it (csrc/cuda/masked_patchify.cu; under the
    CUDA emulator, `cpu` runs it), and its masked scatter (the backward) then writes the whole image, zeros included,
    band by band: one channel, three channels, a clip (bands of several frames), and the generic copy for a sample
    or patch vectors whose data is not 16-byte aligned; all bit-exact."""
    check_patchify(backend, "cpu", 8, 1, 16, 24, dtype, "contiguous")
    check_masked_patchify(backend, "cpu", 8, 3, 16, 24, dtype, "contiguous", K=4)
    check_masked_patchify(backend, "cpu", 8, 1, 16, 24, dtype, "contiguous", K=3)
    clip = torch.randn(2, 3, 4, 16, 8).to(dtype).requires_grad_()
    ids = random_ids(2, 4, 3, "cpu")
    out = run_with(backend, mae_kernels.masked_patchify, clip, ids, (2, 8, 8))
    want = reference.masked_patchify(clip, ids, (2, 8, 8))
    assert_equal(out, want, "masked_patchify video")
    grad = torch.randn_like(want)
    assert_equal(torch.autograd.grad(out, clip, grad)[0], torch.autograd.grad(want, clip, grad)[0],
                 "masked_patchify video grad")
    imgs = _offset_by_one(torch.randn(2, 3, 16, 24).to(dtype))
    out = run_with(backend, mae_kernels.patchify, imgs, 8)
    assert_equal(out, reference.patchify(imgs, 8), "patchify of unaligned images")
    back = run_with(backend, mae_kernels.unpatchify, _offset_by_one(out), 8, (16, 24))
    assert_equal(back, imgs, "unpatchify of unaligned patch vectors")


def rounding_values(shape, dtype, seed=0):
    """Values whose rounding to fp16 / bf16 the last bits decide, in `dtype`: many scales, exact ties of both
    targets (to even and to odd), fp16's and bf16's subnormals, fp16 overflow, +-inf and NaN."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 2.0 ** torch.randint(-12, 12, shape, generator=gen)
    bits = x.flatten().view(torch.int32)
    n = bits.numel()
    bits[0::7] = (bits[0::7] & ~0xFFFF) | 0x8000  # bf16 ties
    bits[1::7] = (bits[1::7] & ~0x1FFF) | 0x1000  # fp16 ties
    special = torch.tensor([1e-39, -3e-8, 6e-6, 65519.0, 65520.0, 7e4, float("inf"), -float("inf"), float("nan")])
    x.view(-1)[2:n:(n // len(special))][:len(special)] = special[:len(x.view(-1)[2:n:(n // len(special))])]
    return x.to(dtype)


_CONVERSIONS = [(a, b) for a in (torch.float32, torch.float16, torch.bfloat16)
                for b in (torch.float32, torch.float16, torch.bfloat16) if a != b]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("src,dtype", _CONVERSIONS, ids=[f"{a}-{b}" for a, b in _CONVERSIONS])
def test_masked_patchify_dtype(backend, src, dtype):
    """masked_patchify(imgs, ids, p, dtype) == masked_patchify(imgs.to(dtype), ids, p) bit for bit, its gradient
    (in imgs' dtype) that of the cast-first call: 3 channels at p = 8 (the CUDA 16-byte converting gather for fp32
    images, under the emulator), a strided view (the generic one), data one element off its alignment, a clip."""
    imgs = rounding_values((2, 3, 16, 24), src)
    strided = rounding_values((2, 4, 8, 12), src, seed=1)[:, 1:, :, ::2]
    clip = rounding_values((2, 1, 4, 8, 8), src, seed=2)
    cases = [(imgs, 8, 6), (strided, 2, 4), (_offset_by_one(imgs), 8, 6), (clip, (2, 8, 8), 2)]
    for x, p, L in cases:
        ids = random_ids(2, L, L - 1, "cpu")
        leaf, cast_leaf = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        got = run_with(backend, mae_kernels.masked_patchify, leaf, ids, p, dtype)
        want = run_with(backend, mae_kernels.masked_patchify, cast_leaf.to(dtype), ids, p)
        assert_equal(got, want, f"masked_patchify to {dtype} (p={p})")
        grad = rounding_values(got.shape, dtype, seed=3).nan_to_num(posinf=1.0, neginf=-1.0)
        (g_got,), (g_want,) = torch.autograd.grad(got, leaf, grad), torch.autograd.grad(want, cast_leaf, grad)
        assert_equal(g_got, g_want, f"gradient of masked_patchify to {dtype} (p={p})")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_patchify_gradients(backend):
    """patchify and unpatchify are each other's backward; the Triton/compiled twins are differentiable twice.
    fast_mode (random projections of the Jacobian): a full check perturbs every element through the Triton
    interpreter (a minute); a wrong index or a missing row still changes the projection."""
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    ids = random_ids(2, 6, 4, "cpu")
    check = functools.partial(torch.autograd.gradcheck, fast_mode=True)
    check2 = functools.partial(torch.autograd.gradgradcheck, fast_mode=True)
    with mae_kernels.use_backend(backend):
        check(lambda t: mae_kernels.patchify(t, 2), (x,))
        check2(lambda t: mae_kernels.patchify(t, 2), (x,))
        y = torch.randn(2, 6, 12, dtype=torch.float64, requires_grad=True)
        check(lambda t: mae_kernels.unpatchify(t, 2, (6, 4)), (y,))
        check(lambda t: mae_kernels.masked_patchify(t, ids, 2), (x,))
        check2(lambda t: mae_kernels.masked_patchify(t, ids, 2), (x,))


def sample_inputs(device):
    """(op name, args) samples shared by opcheck: awkward sizes, channels_last, K = 0 (the ops take patch_size
    [u, ph, pw] and image_size [H, W]; videos: tests/test_video_patch.py)."""
    imgs = torch.randn(2, 3, 6, 4, device=device, requires_grad=True)
    cl = torch.randn(1, 13, 28, 14, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    ids = random_ids(2, 6, 3, device)
    patches = torch.randn(2, 3, 12, device=device, requires_grad=True)
    return [
        ("patchify", (imgs, [1, 2, 2])), ("patchify", (cl, [1, 14, 14])),
        ("unpatchify", (torch.randn(2, 6, 12, device=device, requires_grad=True), [1, 2, 2], [6, 4])),
        ("masked_patchify", (imgs, ids, [1, 2, 2])), ("masked_patchify", (cl, random_ids(1, 2, 1, device), [1, 14, 14])),
        ("masked_patchify", (imgs, ids[:, :0], [1, 2, 2])),
        ("masked_patchify", (imgs, ids, [1, 2, 2], torch.bfloat16)),  # a converting gather
        ("masked_patchify", (cl.detach().half().requires_grad_(), random_ids(1, 2, 1, device), [1, 14, 14],
                             torch.float32)),
        ("masked_patchify_backward", (patches, ids, [1, 2, 2], [6, 4])),
    ]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_opcheck(backend):
    if backend == "cpu" and mp_ops.OPS["cpu"]["patchify"] is None:
        pytest.fail("mae_kernels._C is not built: " + str(mae_kernels._ext.load_error))
    for name, args in sample_inputs("cpu"):
        torch.library.opcheck(mp_ops.OPS[backend][name], args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    imgs = torch.randn(2, 3, 8, 4, requires_grad=True)
    ids = random_ids(2, 8, 5, "cpu")

    def f(imgs, ids):
        x = mae_kernels.masked_patchify(imgs, ids, 2)
        return x, mae_kernels.unpatchify(mae_kernels.patchify(imgs, 2) * 2, 2, (8, 4))

    with mae_kernels.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(imgs, ids)
        want = f(imgs, ids)
    for g, w in zip(got, want):
        assert_equal(g, w, "compiled")
    (g_got,) = torch.autograd.grad(got[0].sum() + got[1].sum(), imgs)
    (g_want,) = torch.autograd.grad(want[0].sum() + want[1].sum(), imgs)
    assert_equal(g_got, g_want, "compiled grad")


def test_errors():
    imgs = torch.randn(2, 3, 8, 6)
    ids = torch.tensor([[0, 1], [2, 5]])
    with pytest.raises(ValueError, match="divisible by patch_size=4"):
        mae_kernels.patchify(imgs, 4)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        mae_kernels.patchify(imgs, 0)
    with pytest.raises(ValueError, match="imgs must have 4 dimensions"):
        mae_kernels.patchify(imgs[0], 2)
    with pytest.raises(TypeError, match="floating-point"):
        mae_kernels.patchify(imgs.long(), 2)
    with pytest.raises(ValueError, match=r"ids_keep values must be patch indices in \[0, 12\)"):
        mae_kernels.masked_patchify(imgs, ids * 3, 2)
    with pytest.raises(ValueError, match=r"ids_keep values must be patch indices"):
        mae_kernels.masked_patchify(imgs, -ids, 2)
    with pytest.raises(TypeError, match="ids_keep must have dtype torch.int64"):
        mae_kernels.masked_patchify(imgs, ids.int(), 2)
    with pytest.raises(ValueError, match=r"ids_keep must have shape \[2, \*\]"):
        mae_kernels.masked_patchify(imgs, ids[:1], 2)
    with pytest.raises(ValueError, match="ids_keep must have 2 dimensions"):
        mae_kernels.masked_patchify(imgs, ids[0], 2)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 12, p\*p\*C\]"):
        mae_kernels.unpatchify(torch.randn(2, 11, 12), 2, (8, 6))
    with pytest.raises(ValueError, match=r"x must have shape"):
        mae_kernels.unpatchify(torch.randn(2, 12, 10), 2, (8, 6))
    with pytest.raises(ValueError, match="divisible"):
        mae_kernels.unpatchify(torch.randn(2, 12, 12), 2, (7, 6))
    with pytest.raises(TypeError, match="image_size must be an int or a pair"):
        mae_kernels.unpatchify(torch.randn(2, 12, 12), 2, (8, 6, 1))


def test_unpatchify_square_int_size():
    x = torch.randn(1, 16, 12)
    assert_equal(mae_kernels.unpatchify(x, 2, 8), reference.unpatchify(x, 2, 8), "unpatchify int size")


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("p,C,H,W", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_gpu_patchify(backend, p, C, H, W, dtype, layout):
    check_patchify(backend, "cuda", p, C, H, W, dtype, layout)
    L = (H // p) * (W // p)
    for K in (0, 1, L):
        check_masked_patchify(backend, "cuda", p, C, H, W, dtype, layout, K)
        check_masked_patchify(backend, "cuda", p, C, H, W, dtype, layout, K, N=1)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_opcheck(backend):
    for name, args in sample_inputs("cuda"):
        torch.library.opcheck(mp_ops.OPS[backend][name], args)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_vit_b16_shape(backend):
    """ViT-B/16 at 224, batch 256, bf16, 75% masking: the shape pre-training runs."""
    check_masked_patchify(backend, "cuda", 16, 3, 224, 224, torch.bfloat16, "contiguous", K=49, N=256)
    check_masked_patchify(backend, "cuda", 16, 3, 224, 224, torch.bfloat16, "channels_last", K=49, N=256)
