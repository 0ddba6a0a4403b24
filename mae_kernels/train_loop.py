"""The training loop `mae-kernels pretrain` (images, pretrain.py) and `pretrain --video` (video_pretrain.py)
share, with the recipe pieces both use: distributed set-up, AdamW's parameter groups, the per-iteration lr
schedule, whole-state checkpoints that resume exactly (mid-epoch included), a stop on a non-finite loss, the masks'
seeds per (step, rank), a held-out loss per epoch, and the loader's throughput against the training step's."""
import json
import math
import os
import sys
import time

import torch

CHECKPOINT = "checkpoint.pth"


class NonFiniteLoss(RuntimeError):
    pass


# Distributed set-up (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK).
def init_distributed(device):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return rank, world, local_rank


def param_groups(model, weight_decay):
    """No weight decay on biases and 1-D parameters (norm weights), as timm's add_weight_decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(epoch, args):
    """Linear warmup, then half-cycle cosine to min_lr; epoch is fractional (per-iteration schedule)."""
    if epoch < args.warmup_epochs:
        return args.lr * epoch / args.warmup_epochs
    progress = (epoch - args.warmup_epochs) / max(args.epochs - args.warmup_epochs, 1e-8)
    return args.min_lr + (args.lr - args.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def full_state(model, optimizer, fsdp):
    """(model, optimizer) state dicts with every tensor whole and keyed by parameter name, sharded or not
    (torch.distributed.checkpoint.state_dict). Every rank calls it (FSDP gathers); under FSDP only rank 0
    receives them (on the CPU)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=fsdp)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(model, optimizer, ckpt):
    """A checkpoint from any run (single process, DDP or FSDP) into this one's model and optimizer, sharding
    them as the model is."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt["model"], options=options)
    set_optimizer_state_dict(model, optimizer, ckpt["optimizer"], options=options)


def save_checkpoint(path, model_state, optimizer_state, state, args):
    tmp = path + ".tmp"
    torch.save({"model": model_state, "optimizer": optimizer_state, "args": vars(args), **state}, tmp)
    os.replace(tmp, path)  # never a half-written checkpoint


def _rate(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


class Throughput:
    """The loader alone (its own time to read, decode and augment a batch: in its workers, plus decoding in this
    process when it is on the GPU) against the training step (forward, backward, optimizer; waiting excluded),
    in images/s of this process, and the share of the time spent waiting for data. The first step (worker
    start-up, first compilations) is left out."""

    def __init__(self, workers):
        self.workers = max(workers, 1)
        self.images = self.worker_s = self.main_s = self.wait_s = self.step_s = 0.0

    def add(self, images, worker_s, main_s, wait_s, step_s):
        self.images += images
        self.worker_s += worker_s
        self.main_s += main_s
        self.wait_s += wait_s
        self.step_s += step_s

    def line(self, decode):
        if not self.images:
            return None
        # Workers make batches in parallel; decoding in this process adds to every batch.
        per_image = self.worker_s / self.images / self.workers + self.main_s / self.images
        loader = 1 / max(per_image, 1e-12)
        step = self.images / max(self.step_s, 1e-12)
        wait = self.wait_s / max(self.wait_s + self.step_s, 1e-12)
        worker_rate = self.images / max(self.worker_s, 1e-12)
        return (f"throughput (per process): data loader alone {_rate(loader)} img/s ({self.workers} loader "
                f"process(es) x {_rate(worker_rate)} img/s, decoding on {decode}) vs training step "
                f"{_rate(step)} img/s; "
                f"waited for data {100 * wait:.0f}% of the time -> "
                f"{'the loader' if loader < step else 'the training step'} is the bottleneck")


def run(train_fn, args, prog):
    """train_fn(args, device, rank, world) in this process's place of a torchrun group (or alone); a non-finite
    loss ends it with a message and exit code 1."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world, local_rank = init_distributed(device)
    try:
        return train_fn(args, torch.device(device, local_rank) if device == "cuda" else torch.device(device),
                        rank, world)
    except NonFiniteLoss as e:
        print(f"{prog}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def resume(args, model, optimizer, is_main):
    """The loop's state: fresh, or from --resume's checkpoint (whose model and optimizer states are loaded)."""
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "losses": [], "heldout_losses": []}
    if args.resume:
        ckpt = torch.load(args.resume, map_location="cpu", weights_only=False)
        load_full_state(model, optimizer, ckpt)
        state = {k: ckpt.get(k, state[k]) for k in state}
        if is_main:
            print(f"resumed from {args.resume}: epoch {state['epoch']}, step {state['global_step']}")
    return state


def total_steps(args, steps_per_epoch):
    total = args.epochs * steps_per_epoch
    return total if args.max_steps is None else min(total, args.max_steps)


def train(args, state, *, model, net, optimizer, sampler, loader, device, rank, world, autocast, load, heldout,
          ckpt_path, fsdp=False, hint="try a lower --blr"):
    """Train `net` (model, or its DDP / compiled wrapper) from `state` to args.epochs or args.max_steps.

    load(batch) -> (inputs on device, images in the batch, seconds the loader's workers spent on it);
    heldout() -> the held-out loss, run on every rank after each epoch (FSDP gathers). Raises NonFiniteLoss
    (hint: what to try) before a non-finite loss reaches the weights. Returns the Throughput of the steps run."""
    is_main = rank == 0
    steps_per_epoch = len(loader)
    total = total_steps(args, steps_per_epoch)
    clip_grad = getattr(args, "clip_grad", None)
    bar = None
    if is_main and args.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=min(state["global_step"], total), unit="step", dynamic_ncols=True)
    net.train()
    optimizer.zero_grad(set_to_none=True)
    t_last = time.perf_counter()
    speed = Throughput(args.num_workers)
    first_step = state["global_step"]
    done = state["global_step"] >= total
    for epoch in range(state["epoch"], args.epochs):
        if done:
            break
        start = state["step_in_epoch"] if epoch == state["epoch"] else 0
        sampler.set_epoch(epoch, start * args.batch_size)
        epoch_losses = []
        t_wait = time.perf_counter()
        for it, batch in enumerate(loader, start=start):
            t_got = time.perf_counter()
            if (it - start) % args.accum_iter == 0 or it == start:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch + it / steps_per_epoch, args)
            inputs, images, worker_s = load(batch)
            t_data = time.perf_counter()
            # Masks from a seed per (step, rank): distinct across ranks, and a resumed run repeats them exactly.
            torch.manual_seed((args.seed * 1_000_003 + state["global_step"]) * world + rank)
            with autocast():
                loss, _, _ = net(inputs, mask_ratio=args.mask_ratio)
            loss_value = loss.detach().float()
            if world > 1:  # every rank sees the same (mean) value, so every rank stops together
                import torch.distributed as dist

                dist.all_reduce(loss_value)
                loss_value /= world
            loss_value = loss_value.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(f"loss is {loss_value} at epoch {epoch}, step {state['global_step'] + 1}; "
                                    f"stopping training ({hint})")
            (loss / args.accum_iter).backward()
            if (it + 1) % args.accum_iter == 0 or it + 1 == steps_per_epoch:
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["global_step"] += 1
            state["losses"].append(loss_value)
            epoch_losses.append(loss_value)
            state["epoch"], state["step_in_epoch"] = epoch, it + 1
            now = time.perf_counter()
            if state["global_step"] > first_step + 1:
                speed.add(images, worker_s, t_data - t_got, t_data - t_wait, now - t_data)
            t_wait = now
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{loss_value:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{images * world / max(now - t_last, 1e-9):.0f}")
                bar.update(1)
            t_last = now
            if state["global_step"] >= total:
                done = True
                break
        if state["step_in_epoch"] >= steps_per_epoch:
            state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        value = heldout()  # every rank (FSDP gathers)
        state["heldout_losses"].append((state["global_step"], value))
        model_state, optimizer_state = full_state(model, optimizer, fsdp)  # every rank (FSDP gathers)
        if is_main:
            save_checkpoint(ckpt_path, model_state, optimizer_state, state, args)
            if epoch_losses:
                with open(os.path.join(args.output_dir, "log.txt"), "a") as f:
                    f.write(json.dumps({"epoch": epoch, "train_loss": sum(epoch_losses) / len(epoch_losses),
                                        "heldout_loss": value, "global_step": state["global_step"]}) + "\n")
    if bar is not None:
        bar.close()
    return speed


def check_ranks_in_sync(model, world, is_main):
    """DDP keeps replicas identical; say so (a cheap check: per-parameter sums from every rank)."""
    if world == 1:
        return
    import torch.distributed as dist

    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    if is_main:
        print(f"ranks in sync: {all(torch.equal(g, gathered[0]) for g in gathered)}")


def print_summary(state, what):
    """The last held-out loss (`what` it is measured on) and the training loss's first and last tenth."""
    if state["heldout_losses"]:
        step, value = state["heldout_losses"][-1]
        print(f"held-out loss ({what}, every position decoded): {value:.4f} at step {step}")
    if len(state["losses"]) >= 2:
        k = max(1, len(state["losses"]) // 10)
        first, last = state["losses"][:k], state["losses"][-k:]
        print(f"loss: {sum(first) / len(first):.4f} (first {k} steps) -> {sum(last) / len(last):.4f} "
              f"(last {k} steps)")
