"""The results table, the JSON file (machine, versions, commit, rows) and the PNG plot of speedups."""
import json
import os

COLUMNS = [  # (header, key, format)
    ("op", "op", "{}"), ("shape", "shape", "{}"), ("dtype", "dtype", "{}"), ("provider", "provider", "{}"),
    ("mode", "mode", "{}"), ("median ms", "median_ms", "{:.4f}"), ("p20", "p20_ms", "{:.4f}"),
    ("p80", "p80_ms", "{:.4f}"), ("speedup", "speedup", "{:.2f}x"), ("GB/s", "gbps", "{:.1f}"),
    ("of copy", "copy_fraction", "{:.0%}"), ("peak MB", "peak_mb", "{:.1f}"),
]
PEAK_MEMORY_METHOD = ("torch.cuda.max_memory_allocated() during one call minus the memory allocated before it; "
                      "n/a on CPU (no allocator statistics, not estimated)")


def _cell(row, key, fmt):
    value = row.get(key)
    return "n/a" if value is None else fmt.format(value)


def aligned(rows, columns, left):
    """The rows with status "ok" as aligned text lines under a header: the first `left` columns (names)
    left-aligned, the numbers right-aligned."""
    ok = [r for r in rows if r["status"] == "ok"]
    cells = [[h for h, _, _ in columns]] + [[_cell(r, k, f) for _, k, f in columns] for r in ok]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def table(rows):
    """The measured rows as an aligned text table, then the providers that could not run and why."""
    lines = aligned(rows, COLUMNS, left=5)
    for r in rows:
        if r["status"] != "ok":
            mode = f" {r['mode']}" if r.get("mode") else ""
            lines.append(f"{r['status']}: {r['op']} {r['shape']} {r['dtype']} {r['provider']}{mode}: {r['reason']}")
    return "\n".join(lines)


def write_json(path, environment, rows, settings):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(environment, settings=settings, peak_memory_method=PEAK_MEMORY_METHOD, rows=rows), f,
                  indent=1)
        f.write("\n")


def plot(path, environment, rows):
    """Grouped bars of speedup over the eager reference per (op, shape, mode), one bar per provider."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r.get("speedup")]
    groups = list(dict.fromkeys((r["op"], r["shape"], r["dtype"], r["mode"]) for r in ok))
    providers = list(dict.fromkeys(r["provider"] for r in ok))
    if not groups:
        return False
    speed = {(r["op"], r["shape"], r["dtype"], r["mode"], r["provider"]): r["speedup"] for r in ok}
    width = 0.8 / len(providers)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2), 4.5))
    for i, provider in enumerate(providers):
        xs = [g + (i - (len(providers) - 1) / 2) * width for g in range(len(groups))]
        ys = [speed.get(key + (provider,), 0.0) for key in groups]
        bars = ax.bar(xs, ys, width, label=provider)
        ax.bar_label(bars, labels=[f"{y:.1f}" if y else "" for y in ys], fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{op}\n{shape}\n{dtype} {mode}" for op, shape, dtype, mode in groups], fontsize=7)
    ax.set_ylabel("speedup over eager reference (median)")
    ax.set_title(f"mae_kernels on {environment['device']}\n(torch {environment['torch']}, "
                 f"commit {(environment.get('git_commit') or '?')[:8]})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
