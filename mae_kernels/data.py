"""Images for pre-training, made as the official recipe (facebookresearch/mae main_pretrain.py) makes them, with
torchvision: `--data DIR` is a torchvision.datasets.ImageFolder, each sample goes through transforms.v2
RandomResizedCrop(size, scale=(0.2, 1.0), bicubic) + RandomHorizontalFlip + ToImage/ToDtype + Normalize(ImageNet).
The default data are the sample photographs that ship with scikit-image. What the project adds:
- per-sample reproducible randomness: sample i of epoch e draws its crop and flip from its own seed (seed, e, i),
  whichever process, worker or batch it lands in, so a resumed run repeats them;
- batched JPEG decoding: a batch is fetched at once (Dataset.__getitems__) and its JPEGs decoded by one
  torchvision.io.decode_jpeg call, on the CPU in the loader's workers, or on the GPU (nvJPEG) in the training
  process with decode_device="cuda", the workers then only reading files;
- ShardedSampler, DistributedSampler's sharding that can resume in the middle of an epoch.
"""
import time

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# scikit-image's bundled photographs (grayscale ones are converted to RGB).
SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "retina", "colorwheel", "camera", "coins", "moon", "grass", "gravel", "brick", "clock")
JPEG_MAGIC = b"\xff\xd8\xff"


def to_rgb_tensor(array):
    """HxW, HxWx1, HxWx3 or HxWx4 (uint8, other integers, bool, or float in [0, 1]) -> [3, H, W] uint8."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        scale = 255.0 / float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 255.0
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    t = torch.from_numpy(np.ascontiguousarray(a))
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


def train_transform(size):
    """The official recipe's augmentation in transforms.v2 (interpolation=3 there is bicubic; ToTensor is
    ToImage + ToDtype(float32, scale=True)). Takes a PIL image or a uint8 [3, H, W] tensor on any device."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def augment(transform, img, seed):
    """transform(img) with torch's CPU generator seeded by `seed` for the call (v2 transforms draw their
    parameters from it, on the CPU even for CUDA images) and restored after: the caller's stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform(img).as_subclass(torch.Tensor)


def center_view(img, size):
    """A deterministic view for figures: the central square of a uint8 [3, H, W] image, resized, normalised."""
    from torchvision.transforms import v2

    img = v2.functional.center_crop(img, min(img.shape[-2:]))
    img = v2.functional.resize(img, list(size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    img = v2.functional.to_dtype(img, torch.float32, scale=True)
    return v2.functional.normalize(img, IMAGENET_MEAN, IMAGENET_STD)


def skimage_samples(max_side=256):
    """The bundled scikit-image photographs as uint8 [3, H, W] tensors (those this install can load), the
    shorter side shrunk to max_side (crops of tiny training images need no more, and resizing gets cheap)."""
    import skimage.data
    from torchvision.transforms import v2

    images = []
    for name in SKIMAGE_SAMPLES:
        try:
            img = to_rgb_tensor(getattr(skimage.data, name)())
        except Exception:  # some need an optional download (pooch); the rest suffice
            continue
        if min(img.shape[1:]) > max_side:
            img = v2.functional.resize(img, max_side, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
        images.append(img)
    if not images:
        raise RuntimeError("no scikit-image sample photograph could be loaded; pass --data DIR")
    return images


def read_encoded(path):
    """An image file's bytes as a uint8 tensor (ImageFolder's loader here: decoding waits for the batch)."""
    from torchvision.io import read_file

    return read_file(path)


def decode_one(data):
    """A non-JPEG image file's bytes -> uint8 [3, H, W]: torchvision.io (PNG, WebP, GIF), else PIL (BMP, TIFF,
    PPM/PGM, the rest of ImageFolder's extensions)."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            return to_rgb_tensor(np.asarray(im.convert("RGB")))


def decode_batch(encoded, device="cpu"):
    """Image files' bytes (1-D uint8 tensors) -> uint8 [3, H, W] tensors on `device`, in order. The JPEGs go
    through one torchvision.io.decode_jpeg call (on CUDA: nvJPEG's batched decoder); other formats one by one on
    the CPU. Grayscale and CMYK JPEGs come out RGB; EXIF orientation is ignored, as PIL's loader ignores it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = [None] * len(encoded)
    jpegs = [k for k, e in enumerate(encoded) if bytes(e[:3].tolist()) == JPEG_MAGIC]
    if jpegs:
        decoded = decode_jpeg([encoded[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)
        for k, img in zip(jpegs, decoded):
            out[k] = img
    for k, e in enumerate(encoded):
        if out[k] is None:
            out[k] = decode_one(e).to(device)
    return out


def collate_batch(batch):
    """The DataLoader's collate_fn: __getitems__ already made the batch."""
    return batch


class CropDataset(Dataset):
    """Augmented crops of a list of uint8 [3, H, W] images. Keys are epoch * len(self) + i (ShardedSampler yields
    them, so persistent workers need no epoch update): sample i of epoch e comes from source i % len(sources),
    augmented with its own seed (seed, e, i), a reproducible stream that each rank draws its share of
    independently. A batch comes from __getitems__ as a dict: "images" (the stacked crops, float32 [B, 3, S, S])
    or, when decoding is left to the training process, "encoded" (the files' bytes); "keys"; and "seconds", the
    time the loader took to make it (read the throughput of the loader alone from it)."""

    def __init__(self, sources, size, length=None, seed=0):
        self.sources = list(sources)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.length = len(self.sources) if length is None else int(length)
        self.seed = seed
        self.transform = train_transform(self.size)
        self.decode_device = "cpu"

    def __len__(self):
        return self.length

    def source(self, i):
        """Source image i (uint8 [3, H, W], CPU)."""
        return self.sources[i % len(self.sources)]

    def sample_seed(self, key):
        epoch, i = divmod(key, self.length)
        return ((self.seed * 1_000_003 + epoch) * 1_000_003 + i) % (1 << 63), i

    def augment_batch(self, imgs, keys):
        return torch.stack([augment(self.transform, img, self.sample_seed(k)[0]) for img, k in zip(imgs, keys)])

    def __getitem__(self, key):
        seed, i = self.sample_seed(key)
        return augment(self.transform, self.source(i), seed)

    def __getitems__(self, keys):
        t0 = time.perf_counter()
        images = self.augment_batch([self.source(self.sample_seed(k)[1]) for k in keys], keys)
        return {"images": images, "encoded": None, "keys": list(keys), "seconds": time.perf_counter() - t0}

    def materialize(self, batch, device):
        """A loader batch -> float32 [B, 3, S, S] on `device` (decoding and augmenting there if the loader left
        the files encoded)."""
        if batch["images"] is not None:
            return batch["images"].to(device, non_blocking=True)
        return self.augment_batch(decode_batch(batch["encoded"], device), batch["keys"])


class ImageFolderCrops(CropDataset):
    """`--data DIR`: torchvision.datasets.ImageFolder(DIR) (DIR/<class>/<image>, as ImageNet's train/; the
    labels are not used), one sample per file and epoch. decode_device "cpu": the loader (its workers) reads,
    decodes a batch's JPEGs at once and augments; "cuda": the loader only reads the files and materialize()
    decodes the batch on the GPU (nvJPEG) and augments it there."""

    def __init__(self, root, size, seed=0, decode_device="cpu"):
        from torchvision.datasets import ImageFolder

        try:
            self.folder = ImageFolder(root, loader=read_encoded)
        except (FileNotFoundError, RuntimeError) as e:  # no class folder / no image in them
            raise ValueError(f"--data {root!r}: {e}. Expected torchvision's ImageFolder layout DIR/<class>/<image> "
                             "(as ImageNet's train/ folder)") from None
        super().__init__([path for path, _ in self.folder.samples], size, seed=seed)
        self.decode_device = torch.device(decode_device).type

    def source(self, i):
        return decode_batch([self.folder.loader(self.sources[i % len(self.sources)])])[0]

    def __getitems__(self, keys):
        t0 = time.perf_counter()
        encoded = [self.folder.loader(self.sources[self.sample_seed(k)[1]]) for k in keys]
        images = None
        if self.decode_device == "cpu":
            images, encoded = self.augment_batch(decode_batch(encoded), keys), None
        return {"images": images, "encoded": encoded, "keys": list(keys), "seconds": time.perf_counter() - t0}


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
