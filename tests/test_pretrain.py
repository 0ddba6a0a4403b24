"""mae-kernels pretrain: a 3-step run writes checkpoint and figures, resume repeats an uninterrupted run
exactly, a non-finite loss stops clearly, an ImageFolder of JPEGs trains; the recipe pieces (lr schedule,
weight-decay groups, torchvision augmentation with per-sample seeds, batched JPEG decoding, sharding). Tiny model, 32x32 images, the in-process data path (no worker processes).
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
pytest.importorskip("torchvision", reason="torchvision is not installed")

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


def make_image_folder(root, n_per_class=4):
    """An ImageFolder of JPEGs (two classes, odd sizes, one grayscale JPEG) and one PNG, as in ImageNet's train/."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("n01", "n02")):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = rng.integers(0, 255, (40 + 7 * i, 50 + 3 * c, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.JPEG", quality=90)
    Image.fromarray(rng.integers(0, 255, (45, 38), dtype=np.uint8)).save(root / "n01" / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (33, 41, 3), dtype=np.uint8)).save(root / "n02" / "x.png")
    return root


def test_jpeg_image_folder_trains(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "train")
    rc, out = run(tmp_path, "--data", str(folder), "--max-steps", "3", "--no-figures")
    assert rc == 0 and load(out)["global_step"] == 3
    printed = capsys.readouterr().out
    assert "(10 per epoch" in printed and "decoding on cpu" in printed
    line = next(line for line in printed.splitlines() if line.startswith("throughput"))
    assert "data loader alone" in line and "training step" in line and "bottleneck" in line, line
    rates = [float(w) for w in line.replace("(", " ").split() if w.replace(".", "").isdigit()]
    assert len(rates) >= 3 and all(r > 0 for r in rates[:3]), line
    # The eager path trains from it too.
    rc, out = run(tmp_path, "--data", str(folder), "--max-steps", "1", "--no-fused", "--no-figures", name="eager")
    assert rc == 0
    with pytest.raises(ValueError, match="ImageFolder layout"):
        mdata.ImageFolderCrops(str(folder / "n01"), 16)  # images but no class folder


def test_decode_batch_matches_pil(tmp_path):
    folder = make_image_folder(tmp_path / "train", n_per_class=2)
    paths = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    decoded = mdata.decode_batch([mdata.read_encoded(p) for p in paths])
    for path, img in zip(paths, decoded):
        with Image.open(path) as im:
            ref = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
        assert img.dtype == torch.uint8 and img.shape == ref.shape, path
        # libjpeg-turbo in both, possibly different versions: at most a level or two apart; PNG exactly.
        tol = 0 if path.endswith(".png") else 2
        assert (img.int() - ref.int()).abs().max() <= tol, path
    # one batched decode_jpeg call gives what one call per image gives
    for path, img in zip(paths, decoded):
        assert torch.equal(img, mdata.decode_batch([mdata.read_encoded(path)])[0]), path


def test_folder_batches_per_sample_and_deferred_decoding(tmp_path):
    folder = make_image_folder(tmp_path / "train")
    ds = mdata.ImageFolderCrops(str(folder), 16, seed=3)
    assert len(ds) == 10 and ds.decode_device == "cpu"
    keys = [12, 3, 7, 25]  # epochs 1, 0, 0, 2
    batch = ds.__getitems__(keys)
    assert batch["images"].shape == (4, 3, 16, 16) and batch["encoded"] is None and batch["seconds"] > 0
    # a sample does not depend on the batch it lands in
    for j, k in enumerate(keys):
        torch.testing.assert_close(ds[k], batch["images"][j], rtol=0, atol=0)
    assert not torch.equal(ds[3], ds[13])  # the same file in another epoch: another crop
    # decode_device="cuda": the loader only reads; materialize() decodes and augments (here on the CPU, the
    # path a GPU takes with device="cuda") to the same images.
    deferred = mdata.ImageFolderCrops(str(folder), 16, seed=3, decode_device="cuda")
    lazy = deferred.__getitems__(keys)
    assert lazy["images"] is None and len(lazy["encoded"]) == 4
    torch.testing.assert_close(deferred.materialize(lazy, torch.device("cpu")), batch["images"], rtol=0, atol=0)


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


def test_train_transform_and_images():
    gray = mdata.to_rgb_tensor(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert gray.shape == (3, 3, 4) and gray.dtype == torch.uint8 and torch.equal(gray[0], gray[2])
    rgba = mdata.to_rgb_tensor(np.full((5, 6, 4), 255, dtype=np.uint8))
    assert rgba.shape == (3, 5, 6) and torch.all(rgba == 255)
    assert torch.all(mdata.to_rgb_tensor(np.ones((2, 2))) == 255) and torch.all(mdata.to_rgb_tensor(
        np.full((2, 2), 65535, dtype=np.uint16)) == 255)
    with pytest.raises(ValueError, match="channels"):
        mdata.to_rgb_tensor(np.zeros((4, 4, 2), dtype=np.uint8))
    t = mdata.train_transform((16, 24))
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    outs = [mdata.augment(t, img, s) for s in range(20)]
    assert all(type(o) is torch.Tensor and o.shape == (3, 16, 24) and o.dtype == torch.float32 for o in outs)
    assert len({o.sum().item() for o in outs}) == 20  # different crops
    torch.testing.assert_close(mdata.augment(t, img, 7), outs[7], rtol=0, atol=0)  # a seed repeats its crop
    lo = (0 - torch.tensor(mdata.IMAGENET_MEAN)) / torch.tensor(mdata.IMAGENET_STD)
    hi = (1 - torch.tensor(mdata.IMAGENET_MEAN)) / torch.tensor(mdata.IMAGENET_STD)
    for o in outs:
        assert torch.all(o >= lo.view(3, 1, 1) - 1e-5) and torch.all(o <= hi.view(3, 1, 1) + 1e-5)
    # The caller's random stream is untouched.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    mdata.augment(t, img, 5)
    assert torch.equal(torch.rand(3), expected)
    # A constant image: every crop and flip of it normalises to (1 - mean) / std.
    const = mdata.augment(mdata.train_transform(8), torch.full((3, 30, 30), 255, dtype=torch.uint8), 1)
    torch.testing.assert_close(const, hi.view(3, 1, 1).expand(3, 8, 8))
    # A left-right ramp: the flip shows as a decreasing row, in about half of the samples.
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(3, 64, 64).contiguous()
    t16 = mdata.train_transform(16)
    flips = [bool(o[0, 8, -1] < o[0, 8, 0]) for o in (mdata.augment(t16, ramp, s) for s in range(40))]
    assert 8 <= sum(flips) <= 32
    # Crop areas: scale (0.2, 1) of the source, aspect ratio 3/4..4/3 (torchvision's parameters).
    rrc = t.transforms[1]
    areas = []
    for s in range(300):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            p = rrc.make_params([torch.zeros(3, 200, 200)])
        areas.append(p["height"] * p["width"] / 40000)
        assert 3 / 4 - 0.05 <= p["width"] / p["height"] <= 4 / 3 + 0.05
    assert min(areas) >= 0.19 and max(areas) <= 1.0 and min(areas) < 0.3 and max(areas) > 0.8
    assert rrc.interpolation.value == "bicubic" and rrc.scale == (0.2, 1.0)


def test_skimage_samples():
    pytest.importorskip("skimage", reason="scikit-image (the sample photographs) is not installed")
    imgs = mdata.skimage_samples()
    assert len(imgs) >= 4
    assert all(t.shape[0] == 3 and t.dtype == torch.uint8 and min(t.shape[1:]) <= 256 for t in imgs)


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
def test_decode_on_gpu(tmp_path):
    """nvJPEG's batched decoding and the augmentation on the GPU: the CPU path's crops and flips (the same
    per-sample seeds), pixels within a few levels (another IDCT, resize on the GPU)."""
    folder = make_image_folder(tmp_path / "train")
    keys = [12, 3, 7, 25]
    cpu = mdata.ImageFolderCrops(str(folder), 16, seed=3).__getitems__(keys)["images"]
    ds = mdata.ImageFolderCrops(str(folder), 16, seed=3, decode_device="cuda")
    gpu = ds.materialize(ds.__getitems__(keys), torch.device("cuda"))
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert (gpu.cpu() - cpu).abs().mean() < 0.05  # normalised units: about 3 levels of 255


@pytest.mark.gpu
def test_pretrain_gpu_bf16(tmp_path):
    rc, out = run(tmp_path, "--max-steps", "3", "--device", "cuda")
    assert rc == 0
    ckpt = load(out)
    assert ckpt["global_step"] == 3 and all(math.isfinite(v) for v in ckpt["losses"])
    assert ckpt["args"]["amp"] == "auto"
