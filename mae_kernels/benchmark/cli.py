"""`mae-kernels bench`: time every op for every provider and mode; print a table, write
<out>/<device-slug>.json and .png (bench/results/ by default). --quick: tiny shapes and short timing."""
import argparse
import os
import sys
import time

import torch

from . import cases, environment, harness, report

TIMING = {"warmup_ms": 25.0, "rep_ms": 150.0}
QUICK_TIMING = {"warmup_ms": 2.0, "rep_ms": 10.0, "min_reps": 3}



def add_output_args(p, files):
    """--device, --out and --note, shared by `bench` and `bench-step`."""
    p.add_argument("--device", choices=("cpu", "cuda"), default=environment.default_device(),
                   help="default: cuda when a GPU is visible, else cpu")
    p.add_argument("--out", default=os.path.join("bench", "results"),
                   help=f"folder of {files} (default: bench/results)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'cores shared with other jobs')")


def _list(text, allowed, what):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return items


def parse(argv):
    p = argparse.ArgumentParser(prog="mae-kernels bench", description=__doc__)
    p.add_argument("--ops", type=lambda s: _list(s, cases.names(), "--ops"), default=cases.names(),
                   help=f"comma-separated ops (default: all: {','.join(cases.names())})")
    p.add_argument("--providers", type=lambda s: _list(s, harness.PROVIDERS, "--providers"),
                   default=list(harness.PROVIDERS), help=f"default: {','.join(harness.PROVIDERS)}")
    p.add_argument("--modes", type=lambda s: _list(s, harness.MODES, "--modes"), default=list(harness.MODES),
                   help=f"default: {','.join(harness.MODES)}")
    p.add_argument("--quick", action="store_true", help="tiny shapes, short timing (a smoke run of the harness)")
    add_output_args(p, "<device-slug>.json and .png")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("mae-kernels bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    env = environment.collect(device)
    timing = QUICK_TIMING if args.quick else TIMING
    print(f"mae-kernels bench on {env['device']} (torch {env['torch']}, triton {env['triton']}, "
          f"{env['torch_threads']} threads), commit {env['git_commit']}", flush=True)
    start = time.time()
    copy_gbps = harness.copy_bandwidth_gbps(device, **timing)
    print(f"device-to-device copy: {copy_gbps:.1f} GB/s (the bandwidth floor rows are compared with)", flush=True)
    rows = []
    for name in args.ops:
        module = cases.load(name)
        for shape in cases.shapes(module, device.type, args.quick):
            torch.manual_seed(0)
            case = module.setup(device, **shape)
            rows += harness.run_case(case, args.providers, args.modes, copy_gbps=copy_gbps,
                                     log=lambda s: print(s, flush=True), **timing)
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(report.table(rows))
    settings = {"ops": args.ops, "providers": args.providers, "modes": args.modes, "quick": args.quick,
                "timing": timing, "copy_gbps": copy_gbps, "note": args.note,
                "seconds": round(time.time() - start, 1)}
    base = os.path.join(args.out, env["device_slug"] + ("-quick" if args.quick else ""))
    report.write_json(base + ".json", env, rows, settings)
    print(f"\nwrote {base}.json", end="")
    if not args.no_plot and report.plot(base + ".png", env, rows):
        print(f" and {base}.png", end="")
    print(f" ({settings['seconds']} s)")
    failed = [r for r in rows if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
