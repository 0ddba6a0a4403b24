"""Images for pre-training: the reference's augmentation written in torch (RandomResizedCrop(scale 0.2..1,
bicubic), horizontal flip, ImageNet normalisation; torchvision is not needed), a folder of images or the sample
photographs that ship with scikit-image, and a DistributedSampler-like sharded sampler that can resume mid-epoch.
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# scikit-image's bundled photographs (grayscale ones are converted to RGB).
SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "retina", "colorwheel", "camera", "coins", "moon", "grass", "gravel", "brick", "clock")


def to_rgb_tensor(array):
    """HxW, HxWx1, HxWx3 or HxWx4 (uint8 or bool or float in [0, 1]) -> [3, H, W] float32 in [0, 1]."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    if t.dim() != 3:
        raise ValueError(f"expected an image of shape HxW or HxWxC, got {tuple(t.shape)}")
    t = t[..., :3]  # drop alpha
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    elif t.shape[-1] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {t.shape[-1]}")
    return t.permute(2, 0, 1).contiguous()


def load_image(path):
    from PIL import Image

    with Image.open(path) as im:
        return to_rgb_tensor(np.asarray(im.convert("RGB")))


def skimage_samples(max_side=256):
    """The bundled scikit-image photographs as [3, H, W] tensors (those this install can load), the shorter side
    shrunk to max_side (crops of tiny training images need no more, and resizing gets cheap)."""
    import skimage.data

    images = []
    for name in SKIMAGE_SAMPLES:
        try:
            img = to_rgb_tensor(getattr(skimage.data, name)())
        except Exception:  # some need an optional download (pooch); the rest suffice
            continue
        s = max_side / min(img.shape[1:])
        if s < 1:
            img = resize(img, (round(img.shape[1] * s), round(img.shape[2] * s)))
        images.append(img)
    if not images:
        raise RuntimeError("no scikit-image sample photograph could be loaded; pass --data DIR")
    return images


def list_images(folder):
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f"--data {folder!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return paths


def random_resized_crop_box(H, W, generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width)."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, W - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = W / H  # fallback: central crop
    if in_ratio < ratio[0]:
        w, h = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = H, int(round(H * ratio[1]))
    else:
        h, w = H, W
    return (H - h) // 2, (W - w) // 2, h, w


def resize(img, size):
    """Bicubic, antialiased, clamped to [0, 1] as a uint8 PIL resize would be. img: [3, h, w]."""
    out = F.interpolate(img.unsqueeze(0), size=size, mode="bicubic", align_corners=False, antialias=True)
    return out.squeeze(0).clamp_(0, 1)


def normalize(img, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    mean = torch.tensor(mean, dtype=img.dtype).view(-1, 1, 1)
    std = torch.tensor(std, dtype=img.dtype).view(-1, 1, 1)
    return (img - mean) / std


def train_transform(img, size, generator):
    """RandomResizedCrop(size, scale=(0.2, 1), bicubic) + RandomHorizontalFlip + ImageNet normalisation."""
    top, left, h, w = random_resized_crop_box(img.shape[1], img.shape[2], generator)
    out = resize(img[:, top:top + h, left:left + w], size)
    if float(torch.rand(1, generator=generator)) < 0.5:
        out = out.flip(-1)
    return normalize(out)


def center_view(img, size):
    """A deterministic view for figures: the central square, resized."""
    s = min(img.shape[1], img.shape[2])
    top, left = (img.shape[1] - s) // 2, (img.shape[2] - s) // 2
    return normalize(resize(img[:, top:top + s, left:left + s], size))


class CropDataset(Dataset):
    """Augmented crops of a list of sources ([3, H, W] tensors, or paths loaded on demand). Keys are
    epoch * len(self) + i (ShardedSampler yields them, so persistent workers need no epoch update): sample i of
    epoch e comes from source i % len(sources) with its own generator (seed, e, i), a reproducible stream
    that each rank draws its share of independently."""

    def __init__(self, sources, size, length=None, seed=0):
        self.sources = list(sources)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.length = len(self.sources) if length is None else int(length)
        self.seed = seed

    def __len__(self):
        return self.length

    def source(self, i):
        src = self.sources[i % len(self.sources)]
        return load_image(src) if isinstance(src, str) else src

    def __getitem__(self, key):
        epoch, i = divmod(key, self.length)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + i)
        return train_transform(self.source(i), self.size, g)


class ShardedSampler(Sampler):
    """DistributedSampler's sharding (a per-epoch permutation, rank r takes indices r, r + world, ...; the tail is
    dropped so that every rank gets the same count) plus `start`: skip the first `start` indices of this rank's
    share, to resume in the middle of an epoch. Yields epoch * n + index (see CropDataset)."""

    def __init__(self, n, num_replicas=1, rank=0, seed=0, shuffle=True):
        self.n, self.num_replicas, self.rank, self.seed, self.shuffle = n, num_replicas, rank, seed, shuffle
        self.per_rank = n // num_replicas
        if self.per_rank == 0:
            raise ValueError(f"{n} samples cannot be shared among {num_replicas} processes")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    def __len__(self):
        return self.per_rank - self.start

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        mine = order[: self.per_rank * self.num_replicas][self.rank::self.num_replicas]
        return iter((mine[self.start:] + self.epoch * self.n).tolist())
