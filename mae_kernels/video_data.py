"""Clips for video MAE pre-training (mae_st's input pipeline, in torch):

- SyntheticClips: the embedded default, no download. Short clips synthesised from scikit-image's sample
  photographs with real motion: a camera pan, a zoom (in or out) and a moving crop (a piece of a second
  photograph sliding over a static background). Deterministic per sample: clip i of epoch e is a function of
  (seed, e, i) only, whatever the worker or rank that makes it.
- VideoFolder: a folder of video files decoded with PyAV (pip install "mae_kernels[video]"). Frames are sampled
  as mae_st / SlowFast do: a random window of num_frames * sampling_rate frames, num_frames indices
  linspace(start, end).long() clamped to the video; one random resized crop (scale 0.5..1, mae_st's
  jitter_scales_relative) and flip for the whole clip.

Both return (clip [C, T, H, W] normalised with mae_st's mean 0.45 / std 0.225, seconds spent making it): the
loader's own throughput is printed next to the training step's. Keys are epoch * len + i (data.ShardedSampler).
"""
import functools
import math
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

VIDEO_MEAN = (0.45, 0.45, 0.45)  # mae_st (Kinetics) normalisation
VIDEO_STD = (0.225, 0.225, 0.225)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".ogv")
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
               "colorwheel", "camera", "coins", "moon", "grass", "gravel", "brick", "clock")
MOTIONS = ("pan", "zoom", "moving crop")


def normalize_video(clip, mean=VIDEO_MEAN, std=VIDEO_STD):
    """[C, T, H, W] in [0, 1] -> normalised."""
    mean = torch.tensor(mean, dtype=clip.dtype).view(-1, 1, 1, 1)
    std = torch.tensor(std, dtype=clip.dtype).view(-1, 1, 1, 1)
    return (clip - mean) / std


def denormalize_video(clip, mean=VIDEO_MEAN, std=VIDEO_STD):
    """Normalised [..., C, T, H, W] -> [0, 1]."""
    shape = (-1, 1, 1, 1)
    return (clip.float().cpu() * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)


@functools.lru_cache(maxsize=4)  # decoding the photographs costs more than a tiny run's steps; nobody mutates them
def photographs(max_side=256):
    """scikit-image's bundled photographs as [3, H, W] float32 in [0, 1] (grayscale ones as RGB, those this install
    can load), the shorter side shrunk to max_side. Cached: a tuple shared by every caller."""
    import numpy as np
    import skimage.data

    out = []
    for name in PHOTOGRAPHS:
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception:  # some need an optional download (pooch); the rest suffice
            continue
        a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0) if a.dtype != bool else a.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(a))
        t = t.unsqueeze(-1).expand(-1, -1, 3) if t.dim() == 2 else t[..., :3]
        t = t.permute(2, 0, 1).contiguous().clamp(0, 1)
        s = max_side / min(t.shape[1:])
        if s < 1:
            t = F.interpolate(t.unsqueeze(0), size=(round(t.shape[1] * s), round(t.shape[2] * s)), mode="bilinear",
                              antialias=True, align_corners=False).squeeze(0).clamp(0, 1)
        out.append(t)
    if not out:
        raise RuntimeError("no scikit-image sample photograph could be loaded; pass --data DIR (video files)")
    return tuple(out)


def _render(photo, boxes, size):
    """Crops of photo [3, Hp, Wp] at boxes [T, 4] = (cx, cy, half_w, half_h) in the photo's normalised
    [-1, 1] coordinates, each resampled to size (H, W) bilinearly: [3, T, H, W]."""
    T = boxes.shape[0]
    theta = torch.zeros(T, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = boxes[:, 2], boxes[:, 0]
    theta[:, 1, 1], theta[:, 1, 2] = boxes[:, 3], boxes[:, 1]
    grid = F.affine_grid(theta, (T, 3, *size), align_corners=False)
    frames = F.grid_sample(photo.unsqueeze(0).expand(T, -1, -1, -1), grid, mode="bilinear",
                           padding_mode="reflection", align_corners=False)
    return frames.transpose(0, 1).clamp(0, 1)


def _uniform(g, lo, hi):
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _square_box(photo, frac, size):
    """Half sizes (hw, hh) of a crop covering `frac` of the photo's shorter side, with the output's aspect."""
    Hp, Wp = photo.shape[1:]
    H, W = size
    side = frac * min(Hp, Wp)
    return side * (W / max(H, W)) / Wp, side * (H / max(H, W)) / Hp


def synthesize_clip(photos, num_frames, size, generator, motion=None, index=None):
    """One clip [3, T, H, W] in [0, 1] and its motion name. motion: one of MOTIONS (default: drawn); index: the
    photograph (default: drawn). Pan: a crop of 45-65% of the shorter side travels 30-60% of the photo in a
    random direction. Zoom: the crop side changes by 1.6-2.2x (in or out) around a random centre. Moving crop:
    a piece of another photograph (40-55% of the frame) slides across a static background."""
    g = generator
    H, W = size
    T = num_frames
    motion = motion or MOTIONS[int(torch.randint(len(MOTIONS), (1,), generator=g))]
    i = int(torch.randint(len(photos), (1,), generator=g)) if index is None else index % len(photos)
    photo = photos[i]
    s = torch.linspace(0, 1, T).unsqueeze(1)  # progress 0..1 per frame
    if motion == "pan":
        hw, hh = _square_box(photo, _uniform(g, 0.45, 0.65), size)
        angle = _uniform(g, 0, 2 * math.pi)
        dist = _uniform(g, 0.3, 0.6)
        dx, dy = dist * math.cos(angle), dist * math.sin(angle)
        cx0 = _uniform(g, -1 + hw + max(0.0, -dx * 2), 1 - hw - max(0.0, dx * 2)) if 1 - hw > -1 + hw else 0.0
        cy0 = _uniform(g, -1 + hh + max(0.0, -dy * 2), 1 - hh - max(0.0, dy * 2)) if 1 - hh > -1 + hh else 0.0
        c = torch.tensor([[cx0, cy0]]) + s * torch.tensor([[2 * dx, 2 * dy]])
        boxes = torch.cat([c, torch.tensor([[hw, hh]]).expand(T, 2)], 1)
        return _render(photo, boxes, size), motion
    if motion == "zoom":
        f_big = _uniform(g, 0.7, 0.95)
        f_small = f_big / _uniform(g, 1.6, 2.2)
        f0, f1 = (f_big, f_small) if float(torch.rand(1, generator=g)) < 0.5 else (f_small, f_big)
        hw1, hh1 = _square_box(photo, f_big, size)
        cx, cy = _uniform(g, -1 + hw1, 1 - hw1), _uniform(g, -1 + hh1, 1 - hh1)
        frac = f0 * (f1 / f0) ** s  # geometric: a steady zoom speed
        hw0, hh0 = _square_box(photo, 1.0, size)
        boxes = torch.cat([torch.tensor([[cx, cy]]).expand(T, 2), frac * torch.tensor([[hw0, hh0]])], 1)
        return _render(photo, boxes, size), motion
    # moving crop: static background, a piece of another photograph sliding across it
    hw, hh = _square_box(photo, _uniform(g, 0.5, 0.8), size)
    bg_box = torch.tensor([[_uniform(g, -1 + hw, 1 - hw), _uniform(g, -1 + hh, 1 - hh), hw, hh]]).expand(T, 4)
    clip = _render(photo, bg_box, size)
    other = photos[(i + 1 + int(torch.randint(max(len(photos) - 1, 1), (1,), generator=g))) % len(photos)]
    fh, fw = max(2, round(H * _uniform(g, 0.4, 0.55))), max(2, round(W * _uniform(g, 0.4, 0.55)))
    ow, oh = _square_box(other, _uniform(g, 0.4, 0.7), (fh, fw))
    piece = _render(other, torch.tensor([[_uniform(g, -1 + ow, 1 - ow), _uniform(g, -1 + oh, 1 - oh), ow, oh]]),
                    (fh, fw))[:, 0]
    y0, y1 = _uniform(g, 0, H - fh), _uniform(g, 0, H - fh)
    x0, x1 = (0.0, W - fw) if float(torch.rand(1, generator=g)) < 0.5 else (W - fw, 0.0)
    for ti in range(T):
        a = ti / max(T - 1, 1)
        top, left = round(y0 + (y1 - y0) * a), round(x0 + (x1 - x0) * a)
        clip[:, ti, top:top + fh, left:left + fw] = piece
    return clip, motion


class SyntheticClips(Dataset):
    """Clips synthesised from photographs (see synthesize_clip), normalised: (clip [3, T, H, W], seconds)."""

    def __init__(self, photos, num_frames, size, length, seed=0):
        self.photos = list(photos)
        self.num_frames = num_frames
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.length = int(length)
        self.seed = seed

    def __len__(self):
        return self.length

    def clip(self, key, motion=None, index=None):
        epoch, i = divmod(key, self.length)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + i)
        clip, _ = synthesize_clip(self.photos, self.num_frames, self.size, g, motion, index)
        if float(torch.rand(1, generator=g)) < 0.5:
            clip = clip.flip(-1)
        return normalize_video(clip)

    def __getitem__(self, key):
        start = time.perf_counter()
        clip = self.clip(key)
        return clip, time.perf_counter() - start

    def figure_clips(self, n=2):
        """n fixed clips for figures, one per motion in turn."""
        return torch.stack([self.clip(10_007 * k, MOTIONS[k % len(MOTIONS)], index=k) for k in range(n)])


# --- video files ---------------------------------------------------------------------------------------------


def list_videos(folder):
    paths = sorted(os.path.join(root, f) for root, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(VIDEO_EXTENSIONS))
    if not paths:
        raise ValueError(f"--data {folder!r}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    return paths


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ImportError("reading video files needs PyAV: pip install \"mae_kernels[video]\" (or pip install av)") \
            from e
    return av


def read_clip(path, num_frames, sampling_rate, generator):
    """The sampled frames of the first video stream: uint8 [num_frames, H, W, 3]. Decodes from the start up to
    the last sampled frame only (converting just the sampled ones to RGB); the frame count comes from the
    container, or from a full decode where the container does not say."""
    av = _import_av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        n = stream.frames
        if n <= 0:  # unknown length: decode everything, then sample
            video = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            n = len(video)
            if not n:
                raise ValueError(f"{path}: no video frame could be decoded")
            idx = sample_frame_indices(n, num_frames, sampling_rate, generator)
            return torch.stack([torch.from_numpy(video[k]) for k in idx.tolist()])
        idx = sample_frame_indices(n, num_frames, sampling_rate, generator).tolist()
        wanted, last, got = set(idx), idx[-1], {}
        for k, frame in enumerate(container.decode(stream)):
            if k in wanted:
                got[k] = torch.from_numpy(frame.to_ndarray(format="rgb24"))
            if k >= last:
                break
    if not got:
        raise ValueError(f"{path}: no video frame could be decoded")
    if len(got) < len(wanted):  # the container over-stated its length: repeat the last decoded frame
        top = max(got)
        idx = [min(k, top) for k in idx]
    return torch.stack([got[k] for k in idx])


def sample_frame_indices(num_video_frames, num_frames, sampling_rate, generator):
    """mae_st / SlowFast temporal sampling: a window of clip_size = num_frames * sampling_rate frames starting
    uniformly in [0, max(n - clip_size, 0)], num_frames indices linspace(start, start + clip_size - 1).long(),
    clamped to the video (short videos repeat frames)."""
    clip_size = num_frames * sampling_rate
    start = float(torch.rand(1, generator=generator)) * max(num_video_frames - clip_size, 0)
    index = torch.linspace(start, start + clip_size - 1, num_frames)
    return torch.clamp(index, 0, num_video_frames - 1).long()


def random_resized_crop_box(H, W, generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop.get_params (top, left, height, width), with mae_st's relative scales."""
    area = H * W
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return int(u[2] * (H - h + 1)) if H > h else 0, int(u[3] * (W - w + 1)) if W > w else 0, h, w
    s = min(H, W)
    return (H - s) // 2, (W - s) // 2, s, s


class VideoFolder(Dataset):
    """Clips from video files: (clip [3, T, H, W] normalised, seconds to decode and transform)."""

    def __init__(self, paths, num_frames, sampling_rate, size, seed=0, train=True):
        self.paths = list(paths)
        self.num_frames, self.sampling_rate = num_frames, sampling_rate
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.seed, self.train = seed, train

    def __len__(self):
        return len(self.paths)

    def clip(self, key):
        epoch, i = divmod(key, len(self.paths))
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_003 + i)
        frames = read_clip(self.paths[i], self.num_frames, self.sampling_rate, g)
        frames = frames.permute(0, 3, 1, 2).float() / 255.0  # [T, 3, h, w]
        h, w = frames.shape[2:]
        if self.train:
            top, left, ch, cw = random_resized_crop_box(h, w, g)
        else:
            s = min(h, w)
            top, left, ch, cw = (h - s) // 2, (w - s) // 2, s, s
        frames = F.interpolate(frames[:, :, top:top + ch, left:left + cw], size=self.size, mode="bilinear",
                               antialias=True, align_corners=False).clamp(0, 1)
        if self.train and float(torch.rand(1, generator=g)) < 0.5:
            frames = frames.flip(-1)
        return normalize_video(frames.transpose(0, 1).contiguous())

    def __getitem__(self, key):
        start = time.perf_counter()
        clip = self.clip(key)
        return clip, time.perf_counter() - start

    def figure_clips(self, n=2):
        was, self.train = self.train, False
        try:
            return torch.stack([self.clip(k) for k in range(min(n, len(self.paths)))])
        finally:
            self.train = was


def write_video(path, frames, fps=10):
    """Write uint8 frames [T, H, W, 3] (H, W even) to a video file with PyAV's MPEG-4 part 2 encoder (built into
    every FFmpeg): test data and demos."""
    av = _import_av()
    frames = torch.as_tensor(frames)
    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f.numpy(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
