"""mae-kernels pretrain: a 3-step run writes checkpoint and figures, resume repeats an uninterrupted run
exactly, a non-finite loss stops clearly; the recipe pieces (lr schedule, weight-decay groups, augmentation,
sharding). Tiny model, 32x32 images, the in-process data path (no worker processes).
The fused path needs mae_kernels' fused ops (random_masked_patch_embed, unshuffle_with_mask_tokens,
masked_mse_loss, denormalize_pred), merged from other branches."""
import math
import os
from types import SimpleNamespace

import pytest
import torch

# The demo's own dependencies (pip install -e .[demo]); a GPU machine with torch only skips these tests.
np = pytest.importorskip("numpy", reason="numpy is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")

from mae_kernels import cli
from mae_kernels import data as mdata
from mae_kernels import pretrain
from mae_kernels.models import MaskedAutoencoderViT, mae_vit_tiny

# --device cpu: these are the CPU tests (exact resume) even on a GPU machine; the GPU test appends --device cuda.
FAST = ["--device", "cpu", "--input-size", "32", "--batch-size", "4", "--samples-per-epoch", "8",
        "--num-workers", "0", "--no-progress", "--epochs", "3"]


def run(tmp_path, *extra, name="run"):
    if "--data" not in extra:
        pytest.importorskip("skimage", reason="scikit-image (the sample photographs) is not installed")
    if "--no-figures" not in extra:
        pytest.importorskip("matplotlib", reason="matplotlib (the figures) is not installed")
    out = str(tmp_path / name)
    rc = pretrain.main(FAST + ["--output-dir", out] + list(extra))
    return rc, out


def load(out):
    return torch.load(os.path.join(out, "checkpoint.pth"), map_location="cpu", weights_only=False)


def assert_png(path):
    assert os.path.isfile(path), path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_three_steps_write_checkpoint_and_figures(tmp_path, capsys):
    rc, out = run(tmp_path, "--max-steps", "3")
    assert rc == 0
    ckpt = load(out)
    assert ckpt["global_step"] == 3 and len(ckpt["losses"]) == 3
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 1)  # 2 steps per epoch
    assert all(math.isfinite(v) for v in ckpt["losses"])
    model = mae_vit_tiny(img_size=32)
    model.load_state_dict(ckpt["model"], strict=True)
    printed = capsys.readouterr().out
    for name in ("reconstruction.png", "loss_curve.png"):
        assert_png(os.path.join(out, name))
        assert os.path.join(out, name) in printed
    assert "checkpoint.pth" in printed


def test_resume_repeats_an_uninterrupted_run(tmp_path):
    rc, full = run(tmp_path, "--max-steps", "5", "--no-figures", name="full")
    assert rc == 0
    rc, part = run(tmp_path, "--max-steps", "3", "--no-figures", name="part")
    assert rc == 0
    rc, _ = run(tmp_path, "--max-steps", "5", "--no-figures", "--resume", os.path.join(part, "checkpoint.pth"),
                name="part")
    assert rc == 0
    a, b = load(full), load(part)
    assert b["global_step"] == 5
    torch.testing.assert_close(b["losses"], a["losses"], rtol=1e-6, atol=0)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-6, atol=1e-7, msg=k)


def test_non_finite_loss_stops_clearly(tmp_path, monkeypatch, capsys):
    original = MaskedAutoencoderViT.forward

    def poisoned(self, imgs, mask_ratio=0.75, noise=None):
        loss, pred, mask = original(self, imgs, mask_ratio, noise)
        return loss * float("nan"), pred, mask

    monkeypatch.setattr(MaskedAutoencoderViT, "forward", poisoned)
    rc, out = run(tmp_path, "--max-steps", "3")
    assert rc == 1
    err = capsys.readouterr().err
    assert "loss is nan" in err and "stopping training" in err
    assert not os.path.exists(os.path.join(out, "checkpoint.pth"))


def test_folder_data_and_eager_path(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    for i in range(4):  # grayscale, in a subfolder
        Image.fromarray(rng.integers(0, 255, (60, 45), dtype=np.uint8)).save(folder / "sub" / f"{i}.jpg")
    rc, out = run(tmp_path, "--data", str(folder), "--max-steps", "2", "--no-fused", "--no-figures")
    assert rc == 0 and load(out)["global_step"] == 2
    with pytest.raises(ValueError, match="no image files"):
        mdata.list_images(str(tmp_path / "sub_empty_does_not_exist"))


def test_cli_dispatches_to_pretrain():
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", "--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        pretrain.main(["--mask-ratio", "1.0"])
    assert e.value.code == 2


def test_lr_schedule():
    args = SimpleNamespace(lr=1.0, min_lr=0.1, warmup_epochs=2, epochs=10)
    assert pretrain.lr_at(0, args) == 0
    assert pretrain.lr_at(1, args) == pytest.approx(0.5)
    assert pretrain.lr_at(2, args) == pytest.approx(1.0)
    assert pretrain.lr_at(6, args) == pytest.approx(0.1 + 0.9 * 0.5)
    assert pretrain.lr_at(10, args) == pytest.approx(0.1)
    values = [pretrain.lr_at(2 + 8 * i / 50, args) for i in range(51)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone cosine decay after warmup


def test_weight_decay_groups():
    model = mae_vit_tiny(img_size=32)
    no_decay, decay = pretrain.param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert "blocks.0.norm1.weight" in nd and "blocks.0.attn.qkv.bias" in nd and "decoder_pred.bias" in nd
    assert "blocks.0.attn.qkv.weight" in d and "patch_embed.proj.weight" in d and "cls_token" in d
    assert "mask_token" in d  # [1, 1, D], decayed as in the official recipe (timm add_weight_decay)
    assert "pos_embed" not in nd | d and "decoder_pos_embed" not in nd | d  # fixed, not trained
    assert nd | d == {n for n, p in model.named_parameters() if p.requires_grad}


def test_random_resized_crop_box():
    g = torch.Generator().manual_seed(0)
    for H, W in ((100, 100), (64, 300), (300, 20)):
        for _ in range(200):
            top, left, h, w = mdata.random_resized_crop_box(H, W, g)
            assert 0 <= top and top + h <= H and 0 <= left and left + w <= W and h > 0 and w > 0
    areas = []
    for _ in range(500):
        _, _, h, w = mdata.random_resized_crop_box(200, 200, g)
        areas.append(h * w / 40000)
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    assert min(areas) >= 0.19 and max(areas) <= 1.0 and min(areas) < 0.3 and max(areas) > 0.8


def test_train_transform_and_images():
    gray = mdata.to_rgb_tensor(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert gray.shape == (3, 3, 4) and torch.equal(gray[0], gray[2])
    rgba = mdata.to_rgb_tensor(np.full((5, 6, 4), 255, dtype=np.uint8))
    assert rgba.shape == (3, 5, 6) and torch.all(rgba == 1)
    with pytest.raises(ValueError, match="channels"):
        mdata.to_rgb_tensor(np.zeros((4, 4, 2), dtype=np.uint8))
    img = torch.rand(3, 50, 70)
    outs = [mdata.train_transform(img, (16, 24), torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(o.shape == (3, 16, 24) for o in outs)
    lo = (0 - torch.tensor(mdata.IMAGENET_MEAN)) / torch.tensor(mdata.IMAGENET_STD)
    hi = (1 - torch.tensor(mdata.IMAGENET_MEAN)) / torch.tensor(mdata.IMAGENET_STD)
    for o in outs:
        assert torch.all(o >= lo.view(3, 1, 1) - 1e-5) and torch.all(o <= hi.view(3, 1, 1) + 1e-5)
    # A constant image: every crop and flip of it normalises to (1 - mean) / std.
    const = mdata.train_transform(torch.ones(3, 30, 30), 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(const, hi.view(3, 1, 1).expand(3, 8, 8))
    # A left-right ramp: the flip shows as a decreasing row.
    ramp = torch.linspace(0, 1, 64).expand(3, 64, 64).contiguous()
    slopes = {bool(mdata.train_transform(ramp, 16, torch.Generator().manual_seed(s))[0, 8, -1] >
                   mdata.train_transform(ramp, 16, torch.Generator().manual_seed(s))[0, 8, 0]) for s in range(20)}
    assert slopes == {True, False}


def test_skimage_samples():
    pytest.importorskip("skimage", reason="scikit-image (the sample photographs) is not installed")
    imgs = mdata.skimage_samples()
    assert len(imgs) >= 4
    assert all(t.shape[0] == 3 and t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1 for t in imgs)


def test_sharded_sampler():
    n, world = 23, 3
    shards = []
    for rank in range(world):
        s = mdata.ShardedSampler(n, world, rank, seed=5)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == n // world and all(2 * n <= k < 3 * n for k in shards[-1])
    flat = [k for sh in shards for k in sh]
    assert len(set(flat)) == len(flat) == world * (n // world)
    s = mdata.ShardedSampler(n, world, 1, seed=5)
    s.set_epoch(2, start=3)
    assert list(s) == shards[1][3:] and len(s) == n // world - 3
    s.set_epoch(3)
    assert list(s) != shards[1]


@pytest.mark.gpu
def test_pretrain_gpu_bf16(tmp_path):
    rc, out = run(tmp_path, "--max-steps", "3", "--device", "cuda")
    assert rc == 0
    ckpt = load(out)
    assert ckpt["global_step"] == 3 and all(math.isfinite(v) for v in ckpt["losses"])
    assert ckpt["args"]["amp"] == "auto"
