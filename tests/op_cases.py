"""Every public op as a Case, shared by the hardening tests (test_properties, test_determinism,
test_streams_devices, test_memory, test_nonfinite): the op's tensor inputs, a closure over its other arguments,
and which inputs get a gradient. `run` calls the public function on one backend, forward and backward."""
import dataclasses
import math
from typing import Callable

import pytest
import torch

import mae_kernels
from mae_kernels import reference
from mae_kernels.ops.masked_mse_loss import _reference as masked_mse_loss_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Relative tolerance for results that involve arithmetic (sums, GEMMs, roundings from fp32), scaled by the
# magnitude of the expected tensor: a few units in the last place of each dtype.
RTOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3.2e-2, torch.float64: 1e-12}


def backend_params(cpu=("cpu", "triton", "reference"), gpu=("cuda", "triton")):
    """(backend, device) pairs: the CPU backends here, the GPU ones marked gpu (skipped without a GPU)."""
    return ([pytest.param(b, "cpu", id=f"{b}-cpu") for b in cpu]
            + [pytest.param(b, "cuda", id=f"{b}-cuda", marks=pytest.mark.gpu) for b in gpu])


@dataclasses.dataclass
class Case:
    name: str
    fn: Callable            # fn(**inputs) -> tensor or tuple of tensors (the public function)
    inputs: dict            # name -> tensor (or None)
    grad: tuple = ()        # names of the inputs that get a gradient
    exact: bool = True      # every output and gradient bit-exact against the reference
    tol_dtype: torch.dtype = torch.float64  # tolerance at least RTOL[tol_dtype] (an intermediate's precision)
    ref64: Callable = None  # the reference maths without the public function's dtype checks (float64 runs)
    # (inputs, float64 (outputs, grads)) -> {result name: magnitude of the terms that cancel in it}, for
    # results that are small differences of large terms (see assert_same)
    term_scale: Callable = None

    def to(self, device):
        device = torch.device(device)
        return dataclasses.replace(self, inputs={
            k: v.to(device) if isinstance(v, torch.Tensor) else device if isinstance(v, torch.device) else v
            for k, v in self.inputs.items()})


def upstream(out, seed=1234):
    """A fixed upstream gradient for `out`: the same values on every device and in every dtype (bf16 values,
    none below 2**-8, are exact in fp16 too), so that a float64 run gets the same upstream gradient. Uniform,
    not torch.randn, whose CPU kernel draws other numbers on other vector ISAs: the same on every machine."""
    g = (torch.rand(out.shape, generator=torch.Generator().manual_seed(seed)) * 4 - 2).bfloat16().float()
    g[g.abs() < 2**-8] = 0.0
    return g.to(out.dtype).to(out.device)


def run(case, backend, grad=True, grad_outputs=None, copy=True):
    """(outputs, gradients) of case.fn on `backend`, on fresh copies of the inputs (copy=False: on the inputs
    themselves, which must be leaves); gradients follow case.grad (None where an input gets none).
    grad_outputs: upstream gradients (default: `upstream` of each output), or a function of the outputs that
    need them returning them."""
    inputs = {k: ((v.detach().clone() if copy else v).requires_grad_(grad and k in case.grad)
                  if isinstance(v, torch.Tensor) else v) for k, v in case.inputs.items()}
    with mae_kernels.use_backend(backend):
        outs = case.fn(**inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads = ()
        if grad and case.grad:
            diff = [o for o in outs if o.requires_grad]
            seeds = (grad_outputs(diff) if callable(grad_outputs) else grad_outputs
                     or [upstream(o, 1234 + i) for i, o in enumerate(diff)])
            grads = torch.autograd.grad(diff, [inputs[k] for k in case.grad], seeds, allow_unused=True)
    return tuple(o.detach() for o in outs), tuple(None if g is None else g.detach() for g in grads)


def run64(case):
    """`run` of the reference maths in float64 (inputs upcast, except the float32 noise of the maskings)."""
    inputs = {k: v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() and k != "noise" else v
              for k, v in case.inputs.items()}
    return run(dataclasses.replace(case, fn=case.ref64 or case.fn, inputs=inputs), "reference")


def names(case, outs, grads):
    return [f"output {i}" for i in range(len(outs))] + [f"grad {k}" for k in case.grad[:len(grads)]]


def first_mismatch(bad):
    return tuple(bad.nonzero()[0].tolist()) if bad.any() else None


def assert_same(name, got, want, exact=True, tol_dtype=torch.float64, want64=None, term_scale=0.0):
    """got == want (NaN where want is NaN, the same infinities), or, when not exact, within the RTOL of got's
    dtype (or of tol_dtype, whichever is larger) of want, or with a largest error against the float64 result
    want64 at most twice the reference's (the rule for reductions whose result cancels to near zero) or at most
    RTOL x term_scale, the magnitude of the terms that cancel: how lucky the eager reference's own rounding is
    depends on the CPU's kernels, the rounding a cancelling result must be allowed does not.

    With want64 (results that go through ATen arithmetic: GEMMs, convolutions, reductions), NaN and infinities
    are judged against want64 rounded to got's dtype, not against want: the low-precision eager reference's
    non-finite pattern depends on the CPU (oneDNN's AVX-512 bf16 convolution turns some infinities into NaN;
    its AVX2 and float64 paths do not), while exact maths in float64 gives one answer on every CPU. Where the
    reference is non-finite but exact maths is not, values are compared with want64 instead."""
    if want is None or got is None:
        assert got is None and want is None, f"{name}: {got is None=} {want is None=}"
        return
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    got, want = got.cpu(), want.cpu()
    if not got.is_floating_point():
        bad = got != want
        assert not bad.any(), f"{name}: first mismatch at {first_mismatch(bad)}: {got[bad][:4]} != {want[bad][:4]}"
        return
    g, w = got.double(), want.double()
    pattern = w if exact or want64 is None else want64.cpu().to(got.dtype).double()
    nan_bad = g.isnan() != pattern.isnan()
    assert not nan_bad.any(), f"{name}: NaN pattern differs{'' if pattern is w else ' from exact maths'}, " \
                              f"first at {first_mismatch(nan_bad)}"
    inf_bad = (g.isinf() | pattern.isinf()) & (g != pattern)
    assert not inf_bad.any(), f"{name}: infinities differ, first at {first_mismatch(inf_bad)}"
    w = torch.where(w.isfinite() | ~pattern.isfinite(), w, want64.cpu().double()) if pattern is not w else w
    finite = pattern.isfinite()
    if exact:
        bad = finite & (g != w)
    else:
        rtol = max(RTOL[got.dtype], RTOL[tol_dtype])
        scale = w[finite].abs().max().item() if finite.any() else 0.0
        bad = finite & ((g - w).abs() > rtol * (w.abs() + scale + 1e-30))
        if bad.any() and want64 is not None:
            w64 = want64.cpu().double()
            err, err_ref = (g - w64)[finite].abs().max(), (w - w64)[finite].abs().max()
            if err <= 2 * err_ref + rtol * 1e-3 * scale or err <= rtol * term_scale:
                return
    assert not bad.any(), (f"{name}: first mismatch at {first_mismatch(bad)}: got {g[bad][:4].tolist()} "
                           f"want {w[bad][:4].tolist()} ({int(bad.sum())} of {bad.numel()})")


def assert_results_equal(case, got, want, exact=None, want64=None):
    """Outputs and gradients of two `run`s agree (bit for bit when exact; see assert_same)."""
    exact = case.exact if exact is None else exact
    (go, gg), (wo, wg) = got, want
    assert len(go) == len(wo) and len(gg) == len(wg)
    w64 = want64[0] + want64[1] if want64 is not None else (None,) * (len(go) + len(gg))
    terms = case.term_scale(case.inputs, want64) if want64 is not None and case.term_scale is not None else {}
    for name, a, b, c in zip(names(case, go, gg), go + gg, wo + wg, w64):
        assert_same(f"{case.name} {name}", a, b, exact, case.tol_dtype, c, terms.get(name, 0.0))


def assert_bitwise_equal(case, got, want):
    """torch.equal on every output and gradient (NaN compared by bit pattern position)."""
    (go, gg), (wo, wg) = got, want
    for name, a, b in zip(names(case, go, gg), go + gg, wo + wg):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        same = torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
        assert same, f"{case.name} {name}: not bit-identical (first at {first_mismatch(a != b)})"


# ---------------------------------------------------------------------------------------------- the cases
def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _ids(g, N, L):
    """ids_shuffle [N, L]: a random permutation per row."""
    return torch.rand(N, L, generator=g).argsort(dim=1)


def random_masking_case(N=2, L=12, D=5, ratio=0.75, dtype=torch.float32, seed=0, noise="rand"):
    """noise: 'rand', 'ties' (few distinct levels), 'special' (NaN and infinities too) or None (drawn)."""
    g = _gen(seed)
    x = _randn(g, N, L, D, dtype=dtype)
    nz = None if noise is None else torch.rand(N, L, generator=g)
    if noise in ("ties", "special"):
        nz = (nz * 4).floor() / 4
    if noise == "special":
        flat = nz.view(-1)
        pick = torch.randperm(flat.numel(), generator=g)[:3]
        flat[pick] = torch.tensor([float("nan"), float("inf"), float("-inf")])[:len(pick)]
    return Case("random_masking", lambda x, noise: mae_kernels.random_masking(x, ratio, noise),
                dict(x=x, noise=nz), grad=("x",))


def random_mask_indices_case(N=2, L=12, ratio=0.75, seed=0, noise="rand"):
    """noise None: drawn on `device` (an input, so that Case.to moves it)."""
    nz = None if noise is None else torch.rand(N, L, generator=_gen(seed))

    def fn(noise, device):
        return mae_kernels.random_mask_indices(N, L, ratio, noise=noise, device=device)
    return Case("random_mask_indices", fn, dict(noise=nz, device=torch.device("cpu")))


def tube_mask_indices_case(N=2, t=3, hw=6, ratio=0.75, seed=0, noise="rand"):
    """VideoMAE tube masking; noise as random_masking_case ('rand', 'ties', 'special', or None: drawn on
    `device`, an input so that Case.to moves it)."""
    g = _gen(seed)
    nz = None if noise is None else torch.rand(N, hw, generator=g)
    if noise in ("ties", "special"):
        nz = (nz * 4).floor() / 4
    if noise == "special":
        flat = nz.view(-1)
        pick = torch.randperm(flat.numel(), generator=g)[:3]
        flat[pick] = torch.tensor([float("nan"), float("inf"), float("-inf")])[:len(pick)]

    def fn(noise, device):
        return mae_kernels.tube_mask_indices(N, t, hw, ratio, noise=noise, device=device)
    return Case("tube_mask_indices", fn, dict(noise=nz, device=torch.device("cpu")))


def mask_to_indices_case(N=2, L=12, K=4, seed=0, given=True, strided=False):
    """A boolean mask with K kept (False) patches per row; given: num_kept passed (no host sync); strided: the
    mask a non-contiguous view (a column slice of a wider mask)."""
    keep = _ids(_gen(seed), N, L)[:, :K]
    bool_mask = torch.ones(N, L, dtype=torch.bool).scatter(1, keep, False)
    if strided:
        wide = torch.zeros(N, 2 * L, dtype=torch.bool)
        wide[:, ::2] = bool_mask
        bool_mask = wide[:, ::2]
    return Case("mask_to_indices", lambda bool_mask: mae_kernels.mask_to_indices(bool_mask, K if given else None),
                dict(bool_mask=bool_mask))


def decoder_mask_indices_case(N=2, t=3, h=2, w=4, ratio=0.5, mask_type="run_cell", seed=0, scope="all"):
    """VideoMAEv2 decoder masks: run_cell with given starts, or random with given noise; scope "removed": only
    the positions a random encoder mask removes (L - L // 3 of them; noise the selection or the tie-break)."""
    g = _gen(seed)
    L = t * h * w
    start = torch.randint(0, 4, (N,), generator=g)
    noise = torch.rand(N, L, generator=g)
    n_rem = L - L // 3
    encoder_mask = torch.zeros(N, L).scatter(1, torch.rand(N, L, generator=g).argsort(1)[:, :n_rem], 1.0)

    def fn(start, noise, encoder_mask):
        kw = dict(start=start) if mask_type == "run_cell" else dict(noise=noise)
        if scope == "removed":
            kw.update(noise=noise, scope="removed", encoder_mask=encoder_mask, num_removed=n_rem)
        return mae_kernels.decoder_mask_indices(N, t, h, w, ratio, mask_type=mask_type, **kw)
    return Case("decoder_mask_indices", fn, dict(start=start, noise=noise, encoder_mask=encoder_mask))


def _images(g, N, C, h, w, p, dtype, channels_last=False):
    imgs = _randn(g, N, C, h * p, w * p, dtype=dtype)
    return imgs.contiguous(memory_format=torch.channels_last) if channels_last else imgs


def patchify_case(N=2, C=3, h=2, w=3, p=2, dtype=torch.float32, seed=0, channels_last=False):
    imgs = _images(_gen(seed), N, C, h, w, p, dtype, channels_last)
    return Case("patchify", lambda imgs: mae_kernels.patchify(imgs, p), dict(imgs=imgs), grad=("imgs",))


def unpatchify_case(N=2, C=3, h=2, w=3, p=2, dtype=torch.float32, seed=0):
    x = _randn(_gen(seed), N, h * w, p * p * C, dtype=dtype)
    return Case("unpatchify", lambda x: mae_kernels.unpatchify(x, p, (h * p, w * p)), dict(x=x), grad=("x",))


def masked_patchify_case(N=2, C=3, h=2, w=3, p=2, K=2, dtype=torch.float32, seed=0, channels_last=False):
    g = _gen(seed)
    imgs = _images(g, N, C, h, w, p, dtype, channels_last)
    ids_keep = _ids(g, N, h * w)[:, :K].contiguous()
    return Case("masked_patchify", lambda imgs, ids_keep: mae_kernels.masked_patchify(imgs, ids_keep, p),
                dict(imgs=imgs, ids_keep=ids_keep), grad=("imgs",))


def _embed_params(g, C, p, D, L, dtype, pos, pos_dtype):
    weight = _randn(g, D, C, p, p, dtype=dtype, scale=(C * p * p) ** -0.5)
    bias = _randn(g, D, dtype=dtype)
    pos_embed = None if pos is None else _randn(g, 1, 1 + L, D, dtype=pos_dtype or dtype)
    return weight, bias, pos_embed


def masked_patch_embed_case(N=2, C=3, h=2, w=3, p=2, K=2, D=6, dtype=torch.float32, seed=0, pos="grad",
                            pos_dtype=None, channels_last=False):
    """pos: None (no pos_embed), 'fixed' (no gradient) or 'grad' (trainable)."""
    g = _gen(seed)
    L = h * w
    imgs = _images(g, N, C, h, w, p, dtype, channels_last)
    ids_keep = _ids(g, N, L)[:, :K].contiguous()
    weight, bias, pos_embed = _embed_params(g, C, p, D, L, dtype, pos, pos_dtype)
    return Case("masked_patch_embed", mae_kernels.masked_patch_embed, ref64=reference.masked_patch_embed,
                inputs=dict(imgs=imgs, ids_keep=ids_keep, weight=weight, bias=bias, pos_embed=pos_embed),
                grad=("imgs", "weight", "bias") + (("pos_embed",) if pos == "grad" else ()), exact=False,
                tol_dtype=dtype)


def random_masked_patch_embed_case(N=2, C=3, h=2, w=3, p=2, D=6, ratio=0.5, dtype=torch.float32, seed=0,
                                   pos="fixed"):
    g = _gen(seed)
    L = h * w
    imgs = _images(g, N, C, h, w, p, dtype)
    weight, bias, pos_embed = _embed_params(g, C, p, D, L, dtype, pos, None)
    noise = torch.rand(N, L, generator=g)

    def fn(imgs, weight, bias, pos_embed, noise):
        return mae_kernels.random_masked_patch_embed(imgs, weight, bias, pos_embed, ratio, noise=noise)

    def ref64(imgs, weight, bias, pos_embed, noise):
        ids_keep, ids_restore, mask = reference.random_mask_indices(N, L, ratio, noise)
        return reference.masked_patch_embed(imgs, ids_keep, weight, bias, pos_embed), mask, ids_restore, ids_keep
    return Case("random_masked_patch_embed", fn, ref64=ref64,
                inputs=dict(imgs=imgs, weight=weight, bias=bias, pos_embed=pos_embed, noise=noise),
                grad=("imgs", "weight", "bias") + (("pos_embed",) if pos == "grad" else ()), exact=False,
                tol_dtype=dtype)


def _video(g, N, C, grid, tubelet, dtype, hf=False):
    """A clip [N, C, T, H, W] of (t, h, w) tubelets; hf: HF's [N, T, C, H, W] tensor seen through its permute."""
    T, H, W = (n * s for n, s in zip(grid, tubelet))
    if hf:
        return _randn(g, N, T, C, H, W, dtype=dtype).permute(0, 2, 1, 3, 4)
    return _randn(g, N, C, T, H, W, dtype=dtype)


def video_patchify_case(N=2, C=3, grid=(2, 2, 3), tubelet=(2, 2, 3), dtype=torch.float32, seed=0, hf=True):
    clip = _video(_gen(seed), N, C, grid, tubelet, dtype, hf)
    return Case("patchify", lambda imgs: mae_kernels.patchify(imgs, tubelet), dict(imgs=clip), grad=("imgs",))


def video_masked_patchify_case(N=2, C=3, grid=(2, 2, 3), tubelet=(2, 2, 3), K=5, dtype=torch.float32, seed=0,
                               hf=True):
    g = _gen(seed)
    clip = _video(g, N, C, grid, tubelet, dtype, hf)
    ids_keep = _ids(g, N, math.prod(grid))[:, :K].contiguous()
    return Case("masked_patchify", lambda imgs, ids_keep: mae_kernels.masked_patchify(imgs, ids_keep, tubelet),
                dict(imgs=clip, ids_keep=ids_keep), grad=("imgs",))


def video_masked_patch_embed_case(N=2, C=3, grid=(2, 2, 3), tubelet=(2, 2, 3), K=5, D=6, dtype=torch.float32,
                                  seed=0, pos="separable", hf=True):
    """The tubelet embedding; pos: 'separable' (mae_st's spatial + temporal pair, both trainable) or 'table'
    (VideoMAE's [1, L, D], fixed)."""
    g = _gen(seed)
    clip = _video(g, N, C, grid, tubelet, dtype, hf)
    L = math.prod(grid)
    ids_keep = _ids(g, N, L)[:, :K].contiguous()
    weight = _randn(g, D, C, *tubelet, dtype=dtype, scale=(C * math.prod(tubelet)) ** -0.5)
    bias = _randn(g, D, dtype=dtype)
    if pos == "separable":
        spatial, temporal = _randn(g, 1, grid[1] * grid[2], D, dtype=dtype), _randn(g, 1, grid[0], D, dtype=dtype)
        fn = lambda imgs, ids_keep, weight, bias, spatial, temporal: mae_kernels.masked_patch_embed(  # noqa: E731
            imgs, ids_keep, weight, bias, (spatial, temporal))
        ref = lambda imgs, ids_keep, weight, bias, spatial, temporal: reference.masked_patch_embed(  # noqa: E731
            imgs, ids_keep, weight, bias, (spatial, temporal))
        inputs = dict(imgs=clip, ids_keep=ids_keep, weight=weight, bias=bias, spatial=spatial, temporal=temporal)
        grads = ("imgs", "weight", "bias", "spatial", "temporal")
    else:
        fn, ref = mae_kernels.masked_patch_embed, reference.masked_patch_embed
        inputs = dict(imgs=clip, ids_keep=ids_keep, weight=weight, bias=bias, pos_embed=_randn(g, 1, L, D))
        grads = ("imgs", "weight", "bias")
    return Case("masked_patch_embed", fn, ref64=ref, inputs=inputs, grad=grads, exact=False, tol_dtype=dtype)


def video_cases(dtype=torch.float32, seed=0):
    """The patch ops on videos (HF's permuted layout) in tubelets: one small case each."""
    return [video_patchify_case(dtype=dtype, seed=seed), video_masked_patchify_case(dtype=dtype, seed=seed),
            video_masked_patch_embed_case(dtype=dtype, seed=seed),
            video_masked_patch_embed_case(dtype=dtype, seed=seed, pos="table", hf=False)]


def unshuffle_case(N=2, L=7, K=3, D=5, dtype=torch.float32, param_dtype=torch.float32, has_cls=True, pos="grad",
                   seed=0):
    g = _gen(seed)
    c = int(has_cls)
    x = _randn(g, N, c + K, D, dtype=dtype)
    mask_token = _randn(g, 1, 1, D, dtype=param_dtype)
    ids_restore = _ids(g, N, L).argsort(dim=1)
    pos_embed = None if pos is None else _randn(g, 1, c + L, D, dtype=param_dtype)

    def fn(x, mask_token, ids_restore, pos_embed):
        return mae_kernels.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed, has_cls=has_cls)

    def ref64(x, mask_token, ids_restore, pos_embed):
        return reference.unshuffle_with_mask_tokens(x, mask_token, ids_restore, pos_embed, has_cls)
    return Case("unshuffle_with_mask_tokens", fn, ref64=ref64,
                inputs=dict(x=x, mask_token=mask_token, ids_restore=ids_restore, pos_embed=pos_embed),
                grad=("x", "mask_token") + (("pos_embed",) if pos == "grad" else ()), exact=False)


def append_mask_tokens_case(N=2, L=9, K=3, M=4, D=5, dtype=torch.float32, param_dtype=torch.float32,
                            has_cls=False, pos="grad", seed=0):
    """Dual masking's decoder input: ids_dec drawn independently of ids_keep (positions may repeat across them)."""
    g = _gen(seed)
    c = int(has_cls)
    x = _randn(g, N, c + K, D, dtype=dtype)
    mask_token = _randn(g, 1, 1, D, dtype=param_dtype)
    ids_keep, ids_dec = _ids(g, N, L)[:, :K], _ids(g, N, L)[:, :M]
    pos_embed = None if pos is None else _randn(g, 1, c + L, D, dtype=param_dtype)

    def fn(x, mask_token, ids_keep, ids_dec, pos_embed):
        return mae_kernels.append_mask_tokens(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls=has_cls)

    def ref64(x, mask_token, ids_keep, ids_dec, pos_embed):
        return reference.append_mask_tokens(x, mask_token, ids_keep, ids_dec, pos_embed, has_cls)
    return Case("append_mask_tokens", fn, ref64=ref64,
                inputs=dict(x=x, mask_token=mask_token, ids_keep=ids_keep, ids_dec=ids_dec, pos_embed=pos_embed),
                grad=("x", "mask_token") + (("pos_embed",) if pos == "grad" else ()), exact=False)


def masked_mse_loss_case(N=2, C=3, h=2, w=3, p=2, K=2, dtype=torch.float32, img_dtype=None, norm=True,
                         removed_only=False, seed=0, channels_last=False):
    """removed_only: pred holds the L - K removed patches only (ids_shuffle given)."""
    g = _gen(seed)
    L, P = h * w, p * p * C
    imgs = _images(g, N, C, h, w, p, img_dtype or dtype, channels_last)
    ids_shuffle = _ids(g, N, L)
    mask = torch.ones(N, L).scatter(1, ids_shuffle[:, :K], 0.0)
    pred = _randn(g, N, L - K if removed_only else L, P, dtype=dtype)

    def fn(pred, imgs, mask, ids_shuffle):
        return mae_kernels.masked_mse_loss(pred, imgs, mask, p, norm_pix_loss=norm, ids_shuffle=ids_shuffle)

    def ref64(pred, imgs, mask, ids_shuffle):
        return masked_mse_loss_reference(pred, imgs, mask, p, norm, 1e-6, ids_shuffle)

    def term_scale(inputs, results64):
        """grad imgs with norm_pix_loss is (d - mean(d) - t * (d . t) / (P - 1)) / std per patch, d the pred
        gradient: terms of size |d| / std that cancel almost exactly when P is small."""
        grad_pred = results64[1][0]
        if not norm or grad_pred.numel() == 0:
            return {}
        _, std = reference.patch_stats(inputs["imgs"].double(), p)
        return {"grad imgs": 3 * grad_pred.abs().max().item() / std.min().item()}
    return Case("masked_mse_loss", fn, ref64=ref64, term_scale=term_scale,
                inputs=dict(pred=pred, imgs=imgs, mask=mask, ids_shuffle=ids_shuffle if removed_only else None),
                grad=("pred", "imgs"), exact=False)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def video_mse_loss_case(mode="videomae", N=2, C=3, t=2, h=2, w=3, u=2, p=2, dtype=torch.float32, K=2,
                        reduction="mean", weighted=False, seed=0):
    """masked_mse_loss on videos [N, C, t*u, h*p, w*p] (MAE_SPEC_VIDEO.md). mode "videomae": per-channel target on
    ImageNet-un-normalised pixels, predictions of the removed tokens only (ids_shuffle); "mae_st": all-channel
    target from mae_st's linspace frames (one per token), predictions for all L tokens; "tubelet": the image rule on
    tubelets, with the imgs gradient. reduction / weighted: per-token losses, per-token weights."""
    g = _gen(seed)
    L = t * h * w
    imgs = _randn(g, N, C, t * u, h * p, w * p, dtype=dtype)
    ids_shuffle = _ids(g, N, L)
    mask = torch.ones(N, L).scatter(1, ids_shuffle[:, :K], 0.0)
    weight = torch.rand(N, L, generator=g).to(dtype) + 0.5 if weighted else None
    kw = {}
    if mode == "videomae":
        kw = dict(per_channel=True, pixel_mean=IMAGENET[0], pixel_std=IMAGENET[1])
    elif mode == "mae_st":
        kw = dict(target_frames=reference.mae_st_target_frames(t * u, t))
    P = (1 if mode == "mae_st" else u) * p * p * C
    pred = _randn(g, N, L - K if mode == "videomae" else L, P, dtype=dtype)
    ids = ids_shuffle if mode == "videomae" else None

    def fn(pred, imgs, mask, ids_shuffle, weight):
        return mae_kernels.masked_mse_loss(pred, imgs, mask, (u, p, p), ids_shuffle=ids_shuffle,
                                           reduction=reduction, weight=weight, **kw)

    def ref64(pred, imgs, mask, ids_shuffle, weight):
        frames = kw.get("target_frames")
        norm = None if mode != "videomae" else torch.tensor(IMAGENET[::-1], dtype=torch.float64)
        return masked_mse_loss_reference(pred, imgs, mask, (u, p, p), True, 1e-6, ids_shuffle, mode == "videomae",
                                         frames, norm, reduction, weight)
    return Case("masked_mse_loss", fn, ref64=ref64,
                inputs=dict(pred=pred, imgs=imgs, mask=mask, ids_shuffle=ids, weight=weight),
                grad=("pred", "imgs") if mode == "tubelet" else ("pred",), exact=False)


def patch_stats_case(N=2, C=3, h=2, w=3, p=2, dtype=torch.float32, seed=0):
    imgs = _images(_gen(seed), N, C, h, w, p, dtype)
    # Reductions by torch on the tensors' device (every backend runs the reference maths): not bit-exact on a GPU.
    return Case("patch_stats", lambda imgs: mae_kernels.patch_stats(imgs, p), dict(imgs=imgs), grad=("imgs",),
                exact=False, ref64=lambda imgs: reference.patch_stats(imgs, p))


def denormalize_pred_case(N=2, C=3, h=2, w=3, p=2, dtype=torch.float32, seed=0):
    g = _gen(seed)
    imgs = _images(g, N, C, h, w, p, dtype)
    pred = _randn(g, N, h * w, p * p * C, dtype=dtype)
    return Case("denormalize_pred", lambda pred, imgs: mae_kernels.denormalize_pred(pred, imgs, p),
                dict(pred=pred, imgs=imgs), grad=("pred", "imgs"), exact=False,
                ref64=lambda pred, imgs: reference.denormalize_pred(pred, imgs, p))


def video_patch_stats_case(N=2, C=3, t=2, h=2, w=3, u=2, p=2, dtype=torch.float32, seed=0):
    """patch_stats on videos with VideoMAE's per-channel statistics of ImageNet-un-normalised pixels."""
    imgs = _randn(_gen(seed), N, C, t * u, h * p, w * p, dtype=dtype)
    kw = dict(per_channel=True, pixel_mean=IMAGENET[0], pixel_std=IMAGENET[1])
    return Case("patch_stats", lambda imgs: mae_kernels.patch_stats(imgs, (u, p, p), **kw), dict(imgs=imgs),
                grad=("imgs",), exact=False, ref64=lambda imgs: reference.patch_stats(imgs, (u, p, p), **kw))


def all_cases(dtype=torch.float32, seed=0):
    """One small case of every public op (the ones with a gradient use it)."""
    return [
        random_masking_case(dtype=dtype, seed=seed),
        random_mask_indices_case(seed=seed),
        tube_mask_indices_case(seed=seed),
        mask_to_indices_case(seed=seed),
        decoder_mask_indices_case(seed=seed),
        decoder_mask_indices_case(seed=seed, scope="removed"),
        patchify_case(dtype=dtype, seed=seed),
        unpatchify_case(dtype=dtype, seed=seed),
        masked_patchify_case(dtype=dtype, seed=seed),
        masked_patch_embed_case(dtype=dtype, seed=seed),
        random_masked_patch_embed_case(dtype=dtype, seed=seed),
        unshuffle_case(dtype=dtype, seed=seed),
        append_mask_tokens_case(dtype=dtype, seed=seed),
        masked_mse_loss_case(dtype=dtype, seed=seed),
        masked_mse_loss_case(dtype=dtype, seed=seed, removed_only=True),
        video_mse_loss_case("videomae", dtype=dtype, seed=seed),
        video_mse_loss_case("mae_st", dtype=dtype, seed=seed, reduction="none", weighted=True),
        video_mse_loss_case("tubelet", dtype=dtype, seed=seed),
        patch_stats_case(dtype=dtype, seed=seed),
        video_patch_stats_case(dtype=dtype, seed=seed),
        denormalize_pred_case(dtype=dtype, seed=seed),
    ] + video_cases(dtype=dtype, seed=seed)


def gpu_cases():
    """One case of every op, large enough on a GPU for many blocks to share each reduction (where atomics or a
    wrong stream would show)."""
    return [
        random_masking_case(N=64, L=196, D=256),
        random_mask_indices_case(N=64, L=1568),
        tube_mask_indices_case(N=64, t=8, hw=196, ratio=0.9),
        mask_to_indices_case(N=64, L=1568, K=160),
        decoder_mask_indices_case(N=64, t=8, h=14, w=14),
        decoder_mask_indices_case(N=64, t=8, h=14, w=14, scope="removed"),
        patchify_case(N=8, C=3, h=14, w=10, p=16),
        unpatchify_case(N=8, C=3, h=14, w=10, p=16),
        masked_patchify_case(N=8, C=3, h=14, w=14, p=16, K=49),
        masked_patch_embed_case(N=32, C=3, h=14, w=14, p=16, K=49, D=256, pos="grad"),
        random_masked_patch_embed_case(N=16, C=3, h=14, w=14, p=16, D=256, ratio=0.75),
        unshuffle_case(N=64, L=196, K=49, D=512, dtype=torch.bfloat16),
        append_mask_tokens_case(N=32, L=1568, K=160, M=784, D=384, dtype=torch.bfloat16),
        masked_mse_loss_case(N=32, C=3, h=14, w=14, p=16, K=49),
        masked_mse_loss_case(N=32, C=3, h=14, w=14, p=16, K=49, removed_only=True, dtype=torch.bfloat16),
        video_mse_loss_case("videomae", N=4, t=8, h=14, w=14, p=16, K=160, dtype=torch.bfloat16),
        video_mse_loss_case("mae_st", N=4, t=8, h=14, w=14, p=16, K=156, reduction="none", weighted=True),
        patch_stats_case(N=8, C=3, h=14, w=14, p=16),
        denormalize_pred_case(N=8, C=3, h=14, w=14, p=16),
        # the spec's clip (16 x 224 x 224, 2x16x16 tubelets, L = 1568, 156 kept)
        video_masked_patchify_case(N=8, grid=(8, 14, 14), tubelet=(2, 16, 16), K=156),
        video_masked_patch_embed_case(N=8, grid=(8, 14, 14), tubelet=(2, 16, 16), K=156, D=256),
    ]
