"""`mae-kernels pretrain --video`: video MAE pre-training with facebookresearch/mae_st's recipe (main_pretrain.py,
PRETRAIN.md's recommended run): an mae_st model (sep_pos_embed, cls_embed, t_patch_size 2), random masking over
all spacetime tokens (ratio 0.75; PRETRAIN.md: 0.9 for long runs), norm_pix_loss, AdamW (0.9, 0.95), weight
decay 0.05 except biases and norms, lr = blr * effective batch / 256 with warmup then half-cycle cosine,
optional gradient clipping, fp32 (mae_st uses no autocast; --amp bf16 opts in). --mask-type tube selects
VideoMAE's tube masking on the same model;
--decoder-mask-ratio R (with --decoder-mask-type, --decoder-mask-scope: `mae-kernels pretrain`'s flags) VideoMAE
v2's dual masking in training. Every epoch logs a held-out loss (the figure's clips, fixed encoder masks, every
position decoded) that compares runs with different decoder masking.

With no --data: a tiny video MAE (mae_st_vit_tiny: 8 frames of 64x64) trained for a few CPU minutes on clips
synthesised from scikit-image's photographs (pans, zooms, a moving crop); writes a frames-grid reconstruction
figure and the loss curve to runs/video_demo/. For a figure a person can read after 1024 steps of 8 clips, the
demo departs from mae_st's recipe in three defaults: pixel targets (--no-norm-pix-loss, as the official MAE
visualisation model: the figure shows the model's own pixels, not patch colours copied from the original),
sin-cos initial positional embeddings (--pos-init sincos; mae_st's random ones leave the decoder predicting
one mean colour per clip for hundreds of steps), 1024 steps of 8 clips at lr 2e-3 (blr 6.4e-2). --data DIR: a
folder of video files (PyAV), num_frames frames every --sampling-rate frames (mae_st's sampling), with mae_st's
defaults. Checkpoints resume exactly (--resume), DDP via torchrun as `mae-kernels pretrain`.
"""
import argparse
import contextlib
import os
import sys

import torch

from . import video_data as vdata
from .data import ShardedSampler
from .models.video_mae import MASK_TYPES, VIDEO_MODELS
from .pretrain import add_decoder_mask_args, check_decoder_mask_args, decoder_mask_kwargs
from .train_loop import CHECKPOINT, check_ranks_in_sync, param_groups, print_summary, resume, run, train


def parse_args(argv):
    p = argparse.ArgumentParser(prog="mae-kernels pretrain --video", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mae_st_vit_tiny", choices=sorted(VIDEO_MODELS))
    p.add_argument("--input-size", type=int, default=None, help="frame side (default: 64 tiny, 224 otherwise)")
    p.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: 8 tiny, 16 otherwise)")
    p.add_argument("--t-patch-size", type=int, default=2, help="tubelet frames")
    p.add_argument("--pred-t-dim", type=int, default=None,
                   help="target frames (mae_st: 8 of 16; default num_frames // 2)")
    p.add_argument("--sampling-rate", type=int, default=4, help="frame stride of clips read from --data videos")
    p.add_argument("--mask-ratio", type=float, default=0.75,
                   help="main_pretrain.py's default (PRETRAIN.md's long runs use 0.9)")
    p.add_argument("--mask-type", default="random", choices=MASK_TYPES,
                   help="random: mae_st (over all spacetime tokens); tube: VideoMAE (one spatial mask per clip)")
    p.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="per-patch normalised target (mae_st's recipe; default with --data). The embedded demo "
                        "defaults to --no-norm-pix-loss, as the official MAE visualisation model: its figure "
                        "then shows the model's own pixels, not patch colours taken from the original")
    p.add_argument("--pos-init", choices=("sincos", "mae_st"), default=None,
                   help="initial positional embeddings: mae_st's trunc_normal(0.02) (default with --data) or "
                        "sin-cos tables (default for the embedded demo: a few minutes of training learn far more "
                        "from them); learned either way")
    add_decoder_mask_args(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="clips per process (default 16; the embedded demo: 8, twice the steps for the same clips)")
    p.add_argument("--accum-iter", type=int, default=1)
    p.add_argument("--epochs", type=int, default=None, help="default 8; the embedded demo: 16 (1024 steps)")
    p.add_argument("--warmup-epochs", type=float, default=1)
    p.add_argument("--blr", type=float, default=None,
                   help="base lr: lr = blr * effective batch / 256 (mae_st PRETRAIN.md 1.6e-3; the embedded demo, "
                        "minutes instead of 100s of epochs, defaults to 6.4e-2: lr 2e-3 at batch 8)")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--clip-grad", type=float, default=None, help="max gradient norm (PRETRAIN.md: 0.02)")
    p.add_argument("--data", default=None, help="folder of video files (default: clips synthesised from photographs)")
    p.add_argument("--samples-per-epoch", type=int, default=512, help="synthesised clips per epoch")
    p.add_argument("--num-workers", type=int, default=1, help="data-loading processes (0: in the training process)")
    p.add_argument("--output-dir", default="runs/video_demo")
    p.add_argument("--resume", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--amp", default="none", choices=("bf16", "none"), help="autocast dtype (mae_st: fp32)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="mae_kernels' fused ops (--no-fused: mae_st's eager forward)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    demo = not args.data  # the embedded clips: defaults for a readable figure after a few CPU minutes
    if args.batch_size is None:
        args.batch_size = 8 if demo else 16
    if args.epochs is None:
        args.epochs = 16 if demo else 8
    for name in ("batch_size", "accum_iter", "epochs", "samples_per_epoch", "sampling_rate", "t_patch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.mask_ratio < 1:
        p.error(f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    check_decoder_mask_args(p, args)
    tiny = args.model == "mae_st_vit_tiny"
    if args.input_size is None:
        args.input_size = 64 if tiny else 224
    if args.num_frames is None:
        args.num_frames = 8 if tiny else 16
    if args.pred_t_dim is None:
        args.pred_t_dim = args.num_frames // 2
    if args.blr is None:
        args.blr = 1.6e-3 if args.data else 6.4e-2
    if args.norm_pix_loss is None:
        args.norm_pix_loss = bool(args.data)
    if args.pos_init is None:
        args.pos_init = "mae_st" if args.data else "sincos"
    return args


def build_model(args):
    model = VIDEO_MODELS[args.model](img_size=args.input_size, num_frames=args.num_frames,
                                     t_patch_size=args.t_patch_size, pred_t_dim=args.pred_t_dim,
                                     norm_pix_loss=args.norm_pix_loss, mask_type=args.mask_type,
                                     use_fused_ops=args.fused, **decoder_mask_kwargs(args))
    if args.pos_init == "sincos":
        sincos_pos_init(model)
    return model


@torch.no_grad()
def sincos_pos_init(model):
    """Start the learned positional embeddings (encoder and decoder) from fixed sin-cos tables, as the image MAE's
    are (2-D over the frame's patch grid, plus 1-D over the temporal index), instead of mae_st's
    trunc_normal(0.02): neighbouring tokens then start with similar embeddings, which a run of a few minutes
    cannot learn from random ones. They stay trainable; the cls rows stay as initialised."""
    from .models.pos_embed import sincos_1d, sincos_2d

    t, h, w = model.input_size
    for prefix in ("", "decoder_"):
        if model.sep_pos_embed:
            spatial = getattr(model, prefix + "pos_embed_spatial")
            D = spatial.shape[-1]
            spatial.copy_(sincos_2d(D, (h, w)).unsqueeze(0))
            getattr(model, prefix + "pos_embed_temporal").copy_(sincos_1d(D, torch.arange(t)).float().unsqueeze(0))
        else:
            table = getattr(model, prefix + "pos_embed")  # [1, (1 +) L, D]
            D = table.shape[-1]
            grid = sincos_2d(D, (h, w)).repeat(t, 1) + sincos_1d(D, torch.arange(t)).float().repeat_interleave(h * w, 0)
            table[0, table.shape[1] - t * h * w:].copy_(grid)


def build_data(args, rank, world):
    if args.data:
        dataset = vdata.VideoFolder(vdata.list_videos(args.data), args.num_frames, args.sampling_rate,
                                    args.input_size, seed=args.seed)
        what = f"{args.data} ({len(dataset)} videos, every {args.sampling_rate} frames)"
    else:
        dataset = vdata.SyntheticClips(vdata.photographs(max_side=max(2 * args.input_size, 96)), args.num_frames,
                                       args.input_size, args.samples_per_epoch, seed=args.seed)
        what = f"clips synthesised from scikit-image photographs ({len(dataset)} per epoch)"
    sampler = ShardedSampler(len(dataset), world, rank, seed=args.seed)
    if sampler.per_rank < args.batch_size:
        raise ValueError(f"each of the {world} process(es) gets {sampler.per_rank} clips per epoch, fewer than "
                         f"--batch-size {args.batch_size}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                         num_workers=args.num_workers, drop_last=True,
                                         persistent_workers=args.num_workers > 0)
    return dataset, sampler, loader, what


def heldout_noise(model, clips, seed):
    """Fixed encoder-mask noise for `clips`: [N, h*w] with tube masking, [N, L] otherwise."""
    t, h, w = model.input_size
    n_noise = h * w if model.mask_type == "tube" else t * h * w
    return torch.rand(clips.shape[0], n_noise, generator=torch.Generator().manual_seed(seed))


def heldout_loss(model, clips, args, device, autocast):
    """The loss on fixed clips (the figure's) with fixed encoder masks, every position decoded (eval mode): the
    same masked tokens at every evaluation, whatever the training's decoder masking, so that runs with different
    --decoder-mask-ratio compare on one measure (as `mae-kernels pretrain`)."""
    noise = heldout_noise(model, clips, args.seed + 1).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        loss = model(clips, mask_ratio=args.mask_ratio, noise=noise)[0].float().item()
    model.train(was_training)
    return loss


def main(argv=None):
    return run(_train, parse_args(sys.argv[1:] if argv is None else argv), "mae-kernels pretrain --video")


def _train(args, device, rank, world):
    is_main = rank == 0
    torch.manual_seed(args.seed + rank)
    model = build_model(args).to(device)
    eff_batch = args.batch_size * args.accum_iter * world
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    dataset, sampler, loader, what = build_data(args, rank, world)
    state = resume(args, model, optimizer, is_main)

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    autocast = ((lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp == "bf16"
                else contextlib.nullcontext)

    heldout_clips = dataset.figure_clips(3).to(device)  # also the figure's clips
    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_path = os.path.join(args.output_dir, CHECKPOINT)
    T = args.num_frames
    if is_main:
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        t, h, w = model.input_size
        print(f"{args.model}: {n_params / 1e6:.2f}M trainable parameters, {T} frames of {args.input_size}px, "
              f"tubelets {args.t_patch_size}x{model.patch_size[0]}x{model.patch_size[1]} (L = {t}x{h}x{w} = "
              f"{t * h * w}), {args.mask_type} masking {args.mask_ratio:.0%}{_dual_text(args)}, target frames "
              f"{model.target_frames.tolist()}, device {device}, {world} process(es), fused ops "
              f"{'on' if args.fused else 'off'}, autocast {args.amp}, "
              f"norm_pix_loss {'on' if args.norm_pix_loss else 'off'}")
        print(f"data: {what}, effective batch {eff_batch}, lr {args.lr:.3g} (blr {args.blr:.3g}), "
              f"{args.epochs} epochs x {len(loader)} steps")

    def load(batch):  # throughput counts frames as images
        clips, seconds = batch
        return clips.to(device, non_blocking=True), clips.shape[0] * T, float(seconds.sum())

    speed = train(args, state, model=model, net=net, optimizer=optimizer, sampler=sampler, loader=loader,
                  device=device, rank=rank, world=world, autocast=autocast, load=load,
                  heldout=lambda: heldout_loss(model, heldout_clips, args, device, autocast), ckpt_path=ckpt_path)
    if is_main and speed.line("cpu"):
        print(speed.line("cpu"))
    check_ranks_in_sync(model, world, is_main)
    if is_main:
        print(f"checkpoint: {ckpt_path}")
        if args.figures:
            from .figures import save_loss_curve, save_video_reconstruction_figure

            noise = heldout_noise(model, heldout_clips, args.seed)
            recon = save_video_reconstruction_figure(model, heldout_clips, os.path.join(args.output_dir,
                                                     "reconstruction.png"), args.mask_ratio, noise.to(device))
            curve = save_loss_curve(state["losses"], os.path.join(args.output_dir, "loss_curve.png"),
                                    title="video MAE pre-training loss")
            print(f"reconstruction figure: {recon}")
            print(f"loss curve: {curve}")
        print_summary(state, "fixed clips and masks")
    return 0


def _dual_text(args):
    if not args.decoder_mask_ratio:
        return ""
    return (f", decoder masking {args.decoder_mask_ratio:.0%} ({args.decoder_mask_type}, scope "
            f"{args.decoder_mask_scope})")


if __name__ == "__main__":
    sys.exit(main())
