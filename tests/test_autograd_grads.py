"""Autograd without materialised gradients (ops/_registry.register sets ctx.set_materialize_grads(False)): the
backward of random_masking and masked_mse_loss launches no zero fill for the outputs nobody differentiates, and
every op's backward gives the right gradients when an output's gradient is absent (None reaches it)."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import mae_kernels
from mae_kernels.backends import why_not

BACKENDS = [b for b in ("cpu", "triton") if why_not(b, "cpu") is None]
ZERO_FILLS = {"aten::zero_", "aten::zeros", "aten::zeros_like", "aten::new_zeros", "aten::fill_"}


class Cut(torch.autograd.Function):
    """Identity whose backward returns None: the node before it receives no gradient (None, not zeros)."""

    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return None


def _backward_ops(out, grad):
    """The ATen/mae_kernels ops run by out.backward(grad) (grad given: no ones_like fill for the root)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out.backward(grad)
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_masking_backward_has_no_zero_fill(backend):
    x = torch.randn(2, 16, 8, requires_grad=True)
    with mae_kernels.use_backend(backend):
        x_masked, mask, ids_restore = mae_kernels.random_masking(x, 0.5)
    assert not mask.requires_grad and not ids_restore.requires_grad  # as the reference's: data, not gradients
    ran = _backward_ops(x_masked, torch.randn_like(x_masked))
    assert any("random_masking_backward" in name for name in ran), sorted(ran)  # the backward ran
    assert not ran & ZERO_FILLS, f"zero fills in random_masking's backward: {sorted(ran & ZERO_FILLS)}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_masked_mse_loss_backward_has_no_zero_fill(backend, reduction):
    imgs = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 4, 48, requires_grad=True)
    mask = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0]])
    with mae_kernels.use_backend(backend):
        loss = mae_kernels.masked_mse_loss(pred, imgs, mask, 4, reduction=reduction)
    ran = _backward_ops(loss, torch.rand_like(loss))
    assert not ran & ZERO_FILLS, f"zero fills in masked_mse_loss's backward: {sorted(ran & ZERO_FILLS)}"
    with mae_kernels.use_backend("reference"):  # and the gradient is still right
        pr = pred.detach().clone().requires_grad_(True)
        want = mae_kernels.masked_mse_loss(pr, imgs, mask, 4, reduction=reduction)
    g = torch.rand_like(want)
    pred.grad = None
    with mae_kernels.use_backend(backend):
        mae_kernels.masked_mse_loss(pred, imgs, mask, 4, reduction=reduction).backward(g)
    want.backward(g)
    torch.testing.assert_close(pred.grad, pr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mae_graph_with_some_outputs_differentiated(backend):
    """The MAE pattern: x_masked goes on, mask weights the loss, ids_restore is data; gradients as the reference's."""
    x = torch.randn(2, 16, 12, requires_grad=True)
    noise = torch.rand(2, 16)
    imgs = torch.randn(2, 3, 8, 8)
    grads = {}
    for name in (backend, "reference"):
        xi = x.detach().clone().requires_grad_(True)
        with mae_kernels.use_backend(name):
            x_masked, mask, ids_restore = mae_kernels.random_masking(xi, 0.75, noise=noise)
            pred = x_masked.repeat(1, 4, 1)  # [2, 16, 12]: a prediction for every token
            loss = mae_kernels.masked_mse_loss(pred, imgs, mask, 2)
        loss.backward()
        grads[name] = xi.grad
    torch.testing.assert_close(grads[backend], grads["reference"], rtol=1e-5, atol=1e-6)


def _cases():
    """(op name, differentiable inputs, fn(*inputs) -> output) for every op registered with autograd."""
    N, L, D, K = 2, 16, 8, 4
    ids_keep = torch.stack([torch.randperm(L)[:K] for _ in range(N)])
    ids_restore = torch.stack([torch.randperm(L) for _ in range(N)])
    imgs = torch.randn(N, 3, 8, 8)
    yield "random_masking", (torch.randn(N, L, D),), lambda x: mae_kernels.random_masking(x, 0.5)[0]
    yield ("masked_mse_loss", (torch.randn(N, L, 12), torch.randn(N, 3, 8, 8)),
           lambda p, i: mae_kernels.masked_mse_loss(p, i, torch.ones(N, L), 2))
    yield ("unshuffle_with_mask_tokens", (torch.randn(N, 1 + K, D), torch.randn(1, 1, D), torch.randn(1, 1 + L, D)),
           lambda x, t, pos: mae_kernels.unshuffle_with_mask_tokens(x, t, ids_restore, pos))
    yield ("append_mask_tokens", (torch.randn(N, K, D), torch.randn(1, 1, D), torch.randn(1, L, D)),
           lambda x, t, pos: mae_kernels.append_mask_tokens(x, t, ids_keep, ids_restore[:, :3], pos))
    yield ("masked_patch_embed", (imgs, torch.randn(D, 3, 2, 2), torch.randn(D), torch.randn(1, 1 + L, D)),
           lambda i, w, b, pos: mae_kernels.masked_patch_embed(i, ids_keep, w, b, pos))
    yield "patchify", (imgs,), lambda i: mae_kernels.patchify(i, 2)
    yield "unpatchify", (torch.randn(N, L, 12),), lambda x: mae_kernels.unpatchify(x, 2, (8, 8))
    yield "masked_patchify", (imgs,), lambda i: mae_kernels.masked_patchify(i, ids_keep, 2)

    def masked_patchify_backward(i, v):  # the backward op's own backward (double backward), reached with None
        (g,) = torch.autograd.grad(mae_kernels.masked_patchify(i, ids_keep, 2), i, v, create_graph=True)
        return g
    yield "masked_patchify_backward", (imgs, torch.randn(N, K, 12)), masked_patchify_backward


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_absent_output_gradient_gives_no_input_gradient(backend, case):
    """An op whose output's gradient is absent (None reaches its backward, Cut returns None) adds nothing to its
    inputs' gradients: each input gets exactly the gradient of the other path (2), or none at all."""
    _, inputs, fn = case
    inputs = [t.clone().requires_grad_(True) for t in inputs]
    with mae_kernels.use_backend(backend):
        out = fn(*inputs)
    (Cut.apply(out).sum() + sum((2 * t).sum() for t in inputs)).backward()
    for t in inputs:
        assert t.grad is not None and bool((t.grad == 2).all()), t.grad
