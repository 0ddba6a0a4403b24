"""Dual masking's quality cost, measured: train the embedded demo twice with the same seed, data, encoder masks
and steps, once with the full decoder (--decoder-mask-ratio 0) and once with VideoMAE v2's running-cell decoder
mask (0.5), and plot both runs' held-out loss (the same fixed images and encoder masks, every position decoded:
one measure for both) and training loss side by side. Writes <out>/decoder_masking.{png,md} with the device,
versions and commit.

    python python/compare_decoder_masking.py --epochs 10 --out bench/results
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(ratio, args, out_dir):
    cmd = [sys.executable, "-m", "mae_kernels", "pretrain", "--decoder-mask-ratio", str(ratio), "--epochs",
           str(args.epochs), "--output-dir", out_dir, "--no-figures", "--no-progress", "--seed", str(args.seed),
           *args.pretrain_args]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(os.path.join(out_dir, "log.txt")) as f:
        log = [json.loads(line) for line in f]
    return {"ratio": ratio, "seconds": time.time() - start, "log": log}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--runs", default="runs/decoder_masking")
    p.add_argument("pretrain_args", nargs="*", help="more `mae-kernels pretrain` arguments (after --)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from mae_kernels.benchmark import environment

    results = [run(r, args, os.path.join(args.runs, f"ratio{r}")) for r in (0.0, 0.5)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for res in results:
        steps = [e["global_step"] for e in res["log"]]
        label = f"decoder mask ratio {res['ratio']}"
        axes[0].plot(steps, [e["heldout_loss"] for e in res["log"]], marker="o", label=label)
        axes[1].plot(steps, [e["train_loss"] for e in res["log"]], marker="o", label=label)
    axes[0].set_title("held-out loss (same images and masks, all positions decoded)")
    axes[1].set_title("training loss (epoch mean; ratio 0.5 sees a subset)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "decoder_masking.png")
    fig.savefig(png, dpi=100)
    env = environment.collect(torch.device("cpu"))
    lines = ["# Dual masking (decoder_mask_ratio 0.5, running cell) vs the full decoder: the embedded demo",
             "",
             f"Measured on {env['device']}, torch {env['torch']}, triton {env['triton']}, commit {env['git_commit']}, "
             f"{time.strftime('%Y-%m-%d')}; `python python/compare_decoder_masking.py --epochs {args.epochs} "
             f"{' '.join(args.pretrain_args)}` (mae_vit_tiny, the scikit-image photographs, seed {args.seed}, "
             "same data, encoder masks and steps in both runs). Held-out loss: the figure's images with fixed "
             "encoder masks, every position decoded (eval mode), after each epoch.", "",
             "| decoder mask ratio | wall s | held-out loss first -> last | training loss first -> last |",
             "|---|---|---|---|"]
    for res in results:
        log = res["log"]
        lines.append(f"| {res['ratio']} | {res['seconds']:.0f} | {log[0]['heldout_loss']:.4f} -> "
                     f"{log[-1]['heldout_loss']:.4f} | {log[0]['train_loss']:.4f} -> {log[-1]['train_loss']:.4f} |")
    last = [res["log"][-1]["heldout_loss"] for res in results]
    lines += ["", f"Held-out loss at the end: {last[1]:.4f} with dual masking vs {last[0]:.4f} with the full decoder "
              f"({(last[1] / last[0] - 1) * 100:+.1f}%).", "", "![curves](decoder_masking.png)", ""]
    with open(os.path.join(args.out, "decoder_masking.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
