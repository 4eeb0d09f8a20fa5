#!/usr/bin/env python
"""Benchmark of the Fukui equilibration: compiled operator vs the plain-torch reference (CPU).

  op         torch.ops.mlpolar.fukui_equilibrate (fused C++ loops, sums in double)
  torch      mlpolar.model.fukui.fukui_equilibrate_reference (index_add / scatter_reduce, float64)

for n atoms in one fragment ("one") or in 3-atom molecules ("water", F = n/3), float32 inputs,
timing the forward alone ("fwd") and forward + backward with respect to charges and logits
("fwd+bwd"). Argument checks of the public function are not timed. Median of repeated calls
(at least --min-time seconds per case after one warm-up). The 'load' column is the 1-minute load
average before the case: on a shared machine rows with load well above the core count are
contaminated (the min column is then the better guide). One torch thread by default (--threads).

Usage (from the repository root):
  PYTHONPATH=python python benchmarks/fukui.py            # ~1 min on 2 cores
  PYTHONPATH=python python benchmarks/fukui.py --sizes 50,1000 --out /tmp/fukui.csv
"""
import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch

from mlpolar.model.fukui import fukui_equilibrate_reference, spin_channel_targets

METHODS = {"op": torch.ops.mlpolar.fukui_equilibrate, "torch": fukui_equilibrate_reference}


def system(n, layout, dtype):
    if layout == "one":
        fragments = torch.zeros(n, dtype=torch.long)
    else:
        fragments = torch.arange(n) // 3
    n_fragments = int(fragments.max()) + 1
    charges = 0.3 * torch.randn(n, 2, dtype=dtype)
    logits = torch.randn(n, 2, dtype=dtype)
    targets = spin_channel_targets(torch.zeros(n_fragments), torch.ones(n_fragments, dtype=torch.long)).to(dtype)
    return charges, logits, targets, fragments


def time_case(fn, args, backward, min_time):
    charges, logits, targets, fragments = args

    def call():
        if backward:
            q, l = charges.detach().requires_grad_(), logits.detach().requires_grad_()
            out = fn(q, l, targets, fragments)
            torch.autograd.grad(out, (q, l), torch.ones_like(out))
        else:
            with torch.no_grad():
                fn(charges, logits, targets, fragments)

    call()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), len(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,300,3000,30000,100002")
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared, loaded machine extra threads "
                             "mostly measure the scheduler)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fukui_cpu.csv"))
    opts = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(opts.threads)
    rows = []
    header = ("layout", "mode", "n", "method", "median_us", "min_us", "calls", "speedup_vs_torch", "threads", "load")
    print(" ".join(f"{h:>10}" for h in header))
    for layout in ("one", "water"):
        for backward in (False, True):
            for n in (int(s) for s in opts.sizes.split(",")):
                args = system(n, layout, torch.float32)
                results = {}
                for name, fn in METHODS.items():
                    load = os.getloadavg()[0]
                    results[name] = time_case(fn, args, backward, opts.min_time) + (load,)
                for name, (median, best, calls, load) in results.items():
                    row = (layout, "fwd+bwd" if backward else "fwd", n, name, round(median * 1e6, 1),
                           round(best * 1e6, 1), calls, round(results["torch"][0] / median, 2),
                           torch.get_num_threads(), round(load, 2))
                    rows.append(row)
                    print(" ".join(f"{str(v):>10}" for v in row), flush=True)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    with open(opts.out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    print(f"written {opts.out}")


if __name__ == "__main__":
    main()
