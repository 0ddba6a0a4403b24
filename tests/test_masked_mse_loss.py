"""masked_mse_loss, patch_stats, denormalize_pred: every backend against a float64 reference (loss and every
gradient), edge cases of MAE_SPEC.md "Loss", bad input, opcheck of every op, torch.compile."""
import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops import masked_mse_loss as loss_ops

CPU_BACKENDS = ["cpu", "triton", "reference"]
GPU_BACKENDS = ["cuda", "triton"]
LOW_PRECISION = [torch.float16, torch.bfloat16]

# (C, H, W, p): P = 768 (p16 C3), 588 (p14 C3, non-square), 16*16*13, C = 1 (non-square, tiny).
SHAPES = [(3, 32, 32, 16), (3, 28, 42, 14), (13, 16, 32, 16), (1, 8, 12, 4)]
SHAPE_IDS = ["P768", "P588-nonsquare", "P3328-C13", "C1-P16"]


def make_mask(N, L, kind="float", device="cpu"):
    """Row 0 all removed, row 1 nothing removed (when N > 1), the other rows random with both kinds."""
    m = torch.rand(N, L, device=device) < 0.6
    m[:, 0], m[:, -1] = True, False
    m[0] = True
    if N > 1:
        m[1] = False
    return m if kind == "bool" else m.float()


def make_inputs(C, H, W, p, N=3, dtype=torch.float32, img_dtype=torch.float32, mask_kind="float", device="cpu",
                scale=1.0, offset=0.0):
    L, P = (H // p) * (W // p), p * p * C
    imgs = (torch.randn(N, C, H, W, device=device) * scale + offset).to(img_dtype)
    pred = torch.randn(N, L, P, device=device).to(dtype)
    return pred, imgs, make_mask(N, L, mask_kind, device)


def fp64_loss_and_grads(pred, imgs, mask, p, norm, ids_shuffle=None, eps=1e-6):
    """The reference maths in float64 on the same input values: (loss, grad pred, grad imgs)."""
    pr = pred.detach().double().requires_grad_()
    im = imgs.detach().double().requires_grad_()
    full = reference.scatter_removed_pred(pr, ids_shuffle) if ids_shuffle is not None else pr
    loss = reference.masked_mse_loss(full, im, mask.double(), p, norm, eps)
    gp, gi = torch.autograd.grad(loss, (pr, im))
    return loss.detach(), gp, gi


def eager_loss_and_grads(pred, imgs, mask, p, norm, eps=1e-6):
    """The official eager code on the given dtypes (fp32 maths by promotion, gradients cast back)."""
    pr, im = pred.detach().requires_grad_(), imgs.detach().requires_grad_()
    loss = reference.masked_mse_loss(pr, im, mask, p, norm, eps)
    gp, gi = torch.autograd.grad(loss, (pr, im))
    return loss.detach(), gp, gi


def run_loss(backend, pred, imgs, mask, p, norm, grad_imgs=False, **kw):
    pr = pred.detach().requires_grad_()
    im = imgs.detach().requires_grad_(grad_imgs)
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(pr, im, mask, p, norm_pix_loss=norm, **kw)
    inputs = (pr, im) if grad_imgs else (pr,)
    grads = torch.autograd.grad(loss, inputs)
    return loss.detach(), grads[0], grads[1] if grad_imgs else None


def assert_close(name, got, want, tol):
    """|got - want| <= tol elementwise (tol: a float or a tensor broadcastable to want), no NaN."""
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN at {torch.isnan(got).nonzero()[0].tolist()}"
    err = (got - want).abs()
    bad = err > tol
    if bad.any():
        idx = bad.nonzero()[0].tolist() if got.dim() else []
        at = tuple(idx)
        t = tol if not torch.is_tensor(tol) or tol.dim() == 0 else torch.broadcast_to(tol, want.shape)[at]
        raise AssertionError(f"{name}: first mismatch at {idx}: got {got[at].item()!r}, want {want[at].item()!r}, "
                             f"err {err[at].item():.3e} > tol {float(t):.3e} (max err {err.max().item():.3e})")


def fp32_tol(want, rtol=1e-5):
    return rtol * want.abs().max().double().cpu().clamp_min(1e-30) + 1e-12


def ulp(x, dtype):
    """One unit in the last place of dtype at |x| (elementwise)."""
    return torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(x.double().abs().clamp_min(1e-30))))


def check_against_fp64(got, pred, imgs, mask, p, norm, check_imgs, backend=None, eager_floor=False, eps=1e-6):
    """fp32: within 1e-5 relative of float64; fp16/bf16: max error at most twice the eager code's max error in
    that dtype (plus the fp32 floor; eager_floor: in fp32 too, for inputs where fp32 itself errs).
    The Triton interpreter truncates fp32 -> bf16 casts: 1 ulp allowed there."""
    ref = fp64_loss_and_grads(pred, imgs, mask, p, norm, eps=eps)
    eager = eager_loss_and_grads(pred, imgs, mask, p, norm, eps)
    names = ["loss", "grad pred", "grad imgs"]
    for k in range(3 if check_imgs else 2):
        tol = fp32_tol(ref[k])
        if eager_floor or pred.dtype != torch.float32 or imgs.dtype != torch.float32:
            tol = tol + 2 * (eager[k].double() - ref[k]).abs().max()
            if backend == "triton" and got[k].device.type == "cpu" and got[k].dtype == torch.bfloat16:
                tol = torch.maximum(tol, ulp(ref[k], torch.bfloat16) + fp32_tol(ref[k]))
        assert_close(names[k], got[k], ref[k], tol)


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "pix"])
@pytest.mark.parametrize("mask_kind", ["float", "bool"])
@pytest.mark.parametrize("dtype", [torch.float32] + LOW_PRECISION, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_fp64(backend, shape, dtype, mask_kind, norm):
    pred, imgs, mask = make_inputs(*shape, dtype=dtype, mask_kind=mask_kind)
    got = run_loss(backend, pred, imgs, mask, shape[3], norm)
    assert got[0].dtype == torch.float32 and got[0].dim() == 0
    assert got[1].dtype == dtype
    check_against_fp64(got, pred, imgs, mask, shape[3], norm, check_imgs=False, backend=backend)
    assert (got[1][mask == 0] == 0).all(), "kept patches must get a zero gradient"


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "pix"])
@pytest.mark.parametrize("img_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3]], ids=[SHAPE_IDS[1], SHAPE_IDS[3]])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_imgs_gradient(backend, shape, img_dtype, norm):
    """d loss / d imgs through the per-patch normalisation, against autograd of the float64 reference."""
    pred, imgs, mask = make_inputs(*shape, img_dtype=img_dtype)
    got = run_loss(backend, pred, imgs, mask, shape[3], norm, grad_imgs=True)
    check_against_fp64(got, pred, imgs, mask, shape[3], norm, check_imgs=True, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_removed_only_layout(backend, dtype):
    """pred holding only the removed patches, in ids_shuffle order, equals the full layout."""
    C, H, W, p = SHAPES[1]
    N, L, P = 3, (H // p) * (W // p), p * p * C
    ids_keep, ids_restore, mask = reference.random_mask_indices(N, L, 0.5)
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    K = ids_keep.shape[1]
    pred_full, imgs, _ = make_inputs(C, H, W, p, N=N, dtype=dtype)
    pred = torch.gather(pred_full, 1, ids_shuffle[:, K:, None].expand(-1, -1, P))
    for norm in (True, False):
        got = run_loss(backend, pred, imgs, mask, p, norm, grad_imgs=True, ids_shuffle=ids_shuffle)
        ref = fp64_loss_and_grads(pred, imgs, mask, p, norm, ids_shuffle)
        full = run_loss(backend, pred_full, imgs, mask, p, norm, grad_imgs=True)
        for k, name in enumerate(["loss", "grad pred", "grad imgs"]):
            tol = fp32_tol(ref[k]) + (ulp(ref[k], dtype) if k == 1 and dtype != torch.float32 else 0)
            assert_close(name, got[k], ref[k], tol)
        assert_close("loss vs full layout", got[0], full[0], fp32_tol(full[0]))
        full_removed = torch.gather(full[1], 1, ids_shuffle[:, K:, None].expand(-1, -1, P))
        assert_close("grad pred vs full layout", got[1], full_removed, 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_removed_patch_gives_zero(backend):
    """mask.sum() == 0 (a fully unmasked batch): 0.0 and zero gradients, where the official code gives NaN."""
    C, H, W, p = SHAPES[3]
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=torch.bfloat16)
    for m in (torch.zeros_like(mask), torch.zeros_like(mask, dtype=torch.bool)):
        for norm in (True, False):
            loss, gp, gi = run_loss(backend, pred, imgs, m, p, norm, grad_imgs=True)
            assert loss.item() == 0.0 and gp.dtype == torch.bfloat16
            assert (gp == 0).all() and (gi == 0).all()
    # removed-only layout with nothing removed: pred has no rows
    ids_shuffle = torch.arange(mask.shape[1]).repeat(mask.shape[0], 1)
    loss, gp, gi = run_loss(backend, pred[:, :0], imgs, torch.zeros_like(mask), p, True, grad_imgs=True,
                            ids_shuffle=ids_shuffle)
    assert loss.item() == 0.0 and gp.shape == pred[:, :0].shape and (gi == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_constant_patches(backend, dtype):
    """Zero variance: eps keeps the target finite (0), no NaN in the loss or the gradients."""
    C, H, W, p = SHAPES[0]
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=dtype)
    imgs = torch.full_like(imgs, 0.37)
    imgs[1] = 1e4  # a constant, large-magnitude sample too
    got = run_loss(backend, pred, imgs, mask, p, True, grad_imgs=True)
    check_against_fp64(got, pred, imgs, mask, p, True, check_imgs=True, backend=backend, eager_floor=True)


def check_eps_zero(backend, shape, dtype, device="cpu"):
    """eps = 0 (accepted by check_eps): finite and the reference's, whatever the kept patches hold (they are
    not read, so their zero variance must not reach the result)."""
    C, H, W, p = shape
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=dtype, device=device)
    got = run_loss(backend, pred, imgs, mask, p, True, grad_imgs=True, eps=0.0)
    check_against_fp64(got, pred, imgs, mask, p, True, check_imgs=True, backend=backend, eps=0.0)
    assert (got[1][mask == 0] == 0).all(), "kept patches must get a zero gradient"


def check_eps_zero_constant_removed_patch(backend, device="cpu"):
    """eps = 0 and a constant removed patch: its target is 0 / 0 = NaN in the reference, so the loss is NaN and
    the gradients are NaN on that patch only; everything else is the reference's."""
    C, H, W, p = SHAPES[0]
    pred, imgs, mask = make_inputs(C, H, W, p, device=device)
    assert mask[0, 0] == 1  # make_mask removes patch 0 of every sample
    imgs[0, :, :p, :p] = 0.5  # exact mean in fp32 too, so that the reference backend's target is 0 / 0 as well
    got = run_loss(backend, pred, imgs, mask, p, True, grad_imgs=True, eps=0.0)
    ref = fp64_loss_and_grads(pred, imgs, mask, p, True, eps=0.0)
    assert torch.isnan(got[0]) and torch.isnan(ref[0])
    for k, name in ((1, "grad pred"), (2, "grad imgs")):
        nan = torch.isnan(ref[k]).cpu()
        assert nan.any()
        assert torch.equal(torch.isnan(got[k]).cpu(), nan), f"{name}: NaN at other places than the reference's"
        assert_close(name, got[k].cpu()[~nan], ref[k].cpu()[~nan], fp32_tol(ref[k].cpu()[~nan]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=[SHAPE_IDS[0], SHAPE_IDS[3]])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eps_zero(backend, shape, dtype):
    check_eps_zero(backend, shape, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_eps_zero_constant_removed_patch(backend):
    check_eps_zero_constant_removed_patch(backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_large_magnitude(backend):
    """Pixels around 1e4 with unit spread: a two-pass (shifted) variance keeps fp32 accurate."""
    C, H, W, p = SHAPES[0]
    pred, imgs, mask = make_inputs(C, H, W, p, offset=1e4)
    for norm in (True, False):
        got = run_loss(backend, pred, imgs, mask, p, norm, grad_imgs=True)
        ref = fp64_loss_and_grads(pred, imgs, mask, p, norm)
        eager = eager_loss_and_grads(pred, imgs, mask, p, norm)
        for k, name in enumerate(["loss", "grad pred", "grad imgs"]):  # eager fp32 errs here: 2x its error
            assert_close(name, got[k], ref[k], fp32_tol(ref[k]) + 2 * (eager[k].double() - ref[k]).abs())
    big = make_inputs(C, H, W, p, scale=1e4)  # large spread as well
    got = run_loss(backend, *big, p, True, grad_imgs=True)
    check_against_fp64(got, *big, p, True, check_imgs=True, backend=backend, eager_floor=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_imgs(backend):
    """imgs is read in place by strides: channels_last and a sliced view give the contiguous result."""
    C, H, W, p = SHAPES[1]
    pred, imgs, mask = make_inputs(C, H, W, p)
    want = run_loss(backend, pred, imgs, mask, p, True, grad_imgs=True)
    wide = torch.randn(imgs.shape[0], C + 2, H, W + 5)
    wide[:, 1:C + 1, :, 3:W + 3] = imgs
    for view in (imgs.to(memory_format=torch.channels_last), wide[:, 1:C + 1, :, 3:W + 3]):
        got = run_loss(backend, pred, view, mask, p, True, grad_imgs=True)
        for k, name in enumerate(["loss", "grad pred", "grad imgs"]):
            assert_close(name, got[k], want[k], fp32_tol(want[k]))


def test_backends_agree_and_deterministic():
    C, H, W, p = SHAPES[1]
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=torch.bfloat16)
    runs = {b: run_loss(b, pred, imgs, mask, p, True, grad_imgs=True) for b in ("cpu", "triton")}
    again = run_loss("cpu", pred, imgs, mask, p, True, grad_imgs=True)
    for k in range(3):
        assert torch.equal(runs["cpu"][k], again[k]), "cpu backend is not deterministic"
        assert_close("cpu vs triton", runs["cpu"][k], runs["triton"][k], 2 * fp32_tol(runs["cpu"][k]) +
                     (0.01 * runs["cpu"][k].double().abs() if k == 1 else 0))  # bf16 rounding of grad pred


def test_no_grad_path():
    """Without autograd the forward pass stores no gradient; the loss is unchanged."""
    C, H, W, p = SHAPES[3]
    pred, imgs, mask = make_inputs(C, H, W, p)
    for backend in CPU_BACKENDS:
        with mae_kernels.use_backend(backend), torch.no_grad():
            loss = mae_kernels.masked_mse_loss(pred, imgs, mask, p)
        assert_close("loss", loss, fp64_loss_and_grads(pred, imgs, mask, p, True)[0], 1e-5 * loss.abs() + 1e-12)
    _, stored = torch.ops.mae_kernels.masked_mse_loss(pred, imgs, mask, None, p, True, 1e-6, False)
    assert stored.numel() == 0


# --- patch_stats / denormalize_pred -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_patch_stats_and_denormalize(shape):
    C, H, W, p = shape
    _, imgs, _ = make_inputs(*shape)
    mean, std = mae_kernels.patch_stats(imgs, p)
    target = reference.patchify(imgs.double(), p)
    want_mean = target.mean(-1, keepdim=True)
    want_std = (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert mean.dtype == std.dtype == torch.float32 and mean.shape == (imgs.shape[0], target.shape[1], 1)
    assert_close("mean", mean, want_mean, fp32_tol(want_mean) + 1e-6)
    assert_close("std", std, want_std, fp32_tol(want_std))
    normalized = ((target - want_mean) / want_std).to(torch.bfloat16)  # a perfect norm_pix_loss prediction
    pixels = mae_kernels.denormalize_pred(normalized, imgs, p)
    assert_close("denormalized", pixels, target, 0.02 * target.abs().max())
    img = reference.unpatchify(pixels, p, (H, W))
    assert img.shape == imgs.shape


# --- bad input --------------------------------------------------------------------------------------------


def test_bad_input():
    C, H, W, p = SHAPES[3]
    pred, imgs, mask = make_inputs(C, H, W, p, N=2)
    f = mae_kernels.masked_mse_loss
    L = mask.shape[1]
    cases = [
        (ValueError, "pred must have shape", lambda: f(pred[..., :-1], imgs, mask, p)),
        (ValueError, "pred must have L=", lambda: f(pred[:, :-1], imgs, mask, p)),
        (ValueError, "mask must have shape", lambda: f(pred, imgs, mask[:, :-1], p)),
        (ValueError, "mask must have 2 dimensions", lambda: f(pred, imgs, mask[0], p)),
        (ValueError, "patch_size must divide", lambda: f(pred, imgs, mask, 5)),
        (ValueError, "patch_size must be a positive int", lambda: f(pred, imgs, mask, 0)),
        (TypeError, "pred must have dtype", lambda: f(pred.double(), imgs, mask, p)),
        (TypeError, "imgs must have dtype", lambda: f(pred, imgs.long(), mask, p)),
        (TypeError, "mask must have dtype", lambda: f(pred, imgs, mask.long(), p)),
        (TypeError, "pred must be a torch.Tensor", lambda: f(pred.tolist(), imgs, mask, p)),
        (ValueError, "mask must be on", lambda: f(pred, imgs, mask.to("meta"), p)),
        (ValueError, "imgs must have 4 dimensions", lambda: f(pred, imgs[0], mask, p)),
        (TypeError, "norm_pix_loss must be a bool", lambda: f(pred, imgs, mask, p, norm_pix_loss=1)),
        (ValueError, "eps must be", lambda: f(pred, imgs, mask, p, eps=-1.0)),
        (ValueError, "ids_shuffle must have shape", lambda: f(pred, imgs, mask, p, ids_shuffle=mask.long()[:1])),
        (TypeError, "ids_shuffle must have dtype", lambda: f(pred, imgs, mask, p, ids_shuffle=mask)),
        (ValueError, r"ids_shuffle values must be patch indices in \[0, ",
         lambda: f(pred[:, :2], imgs, mask, p, ids_shuffle=torch.full((2, L), L))),
        (ValueError, "norm_pix_loss needs at least 2",
         lambda: f(torch.zeros(2, H * W, 1), imgs[:, :1], torch.ones(2, H * W), 1)),
        (ValueError, "pred must have shape", lambda: mae_kernels.denormalize_pred(pred[:, :1], imgs, p)),
        (ValueError, "patch_size must divide", lambda: mae_kernels.patch_stats(imgs, 5)),
    ]
    for backend in CPU_BACKENDS:
        with mae_kernels.use_backend(backend):
            for exc, msg, call in cases:
                with pytest.raises(exc, match=msg):
                    call()


# --- opcheck and torch.compile ----------------------------------------------------------------------------


def op_samples(device="cpu"):
    C, H, W, p = SHAPES[3]
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        pred, imgs, mask = make_inputs(C, H, W, p, N=2, dtype=dtype, device=device)
        L = mask.shape[1]
        ids_rows = torch.stack([torch.randperm(L, device=device)[: L // 2] for _ in range(2)])
        out.append((pred.requires_grad_(), imgs, mask, None, p, True, 1e-6, True))
        out.append((pred.detach(), imgs.requires_grad_(), mask, None, p, False, 1e-6, False))
        out.append((pred[:, : L // 2].detach().clone().requires_grad_(), imgs.detach(), mask, ids_rows, p, True,
                    1e-6, True))
    return out


def backward_samples(device="cpu"):
    out = []
    for (pred, imgs, mask, ids_rows, p, norm, eps, _) in op_samples(device):
        g = torch.tensor(1.5, device=device)
        out.append((g, pred.detach(), imgs.detach(), mask, ids_rows, p, norm, eps, True, True))
        out.append((g, pred.detach(), imgs.detach(), mask, ids_rows, p, norm, eps, True, False))
    return out


def _ops(device_type):
    fw, bw = loss_ops.OPS, loss_ops.BACKWARD_OPS
    names = ["triton"] + (["cuda"] if device_type == "cuda" else ["cpu"])
    return [(n, fw[n], bw[n]) for n in names if fw[n] is not None]


@pytest.mark.parametrize("which", ["cpu", "triton"])
def test_opcheck(which):
    fw, bw = loss_ops.OPS[which], loss_ops.BACKWARD_OPS[which]
    if fw is None:
        pytest.fail("mae_kernels._C is not built: " + str(mae_kernels._ext.load_error))
    for args in op_samples():
        torch.library.opcheck(fw, args)
    for args in backward_samples():
        torch.library.opcheck(bw, args)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile(backend):
    C, H, W, p = SHAPES[3]
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=torch.bfloat16)

    def step(pred, imgs, mask):
        return mae_kernels.masked_mse_loss(pred, imgs, mask, p)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    with mae_kernels.use_backend(backend):
        want = run_loss(backend, pred, imgs, mask, p, True, grad_imgs=True)
        pr, im = pred.detach().requires_grad_(), imgs.detach().requires_grad_()
        loss = compiled(pr, im, mask)
        loss.backward()
    assert_close("loss", loss.detach(), want[0], fp32_tol(want[0]))
    assert_close("grad pred", pr.grad, want[1], fp32_tol(want[1]))
    assert_close("grad imgs", im.grad, want[2], fp32_tol(want[2]))


# --- GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32] + LOW_PRECISION, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_matches_fp64(backend, shape, dtype):
    for norm in (True, False):
        for mask_kind in ("float", "bool"):
            pred, imgs, mask = make_inputs(*shape, N=4, dtype=dtype, mask_kind=mask_kind, device="cuda")
            got = run_loss(backend, pred, imgs, mask, shape[3], norm, grad_imgs=True)
            assert got[1].device.type == "cuda"
            check_against_fp64(got, pred, imgs, mask, shape[3], norm, check_imgs=True, backend=backend)
            assert (got[1][mask == 0] == 0).all(), "kept patches must get a zero gradient"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_mae_base_shape(backend, dtype):
    """The MAE ViT-Base shape: N=256, L=196, P=768 (224x224, p16, C3), mask ratio 0.75."""
    N, C, H, W, p = 256, 3, 224, 224, 16
    L, P = 196, 768
    imgs = torch.randn(N, C, H, W, device="cuda")
    pred = torch.randn(N, L, P, device="cuda").to(dtype)
    _, ids_restore, mask = reference.random_mask_indices(N, L, 0.75, device="cuda")
    got = run_loss(backend, pred, imgs, mask, p, True)
    again = run_loss(backend, pred, imgs, mask, p, True)
    assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1]), "not deterministic"
    check_against_fp64(got, pred, imgs, mask, p, True, check_imgs=False, backend=backend)
    # the removed-only layout on the same data
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    K = L - int(mask[0].sum().item())
    pred_removed = torch.gather(pred, 1, ids_shuffle[:, K:, None].expand(-1, -1, P))
    loss, gp, _ = run_loss(backend, pred_removed, imgs, mask, p, True, ids_shuffle=ids_shuffle)
    assert_close("loss removed-only", loss, got[0], fp32_tol(got[0]))
    assert_close("grad removed-only", gp, torch.gather(got[1], 1, ids_shuffle[:, K:, None].expand(-1, -1, P)), 0)


def _pred_view_loss_and_grad(backend, pred, imgs, mask, p, upstream, ids_shuffle=None):
    """Loss and pred gradient for pred passed as the model passes it, x[:, 1:, :] of a [N, 1 + R, P] tensor, and
    the loss scaled by `upstream` before backward."""
    x = torch.cat([torch.zeros_like(pred[:, :1]), pred], dim=1).requires_grad_()
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(x[:, 1:, :], imgs, mask, p, ids_shuffle=ids_shuffle)
    (grad,) = torch.autograd.grad(loss * upstream, x)
    return loss.detach(), grad[:, 1:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_strided_pred_and_scaled_upstream_gradient(backend, dtype):
    """The model's pred view (read in place by the compiled kernels) and its removed-only slice of ids_shuffle
    give the contiguous results bit for bit; an upstream gradient g scales the stored gradient with one rounding
    ((grad for g = 1).float() * g, then the pred dtype)."""
    C, H, W, p = SHAPES[1]
    pred, imgs, mask = make_inputs(C, H, W, p, N=2, dtype=dtype)
    g = torch.tensor(1 / 3)
    loss, grad = _pred_view_loss_and_grad(backend, pred, imgs, mask, p, g)
    want_loss, want_one, _ = run_loss(backend, pred, imgs, mask, p, True)
    assert torch.equal(loss, want_loss), f"loss {loss.item()!r} != {want_loss.item()!r} for a strided pred"
    assert_close("grad pred (upstream 1/3)", grad, (want_one.float() * g).to(dtype), 0)
    ids_shuffle = torch.argsort(torch.rand(mask.shape), dim=1)
    K = mask.shape[1] // 4  # kept: ids_shuffle[:, :K]; the prediction rows are a strided slice of ids_shuffle
    mask = torch.zeros_like(mask).scatter_(1, ids_shuffle[:, K:], 1.0)
    removed = torch.gather(pred, 1, ids_shuffle[:, K:, None].expand(-1, -1, pred.shape[2]))
    loss, grad = _pred_view_loss_and_grad(backend, removed, imgs, mask, p, 1.0, ids_shuffle=ids_shuffle)
    want_loss, want_grad, _ = run_loss(backend, removed, imgs, mask, p, True, ids_shuffle=ids_shuffle)
    assert torch.equal(loss, want_loss), "removed-only layout: strided pred changed the loss"
    assert_close("grad pred (removed-only, strided)", grad, want_grad, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_edge_cases(backend):
    C, H, W, p = SHAPES[0]
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=torch.float16, device="cuda")
    loss, gp, gi = run_loss(backend, pred, imgs, torch.zeros_like(mask), p, True, grad_imgs=True)
    assert loss.item() == 0.0 and (gp == 0).all() and (gi == 0).all()
    const = torch.full_like(imgs, 0.37)
    const[1] = 1e4
    check_against_fp64(run_loss(backend, pred, const, mask, p, True, grad_imgs=True), pred, const, mask, p, True,
                       check_imgs=True, backend=backend, eager_floor=True)
    big = imgs + 1e4
    got = run_loss(backend, pred, big, mask, p, True, grad_imgs=True)
    ref = fp64_loss_and_grads(pred, big, mask, p, True)
    eager = eager_loss_and_grads(pred, big, mask, p, True)
    for k, name in enumerate(["loss", "grad pred", "grad imgs"]):
        assert_close(name, got[k], ref[k], fp32_tol(ref[k]) + 2 * (eager[k].double() - ref[k]).abs())
    strided = imgs.to(memory_format=torch.channels_last)
    a = run_loss(backend, pred, imgs, mask, p, True, grad_imgs=True)
    b = run_loss(backend, pred, strided, mask, p, True, grad_imgs=True)
    for k in range(3):
        assert_close("channels_last", b[k], a[k], fp32_tol(a[k]))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS + ["reference"])
def test_gpu_eps_zero(backend):
    for shape in (SHAPES[0], SHAPES[3]):
        for dtype in (torch.float32, torch.bfloat16):
            check_eps_zero(backend, shape, dtype, device="cuda")
    check_eps_zero_constant_removed_patch(backend, device="cuda")


@pytest.mark.gpu
def test_gpu_opcheck_and_compile():
    for name, fw, bw in _ops("cuda"):
        for args in op_samples("cuda"):
            torch.library.opcheck(fw, args)
        for args in backward_samples("cuda"):
            torch.library.opcheck(bw, args)
    assert len(_ops("cuda")) == 2, "the cuda backend is not built"
    C, H, W, p = SHAPES[0]
    pred, imgs, mask = make_inputs(C, H, W, p, dtype=torch.bfloat16, device="cuda")
    for backend in GPU_BACKENDS:
        torch._dynamo.reset()
        compiled = torch.compile(lambda a, b, m: mae_kernels.masked_mse_loss(a, b, m, p), fullgraph=True)
        with mae_kernels.use_backend(backend):
            want = run_loss(backend, pred, imgs, mask, p, True)
            pr = pred.detach().requires_grad_()
            loss = compiled(pr, imgs, mask)
            loss.backward()
        assert_close("loss", loss.detach(), want[0], fp32_tol(want[0]))
        assert_close("grad pred", pr.grad, want[1], fp32_tol(want[1]))


def _launches(monkeypatch, fn):
    """[(kind, kernel, enclosing ops)] that fn launches, counted as python/static_report.py counts them: the
    interpreted Triton launches and the ATen kernels (views and allocations launch nothing)."""
    import os
    import sys

    from torch.profiler import ProfilerActivity, profile
    from triton.runtime import interpreter

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from python import static_report as sr
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", interpreter.InterpretedFunction.run)  # restored after
    sr._hook_triton_launches()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    kernels, _ = sr.kernels_of(sr._tree(prof.profiler.kineto_results.events()))
    return [(kind, name, within) for kind, name, _, _, _, within in kernels]


def test_triton_forward_launches(monkeypatch):
    """Issue 13 (5): a Triton forward is the scale, the rows and the total (3 launches; 2 without a gradient to
    write; per token the rows, after a zero fill when ids leave tokens out), and the model's pred view
    x[:, 1:, :] and the removed-only slice of ids_shuffle are read in place: no copy anywhere in the call."""
    C, H, W, p = SHAPES[3]
    pred, imgs, mask = make_inputs(C, H, W, p, N=2)
    N, L, P = pred.shape
    ids_shuffle = torch.argsort(torch.rand(N, L), dim=1)
    K = L // 4
    mask = torch.zeros_like(mask).scatter_(1, ids_shuffle[:, K:], 1.0)
    x = torch.cat([torch.zeros_like(pred[:, :1]), pred[:, K:]], dim=1)
    op = "mae_kernels::masked_mse_loss_triton"
    cases = [
        (dict(grad=True), ["_masked_mse_scale_kernel", "_masked_mse_rows_kernel", "_masked_mse_total_kernel"]),
        (dict(grad=False), ["_masked_mse_rows_kernel", "_masked_mse_total_kernel"]),
        (dict(grad=True, reduction="none"), ["aten::zero_", "_masked_mse_rows_kernel"]),
        (dict(grad=True, ids=False), ["_masked_mse_scale_kernel", "_masked_mse_rows_kernel",
                                      "_masked_mse_total_kernel"]),
        (dict(grad=True, ids=False, reduction="none"), ["_masked_mse_rows_kernel"]),
    ]
    for kw, want in cases:
        with_ids = kw.get("ids", True)
        xv = (x if with_ids else torch.cat([x[:, :1], pred], dim=1)).clone().requires_grad_(kw["grad"])
        m = mask if with_ids else torch.ones_like(mask)

        def call():
            with mae_kernels.use_backend("triton"):
                mae_kernels.masked_mse_loss(xv[:, 1:, :], imgs, m, p, ids_shuffle=ids_shuffle if with_ids else None,
                                            reduction=kw.get("reduction", "mean"))
        launched = _launches(monkeypatch, call)
        inside = [name for _, name, within in launched if op in within]
        assert inside == want, f"{kw}: the op launched {inside}, want {want}"
        copies = [name for _, name, _ in launched if name in ("aten::copy_", "aten::clone", "aten::contiguous")]
        assert not copies, f"{kw}: pred or ids were copied ({copies}): the kernel reads them by strides"
