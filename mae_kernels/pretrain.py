"""`mae-kernels pretrain`: MAE pre-training with the reference recipe (facebookresearch/mae main_pretrain.py).

AdamW (0.9, 0.95), weight decay 0.05 except biases and 1-D parameters (norm weights), lr = blr * effective
batch / 256, linear warmup then per-iteration half-cycle cosine, mask ratio 0.75, norm_pix_loss,
RandomResizedCrop(0.2..1, bicubic) + flip + ImageNet normalisation, bf16 autocast on GPU, a stop on a
non-finite loss. Checkpoints (output_dir/checkpoint.pth) resume exactly, mid-epoch included (--resume).
Data as the official recipe makes them, with torchvision (mae_kernels/data.py): --data DIR is an ImageFolder
(DIR/<class>/<image>), its JPEGs decoded a batch at a time (torchvision.io.decode_jpeg; on the GPU with nvJPEG
when training on one). The run ends with the loader's throughput alone against the training step's.

With no argument: a tiny MAE trained for a few minutes on a CPU on random crops of scikit-image's sample
photographs; writes a reconstruction figure and the loss curve to runs/demo/.
Several processes / GPUs / nodes: `torchrun --nproc_per_node N -m mae_kernels pretrain ...` (DDP; nccl on
GPUs, gloo on CPUs; each rank trains on its shard, rank 0 logs and writes checkpoints and figures). --fsdp shards
parameters, gradients and optimizer state instead (FSDP2, torch.distributed.fsdp.fully_shard: each transformer
block, then the rest), for models too large to replicate; its checkpoints hold the full, unsharded state as DDP's
do, so they load into a single-process model.
"""
import argparse
import contextlib
import os
import sys

import torch

from . import data as mdata
from .models import MODELS
from .train_loop import (CHECKPOINT, check_ranks_in_sync, full_state, lr_at, param_groups,  # noqa: F401 (lr_at)
                         print_summary, resume, run, train)

def parse_args(argv):
    p = argparse.ArgumentParser(prog="mae-kernels pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", action="store_true",
                   help="pre-train a video MAE instead (mae_st's recipe; `pretrain --video --help` for its options)")
    p.add_argument("--model", default="mae_vit_tiny", choices=sorted(MODELS))
    p.add_argument("--input-size", type=int, default=None, help="image side (default: 64 tiny, 224 otherwise)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=True)
    add_decoder_mask_args(p)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--accum-iter", type=int, default=1, help="gradient accumulation steps")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--warmup-epochs", type=float, default=1)
    p.add_argument("--blr", type=float, default=None,
                   help="base lr: lr = blr * effective batch / 256 (reference 1.5e-4; the embedded demo, which "
                        "trains for minutes instead of 800 epochs, defaults to 2e-3)")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--data", default=None,
                   help="an ImageFolder: DIR/<class>/<image> (as ImageNet's train/; default: scikit-image's sample "
                        "photographs)")
    p.add_argument("--decode-device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where --data's JPEGs are decoded and augmented (auto: cuda when training on a GPU; cpu: "
                        "in the loader's workers)")
    p.add_argument("--samples-per-epoch", type=int, default=2048, help="crops per epoch of the embedded data")
    p.add_argument("--num-workers", type=int, default=1,
                   help="data-loading processes (0: in the training process)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many iterations in all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "none"),
                   help="autocast dtype (auto: bf16 on GPU, none on CPU)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="mae_kernels' fused ops (--no-fused: the official eager path)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fsdp", action="store_true",
                   help="with torchrun: shard the model with FSDP2 (fully_shard per block) instead of DDP")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    for name in ("batch_size", "accum_iter", "epochs", "samples_per_epoch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.mask_ratio < 1:
        p.error(f"--mask-ratio must be in [0, 1), got {args.mask_ratio}")
    check_decoder_mask_args(p, args)
    if args.blr is None:
        args.blr = 1.5e-4 if args.data else 2e-3
    if args.input_size is None:
        args.input_size = 64 if args.model == "mae_vit_tiny" else 224
    return args


def add_decoder_mask_args(p):
    """Dual masking's options (VideoMAE v2; models/dual_masking.py), shared by `pretrain` and `pretrain --video`."""
    from .ops.decoder_mask_indices import MASK_TYPES, SCOPES

    p.add_argument("--decoder-mask-ratio", type=float, default=0.0,
                   help="dual masking (VideoMAE v2): the share of positions the decoder does not see in training "
                        "(0: the decoder sees every position; v2's scripts: 0.5)")
    p.add_argument("--decoder-mask-type", default="run_cell", choices=MASK_TYPES,
                   help="run_cell: v2's running-cell maps (2x2 cells, rotating per frame); random: a uniform subset")
    p.add_argument("--decoder-mask-scope", default="all", choices=SCOPES,
                   help="all: v2's rule (mask tokens at every decoded position, encoder-visible ones included); "
                        "removed: decode encoder-removed positions only (a shorter decoder sequence)")


def check_decoder_mask_args(p, args):
    if not 0 <= args.decoder_mask_ratio < 1:
        p.error(f"--decoder-mask-ratio must be in [0, 1), got {args.decoder_mask_ratio}")


def decoder_mask_kwargs(args):
    """The model keywords of add_decoder_mask_args' options."""
    return dict(decoder_mask_ratio=args.decoder_mask_ratio, decoder_mask_type=args.decoder_mask_type,
                decoder_mask_scope=args.decoder_mask_scope)


def shard_model(model, device, world):
    """FSDP2: each encoder and decoder block its own unit (all-gathered just before it runs, freed after), then the
    root (embeddings, tokens, norms, prediction head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for block in list(model.blocks) + list(model.decoder_blocks):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def decode_device(args, device):
    if args.decode_device == "auto":
        return "cuda" if args.data and device.type == "cuda" else "cpu"
    if args.decode_device == "cuda" and not (args.data and device.type == "cuda"):
        raise ValueError("--decode-device cuda needs --data and a CUDA --device (the embedded photographs are "
                         "decoded already)")
    return args.decode_device


def build_data(args, rank, world, device):
    if args.data:
        dataset = mdata.ImageFolderCrops(args.data, args.input_size, seed=args.seed,
                                         decode_device=decode_device(args, device))
    else:
        dataset = mdata.CropDataset(mdata.skimage_samples(), args.input_size, length=args.samples_per_epoch,
                                    seed=args.seed)
    sampler = mdata.ShardedSampler(len(dataset), world, rank, seed=args.seed)
    if sampler.per_rank < args.batch_size:
        raise ValueError(f"each of the {world} process(es) gets {sampler.per_rank} samples per epoch, fewer than "
                         f"--batch-size {args.batch_size}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler,
                                         num_workers=args.num_workers, drop_last=True,
                                         collate_fn=mdata.collate_batch, pin_memory=device.type == "cuda",
                                         persistent_workers=args.num_workers > 0)
    figure_imgs = torch.stack([mdata.center_view(dataset.source(i), dataset.size)
                               for i in range(min(4, len(dataset.sources)))])
    return dataset, sampler, loader, figure_imgs


def heldout_loss(model, imgs, args, device, autocast):
    """The loss on a fixed batch (the figure's images) with fixed encoder masks, every position decoded (eval
    mode): the same masked tokens at every evaluation, whatever the training's decoder masking, so that runs
    with different --decoder-mask-ratio compare on one measure."""
    noise = torch.rand(imgs.shape[0], model.patch_embed.num_patches,
                       generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        loss = model(imgs.to(device), mask_ratio=args.mask_ratio, noise=noise)[0].float().item()
    model.train(was_training)
    return loss


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--video" in argv:  # video MAE pre-training (mae_st's recipe): mae_kernels/video_pretrain.py
        from . import video_pretrain

        return video_pretrain.main([a for a in argv if a != "--video"])
    return run(_train, parse_args(argv), "mae-kernels pretrain")


def _train(args, device, rank, world):
    is_main = rank == 0
    torch.manual_seed(args.seed)  # the same initial weights on every rank (FSDP does not broadcast them, DDP does)
    model = MODELS[args.model](img_size=args.input_size, norm_pix_loss=args.norm_pix_loss,
                               use_fused_ops=args.fused, **decoder_mask_kwargs(args)).to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if args.fsdp:
        if world == 1:
            raise ValueError("--fsdp shards the model across processes: start several with torchrun")
        shard_model(model, device, world)
    eff_batch = args.batch_size * args.accum_iter * world
    if args.lr is None:
        args.lr = args.blr * eff_batch / 256
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
    dataset, sampler, loader, figure_imgs = build_data(args, rank, world, device)
    state = resume(args, model, optimizer, is_main)

    net = model
    if world > 1 and not args.fsdp:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    amp = args.amp if args.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext

    os.makedirs(args.output_dir, exist_ok=True)
    ckpt_path = os.path.join(args.output_dir, CHECKPOINT)
    if is_main:
        print(f"{args.model}: {n_params / 1e6:.2f}M trainable parameters, {args.input_size}px, device {device}, "
              f"{world} process(es) ({'FSDP2' if args.fsdp else 'DDP' if world > 1 else 'single'}), "
              f"fused ops {'on' if args.fused else 'off'}, autocast {amp}")
        print(f"data: {args.data or 'scikit-image sample photographs'} ({len(dataset)} per epoch, "
              f"{max(args.num_workers, 1)} loader process(es), decoding on {dataset.decode_device}), "
              f"effective batch "
              f"{eff_batch}, lr {args.lr:.3g} (blr {args.blr:.3g}), {args.epochs} epochs x {len(loader)} steps")

    def load(batch):
        imgs = dataset.materialize(batch, device)
        return imgs, imgs.shape[0], batch["seconds"]

    speed = train(args, state, model=model, net=net, optimizer=optimizer, sampler=sampler, loader=loader,
                  device=device, rank=rank, world=world, autocast=autocast, load=load,
                  heldout=lambda: heldout_loss(model, figure_imgs, args, device, autocast), ckpt_path=ckpt_path,
                  fsdp=args.fsdp, hint="try a lower --blr or --amp none")
    if is_main and speed.line(dataset.decode_device):
        print(speed.line(dataset.decode_device))
    if args.fsdp:  # the figures from a single-process copy of the whole model (rank 0 gathers it)
        model_state, _ = full_state(model, optimizer, True)
        if is_main:
            model = MODELS[args.model](img_size=args.input_size, norm_pix_loss=args.norm_pix_loss,
                                       use_fused_ops=args.fused).to(device)
            model.load_state_dict(model_state)
    else:
        check_ranks_in_sync(model, world, is_main)
    if is_main:
        print(f"checkpoint: {ckpt_path}")
        if args.figures:
            from .figures import save_loss_curve, save_reconstruction_figure

            noise = torch.rand(figure_imgs.shape[0], model.patch_embed.num_patches,
                               generator=torch.Generator().manual_seed(args.seed)).to(device)
            recon = save_reconstruction_figure(model, figure_imgs.to(device), os.path.join(
                args.output_dir, "reconstruction.png"), args.mask_ratio, noise)
            curve = save_loss_curve(state["losses"], os.path.join(args.output_dir, "loss_curve.png"))
            print(f"reconstruction figure: {recon}")
            print(f"loss curve: {curve}")
        print_summary(state, "the figure's images and fixed masks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
