"""integrations.official.patch_mae and mae_kernels.apply on the official MAE structure: mae_kernels' own model on
its eager path (the official structure) and a timm-like model written in tests/official_like.py. The patched
forward runs the fused ops (counted), gives the unpatched model's loss, predictions, masks (same seed) and
gradients, keeps forward's signature and the state_dict, and works under torch.compile and DDP."""
import copy
import inspect

import pytest
import torch
import torch.distributed as dist
from torch import nn

import mae_kernels
from mae_kernels.integrations.official import patch_mae, unpatch_mae
from mae_kernels.models import MaskedAutoencoderViT
from official_like import OfficialLikeMAE

FUSED_OPS = ("random_masked_patch_embed", "unshuffle_with_mask_tokens", "masked_mse_loss")


def ours():
    torch.manual_seed(0)
    return MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True,
                                use_fused_ops=False)


def official_like(**kw):
    torch.manual_seed(0)
    return OfficialLikeMAE(**kw)


MODELS = {"ours_eager": ours, "official_like": official_like,
          "official_like_no_norm_pix": lambda: official_like(norm_pix_loss=False)}


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls of each fused op (the patched forward must reach them, the unpatched one must not)."""
    calls = dict.fromkeys(FUSED_OPS, 0)
    for name in FUSED_OPS:
        def counted(*a, _name=name, _op=getattr(mae_kernels, name), **k):
            calls[_name] += 1
            return _op(*a, **k)
        monkeypatch.setattr(mae_kernels, name, counted)
    return calls


def run(model, imgs, seed, mask_ratio=0.75):
    """One forward/backward with the noise drawn inside from `seed`: (loss, pred, mask, grads)."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss, pred, mask = model(imgs, mask_ratio)
    (loss + 0.1 * pred.square().mean()).backward()  # pred's term reaches the kept patches' rows too
    return loss, pred, mask, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_same_run(got, want):
    (lg, pg, mg, gg), (lw, pw, mw, gw) = got, want
    assert torch.equal(mg, mw)  # same seed, same masks: the noise is drawn as the official random_masking does
    torch.testing.assert_close(lg, lw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pg, pw, rtol=1e-5, atol=1e-5)
    assert gg.keys() == gw.keys() and len(gg) > 10
    # Summation order differs (fused reductions over N*L rows, then every layer's backward): a few 1e-5 relative
    # in the gradients gathering the most terms (cls_token, mask_token), as in test_transformers.py.
    for k in gw:
        torch.testing.assert_close(gg[k], gw[k], rtol=1e-3, atol=1e-5, msg=lambda s, k=k: f"grad of {k}: {s}")


@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_patched_matches_unpatched(make, mask_ratio, op_calls):
    ref = make()
    fused = patch_mae(copy.deepcopy(ref))
    imgs = torch.randn(3, 3, 32, 32)
    want = run(ref, imgs, seed=1, mask_ratio=mask_ratio)
    assert set(op_calls.values()) == {0}
    got = run(fused, imgs, seed=1, mask_ratio=mask_ratio)
    assert op_calls == dict.fromkeys(FUSED_OPS, 1), op_calls
    assert got[2].sum().item() == 3 * (16 - int(16 * (1 - mask_ratio)))
    assert_same_run(got, want)


def test_noise_argument_reaches_the_fused_op():
    """Our model's forward passes `noise`: the patched forward_encoder accepts and uses it."""
    ref = ours()
    fused = patch_mae(copy.deepcopy(ref))
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        lw, pw, mw = ref(imgs, 0.75, noise)
        lg, pg, mg = fused(imgs, 0.75, noise)
    assert torch.equal(mg, mw) and torch.equal(mg, (noise.argsort(1).argsort(1) >= 4).float())
    torch.testing.assert_close(pg, pw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lg, lw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [ours, official_like], ids=["ours_eager", "official_like"])
def test_signature_state_dict_and_unpatch(make, op_calls):
    model = make()
    signature = inspect.signature(model.forward)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    imgs = torch.randn(2, 3, 32, 32)
    want = run(model, imgs, seed=3)
    assert patch_mae(model) is model and patch_mae(model) is model  # idempotent
    assert inspect.signature(model.forward) == signature
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.load_state_dict(state, strict=True)  # an unpatched checkpoint loads into the patched model
    run(model, imgs, seed=3)
    assert op_calls == dict.fromkeys(FUSED_OPS, 1), op_calls
    assert unpatch_mae(model) is model
    assert not {"forward_encoder", "forward_decoder", "forward_loss"} & model.__dict__.keys()
    got = run(model, imgs, seed=3)
    assert op_calls == dict.fromkeys(FUSED_OPS, 1), op_calls  # unpatched: no further fused call
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])  # the class's own eager code again


@pytest.mark.parametrize("make", [ours, official_like], ids=["ours_eager", "official_like"])
def test_compile_fullgraph(make, op_calls):
    ref = make()
    fused = patch_mae(copy.deepcopy(ref))
    imgs = torch.randn(2, 3, 32, 32)
    want = run(ref, imgs, seed=4)
    got = run(torch.compile(fused, fullgraph=True, backend="aot_eager"), imgs, seed=4)
    assert op_calls["masked_mse_loss"] >= 1  # traced through the patched methods
    grads = {k.removeprefix("_orig_mod."): v for k, v in got[3].items()}
    assert_same_run(got[:3] + (grads,), want)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed+gloo")
def test_ddp_after_patching(tmp_path, op_calls):
    """DistributedDataParallel wraps the patched model (one gloo process: DDP's hooks and forward path)."""
    ref = official_like()
    fused = patch_mae(copy.deepcopy(ref))
    imgs = torch.randn(2, 3, 32, 32)
    want = run(ref, imgs, seed=5)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        got = run(nn.parallel.DistributedDataParallel(fused), imgs, seed=5)
    finally:
        dist.destroy_process_group()
    assert op_calls == dict.fromkeys(FUSED_OPS, 1), op_calls
    assert_same_run(got[:3] + ({k.removeprefix("module."): v for k, v in got[3].items()},), want)


def test_contract_errors():
    with pytest.raises(TypeError, match=r"official MAE structure.*got Linear without patch_embed, pos_embed.*"
                                        r"forward_encoder\(\)"):
        patch_mae(nn.Linear(2, 2))
    m = official_like()
    del m.decoder_norm
    with pytest.raises(TypeError, match=r"got OfficialLikeMAE without decoder_norm$"):
        patch_mae(m)
    m = official_like()
    m.patch_embed.proj = nn.Linear(3, 32)
    with pytest.raises(TypeError, match="patch_embed.proj must be an nn.Conv2d, got Linear"):
        patch_mae(m)
    m.patch_embed.proj = nn.Conv2d(3, 32, kernel_size=8, stride=4)
    with pytest.raises(ValueError, match=r"kernel = stride.*got kernel \(8, 8\), stride \(4, 4\)"):
        patch_mae(m)
    m = official_like()
    m.patch_embed.norm = nn.LayerNorm(32)
    with pytest.raises(ValueError, match="patch_embed.norm must be absent or nn.Identity.*got LayerNorm"):
        patch_mae(m)
    assert "forward_encoder" not in m.__dict__  # nothing patched on failure


def test_apply_recognises_families(op_calls):
    m = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                             decoder_depth=1, decoder_num_heads=2, use_fused_ops=False)
    assert mae_kernels.apply(m) is m and m.use_fused_ops and "forward_encoder" not in m.__dict__
    assert mae_kernels.unapply(m) is m and not m.use_fused_ops
    o = official_like()
    assert mae_kernels.apply(o) is o and "forward_encoder" in o.__dict__
    with torch.no_grad():
        o(torch.randn(1, 3, 32, 32))
    assert op_calls == dict.fromkeys(FUSED_OPS, 1), op_calls
    mae_kernels.unapply(o)
    assert "forward_encoder" not in o.__dict__


def test_apply_names_what_it_got():
    with pytest.raises(TypeError, match=r"expected mae_kernels.models.MaskedAutoencoderViT.*got "
                                        r"torch.nn.modules.linear.Linear \(official structure lacks: patch_embed"):
        mae_kernels.apply(nn.Linear(2, 2))
    wrapped = nn.Module()
    wrapped.module = official_like()  # what DistributedDataParallel looks like from outside
    with pytest.raises(TypeError, match="it wraps a OfficialLikeMAE: apply to the model before wrapping it"):
        mae_kernels.apply(wrapped)
