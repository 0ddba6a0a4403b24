"""`mae-kernels` / `python -m mae_kernels`: info, bench, bench-step, pretrain."""
import argparse
import sys

COMMANDS = {
    "info": ("mae_kernels.info", "versions, build, and which backends can run here (and why not)"),
    "bench": ("mae_kernels.benchmark.cli", "benchmark the ops against eager PyTorch and torch.compile"),
    "bench-step": ("mae_kernels.benchmark.step_cli", "benchmark whole training steps: fused, eager, torch.compile"),
    "pretrain": ("mae_kernels.pretrain", "pre-train an MAE (default: a tiny one on embedded photographs; "
                                         "--video: a video MAE on clips made from them)"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mae-kernels", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    import importlib

    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
