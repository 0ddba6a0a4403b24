"""unshuffle_with_mask_tokens (MAE decoder input) on every backend against the eager reference and float64.

Forward and grad_x are gathers: bit-exact. The exception is Triton through the CPU interpreter, whose
fp32 -> bf16 casts truncate instead of rounding: there bf16 results are compared with the reference truncated
the same way. grad_mask_token and grad_pos_embed are reductions: their error against float64 must be at most
twice eager PyTorch's (plus a floor of a few ulps of the result's scale, for when eager is exact by luck).
"""
import os

import pytest
import torch

import mae_kernels
from mae_kernels import reference, use_backend
from mae_kernels.backends import why_not
from mae_kernels.ops import unshuffle_with_mask_tokens as op_module

CPU_BACKENDS = [b for b in ("cpu", "triton", "reference") if why_not(b, "cpu") is None]
GPU_BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, L, K, D): K in {0, 1, L}, D in {1, 3, 512, 1536}, a long sequence, awkward sizes.
SHAPES = [(2, 7, 0, 3), (2, 7, 1, 3), (2, 7, 7, 3), (3, 13, 5, 1), (2, 9, 4, 512), (1, 6, 2, 1536),
          (1, 1568, 392, 3)]
POS_MODES = [None, "fixed", "grad"]


def make_inputs(N, L, K, D, dtype, has_cls=True, pos_mode=None, param_dtype=torch.float32, device="cpu",
                noncontiguous=False):
    c = int(has_cls)
    ids_restore = torch.argsort(torch.rand(N, L, device=device), dim=1)
    if noncontiguous:  # [N, c + K, D] viewed from a [N, D, 2 (c + K)] buffer: strides (.., 1, 2 (c + K))
        x = torch.randn(N, D, 2 * (c + K), device=device, dtype=dtype)[:, :, ::2].transpose(1, 2)
        assert not x.is_contiguous() or x.numel() <= 1
    else:
        x = torch.randn(N, c + K, D, device=device, dtype=dtype)
    x.requires_grad_(True)
    mask_token = torch.randn(1, 1, D, device=device, dtype=param_dtype, requires_grad=True)
    pos_embed = None
    if pos_mode is not None:
        pos_embed = torch.randn(1, c + L, D, device=device, dtype=param_dtype, requires_grad=pos_mode == "grad")
    return x, mask_token, ids_restore, pos_embed


def truncate_bf16(t):
    """fp32 -> bf16 by truncation, as the Triton interpreter casts."""
    bits = t.float().contiguous().view(torch.int32) & ~0xFFFF
    return bits.view(torch.float32).to(torch.bfloat16)


def interpreter_truncates(backend, device, dtype):
    """Triton through the interpreter (CPU tensors, or CUDA ones when TRITON_INTERPRET=1) writing bf16."""
    interpreted = torch.device(device).type == "cpu" or os.environ.get("TRITON_INTERPRET") == "1"
    return backend == "triton" and interpreted and dtype == torch.bfloat16


def assert_equal(name, got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype, got.shape, want.shape)
    same = (got == want) | (got.isnan() & want.isnan())
    if not bool(same.all()):
        idx = tuple(int(i) for i in (~same).nonzero()[0])
        raise AssertionError(f"{name}: first mismatch at {idx}: got {got[idx].item()}, want {want[idx].item()}")


def assert_reduction_close(name, got, eager, exact):
    """|got - exact| <= 2 |eager - exact| (elementwise max) + a few ulps of got's dtype at the data's scale."""
    err = (got.double() - exact).abs().max().item()
    err_eager = (eager.double() - exact).abs().max().item()
    floor = 4 * torch.finfo(got.dtype).eps * max(exact.abs().max().item(), 1.0)
    assert err <= 2 * err_eager + floor, f"{name}: error {err} vs eager {err_eager} (floor {floor})"


def kernel_dtype(promoted, out_dtype):
    """The dtype the kernels write (mirrors the public function): out_dtype unless that would skip a
    low-precision rounding of the reference."""
    return out_dtype if promoted in (torch.float32, out_dtype) else promoted


def expected_output(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype, truncating):
    """The reference's result in out_dtype; through the interpreter, its fp32 value truncated to bf16."""
    with torch.no_grad():
        ref = reference.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed, has_cls)
        if truncating:
            fp32 = [None if t is None else t.float() for t in (x, mask_token, pos_embed)]
            return truncate_bf16(reference.unshuffle_with_mask_tokens(fp32[0], fp32[1], ids_restore, fp32[2],
                                                                      has_cls)).to(out_dtype)
        return ref.to(out_dtype)


def check_against_reference(backend, x, mask_token, ids_restore, pos_embed, has_cls, out_dtype=None):
    """Forward bit-exact; every gradient against the reference (eager) and float64."""
    device = x.device
    with use_backend(backend):
        out = mae_kernels.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed, has_cls, out_dtype)
    ref = reference.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed, has_cls)
    want_dtype = ref.dtype if out_dtype is None else out_dtype
    written = kernel_dtype(ref.dtype, want_dtype)  # the dtype of the kernels' output and of their grad_out
    truncating = interpreter_truncates(backend, device, written)
    assert_equal("out", out, expected_output(x, mask_token, ids_restore, pos_embed, has_cls, want_dtype,
                                             truncating))

    inputs = [t for t in (x, mask_token, pos_embed) if t is not None and t.requires_grad]
    grad_out = torch.randn(out.shape, device=device, dtype=torch.float32).to(out.dtype)
    grads = torch.autograd.grad(out, inputs, grad_out)
    eager = torch.autograd.grad(ref, inputs, grad_out.to(ref.dtype))
    names = ["grad_x", "grad_mask_token", "grad_pos_embed"][:len(inputs)]

    # float64 maths: removed rows (ids_restore >= K) feed mask_token, every row feeds pos_embed.
    c = int(has_cls)
    K = x.shape[1] - c
    g64 = grad_out.double()
    removed = (ids_restore >= K).to(device)
    exact = {"grad_mask_token": (g64[:, c:] * removed[..., None]).sum(dim=(0, 1)).reshape(1, 1, -1),
             "grad_pos_embed": g64.sum(dim=0, keepdim=True)}
    for name, got, want in zip(names, grads, eager):
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype)
        if name == "grad_x":
            if interpreter_truncates(backend, device, x.dtype) and written != x.dtype:
                want = truncate_bf16(grad_out.float().gather(
                    1, _rows_of_x(ids_restore, K, c, grad_out.shape[2])))
            assert_equal(name, got, want)
        else:
            assert_reduction_close(name, got, want, exact[name])
    return out


def _rows_of_x(ids_restore, K, c, D):
    """For each row of x, the output row it lands in (cls row 0, kept row c + k at c + l with ids[l] = k)."""
    N = ids_restore.shape[0]
    ids_shuffle = torch.argsort(ids_restore, dim=1)[:, :K] + c
    rows = torch.cat([torch.zeros(N, c, dtype=torch.long, device=ids_restore.device), ids_shuffle], dim=1)
    return rows[..., None].expand(-1, -1, D)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-L%d-K%d-D%d" % s)
@pytest.mark.parametrize("has_cls", [True, False], ids=["cls", "nocls"])
@pytest.mark.parametrize("pos_mode", POS_MODES, ids=str)
def test_matches_reference(backend, dtype, shape, has_cls, pos_mode):
    inputs = make_inputs(*shape, dtype, has_cls, pos_mode)
    out = check_against_reference(backend, *inputs, has_cls)
    assert out.dtype == torch.float32  # fp32 mask_token promotes


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("has_cls", [True, False], ids=["cls", "nocls"])
def test_noncontiguous_x(backend, dtype, has_cls):
    inputs = make_inputs(2, 11, 4, 6, dtype, has_cls, "grad", noncontiguous=True)
    check_against_reference(backend, *inputs, has_cls)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pos_mode", POS_MODES, ids=str)
def test_out_dtype_activation(backend, dtype, pos_mode):
    """out_dtype=x.dtype: the reference's fp32 result cast to x's dtype, without an fp32 copy."""
    inputs = make_inputs(2, 10, 3, 5, dtype, True, pos_mode)
    out = check_against_reference(backend, *inputs, True, out_dtype=dtype)
    assert out.dtype == dtype


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None] + DTYPES, ids=str)
def test_same_dtype_parameters(backend, dtype, out_dtype):
    """Parameters in x's dtype: the promotion is x's dtype, and other out_dtypes cast the rounded result."""
    inputs = make_inputs(2, 10, 3, 7, dtype, True, "grad", param_dtype=dtype)
    out = check_against_reference(backend, *inputs, True, out_dtype=out_dtype)
    assert out.dtype == (dtype if out_dtype is None else out_dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_batch_of_several_chunks(backend, dtype):
    """N = 70: the Triton backward splits the batch into chunks of 32 samples (the last one partial) whose
    partial mask-token and pos_embed gradients are then summed in a fixed order."""
    check_against_reference(backend, *make_inputs(70, 5, 2, 3, dtype, True, "grad"), True)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_mask_token_grad_deterministic(backend):
    x, mt, ids, pos = make_inputs(3, 40, 9, 33, torch.float32, True, "grad")
    g = torch.randn(3, 41, 33)
    with use_backend(backend):
        runs = [torch.autograd.grad(mae_kernels.unshuffle_with_mask_tokens(x, mt, ids, pos), (mt, pos), g)
                for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_only_some_inputs_need_grad(backend):
    x, mt, ids, pos = make_inputs(2, 8, 3, 4, torch.bfloat16, True, "fixed")
    x.requires_grad_(False)
    with use_backend(backend):
        out = mae_kernels.unshuffle_with_mask_tokens(x, mt, ids, pos)
    (gm,) = torch.autograd.grad(out, (mt,), torch.ones_like(out))
    assert torch.equal(gm, torch.full_like(mt, 2 * 5))  # N * (L - K) removed rows of ones


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "reference"])
def test_out_of_range_ids_read_mask_token(backend):
    """Without the debug check, ids outside [0, K) select the mask token: never an out-of-bounds read."""
    x, mt, ids, _ = make_inputs(1, 5, 2, 3, torch.float32)
    ids = torch.tensor([[0, 1, 7, -3, 1 << 40]])
    with use_backend(backend), torch.no_grad():
        out = mae_kernels.unshuffle_with_mask_tokens(x, mt, ids)
    assert torch.equal(out[0, 1:3], x[0, 1:3]) and torch.equal(out[0, 3:], mt[0].expand(3, -1))


# ---- ops: opcheck (forward and backward, compiled and Triton) and torch.compile -----------------------------

def _op_samples(device="cpu"):
    samples = []
    for (N, L, K, D), has_cls, pos_mode, dtype, out_dtype in [
            ((2, 7, 3, 5), True, "grad", torch.bfloat16, torch.float32),
            ((2, 7, 0, 3), False, None, torch.float16, torch.float16),
            ((1, 9, 9, 4), True, "fixed", torch.float32, torch.float32),
            ((2, 6, 2, 3), False, "grad", torch.float32, torch.bfloat16)]:
        x, mt, ids, pos = make_inputs(N, L, K, D, dtype, has_cls, pos_mode, device=device,
                                      noncontiguous=K > 1)
        samples.append((x, mt, ids, pos, has_cls, out_dtype))
    return samples


def _backward_samples(device="cpu"):
    samples = []
    for x, mt, ids, pos, has_cls, out_dtype in _op_samples(device):
        N, L = ids.shape
        grad = torch.randn(N, int(has_cls) + L, x.shape[2], device=device, dtype=out_dtype)
        samples.append((grad, ids, x.shape[1] - int(has_cls), has_cls, x.dtype, pos is not None))
    return samples


def _ops(backend):
    return op_module.OPS[backend], op_module.BACKWARD_OPS[backend]


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton") if why_not(b, "cpu") is None])
def test_opcheck(backend):
    forward, backward = _ops(backend)
    for args in _op_samples():
        torch.library.opcheck(forward, args)
    for args in _backward_samples():
        torch.library.opcheck(backward, args)


@pytest.mark.parametrize("device, backend, shape",
                         [("cpu", b, (2, 9, 3, 6)) for b in CPU_BACKENDS]
                         + [pytest.param("cuda", b, (8, 196, 49, 512), marks=pytest.mark.gpu) for b in GPU_BACKENDS])
def test_torch_compile_fullgraph(device, backend, shape):
    """Compiled and eager calls run the same kernels: bit-identical outputs and gradients (also a determinism
    check on the GPU)."""
    x, mt, ids, pos = make_inputs(*shape, torch.bfloat16, True, "grad", device=device)
    torch._dynamo.reset()
    with use_backend(backend):
        compiled = torch.compile(mae_kernels.unshuffle_with_mask_tokens, fullgraph=True)
        out = compiled(x, mt, ids, pos)
        eager = mae_kernels.unshuffle_with_mask_tokens(x, mt, ids, pos)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, mt, pos), g)
        grads_eager = torch.autograd.grad(eager, (x, mt, pos), g)
    assert_equal("out", out, eager)
    for name, a, b in zip(("grad_x", "grad_mask_token", "grad_pos_embed"), grads, grads_eager):
        if backend == "reference" and name != "grad_x":  # inductor reorders the eager sums
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
        else:  # our ops are opaque to the compiler: the very same kernels run
            assert_equal(name, a, b)


# ---- bad input -----------------------------------------------------------------------------------------------

def _good():
    x, mt, ids, pos = make_inputs(2, 6, 2, 4, torch.float32, True, "fixed")
    return dict(x=x.detach(), mask_token=mt.detach(), ids_restore=ids, pos_embed=pos)


BAD_INPUTS = [
    ("x", lambda a: a["x"][0], ValueError, "x must have 3 dimensions"),
    ("x", lambda a: a["x"].long(), TypeError, "x must have dtype"),
    ("x", lambda a: a["x"].tolist(), TypeError, "x must be a torch.Tensor"),
    ("x", lambda a: torch.zeros(2, 9, 4), ValueError, "x must have between 1 and 7 rows"),
    ("x", lambda a: torch.zeros(2, 0, 4), ValueError, "x must have between 1 and 7 rows"),
    ("ids_restore", lambda a: a["ids_restore"].int(), TypeError, "ids_restore must have dtype torch.int64"),
    ("ids_restore", lambda a: a["ids_restore"][:1], ValueError, "ids_restore must have shape [2, *]"),
    ("ids_restore", lambda a: a["ids_restore"][0], ValueError, "ids_restore must have 2 dimensions"),
    ("ids_restore", lambda a: a["ids_restore"].to("meta"), ValueError, "ids_restore must be on cpu"),
    ("mask_token", lambda a: a["mask_token"][0], ValueError, "mask_token must have 3 dimensions"),
    ("mask_token", lambda a: torch.zeros(1, 1, 5), ValueError, "mask_token must have shape [1, 1, 4]"),
    ("mask_token", lambda a: torch.zeros(2, 1, 4), ValueError, "mask_token must have shape [1, 1, 4]"),
    ("mask_token", lambda a: a["mask_token"].double(), TypeError, "mask_token must have dtype"),
    ("mask_token", lambda a: a["mask_token"].to("meta"), ValueError, "mask_token must be on cpu"),
    ("pos_embed", lambda a: torch.zeros(1, 6, 4), ValueError, "pos_embed must have shape [1, 7, 4]"),
    ("pos_embed", lambda a: torch.zeros(1, 7, 3), ValueError, "pos_embed must have shape [1, 7, 4]"),
    ("pos_embed", lambda a: torch.zeros(7, 4), ValueError, "pos_embed must have 3 dimensions"),
    ("pos_embed", lambda a: a["pos_embed"].int(), TypeError, "pos_embed must have dtype"),
    ("pos_embed", lambda a: a["pos_embed"].to("meta"), ValueError, "pos_embed must be on cpu"),
]


@pytest.mark.parametrize("arg,change,exc,message", BAD_INPUTS, ids=[m for _, _, _, m in BAD_INPUTS])
def test_bad_input_raises(arg, change, exc, message):
    args = _good()
    args[arg] = change(args)
    with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        mae_kernels.unshuffle_with_mask_tokens(**args)


def test_bad_options_raise():
    args = _good()
    with pytest.raises(TypeError, match="has_cls must be a bool"):
        mae_kernels.unshuffle_with_mask_tokens(**args, has_cls=1)
    with pytest.raises(TypeError, match="out_dtype must be None or one of"):
        mae_kernels.unshuffle_with_mask_tokens(**args, out_dtype=torch.int32)
    args["pos_embed"] = None
    args["x"] = args["x"][:, 1:]  # without cls: 2 kept rows of L = 6 is fine, 7 is not
    assert mae_kernels.unshuffle_with_mask_tokens(**args, has_cls=False).shape == (2, 6, 4)
    args["x"] = torch.zeros(2, 7, 4)
    with pytest.raises(ValueError, match="x must have between 0 and 6 rows"):
        mae_kernels.unshuffle_with_mask_tokens(**args, has_cls=False)


@pytest.mark.parametrize("ids", [[[0, 1, 2, 3, 4, 4]], [[0, 1, 2, 3, 4, 6]], [[-1, 1, 2, 3, 4, 5]]],
                         ids=["duplicate", "too_large", "negative"])
def test_debug_mode_checks_permutation(monkeypatch, ids):
    args = _good()
    args["ids_restore"] = torch.cat([args["ids_restore"][:1], torch.tensor(ids)])
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "0")
    mae_kernels.unshuffle_with_mask_tokens(**args)  # unchecked (and still in bounds)
    monkeypatch.setenv("MAE_KERNELS_DEBUG", "1")  # read at call time
    with pytest.raises(ValueError, match="ids_restore must hold a permutation of 0..5 in every row, got row 1"):
        mae_kernels.unshuffle_with_mask_tokens(**args)


# ---- GPU -----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(4, 196, 49, 512), (2, 1568, 392, 1536)],
                         ids=lambda s: "N%d-L%d-K%d-D%d" % s)
@pytest.mark.parametrize("has_cls", [True, False], ids=["cls", "nocls"])
@pytest.mark.parametrize("pos_mode", POS_MODES, ids=str)
def test_gpu_matches_reference(backend, dtype, shape, has_cls, pos_mode):
    check_against_reference(backend, *make_inputs(*shape, dtype, has_cls, pos_mode, device="cuda"), has_cls)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("out_dtype", [None, "x"], ids=["promoted", "x_dtype"])
def test_gpu_vit_base_decoder_shape(backend, dtype, out_dtype):
    """ViT-B decoder input: N=256, L=196, K=49, D=512, fp32 mask_token and trainable pos_embed."""
    inputs = make_inputs(256, 196, 49, 512, dtype, True, "grad", device="cuda")
    check_against_reference(backend, *inputs, True, out_dtype=dtype if out_dtype == "x" else None)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_noncontiguous_and_same_dtype_params(backend, dtype):
    check_against_reference(backend, *make_inputs(3, 50, 13, 40, dtype, True, "grad", device="cuda",
                                                  noncontiguous=True), True)
    check_against_reference(backend, *make_inputs(3, 50, 13, 40, dtype, True, "grad", param_dtype=dtype,
                                                  device="cuda"), True, out_dtype=torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_opcheck(backend):
    forward, backward = _ops(backend)
    for args in _op_samples("cuda"):
        torch.library.opcheck(forward, args)
    for args in _backward_samples("cuda"):
        torch.library.opcheck(backward, args)


@pytest.mark.gpu
def test_gpu_cuda_backend_is_the_default():
    x, mt, ids, _ = make_inputs(2, 5, 2, 3, torch.float32, device="cuda")
    assert mae_kernels.backends.select("unshuffle_with_mask_tokens", "cuda") == "cuda"
    with pytest.raises(ValueError, match="ids_restore must be on cuda"):
        mae_kernels.unshuffle_with_mask_tokens(x, mt, ids.cpu())


def test_triton_backward_sums_are_column_parallel(monkeypatch):
    """Issue 13: the Triton backward is the rows kernel and one column-parallel sum per gradient (no zero fill).
    The GPU tiling (64 columns per program: 8 programs at the decoder's D = 512, where one program did all) gives
    the interpreter's one-program sums bit for bit: every column is summed alone, in the same fixed order."""
    from triton.runtime import interpreter

    from mae_kernels.triton import unshuffle_with_mask_tokens as tri
    grids = []
    run = interpreter.InterpretedFunction.run

    def recorded(self, *args, grid, **kwargs):
        grids.append((self.fn.__name__, tuple(grid)))
        return run(self, *args, grid=grid, **kwargs)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recorded)
    partial = torch.randn(70, 512) * torch.logspace(-3, 3, 70)[:, None]  # 70 terms: 3 chunks, the last partial
    out_gpu, out_one = torch.empty(512), torch.empty(512)
    tri._sum_partials(partial, out_gpu, cap=64)
    tri._sum_partials(partial, out_one, cap=1024)
    assert grids == [("_sum_partials_kernel", (8,)), ("_sum_partials_kernel", (1,))], grids
    assert torch.equal(out_gpu, out_one), "the column tiling changed the sums"
    want = sum((partial[b0:b0 + 32].double().sum(0) for b0 in range(0, 70, 32)), torch.zeros(512, dtype=torch.float64))
    torch.testing.assert_close(out_gpu.double(), want, rtol=1e-5, atol=1e-3)

    x, mt, ids, pos = make_inputs(3, 6, 2, 40, torch.float32, True, "grad")
    with use_backend("triton"):
        out = mae_kernels.unshuffle_with_mask_tokens(x, mt, ids, pos)
        grids.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            torch.autograd.grad(out, (mt, pos), torch.randn_like(out))
    assert [name for name, _ in grids] == ["_backward_rows_kernel", "_sum_partials_kernel", "_sum_partials_kernel"]
    fills = [e.name for e in prof.events() if e.name in ("aten::zero_", "aten::fill_", "aten::zeros")]
    assert not fills, f"the backward launched zero fills: {fills}"
