"""Figures of a pre-training run (matplotlib, Agg backend): reconstructions as in the MAE paper's figure 2, and
the loss curve."""
import torch

from . import reference
from .data import IMAGENET_MEAN, IMAGENET_STD


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _to_display(imgs):
    """Normalised [N, 3, H, W] -> [N, H, W, 3] numpy in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)
    return (imgs.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reconstructions(model, imgs, mask_ratio=0.75, noise=None):
    """(original, masked, reconstruction, reconstruction with the visible patches pasted), each [N, C, H, W].
    With norm_pix_loss the predictions are turned back into pixels with each patch's own mean and std."""
    import mae_kernels

    was_training = model.training
    model.eval()
    try:
        _, pred, mask = model(imgs, mask_ratio=mask_ratio, noise=noise)
    finally:
        model.train(was_training)
    p, size = model.patch_size, model.img_size
    pred = pred.float()
    if model.norm_pix_loss:
        pred = mae_kernels.denormalize_pred(pred, imgs, p)
    recon = reference.unpatchify(pred, p, size)
    P = pred.shape[-1]
    mask_img = reference.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, P), p, size)  # 1 = removed
    imgs = imgs.float()
    return imgs, imgs * (1 - mask_img), recon, imgs * (1 - mask_img) + recon * mask_img


def save_reconstruction_figure(model, imgs, path, mask_ratio=0.75, noise=None):
    plt = _pyplot()
    columns = [_to_display(t) for t in reconstructions(model, imgs, mask_ratio, noise)]
    titles = ("original", f"masked ({mask_ratio:.0%})", "reconstruction", "reconstruction + visible")
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    for r in range(n):
        for c in range(4):
            ax = axes[r][c]
            ax.imshow(columns[c][r])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_loss_curve(losses, path, title="MAE pre-training loss"):
    """losses: per-step training losses (the first step is step 1); a moving average is drawn over them."""
    plt = _pyplot()
    steps = range(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, alpha=0.35, label="loss (per step)")
    k = max(1, len(losses) // 20)
    if len(losses) >= k > 1:
        avg = torch.tensor(losses, dtype=torch.float64).unfold(0, k, 1).mean(1).tolist()
        ax.plot(range(k, len(losses) + 1), avg, label=f"moving average ({k} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("masked MSE (normalised pixels)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def video_reconstructions(model, clips, mask_ratio=0.9, noise=None):
    """For a video MAE (models.VideoMaskedAutoencoderViT): (original, masked, reconstruction, reconstruction with
    the visible tubelets pasted) of its target frames (model.target_frames), each [N, C, pred_t_dim, H, W] in the
    clips' normalised space. With norm_pix_loss the predictions are turned back into pixels with each target
    patch's own mean and std (taken from the original: the patch colours are then the truth's, not learned)."""
    was_training = model.training
    model.eval()
    try:
        _, pred, mask = model(clips, mask_ratio=mask_ratio, noise=noise)
    finally:
        model.train(was_training)
    target = clips.index_select(2, model.target_frames).float()
    patch = model.target_patch_size
    size = (model.pred_t_dim, *model.img_size)
    pred = pred.float()
    if model.norm_pix_loss:
        pred = reference.denormalize_pred(pred, target, patch)
    recon = reference.unpatchify(pred, patch, size)
    removed = reference.unpatchify(mask.float().unsqueeze(-1).expand(-1, -1, pred.shape[-1]), patch, size)
    return target, target * (1 - removed), recon, recon * removed + target * (1 - removed)


def save_video_reconstruction_figure(model, clips, path, mask_ratio=0.9, noise=None, max_frames=4):
    """A frames grid: for each clip, rows original / masked / reconstruction / reconstruction with the visible
    tubelets pasted (the official MAE demo's columns), columns up to max_frames of the target frames (evenly
    spaced)."""
    from .video_data import denormalize_video

    plt = _pyplot()
    rows = [denormalize_video(v) for v in video_reconstructions(model, clips, mask_ratio, noise)]
    frames = model.target_frames.tolist()
    cols = torch.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().long().tolist()
    recon = "reconstruction" + (" (patch mean/std\nfrom the original)" if model.norm_pix_loss else "")
    titles = ("original", f"masked ({mask_ratio:.0%})", recon, "reconstruction\n+ visible")
    n, R = clips.shape[0], len(titles)
    fig, axes = plt.subplots(R * n, len(cols), figsize=(2.2 * len(cols), 2.3 * R * n), squeeze=False)
    for i in range(n):
        for r in range(R):
            for c, k in enumerate(cols):
                ax = axes[R * i + r][c]
                ax.imshow(rows[r][i, :, k].permute(1, 2, 0).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"clip {i + 1}, frame {frames[k]}", fontsize=9)
                if c == 0:
                    ax.set_ylabel(titles[r], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
