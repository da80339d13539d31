#!/usr/bin/env python3
"""Per-kernel time of one decode step from an Nsight Compute CSV (bench_gpu.sh part `profile`).

Usage: ncu_step_times.py NCU_CSV_OUTPUT

The input is `ncu --csv --metrics gpu__time_duration.sum` output over a run of decode steps (other
lines in the file are skipped). A step ends at its sampling kernel (argmax_kernel or
sample_kernel); the last complete step's kernels are summed per kernel name and grid, longest
first, with the total: set against the step's time with graphs, the difference is what launches,
ramps and drains cost beyond the kernels' own durations (ncu runs kernels one at a time)."""
import collections
import csv
import sys

SCALE = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    hdr, kernels = None, []
    with open(sys.argv[1], newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "ID":
                hdr = row
                continue
            if not hdr or len(row) != len(hdr):
                continue
            d = dict(zip(hdr, row))
            if d.get("Metric Name") != "gpu__time_duration.sum":
                continue
            us = float(d["Metric Value"].replace(",", "")) * SCALE.get(d["Metric Unit"], 1.0)
            kernels.append((d["Kernel Name"].split("(")[0], d.get("Grid Size", ""), us))
    steps, cur = [], []
    for k in kernels:
        cur.append(k)
        if k[0].startswith(("argmax_kernel", "sample_kernel")):
            steps.append(cur)
            cur = []
    if not steps:
        sys.exit(f"no complete decode step among {len(kernels)} kernels")
    per = collections.defaultdict(lambda: [0, 0.0])
    for name, grid, us in steps[-1]:
        per[(name, grid)][0] += 1
        per[(name, grid)][1] += us
    print(f"{len(kernels)} kernels, {len(steps)} steps; the last step's {len(steps[-1])} kernels:")
    print(f"{'total us':>10} {'count':>6} {'each us':>8}  kernel grid")
    for (name, grid), (n, us) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"{us:10.1f} {n:6d} {us / n:8.2f}  {name[:70]} {grid}")
    print(f"sum of kernel durations: {sum(v[1] for v in per.values()):.1f} us")


if __name__ == "__main__":
    main()
