"""The patch ops on rectangular patches and on videos cut into tubelets (MAE_SPEC_VIDEO.md): patchify, unpatchify,
masked_patchify (+ backward) bit-exact against mae_kernels.reference and the spec's index formula on every
backend, dtype and layout (HF's permuted [N, T, C, H, W] view, channels_last_3d, strided views); the tubelet
embedding (masked_patch_embed / random_masked_patch_embed with Conv3d weights and full, cls-headed or separable
positional tables) against eager Conv3d-then-gather and float64, with every gradient; opcheck; torch.compile;
validation errors."""
import numpy as np
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.models.pos_embed import sinusoid_table
from mae_kernels.ops import masked_patch_embed as mpe_ops
from mae_kernels.ops import masked_patchify as mp_ops

from test_masked_patch_embed import max_err, triton_slack
from test_patchify import assert_equal, random_ids, run_with

CPU_BACKENDS = ["cpu", "triton", "reference"]
GPU_BACKENDS = ["cuda", "triton"]
# Gathers and scatters copy raw words: one dtype per element width (fp16 shares bf16's: the embedding tests run it).
DTYPES = [torch.float32, torch.bfloat16, torch.float64]
# ((u, ph, pw), C, T, H, W): the spec's 2x16x16 tubelet (4 frames, a 2x3 grid), u = 1 and u = T, primes,
# rectangular patches, C = 1 and 13.
VIDEO_SHAPES = [((2, 16, 16), 3, 2, 32, 16), ((1, 2, 3), 1, 3, 4, 9), ((3, 2, 5), 2, 6, 4, 15),
                ((4, 3, 2), 13, 4, 6, 2), ((2, 1, 1), 3, 2, 1, 1)]
# ((ph, pw), C, H, W): rectangular image patches.
RECT_SHAPES = [((2, 3), 3, 6, 9), ((16, 8), 3, 32, 24), ((1, 4), 13, 3, 8), ((5, 1), 1, 10, 3)]


def grid(patch_size, sizes):
    u, ph, pw = (1, *patch_size) if len(patch_size) == 2 else patch_size
    T, H, W = (1, *sizes) if len(sizes) == 2 else sizes
    return T // u, H // ph, W // pw


def make_samples(N, C, sizes, dtype, layout="contiguous"):
    """Images [N, C, H, W] or videos [N, C, T, H, W] in a layout: contiguous, hf (videos: the [N, T, C, H, W]
    tensor HF takes, permuted), channels_last (channels_last_3d for videos), or strided (a sliced view)."""
    video = len(sizes) == 3
    if layout == "hf":
        return torch.randn(N, sizes[0], C, *sizes[1:]).to(dtype).permute(0, 2, 1, 3, 4)
    if layout == "channels_last":
        fmt = torch.channels_last_3d if video else torch.channels_last
        return torch.randn(N, C, *sizes).to(dtype).contiguous(memory_format=fmt)
    if layout == "strided":
        big = torch.randn(N, C + 1, *sizes[:-1], 2 * sizes[-1]).to(dtype)
        return big[:, 1:, ..., ::2]
    return torch.randn(N, C, *sizes).to(dtype)


def spec_patchify(x, patch_size):
    """The spec's formula, element by element: entry ((a*ph + i)*pw + j)*C + c of token (ti*h + hi)*w + wi is
    x[n, c, ti*u + a, hi*ph + i, wi*pw + j] (images: T = u = 1)."""
    x = x if x.dim() == 5 else x.unsqueeze(2)
    u, ph, pw = (1, *patch_size) if len(patch_size) == 2 else patch_size
    N, C, T, H, W = x.shape
    t, h, w = T // u, H // ph, W // pw
    out = x.new_empty(N, t * h * w, u * ph * pw * C)
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                for a in range(u):
                    for i in range(ph):
                        for j in range(pw):
                            col = ((a * ph + i) * pw + j) * C
                            out[:, (ti * h + hi) * w + wi, col:col + C] = x[:, :, ti * u + a, hi * ph + i, wi * pw + j]
    return out


def check_gathers(backend, patch_size, C, sizes, dtype, layout, N=2, K=None):
    x = make_samples(N, C, sizes, dtype, layout)
    out = run_with(backend, mae_kernels.patchify, x, patch_size)
    assert_equal(out, reference.patchify(x, patch_size), "patchify")
    back = run_with(backend, mae_kernels.unpatchify, out, patch_size, sizes)
    assert_equal(back, x.contiguous(), "unpatchify(patchify(x))")
    L = out.shape[1]
    ids = random_ids(N, L, L if K is None else min(K, L), "cpu")
    leaf = x.detach().requires_grad_()
    got = run_with(backend, mae_kernels.masked_patchify, leaf, ids, patch_size)
    want = reference.masked_patchify(x, ids, patch_size)
    assert_equal(got, want, "masked_patchify")
    grad = torch.randn(want.shape).to(dtype)
    (g,) = torch.autograd.grad(got, leaf, grad)
    want_g = torch.zeros(N, L, want.shape[-1], dtype=dtype).scatter(1, ids[..., None].expand_as(grad), grad)
    assert_equal(g.contiguous(), reference.unpatchify(want_g, patch_size, sizes), "masked_patchify grad")


def test_reference_is_the_spec_formula():
    """The reference (which the kernels are held to) against the spec's index formula, videos and rectangles."""
    for patch_size, C, *sizes in VIDEO_SHAPES[1:] + RECT_SHAPES[:1]:
        x = torch.randn(2, C, *sizes, dtype=torch.float64)
        assert_equal(reference.patchify(x, patch_size), spec_patchify(x, patch_size), f"patchify {patch_size}")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", VIDEO_SHAPES + RECT_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_patch_ops(backend, shape, dtype):
    patch_size, C, *sizes = shape
    check_gathers(backend, patch_size, C, sizes, dtype, "contiguous")
    check_gathers(backend, patch_size, C, sizes, dtype, "contiguous", N=1, K=1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["hf", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_ops_layouts(backend, layout, dtype):
    check_gathers(backend, (2, 16, 16), 3, (4, 32, 16), dtype, layout, K=3)
    check_gathers(backend, (3, 2, 5), 2, (6, 4, 15), dtype, layout, K=4)
    if layout != "hf":
        check_gathers(backend, (2, 3), 3, (6, 9), dtype, layout, K=5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_spec_video_shape(backend):
    """The spec's clip: 16 frames of 224x224 in 2x16x16 tubelets, L = 8*14*14 = 1568 tokens, 156 kept (r 0.9,
    mae_st's int(L * (1 - r))), HF's permuted layout."""
    x = torch.randn(1, 16, 3, 224, 224).permute(0, 2, 1, 3, 4)
    ids = random_ids(1, 1568, 156, "cpu")
    got = run_with(backend, mae_kernels.masked_patchify, x, ids, (2, 16, 16))
    assert got.shape == (1, 156, 1536)
    assert_equal(got, reference.masked_patchify(x, ids, (2, 16, 16)), "masked_patchify 1568")
    # the last token's last entry: frame 15, row 223, column 223, channel 2
    last = (ids[0] == 1567).nonzero()
    if last.numel():
        assert got[0, last[0, 0], -1] == x[0, 2, 15, 223, 223]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients(backend):
    """gradcheck / gradgradcheck of the video and rectangular patch ops (float64)."""
    x = torch.randn(1, 1, 4, 2, 3, dtype=torch.float64, requires_grad=True)  # 4 tubelets of 2x1x3
    ids = random_ids(1, 4, 3, "cpu")
    img = torch.randn(1, 1, 2, 6, dtype=torch.float64, requires_grad=True)  # 2 patches of 1x3
    with mae_kernels.use_backend(backend):
        torch.autograd.gradcheck(lambda t: mae_kernels.patchify(t, (2, 1, 3)), (x,))
        torch.autograd.gradgradcheck(lambda t: mae_kernels.masked_patchify(t, ids, (2, 1, 3)), (x,))
        y = torch.randn(1, 4, 6, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda t: mae_kernels.unpatchify(t, (2, 1, 3), (4, 2, 3)), (y,))
        torch.autograd.gradcheck(lambda t: mae_kernels.masked_patchify(t, ids[:, :1] % 2, (1, 3)), (img,))


def patch_op_samples(device):
    """(op name, args) for opcheck: videos (patch_size [u, ph, pw], image_size [T, H, W]), HF and
    channels_last_3d layouts, rectangular image patches, K = 0."""
    v = torch.randn(2, 3, 4, 4, 6, device=device, requires_grad=True)
    hf = torch.randn(1, 6, 2, 4, 6, device=device).permute(0, 2, 1, 3, 4).requires_grad_()
    cl3 = torch.randn(1, 3, 4, 4, 6, device=device).contiguous(memory_format=torch.channels_last_3d)
    img = torch.randn(2, 3, 6, 9, device=device, requires_grad=True)
    ids = random_ids(2, 8, 3, device)
    return [
        ("patchify", (hf, [3, 2, 2])),
        ("unpatchify", (torch.randn(2, 8, 36, device=device, requires_grad=True), [2, 2, 3], [4, 4, 6])),
        ("masked_patchify", (v, ids, [2, 2, 3])), ("masked_patchify", (cl3, ids[:1, :0], [2, 2, 3])),
        ("masked_patchify", (img, ids, [1, 2, 3])),
        ("masked_patchify_backward", (torch.randn(2, 3, 36, device=device, requires_grad=True), ids, [2, 2, 3],
                                      [4, 4, 6])),
    ]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_patch_ops_opcheck(backend):
    if mp_ops.OPS[backend]["patchify"] is None:
        pytest.fail("mae_kernels._C is not built: " + str(mae_kernels._ext.load_error))
    for name, args in patch_op_samples("cpu"):
        torch.library.opcheck(mp_ops.OPS[backend][name], args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_patch_ops_compile(backend):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 4, 4, 6, requires_grad=True)
    ids = random_ids(2, 8, 5, "cpu")

    def f(x, ids):
        kept = mae_kernels.masked_patchify(x, ids, (2, 2, 3))
        return kept, mae_kernels.unpatchify(mae_kernels.patchify(x, (2, 2, 3)) * 2, (2, 2, 3), (4, 4, 6))

    with mae_kernels.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, ids)
        want = f(x, ids)
    for g, w in zip(got, want):
        assert_equal(g, w, "compiled")
    (g_got,) = torch.autograd.grad(got[0].sum() + got[1].sum(), x)
    (g_want,) = torch.autograd.grad(want[0].sum() + want[1].sum(), x)
    assert_equal(g_got, g_want, "compiled grad")


PATCH_ERRORS = [
    (lambda v, i: mae_kernels.patchify(v[:, :, :3], (2, 2, 3)), ValueError,
     r"imgs: video size \(T x H x W\) 3x4x6 must be divisible by patch_size=2x2x3.*remainders 1 and 0 and 0"),
    (lambda v, i: mae_kernels.patchify(v, (2, 3)), TypeError,
     r"patch_size must be a triple \(u, ph, pw\) .* for videos \[N, C, T, H, W\], got \(2, 3\)"),
    (lambda v, i: mae_kernels.patchify(v[:, :, 0], (2, 2, 3)), TypeError,
     r"patch_size must be an int or a pair \(ph, pw\) for images"),
    (lambda v, i: mae_kernels.patchify(v, (2, 0, 3)), ValueError, r"patch_size entries must be a positive int"),
    (lambda v, i: mae_kernels.patchify(v[:, :, 0], (2, 4)), ValueError,
     r"imgs: image size 4x6 must be divisible by patch_size=2x4"),
    (lambda v, i: mae_kernels.masked_patchify(v, i * 3, (2, 2, 3)), ValueError,
     r"ids_keep values must be patch indices in \[0, 8\)"),
    (lambda v, i: mae_kernels.unpatchify(torch.randn(2, 8, 36), (2, 2, 3), (4, 6)), TypeError,
     r"image_size must be a triple of ints \(T, H, W\) for videos"),
    (lambda v, i: mae_kernels.unpatchify(torch.randn(2, 8, 36), (2, 2, 3), (5, 4, 6)), ValueError,
     r"image_size must be positive and divisible by patch_size=2x2x3, got 5x4x6"),
    (lambda v, i: mae_kernels.unpatchify(torch.randn(2, 7, 36), (2, 2, 3), (4, 4, 6)), ValueError,
     r"x must have shape \[N, 8, u\*ph\*pw\*C\] for 4x4x6 videos and patch_size=2x2x3"),
    (lambda v, i: mae_kernels.unpatchify(torch.randn(2, 4, 7), (2, 3), (4, 6)), ValueError,
     r"x must have shape \[N, 4, ph\*pw\*C\] for 4x6 images and patch_size=2x3"),
]


@pytest.mark.parametrize("index", range(len(PATCH_ERRORS)))
def test_patch_ops_errors(index):
    fn, exc, match = PATCH_ERRORS[index]
    with pytest.raises(exc, match=match):
        fn(torch.randn(2, 3, 4, 4, 6), random_ids(2, 8, 3, "cpu"))


# ------------------------------------------------------------------------------------------ tubelet embedding
def embed_inputs(N, C, sizes, patch_size, D, dtype, pos, layout="contiguous", pos_dtype=None, seed=0):
    """(x, weight, bias, pos_embed) with pos in 'none', 'table' ([1, L, D]), 'cls' ([1, 1 + L, D]) or
    'separable' ((spatial [1, hw, D], temporal [1, t, D]))."""
    torch.manual_seed(seed)
    x = make_samples(N, C, sizes, dtype, layout)
    t, h, w = grid(patch_size, sizes)
    weight = (torch.randn(D, C, *patch_size) / (C * np.prod(patch_size)) ** 0.5).to(dtype)
    bias = torch.randn(D).to(dtype)
    pd = pos_dtype or dtype
    tables = {"none": None, "table": torch.randn(1, t * h * w, D).to(pd), "cls": torch.randn(1, 1 + t * h * w, D).to(pd),
              "separable": (torch.randn(1, h * w, D).to(pd), torch.randn(1, t, D).to(pd))}
    return x, weight, bias, tables[pos]


def _leaves(x, weight, bias, pos):
    flat = [x, weight, bias] + (list(pos) if isinstance(pos, tuple) else [pos] if pos is not None else [])
    return [t.detach().clone().requires_grad_() for t in flat]


def _embed(fn, leaves, ids, separable, patch_size=None):
    x, w, b, *pos = leaves
    pos = tuple(pos) if separable else (pos[0] if pos else None)
    kw = {} if patch_size is None else dict(patch_size=patch_size)
    return fn(x, ids, w, b, pos, **kw)


def check_embed(backend, N, C, sizes, patch_size, D, dtype, pos, K, layout="contiguous", pos_dtype=None,
                slack=2.0, rect_arg=None):
    """Output and the gradients of x, weight, bias and the positional tables against float64; error at most
    `slack` x eager's (Conv3d / Conv2d over all patches, then the gather) in the same dtype."""
    x, weight, bias, table = embed_inputs(N, C, sizes, patch_size, D, dtype, pos, layout, pos_dtype)
    t, h, w = grid(patch_size, sizes)
    ids = random_ids(N, t * h * w, min(K, t * h * w), "cpu")
    separable = pos == "separable"
    leaves = _leaves(x, weight, bias, table)
    with mae_kernels.use_backend(backend):
        got = _embed(mae_kernels.masked_patch_embed, leaves, ids, separable, rect_arg)
    grad_out = torch.randn(got.shape)
    results = []
    for fn, ls, g in ((None, leaves, grad_out), (reference.masked_patch_embed, _leaves(x, weight, bias, table),
                                                  grad_out),
                      (reference.masked_patch_embed, [t_.double().detach().requires_grad_() for t_ in leaves],
                       grad_out.double())):
        out = got if fn is None else _embed(fn, ls, ids, separable)
        grads = torch.autograd.grad(out, ls, g.to(out.dtype), allow_unused=True)
        results.append((out,) + grads)
    names = ["output", "grad x", "grad weight", "grad bias"] + [f"grad pos {i}" for i in range(len(leaves) - 3)]
    floor = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    for name, g, e, x64 in zip(names, *results):
        assert g.shape == x64.shape and g.dtype == e.dtype, f"{name}: {g.shape} {g.dtype} vs {x64.shape} {e.dtype}"
        scale = max(x64.abs().max().item() if x64.numel() else 0.0, 1.0)
        err, eager_err = max_err(g, x64), max_err(e, x64)
        # The CPU interpreter truncates fp32 -> bf16 casts: up to one bf16 ulp (2^-7 relative) on the output.
        truncation = 2**-7 * scale if backend == "triton" and name == "output" and g.dtype == torch.bfloat16 else 0
        assert err <= slack * eager_err + floor * scale * 0.1 + truncation, (
            f"{name}: max error {err:.3g} vs float64 > {slack} x eager's {eager_err:.3g}")


EMBED_SHAPES = [  # (N, C, sizes, patch_size, D)
    (2, 3, (4, 32, 16), (2, 16, 16), 24), (2, 1, (3, 4, 9), (1, 2, 3), 8), (1, 2, (6, 4, 15), (3, 2, 5), 40),
    (2, 13, (4, 6, 2), (4, 3, 2), 20)]


POS_FORMS = ["none", "table", "cls", "separable"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("index", range(len(EMBED_SHAPES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tubelet_embed(backend, index, dtype):
    """Every shape and dtype (each shape with one positional form; every form: test_tubelet_embed_pos)."""
    N, C, sizes, patch_size, D = EMBED_SHAPES[index]
    L = int(np.prod(grid(patch_size, sizes)))
    for K in (L, 1):
        check_embed(backend, N, C, sizes, patch_size, D, dtype, POS_FORMS[index], K,
                    slack=triton_slack(backend, dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("pos", POS_FORMS)
def test_tubelet_embed_pos(backend, pos):
    check_embed(backend, 2, 2, (6, 4, 6), (3, 2, 3), 12, torch.float32, pos, 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["hf", "channels_last", "strided"])
def test_tubelet_embed_layouts(backend, layout):
    check_embed(backend, 2, 3, (4, 32, 16), (2, 16, 16), 24, torch.float32, "separable", 3, layout)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tubelet_embed_fp32_pos_with_bf16(backend):
    """bf16 clip and weights with fp32 positional tables (autocast training): the output promotes to fp32."""
    for pos in ("table", "separable"):
        check_embed(backend, 2, 3, (4, 8, 6), (2, 4, 3), 16, torch.bfloat16, pos, 5, pos_dtype=torch.float32,
                    slack=triton_slack(backend, torch.bfloat16))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32])
def test_rectangular_image_embed(backend, dtype):
    """Conv2d weights [D, C, ph, pw] with patch_size=(ph, pw) (rectangular kernels are confirmed explicitly)."""
    for sizes, patch_size in (((6, 9), (2, 3)), ((32, 24), (16, 8))):
        check_embed(backend, 2, 3, sizes, patch_size, 24, dtype, "cls", 3, rect_arg=patch_size,
                    slack=triton_slack(backend, dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tubelet_embed_is_conv3d_then_gather(backend):
    """The spec's statement in full: tokens = Conv3d(x) flattened to [N, L, D] (+ pos) gathered at ids_keep, with
    the Conv3d weight in its own [D, C, u, ph, pw] layout (the (c, a, i, j) flatten trap); and mae_st's separable
    sum (fp32: only roundings differ)."""
    x = torch.randn(2, 3, 4, 8, 6)
    conv = torch.nn.Conv3d(3, 10, kernel_size=(2, 4, 3), stride=(2, 4, 3))
    spatial, temporal = torch.randn(1, 4, 10), torch.randn(1, 2, 10)
    ids = random_ids(2, 8, 5, "cpu")
    with torch.no_grad():
        tokens = conv(x).flatten(2).transpose(1, 2)
        pos = torch.cat([spatial + temporal[:, ti:ti + 1] for ti in range(2)], dim=1)  # s[l % 4] + t[l // 4]
        want = torch.gather(tokens + pos, 1, ids[..., None].expand(-1, -1, 10))
        with mae_kernels.use_backend(backend):
            got = mae_kernels.masked_patch_embed(x, ids, conv.weight, conv.bias, (spatial, temporal))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_random_masked_patch_embed_video(backend):
    """mae_st's front end: spacetime random masking over L = t*h*w, then the kept tubelets' embedding."""
    x, weight, bias, (spatial, temporal) = embed_inputs(2, 3, (4, 8, 6), (2, 4, 3), 16, torch.float32, "separable")
    noise = torch.rand(2, 8)
    with mae_kernels.use_backend(backend):
        tokens, mask, ids_restore, ids_keep = mae_kernels.random_masked_patch_embed(
            x, weight, bias, (spatial, temporal), 0.75, noise=noise)
    want_keep, want_restore, want_mask = reference.random_mask_indices(2, 8, 0.75, noise)
    assert torch.equal(ids_keep, want_keep) and torch.equal(ids_restore, want_restore)
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(tokens, reference.masked_patch_embed(x, want_keep, weight, bias, (spatial, temporal)))


def test_random_masked_patch_embed_spec_counts():
    """At the spec's shape: 156 of 1568 tokens kept at r = 0.9 (int(L * (1 - r)), mae_st), 78 at 0.95."""
    x = torch.randn(1, 3, 16, 224, 224)
    weight, bias = torch.randn(8, 3, 2, 16, 16) * 0.01, torch.zeros(8)
    with mae_kernels.use_backend("cpu"):
        for ratio, kept in ((0.9, 156), (0.95, 78)):
            tokens, mask, _, ids_keep = mae_kernels.random_masked_patch_embed(
                x, weight, bias, sinusoid_table(1568, 8), ratio)
            assert tokens.shape == (1, kept, 8) and mask.shape == (1, 1568) and int(mask.sum()) == 1568 - kept
            torch.testing.assert_close(tokens, reference.masked_patch_embed(x, ids_keep, weight, bias,
                                                                            sinusoid_table(1568, 8)))


def test_sinusoid_table_is_videomae():
    """VideoMAE's get_sinusoid_encoding_table, numpy float64 as in modeling_pretrain.py, stored float32."""
    def videomae(n_position, d_hid):
        def angles(position):
            return [position / np.power(10000, 2 * (hid_j // 2) / d_hid) for hid_j in range(d_hid)]
        table = np.array([angles(pos_i) for pos_i in range(n_position)])
        table[:, 0::2] = np.sin(table[:, 0::2])
        table[:, 1::2] = np.cos(table[:, 1::2])
        return torch.FloatTensor(table).unsqueeze(0)

    for n, d in ((300, 64), (7, 6), (3, 5)):
        got, want = sinusoid_table(n, d), videomae(n, d)
        assert got.shape == want.shape == (1, n, d) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)  # float64 pow differs by ulps; stored rounded


def embed_samples(device):
    x, w, b, table = embed_inputs(2, 3, (4, 4, 6), (2, 2, 3), 12, torch.float32, "table")
    _, _, _, cls = embed_inputs(2, 3, (4, 4, 6), (2, 2, 3), 12, torch.float32, "cls")
    _, _, _, (s, t) = embed_inputs(2, 3, (4, 4, 6), (2, 2, 3), 12, torch.float32, "separable")
    hf = torch.randn(1, 4, 3, 4, 6).permute(0, 2, 1, 3, 4)
    img, w2 = torch.randn(2, 3, 6, 9), torch.randn(12, 3, 2, 3)
    for tensor in (x, w, b, table, cls, s, t, hf, w2):
        tensor.requires_grad_()
    ids = random_ids(2, 8, 3, "cpu")
    moved = lambda *a: tuple(v.to(device) if isinstance(v, torch.Tensor) else v for v in a)  # noqa: E731
    return [moved(x, ids, w, b, table, None), moved(hf, ids[:1], w, b, cls, None), moved(x, ids, w, b, s, t),
            moved(img, ids[:, :0], w2, b, torch.randn(1, 10, 12, requires_grad=True), None)]


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_tubelet_embed_opcheck(backend):
    if mpe_ops.OPS[backend] is None:
        pytest.fail("mae_kernels._C is not built: " + str(mae_kernels._ext.load_error))
    for args in embed_samples("cpu"):
        torch.library.opcheck(mpe_ops.OPS[backend], args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_tubelet_embed_compile(backend):
    torch._dynamo.reset()
    x, weight, bias, (s, t) = embed_inputs(2, 3, (4, 4, 6), (2, 2, 3), 12, torch.float32, "separable")
    for p in (weight, s, t):
        p.requires_grad_()
    ids = random_ids(2, 8, 5, "cpu")
    f = lambda x, ids, w, b, s, t: mae_kernels.masked_patch_embed(x, ids, w, b, (s, t))  # noqa: E731
    with mae_kernels.use_backend(backend):
        got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, ids, weight, bias, s, t)
        want = f(x, ids, weight, bias, s, t)
    torch.testing.assert_close(got, want)
    for g_got, g_want in zip(torch.autograd.grad(got.sum(), (weight, s, t)),
                             torch.autograd.grad(want.sum(), (weight, s, t))):
        torch.testing.assert_close(g_got, g_want)


EMBED_ERRORS = [  # (change of the good args, exception, message)
    (dict(x=lambda a: a["x"][:, :, :3]), ValueError,
     r"imgs: video size \(T x H x W\) 3x4x6 must be divisible by patch_size=2x2x3"),
    (dict(w=lambda a: torch.randn(12, 3, 2, 2)), ValueError,
     r"weight must be a Conv3d tubelet embedding weight \[D, C, u, ph, pw\] for videos"),
    (dict(w=lambda a: torch.randn(12, 3, 0, 2, 3)), ValueError,
     r"weight must be a Conv3d tubelet embedding weight \[D, C, u, ph, pw\] with D, C, u, ph, pw >= 1"),
    (dict(w=lambda a: torch.randn(12, 4, 2, 2, 3)), ValueError, r"imgs must have shape \[\*, 4\]"),
    (dict(patch_size=lambda a: (2, 2, 2)), ValueError,
     r"weight must be a Conv3d tubelet embedding weight \[D, C, u, ph, pw\] with \(u, ph, pw\) = patch_size=2x2x2"),
    (dict(x=lambda a: a["x"][:, :, 0]), ValueError, r"imgs must have 5 dimensions, got 4"),
    (dict(pos=lambda a: torch.randn(1, 7, 12)), ValueError,
     r"pos_embed must have shape \[1, 8, 12\] \(a table of the L tokens\) or \[1, 9, 12\]"),
    (dict(pos=lambda a: (torch.randn(1, 4, 12), torch.randn(1, 3, 12))), ValueError,
     r"pos_embed temporal must have shape \[1, 2, 12\], got \(1, 3, 12\)"),
    (dict(pos=lambda a: (torch.randn(1, 5, 12), torch.randn(1, 2, 12))), ValueError,
     r"pos_embed spatial must have shape \[1, 4, 12\], got \(1, 5, 12\)"),
    (dict(pos=lambda a: (torch.randn(1, 4, 12),)), TypeError, r"pos_embed must be a tensor .* or the separable pair"),
    (dict(pos=lambda a: (torch.randn(1, 4, 12), torch.randn(1, 2, 12).long())), TypeError,
     r"pos_embed temporal must have dtype"),
    (dict(ids=lambda a: a["ids"] + 8), ValueError, r"ids_keep values must be patch indices in \[0, 8\)"),
]


@pytest.mark.parametrize("index", range(len(EMBED_ERRORS)))
def test_tubelet_embed_errors(index):
    change, exc, match = EMBED_ERRORS[index]
    x, w, b, table = embed_inputs(2, 3, (4, 4, 6), (2, 2, 3), 12, torch.float32, "table")
    a = dict(x=x, ids=random_ids(2, 8, 3, "cpu"), w=w, b=b, pos=table, patch_size=None)
    a.update({k: f(a) for k, f in change.items()})
    with pytest.raises(exc, match=match):
        mae_kernels.masked_patch_embed(a["x"], a["ids"], a["w"], a["b"], a["pos"], patch_size=a["patch_size"])
    if "ids" not in change:
        with pytest.raises(exc, match=match):
            mae_kernels.random_masked_patch_embed(a["x"], a["w"], a["b"], a["pos"], 0.5, patch_size=a["patch_size"])


def test_image_embed_errors():
    """Images keep their rules: a [1, 1 + L, D] table only (the separable pair is for videos), rectangular
    Conv2d kernels need patch_size=(ph, pw), which must match the weight."""
    img, w, b = torch.randn(2, 3, 6, 9), torch.randn(12, 3, 2, 3), torch.randn(12)
    ids = random_ids(2, 9, 3, "cpu")
    with pytest.raises(ValueError, match=r"Conv2d patch embedding weight \[D, C, p, p\].*pass patch_size=\(ph, pw\)"):
        mae_kernels.masked_patch_embed(img, ids, w, b)
    with pytest.raises(ValueError, match=r"\[D, C, ph, pw\] with \(ph, pw\) = patch_size=3x2"):
        mae_kernels.masked_patch_embed(img, ids, w, b, patch_size=(3, 2))
    with pytest.raises(TypeError, match=r"the separable \(spatial, temporal\) pair is for videos"):
        mae_kernels.masked_patch_embed(img, ids, w, b, (torch.randn(1, 9, 12), torch.randn(1, 1, 12)),
                                       patch_size=(2, 3))
    with pytest.raises(ValueError, match=r"pos_embed must have shape \[1, 10, 12\], got \(1, 9, 12\)"):
        mae_kernels.masked_patch_embed(img, ids, w, b, torch.randn(1, 9, 12), patch_size=(2, 3))


# ----------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "hf", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_video(backend, layout, dtype):
    """The spec's clip at batch 32 (L = 1568, 156 kept), every op, on the GPU backends."""
    x = make_samples(32, 3, (16, 224, 224), dtype, layout).cuda()
    ids = torch.stack([torch.randperm(1568)[:156] for _ in range(32)]).cuda()
    with mae_kernels.use_backend(backend):
        assert_equal(mae_kernels.patchify(x, (2, 16, 16)), reference.patchify(x, (2, 16, 16)), "patchify")
        assert_equal(mae_kernels.masked_patchify(x, ids, (2, 16, 16)), reference.masked_patchify(x, ids, (2, 16, 16)),
                     "masked_patchify")
    for pos in ("table", "separable"):
        weight = (torch.randn(768, 3, 2, 16, 16) * 0.01).to(dtype).cuda()
        bias = torch.randn(768).to(dtype).cuda()
        table = (torch.randn(1, 1568, 768).cuda() if pos == "table"
                 else (torch.randn(1, 196, 768).cuda(), torch.randn(1, 8, 768).cuda()))
        with mae_kernels.use_backend(backend):
            got = mae_kernels.masked_patch_embed(x, ids, weight, bias, table)
        want = reference.masked_patch_embed(x.double(), ids, weight.double(), bias.double(),
                                            tuple(t.double() for t in table) if pos == "separable" else table.double())
        assert max_err(got, want) <= (5e-2 if dtype == torch.bfloat16 else 1e-3)
