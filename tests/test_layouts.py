"""Every public op on non-contiguous inputs (channels_last images, transposed and sliced views, non-contiguous
index tensors, expanded pos_embed / mask_token / bias with stride 0) gives the reference's result on the same
values laid out contiguously, forward and backward (with non-contiguous upstream gradients too), on every
backend. Ops read strided inputs in place or make a documented contiguous copy; either way the values match."""
import pytest
import torch

import mae_kernels

CPU_BACKENDS = ["cpu", "triton", "reference"]
GPU_BACKENDS = ["cuda", "triton"]
LAYOUTS = ["transposed", "sliced", "channels_last"]
N, C, H, W, P_SIZE, D = 2, 3, 8, 6, 2, 8
L = (H // P_SIZE) * (W // P_SIZE)  # 12
P = P_SIZE * P_SIZE * C
K = 4


def relayout(t, layout):
    """The same values in a non-contiguous layout: channels_last (4-D; channels_last_3d for 5-D), hf (5-D: the
    permuted view of an [N, T, C, H, W] clip), a transposed copy, or a slice of a wider buffer. Tensors of one
    element or less stay as they are."""
    if not isinstance(t, torch.Tensor) or t.numel() <= 1:
        return t
    if layout == "channels_last" and t.dim() == 4:
        out = t.contiguous(memory_format=torch.channels_last)
    elif layout == "channels_last" and t.dim() == 5:
        out = t.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "hf" and t.dim() == 5:  # HF's [N, T, C, H, W] clip seen as [N, C, T, H, W]
        out = t.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "transposed" and t.dim() >= 2:
        out = t.transpose(0, -1).contiguous().transpose(0, -1)
    else:
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=t.device)
        out = big[..., 1::2]
        out.copy_(t)
    assert torch.equal(out, t)
    return out


def _perms(device):
    return torch.stack([torch.randperm(L) for _ in range(N)]).to(device)


def _cases(device):
    """{op: (kwargs with contiguous tensors, differentiable argument names, exact)}."""
    imgs = torch.randn(N, C, H, W, device=device)
    perm = _perms(device)
    keep = perm[:, :K]
    mask = torch.ones(N, L, device=device).scatter(1, keep, 0.0)
    weight, bias = torch.randn(D, C, P_SIZE, P_SIZE, device=device), torch.randn(D, device=device)
    pos = torch.randn(1, 1 + L, D, device=device)
    return {
        "random_masking": (dict(x=torch.randn(N, L, D, device=device), mask_ratio=0.6,
                                noise=torch.rand(N, L, device=device)), ["x"], True),
        "random_mask_indices": (dict(N=N, L=L, mask_ratio=0.6, noise=torch.rand(N, L, device=device)), [], True),
        "tube_mask_indices": (dict(N=N, t=2, hw=L, mask_ratio=0.6, noise=torch.rand(N, L, device=device)), [], True),
        "decoder_mask_indices": (dict(N=N, t=2, h=2, w=L // 2, mask_ratio=0.5, mask_type="random",
                                      noise=torch.rand(N, L * 2, device=device)), [], True),
        "mask_to_indices": (dict(bool_mask=torch.ones(N, L, dtype=torch.bool, device=device).scatter(1, keep, False),
                                 num_kept=K), [], True),
        "patchify": (dict(imgs=imgs, patch_size=P_SIZE), ["imgs"], True),
        "unpatchify": (dict(x=torch.randn(N, L, P, device=device), patch_size=P_SIZE, image_size=(H, W)), ["x"], True),
        "masked_patchify": (dict(imgs=imgs, ids_keep=keep, patch_size=P_SIZE), ["imgs"], True),
        "masked_patch_embed": (dict(imgs=imgs, ids_keep=keep, weight=weight, bias=bias, pos_embed=pos),
                               ["imgs", "weight", "bias", "pos_embed"], False),
        "random_masked_patch_embed": (dict(imgs=imgs, weight=weight, bias=bias, pos_embed=pos, mask_ratio=0.6,
                                           noise=torch.rand(N, L, device=device)), ["imgs", "weight"], False),
        "unshuffle_with_mask_tokens": (dict(x=torch.randn(N, 1 + K, D, device=device),
                                            mask_token=torch.randn(1, 1, D, device=device),
                                            ids_restore=torch.argsort(perm, dim=1), pos_embed=pos),
                                       ["x", "mask_token", "pos_embed"], True),
        "append_mask_tokens": (dict(x=torch.randn(N, K, D, device=device),
                                    mask_token=torch.randn(1, 1, D, device=device), ids_keep=keep,
                                    ids_dec=perm[:, K:], pos_embed=pos[:, 1:]), ["x", "mask_token", "pos_embed"],
                               False),
        "masked_mse_loss": (dict(pred=torch.randn(N, L - K, P, device=device), imgs=imgs, mask=mask,
                                 patch_size=P_SIZE, ids_shuffle=perm), ["pred", "imgs"], False),
        "patch_stats": (dict(imgs=imgs, patch_size=P_SIZE), [], False),
        "denormalize_pred": (dict(pred=torch.randn(N, L, P, device=device), imgs=imgs, patch_size=P_SIZE),
                             ["pred"], False),
    }


def _leaves(args, grads, layout):
    out = {}
    for k, v in args.items():
        v = relayout(v, layout)
        if k in grads:
            v = v.detach().requires_grad_()
        out[k] = v
    return out


def _outputs(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _compare(got, want, exact, what):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    if exact:
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: f"{what}: {m}")
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{what}: {m}")


def _video_cases(device):
    """{name: (op, kwargs, differentiable argument names, exact)}: videos [N, C, T, H, W] in 2x2x3 tubelets
    (L = 2*4*2 = 16) with the full table, the separable pair, and rectangular image patches."""
    T, Hv, Wv, ps = 4, 8, 6, (2, 2, 3)
    Lv = (T // 2) * (Hv // 2) * (Wv // 3)
    clip = torch.randn(N, C, T, Hv, Wv, device=device)
    keep = torch.stack([torch.randperm(Lv) for _ in range(N)]).to(device)[:, :5]
    weight, bias = torch.randn(D, C, *ps, device=device), torch.randn(D, device=device)
    spatial, temporal = torch.randn(1, 8, D, device=device), torch.randn(1, 2, D, device=device)
    return {
        "patchify video": ("patchify", dict(imgs=clip, patch_size=ps), ["imgs"], True),
        "unpatchify video": ("unpatchify", dict(x=torch.randn(N, Lv, 12 * C, device=device), patch_size=ps,
                                                image_size=(T, Hv, Wv)), ["x"], True),
        "masked_patchify video": ("masked_patchify", dict(imgs=clip, ids_keep=keep, patch_size=ps), ["imgs"], True),
        "masked_patchify rect": ("masked_patchify", dict(imgs=torch.randn(N, C, H, W, device=device),
                                                         ids_keep=torch.stack([torch.randperm(8)[:3] for _ in range(N)]).to(device),
                                                         patch_size=(2, 3)), ["imgs"], True),
        "masked_patch_embed video": ("masked_patch_embed",
                                     dict(imgs=clip, ids_keep=keep, weight=weight, bias=bias,
                                          pos_embed=torch.randn(1, Lv, D, device=device)),
                                     ["imgs", "weight", "bias", "pos_embed"], False),
        "masked_patch_embed video separable": ("masked_patch_embed",
                                               dict(imgs=clip, ids_keep=keep, weight=weight, bias=bias,
                                                    pos_embed=(spatial, temporal)), ["imgs", "weight"], False),
    }


def check_layout(op, backend, device, layout, cases=None):
    if cases is None:
        args, grads, exact = _cases(device)[op]
        fn = getattr(mae_kernels, op)
    else:
        name, args, grads, exact = cases[op]
        fn = getattr(mae_kernels, name)
    strided, plain = _leaves(args, grads, layout), _leaves(args, grads, "contiguous")
    assert any(isinstance(v, torch.Tensor) and v.numel() > 1 and not v.is_contiguous() for v in strided.values())
    with mae_kernels.use_backend(backend):
        got = _outputs(fn(**strided))
    with mae_kernels.use_backend("reference"):
        want = _outputs(fn(**plain))
    for i, (g, w) in enumerate(zip(got, want)):
        _compare(g, w, exact, f"{op} output {i} ({layout})")
    if not grads:
        return
    # A non-contiguous upstream gradient for the first output.
    upstream = relayout(torch.randn_like(want[0]), "transposed" if want[0].dim() >= 2 else "sliced")
    got_g = torch.autograd.grad(got[0], [strided[k] for k in grads], upstream)
    want_g = torch.autograd.grad(want[0], [plain[k] for k in grads], upstream.contiguous())
    for k, g, w in zip(grads, got_g, want_g):
        # Gradients that are copies are exact; those of broadcast parameters are sums (order may differ).
        _compare(g, w, exact and k in ("x", "imgs"), f"{op} grad {k} ({layout})")


OPS = sorted(_cases("cpu"))


def test_every_public_op_is_covered():
    assert set(OPS) == set(mae_kernels.__all__) - {"BackendUnavailable", "use_backend", "apply", "unapply",
                                                   "mae_st_target_frames"}  # a helper: no tensor input


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_noncontiguous_inputs_match_reference(op, backend, layout):
    check_layout(op, backend, "cpu", layout)


@pytest.mark.parametrize("case, layout", [(c, lay) for c in sorted(_video_cases("cpu"))
                                           for lay in LAYOUTS + (["hf"] if "video" in c else [])])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noncontiguous_video_inputs_match_reference(case, backend, layout):
    check_layout(case, backend, "cpu", layout, _video_cases("cpu"))


def _expanded_cases(device):
    """Stride-0 (expanded) parameters, as a broadcast pos_embed or a shared mask token would come."""
    imgs = torch.randn(N, C, H, W, device=device)
    keep = _perms(device)[:, :K]
    pos_row = torch.randn(1, 1, D, device=device)
    return {
        "masked_patch_embed": dict(imgs=imgs, ids_keep=keep, weight=torch.randn(D, C, P_SIZE, P_SIZE, device=device),
                                   bias=torch.randn(1, device=device).expand(D),
                                   pos_embed=pos_row.expand(1, 1 + L, D)),
        "unshuffle_with_mask_tokens": dict(x=torch.randn(N, 1, D, device=device).expand(N, 1 + K, D),
                                           mask_token=torch.randn(1, 1, 1, device=device).expand(1, 1, D),
                                           ids_restore=torch.argsort(_perms(device), dim=1),
                                           pos_embed=pos_row.expand(1, 1 + L, D)),
        "append_mask_tokens": dict(x=torch.randn(N, 1, D, device=device).expand(N, K, D),
                                   mask_token=torch.randn(1, 1, 1, device=device).expand(1, 1, D), ids_keep=keep,
                                   ids_dec=keep[:1].expand(N, K), pos_embed=pos_row.expand(1, L, D)),
        "masked_patchify": dict(imgs=torch.randn(1, C, H, W, device=device).expand(N, C, H, W),
                                ids_keep=keep[:1].expand(N, K), patch_size=P_SIZE),
    }


@pytest.mark.parametrize("device, backend", [("cpu", b) for b in CPU_BACKENDS]
                         + [pytest.param("cuda", b, marks=pytest.mark.gpu) for b in GPU_BACKENDS])
@pytest.mark.parametrize("op", sorted(_expanded_cases("cpu")))
def test_expanded_inputs_match_reference(op, device, backend, no_tf32):
    args = _expanded_cases(device)[op]
    fn = getattr(mae_kernels, op)
    with mae_kernels.use_backend(backend):
        got = fn(**args)
    with mae_kernels.use_backend("reference"):
        want = fn(**{k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in args.items()})
    _compare(got, want, op != "masked_patch_embed", op)


# ---- GPU ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_gpu_noncontiguous_inputs_match_reference(op, backend, layout, no_tf32):
    check_layout(op, backend, "cuda", layout)
