"""Summarize a pytest-benchmark JSON (from `make bench`): table, summary.json, bar plot.

    python bench/report.py bench/out/bench.json [--out bench/out]

Per group (one op at one shape): each impl's median time, GFLOP/s (from extra_info["flops"])
and speed relative to torch (torch time / impl time, > 1 = faster than torch). On the GPU a
group has several torch impls (SDPA flash, cuDNN, efficient); the baseline is the fastest of
them, named in the table. Writes <out>/summary.json and <out>/bench.png (speedup vs torch of
every non-torch impl, per group). Groups without a torch result, or with only torch, are listed
but have no ratio. Needs only the standard library (matplotlib for the plot, if installed).
"""
import argparse
import json
import os
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data.get("benchmarks", []), data.get("machine_info", {}), data.get("datetime", "")


def group_rows(benchmarks):
    """{group: [row]} with row = impl, median_s, flops, gflops, dtype, device."""
    groups = {}
    for b in benchmarks:
        info = b.get("extra_info") or {}
        median = (b.get("stats") or {}).get("median")
        if median is None:
            continue
        flops = info.get("flops")
        groups.setdefault(b.get("group") or b.get("name"), []).append({
            "impl": info.get("impl", b.get("name")),
            "op": info.get("op"), "shape": info.get("shape"),
            "dtype": info.get("dtype"), "device": info.get("device"),
            "median_s": median,
            "min_s": (b.get("stats") or {}).get("min"),
            "rounds": (b.get("stats") or {}).get("rounds"),
            "flops": flops,
            "gflops": flops / median / 1e9 if flops and median > 0 else None,
        })
    return groups


def is_torch(impl):
    return impl == "torch" or impl.startswith("torch-")


def add_ratios(rows):
    """Set row["vs_torch"] = baseline time / row time; return the baseline impl or None."""
    torch_rows = [r for r in rows if is_torch(r["impl"])]
    base = min(torch_rows, key=lambda r: r["median_s"]) if torch_rows else None
    for r in rows:
        r["vs_torch"] = base["median_s"] / r["median_s"] if base and r["median_s"] > 0 else None
        # min over rounds: less disturbed by other processes on a shared machine
        base_min = min((t["min_s"] for t in torch_rows if t["min_s"]), default=None)
        r["vs_torch_min"] = base_min / r["min_s"] if base_min and r["min_s"] else None
    return base["impl"] if base else None


def fmt_time(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:8.2f} {unit}"
    return f"{seconds / 1e-9:8.1f} ns"


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def print_table(summary, out=sys.stdout):
    """GFLOP/s and "vs torch" use the median time; "(by min)" the fastest round of each."""
    load = summary["machine_info"].get("loadavg_at_start")
    cores = summary["machine_info"].get("cpu_count")
    if load and cores and load[0] > 0.5 * cores:
        print(f"note: load average {load[0]:.1f} on {cores} cores when the run started: other "
              f"processes shared the CPU, times are noisy (compare min as well)", file=out)
    width = max([len(r["impl"]) for g in summary["groups"] for r in g["rows"]] + [8])
    for g in summary["groups"]:
        base = g["baseline"] or "none (no torch result)"
        print(f"\n{g['group']}   [baseline: {base}]", file=out)
        print(f"  {'impl':<{width}}  {'median':>11}  {'min':>11}  {'GFLOP/s':>8}  {'vs torch':>8}"
              f"  {'(by min)':>8}", file=out)
        for r in g["rows"]:
            best = fmt_time(r["min_s"]) if r["min_s"] is not None else "-"
            print(f"  {r['impl']:<{width}}  {fmt_time(r['median_s']):>11}  {best:>11}  "
                  f"{fmt(r['gflops'], '8.1f'):>8}  {ratio(r['vs_torch']):>8}  {ratio(r['vs_torch_min']):>8}",
                  file=out)


def plot(summary, path):
    """Bar chart of speedup vs torch (log scale) for every non-torch impl; False if impossible."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib not installed, no plot", file=sys.stderr)
        return False
    groups = [g for g in summary["groups"]
              if any(r["vs_torch"] and not is_torch(r["impl"]) for r in g["rows"])]
    if not groups:
        print("report: no group has both a torch and a seqcore result, no plot", file=sys.stderr)
        return False
    impls = sorted({r["impl"] for g in groups for r in g["rows"] if not is_torch(r["impl"])})
    # horizontal bars: group names stay readable however many groups there are
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(groups) * len(impls)))
    height = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ys, xs = [], []
        for i, g in enumerate(groups):
            r = next((r for r in g["rows"] if r["impl"] == impl), None)
            if r and r["vs_torch"]:
                ys.append(i + (k - (len(impls) - 1) / 2) * height)
                xs.append(r["vs_torch"])
        bars = ax.barh(ys, xs, height, label=impl)
        ax.bar_label(bars, labels=[f"{x:.2g}x" for x in xs], fontsize=7, padding=2)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speedup vs torch (torch median time / impl median time; > 1 is faster)")
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels([g["group"] for g in groups], fontsize=7)
    ax.invert_yaxis()
    ax.set_title(f"seqcore vs torch on {summary['device'] or 'unknown device'}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def summarize(benchmarks, machine_info, when):
    groups = []
    for name, rows in sorted(group_rows(benchmarks).items()):
        rows.sort(key=lambda r: r["median_s"])
        groups.append({"group": name, "baseline": add_ratios(rows), "rows": rows})
    device = next((r["device"] for g in groups for r in g["rows"] if r.get("device")), None)
    return {"datetime": when, "device": device, "machine_info": machine_info, "groups": groups}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", default=None, help="output folder (default: the JSON's folder)")
    args = parser.parse_args(argv)
    if not os.path.exists(args.json):
        print(f"report: {args.json} does not exist (run `make bench` first)", file=sys.stderr)
        return 1
    out_dir = args.out or os.path.dirname(os.path.abspath(args.json))
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(*load(args.json))
    if not summary["groups"]:
        print("report: no benchmark results in the JSON (all skipped?)", file=sys.stderr)
    print_table(summary)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    png = os.path.join(out_dir, "bench.png")
    if plot(summary, png):
        print(f"\nwrote {os.path.join(out_dir, 'summary.json')} and {png}")
    else:
        if os.path.exists(png):  # don't leave a plot from an earlier run next to this summary
            os.remove(png)
        print(f"\nwrote {os.path.join(out_dir, 'summary.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
