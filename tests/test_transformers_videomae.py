"""transformers' VideoMAEForPreTraining / VideoMAEModel patched in place with the fused ops (patch_videomae):
loss, logits, hidden states, attentions and every parameter's gradient equal the unpatched model's for the same
bool_masked_pos. Skipped when transformers is not installed. Small configs: 4 frames of 16x16, tubelets 2x4x4
-> L = 2*4*4 = 32 tokens."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")

import mae_kernels  # noqa: E402
from mae_kernels.integrations.transformers import patch_videomae, unpatch_videomae  # noqa: E402

N, T, S, U, P = 3, 4, 16, 2, 4  # batch, frames, image size, tubelet, patch
L = (T // U) * (S // P) ** 2  # 32


def config(norm_pix_loss=True, channels=3, use_mean_pooling=False, **kw):
    kw = dict(dict(image_size=S, patch_size=P, num_frames=T, tubelet_size=U, num_channels=channels, hidden_size=32,
                   num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, decoder_hidden_size=16,
                   decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
                   norm_pix_loss=norm_pix_loss, use_mean_pooling=use_mean_pooling, attn_implementation="eager"),
              **kw)
    return transformers.VideoMAEConfig(**kw)


def make(cls=None, seed=0, **kw):
    torch.manual_seed(seed)
    return (cls or transformers.VideoMAEForPreTraining)(config(**kw)).eval()


def tube_mask(n=N, masked_per_frame=12, seed=1):
    """VideoMAE's tube masking: the same masked_per_frame of the 16 positions in each of the 2 frames."""
    g = torch.Generator().manual_seed(seed)
    hw = (S // P) ** 2
    m = torch.zeros(n, hw, dtype=torch.bool)
    for i in range(n):
        m[i, torch.randperm(hw, generator=g)[:masked_per_frame]] = True
    return m.repeat(1, T // U)


def video(channels=3, seed=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, T, channels, S, S, generator=g).to(dtype)


def run(model, x, mask, amp=False, grad_x=False, **kw):
    """Forward (+ backward of loss and a term on every logit) -> (outputs, {name: grad}); grad_x: pixel_values'
    gradient too (through the embedding; HF's labels are data)."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_(grad_x)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x, mask, **kw)
    (out.loss + 0.1 * out.logits.float().square().mean()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return out, dict(grads, pixel_values=x.grad) if grad_x else grads


def assert_grads_close(got, want, rel):
    """Every parameter's gradient within rel * max|want| (elementwise: entries near 0 differ by reordering only)."""
    assert got.keys() == want.keys() and len(want) > 20
    for k in want:
        scale = want[k].double().abs().max().item()
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=rel * scale, msg=lambda s, k=k: f"grad of {k}: {s}")


@pytest.mark.parametrize("norm_pix_loss, channels", [(True, 3), (False, 3), (True, 1)])
def test_patched_matches_unpatched_fp32(norm_pix_loss, channels):
    ref = make(norm_pix_loss=norm_pix_loss, channels=channels)
    fused = patch_videomae(copy.deepcopy(ref))
    x, mask = video(channels), tube_mask()
    (o1, g1), (o2, g2) = run(ref, x, mask, grad_x=True), run(fused, x, mask, grad_x=True)
    # fp32 on both sides; the fused ops sum in another order (the embedding GEMM vs Conv3d, the loss's fp32
    # per-token sums vs MSELoss): differences of a few ulps, seen <= 1e-6 relative. rtol 1e-5: 10x margin.
    assert o2.loss.dtype == torch.float32
    assert o2.logits.shape == o1.logits.shape == (N, 12 * (T // U), U * P * P * channels)
    torch.testing.assert_close(o2.loss, o1.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(o2.logits, o1.logits, rtol=1e-5, atol=1e-6)
    # Gradients go back through 3 layers of those reordered sums: seen <= 1e-6 of each tensor's largest entry.
    assert_grads_close(g2, g1, 1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])  # the cpu backend: the test above
def test_other_backends(backend):
    ref = make()
    fused = patch_videomae(copy.deepcopy(ref))
    x, mask = video(), tube_mask()
    o1, g1 = run(ref, x, mask)
    with mae_kernels.use_backend(backend):
        o2, g2 = run(fused, x, mask)
    torch.testing.assert_close(o2.loss, o1.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(o2.logits, o1.logits, rtol=1e-5, atol=1e-6)
    assert_grads_close(g2, g1, 1e-5)


def test_hidden_states_attentions_return_dict():
    ref = make()
    fused = patch_videomae(copy.deepcopy(ref))
    x, mask = video(), tube_mask()
    with torch.no_grad():
        o1 = ref(x, mask, output_hidden_states=True, output_attentions=True)
        o2 = fused(x, mask, output_hidden_states=True, output_attentions=True)
        t1, t2 = ref(x, mask, return_dict=False), fused(x, mask, return_dict=False)
    assert len(o2.hidden_states) == len(o1.hidden_states) == 3 and len(o2.attentions) == len(o1.attentions) == 2
    for a, b in zip(o2.hidden_states + o2.attentions, o1.hidden_states + o1.attentions):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert isinstance(t2, tuple) and len(t2) == len(t1) == 2
    torch.testing.assert_close(t2[0], t1[0], rtol=1e-5, atol=1e-7)


def test_videomae_model_patched_equals_unpatched():
    # HF's default use_mean_pooling=True: no final LayerNorm (VideoMAEForPreTraining's tests run with one)
    ref = make(transformers.VideoMAEModel, use_mean_pooling=True)
    assert ref.layernorm is None
    fused = patch_videomae(copy.deepcopy(ref))
    x, mask = video(), tube_mask()
    for m, kw in ((mask, {"num_kept": 8}), (None, {})):  # None: all L tokens, HF's own embeddings
        outs = []
        for model in (ref, fused):
            model.zero_grad()
            h = model(x, m, output_hidden_states=True, **(kw if model is fused else {}))
            h.last_hidden_state.square().mean().backward()
            outs.append((h, {k: p.grad.clone() for k, p in model.named_parameters()}))
        (h1, g1), (h2, g2) = outs
        assert h2.last_hidden_state.shape == (N, L if m is None else 8, 32)
        torch.testing.assert_close(h2.last_hidden_state, h1.last_hidden_state, rtol=1e-5, atol=1e-6)
        assert len(h2.hidden_states) == 3
        assert_grads_close(g2, g1, 1e-5)


def reference_loss(logits, x, mask, norm_pix_loss):
    """HF's labels and MSELoss in float64 on the stored pixel values (the target the patched model computes in
    fp32 whatever pixel_values' dtype)."""
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    f = x.double() * torch.tensor(IMAGENET_DEFAULT_STD).double()[:, None, None] + \
        torch.tensor(IMAGENET_DEFAULT_MEAN).double()[:, None, None]
    n, t, c, h, w = f.shape
    f = f.view(n, t // U, U, c, h // P, P, w // P, P).permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(n, L, U * P * P, c)
    if norm_pix_loss:
        f = (f - f.mean(-2, keepdim=True)) / (f.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    labels = f.reshape(n, L, -1)[mask].reshape(n, -1, U * P * P * c)
    return torch.nn.functional.mse_loss(logits.double(), labels)


def test_bf16_autocast():
    """CPU bf16 autocast, fp32 pixel_values (the usual mixed-precision setup): HF's labels are fp32 too (its
    target is in pixel_values' dtype), the patched target is fp32: the same target, the same fp32 loss. The
    layers run in bf16 on both sides; the patched model's error against float64 must stay within twice the
    unpatched model's (+ 2^-10 of the largest entry: where HF's error happens to be tiny, one bf16 rounding of
    the patched side's must not fail the test)."""
    ref = make(seed=3)
    fused = patch_videomae(copy.deepcopy(ref))
    x, mask = video(), tube_mask()
    (o64, g64) = run(copy.deepcopy(ref).double(), x.double(), mask)
    (o1, g1), (o2, g2) = run(ref, x, mask, amp=True), run(fused, x, mask, amp=True)
    assert o2.loss.dtype == o1.loss.dtype == torch.float32 and o2.logits.dtype == o1.logits.dtype == torch.bfloat16

    def err(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    # the loss against the patched logits' own fp64 target: the fp32 target and sums (a few ulps)
    torch.testing.assert_close(o2.loss.double(), reference_loss(o2.logits, x, mask, True), rtol=1e-5, atol=0)
    for name, a, b, want in [("loss", o2.loss, o1.loss, o64.loss), ("logits", o2.logits, o1.logits, o64.logits)] + \
            [(k, g2[k], g1[k], g64[k]) for k in g64]:
        assert err(a, want) <= 2 * err(b, want) + 2 ** -10, f"{name}: patched {err(a, want)}, HF {err(b, want)}"


def test_bf16_pixel_values_target_is_fp32():
    """bf16 model and pixel_values, no autocast: HF computes its labels in bf16 (un-normalisation, statistics and
    division each rounded to 8 bits) and returns a bf16 loss; the patched model computes the target from the
    same stored bf16 values in fp32 and returns an fp32 loss: the float64 maths on the patched logits."""
    ref = make(seed=4).to(torch.bfloat16)
    fused = patch_videomae(copy.deepcopy(ref))
    x, mask = video(dtype=torch.bfloat16), tube_mask()
    with torch.no_grad():
        o1, o2 = ref(x, mask), fused(x, mask)
    assert o1.loss.dtype == torch.bfloat16 and o2.loss.dtype == torch.float32
    torch.testing.assert_close(o2.loss.double(), reference_loss(o2.logits, x, mask, True), rtol=1e-5, atol=0)
    torch.testing.assert_close(o2.loss, o1.loss.float(), rtol=2 ** -6, atol=0)  # HF's bf16 loss: same to bf16


def test_unpatch_restores_original_forward():
    ref = make()
    m = copy.deepcopy(ref)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    buffers = dict(m.named_buffers())
    patch_videomae(m, num_kept=8)
    assert patch_videomae(m) is m  # idempotent
    assert m.state_dict().keys() == state.keys()
    assert all(torch.equal(m.state_dict()[k], v) for k, v in state.items())
    assert "forward" in m.__dict__ and "forward" in m.videomae.__dict__
    unpatch_videomae(m)
    for module in (m, m.videomae):
        assert "forward" not in module.__dict__ and module.forward.__func__ is type(module).forward
    assert dict(m.named_buffers()).keys() == buffers.keys()
    assert not [k for k in vars(m) if k.startswith("_mae_kernels")]
    x, mask = video(), tube_mask()
    with torch.no_grad():
        a, b = ref(x, mask), m(x, mask)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.logits, b.logits)  # HF's own code again: bit-equal


def test_ddp_does_not_broadcast_the_tables():
    """The tables are non-persistent buffers, the same on every rank: DDP is told to leave them (it would broadcast
    them at every step). One process, gloo."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed+gloo")
    m = patch_videomae(make())
    assert sorted(m._ddp_params_and_buffers_to_ignore) == ["_mae_kernels_pos", "videomae.embeddings._mae_kernels_pos"]
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(m)
        assert ddp.modules_buffers == []
        x, mask = video(), tube_mask()
        torch.testing.assert_close(ddp(x, mask, num_kept=8).loss, m(x, mask).loss, rtol=0, atol=0)
    finally:
        dist.destroy_process_group()
    unpatch_videomae(m)
    assert not hasattr(m, "_ddp_params_and_buffers_to_ignore")


def test_apply_patches_both_classes():
    x, mask = video(), tube_mask()
    for cls in (transformers.VideoMAEForPreTraining, transformers.VideoMAEModel):
        ref = make(cls)
        m = mae_kernels.apply(copy.deepcopy(ref))
        assert "forward" in m.__dict__
        with torch.no_grad():
            a, b = ref(x, mask), m(x, mask)
        key = "loss" if cls is transformers.VideoMAEForPreTraining else "last_hidden_state"
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
        mae_kernels.unapply(m)
        assert "forward" not in m.__dict__


def test_torch_compile_fullgraph():
    """No graph break: the mask becomes indices with num_kept known (HF's x[~mask] is data-dependent)."""
    ref = make()
    fused = patch_videomae(copy.deepcopy(ref), num_kept=8)
    x, mask = video(), tube_mask()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    (o1, g1), (o2, _) = run(ref, x, mask), run(compiled, x, mask)
    g2 = {k: p.grad for k, p in fused.named_parameters()}  # compiled shares fused's parameters
    torch.testing.assert_close(o2.loss, o1.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(o2.logits, o1.logits, rtol=1e-5, atol=1e-6)
    assert_grads_close(g2, g1, 1e-5)


def test_bad_masks_and_inputs():
    m = patch_videomae(make())
    x, mask = video(), tube_mask()
    with pytest.raises(ValueError, match=r"bool_masked_pos must have shape \[3, 32\], got \(3, 31\)"):
        m(x, mask[:, :31])
    with pytest.raises(TypeError, match="bool_masked_pos must have dtype torch.bool, got torch.int64"):
        m(x, mask.long())
    unequal = mask.clone()
    unequal[1, ~mask[1]] = True  # row 1 keeps none
    unequal[1, 0] = False
    with pytest.raises(ValueError, match="same number of patches in every row, got 8 in row 0 and 1 in row 1"):
        m(x, unequal)
    with pytest.raises(RuntimeError, match="num_kept = 8 patches in every row"):  # no sync: the async assert
        m(x, unequal, num_kept=8)
    with pytest.raises(ValueError, match="at least one tubelet"):
        m(x, torch.zeros(N, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="one must provide a boolean mask"):
        m(x, None)
    with pytest.raises(ValueError, match="T = config.num_frames = 4 frames .* got T = 6"):
        m(torch.randn(N, 6, 3, S, S), mask)
    with pytest.raises(ValueError, match="Expected 3 but got 1"):
        m(torch.randn(N, T, 1, S, S), mask)
    # dynamo reports the ValueError raised while tracing as Unsupported, with the message
    with pytest.raises((ValueError, torch._dynamo.exc.Unsupported), match="num_kept must be given under torch.compile"):
        torch.compile(m, fullgraph=True, backend="eager")(x, mask)


def test_unsupported_configs_raise_at_patch_time():
    with pytest.raises(ValueError, match=r"whole tubelets.*got num_frames 5, image_size \(16, 16\)"):
        patch_videomae(make(num_frames=5))
    with pytest.raises(ValueError, match=r"whole tubelets.*got num_frames 4, image_size \(18, 18\)"):
        patch_videomae(make(image_size=18))
    m = make()
    m.videomae.embeddings.patch_embeddings.projection.padding = (0, 1, 1)
    with pytest.raises(ValueError, match=r"no padding.*padding \(0, 1, 1\)"):
        patch_videomae(m)
    with pytest.raises(TypeError, match="VideoMAEForPreTraining or VideoMAEModel, got Linear"):
        patch_videomae(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="num_kept must be at most L = 32"):
        patch_videomae(make(), num_kept=33)
    # HF itself cannot compute this loss (it raises the same error): the patched model says so too
    m = patch_videomae(make(norm_pix_loss=False, channels=1))
    with pytest.raises(ValueError, match="Can't unnormalize non-RGB images"):
        m(video(1), tube_mask())
