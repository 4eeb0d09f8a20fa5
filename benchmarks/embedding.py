#!/usr/bin/env python
"""Benchmark of the MM embedding (issue 3): mm_features forward + backward.

Configurations: N_ML ML sites (Gaussian widths 0.05 nm) in a compact cluster (a cube of 0.8 nm)
at the centre of a cubic box of N_MM point charges at water density (100 atoms/nm^3), cutoff
1.2 nm (--cutoffs), switch 0.1 nm, T0..T3. Timed call: mm_features + backward of an energy
built from all four orders (sum of every component), i.e. forces on ML and MM atoms.

Methods, side by side on the same configurations:
  mlpolar-f32 / mlpolar-f64   mm_features, periodic, cutoff + switch (long_range=False)
  mlpolar-ewald-f64           mm_features with the PME long-range part (long_range=True)
  mlpolar-wgrad-f64           as mlpolar-f64, the widths' gradient too (learned widths, the model)
  torch-f64                   the same switched Gaussian kernel in plain PyTorch: all ML x MM
                              minimum-image distances, pairs inside the cutoff gathered, T1..T3
                              by nested autograd (create_graph), then the backward
  mlipops-nc-f64              mlipops CoulombNC.compute_potential (T0 only: bare 1/r, all pairs,
                              no cutoff or switch, open boundaries) + backward: the closest
                              library call, for scale only

Every case runs in a fresh subprocess so that its peak RSS (ru_maxrss, MB above the state
after setup) belongs to it. CPU mlpolar rows (not Ewald) also split the CPU time: op_fwd_ms (the
compiled forward alone), fwd_ms (mm_features' forward with its Python glue, graph recorded) and
bwd_ms (the backward: fused operator backward and autograd glue). Timing: one warm-up call, then --repeats calls; median reported.
'load' is the 1-minute load average when the case ran: on the shared 2-core machine the
wall-clock times of rows with load >> 2 are inflated accordingly (cpu_s is the process CPU time
per call, less sensitive to other jobs).

Usage (from the repository root):
  PYTHONPATH=python python benchmarks/embedding.py                      # full grid, CPU
  PYTHONPATH=python python benchmarks/embedding.py --n-ml 50 --n-mm 25000 --repeats 5
  PYTHONPATH=python python benchmarks/embedding.py --device cuda        # on a GPU
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DENSITY = 100.0  # atoms / nm^3


def make_system(n_ml: int, n_mm: int, dtype, device, seed: int = 0):
    import torch
    gen = torch.Generator().manual_seed(seed)
    L = (n_mm / DENSITY) ** (1.0 / 3.0)
    box = torch.eye(3, dtype=torch.float64) * L
    mm = torch.rand(n_mm, 3, generator=gen, dtype=torch.float64) * L
    q = torch.randn(n_mm, generator=gen, dtype=torch.float64) * 0.4
    ml = (torch.rand(n_ml, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.8 + L / 2
    w = torch.full((n_ml,), 0.05, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (ml, w, mm, q, box)]


def run_mlpolar(ml, w, mm, q, box, cutoff, long_range, widths_grad=False):
    import torch
    from mlpolar.electrostatics import mm_features
    x, y, s = ml.clone().requires_grad_(True), mm.clone().requires_grad_(True), w.clone().requires_grad_(widths_grad)
    T = mm_features(x, s, y, q, box=box, cutoff=cutoff, switch_width=0.1, long_range=long_range)
    E = T.T0.sum() + T.T1.sum() + T.T2.sum() + T.T3.sum()
    grads = torch.autograd.grad(E, (x, y, s) if widths_grad else (x, y))
    return float(E.detach()), grads


def run_torch(ml, w, mm, q, box, cutoff):
    """Plain PyTorch: dense minimum-image distances, gathered pairs, nested autograd."""
    import torch
    x, y = ml.clone().requires_grad_(True), mm.clone().requires_grad_(True)
    with torch.no_grad():
        d = x[:, None, :] - y[None, :, :]
        d = d - torch.round(d / box.diagonal()) * box.diagonal()
        i, j = torch.nonzero((d * d).sum(-1) < cutoff * cutoff, as_tuple=True)
    dv = x[i] - y[j]
    dv = dv - torch.round(dv / box.diagonal()).detach() * box.diagonal()
    r = dv.norm(dim=-1)
    k = torch.erf(r / (2 ** 0.5 * w[i])) / r
    u = ((r - (cutoff - 0.1)) / 0.1).clamp(0, 1)
    s = 1 - u ** 5 * (126 - 420 * u + 540 * u ** 2 - 315 * u ** 3 + 70 * u ** 4)
    phi = 138.93545764438198 * torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_add(0, i, s * k * q[j])
    g = torch.autograd.grad(phi.sum(), x, create_graph=True)[0]
    h = [torch.autograd.grad(g[:, a].sum(), x, create_graph=True)[0] for a in range(3)]
    t = [torch.autograd.grad(h[a][:, b].sum(), x, create_graph=True)[0] for a in range(3) for b in range(3)]
    E = phi.sum() + g.sum() + sum(v.sum() for v in h) + sum(v.sum() for v in t)
    gx, gy = torch.autograd.grad(E, (x, y))
    return float(E.detach()), gx, gy


def run_mlipops(ml, w, mm, q, box, cutoff):
    import torch
    from mlipops.coulombnc import CoulombNC
    calc = CoulombNC(None, 138.93545764438198, device=str(ml.device))
    x, y = ml.clone().requires_grad_(True), mm.clone().requires_grad_(True)
    E = calc.compute_potential(x, y, q).sum()
    gx, gy = torch.autograd.grad(E, (x, y))
    return float(E.detach()), gx, gy


def split_times(ml, w, mm, q, box, cutoff, repeats) -> dict:
    """Where the time of the mlpolar call goes (CPU ms, median): the compiled forward operator alone
    (search + pair kernel at degree 3), mm_features' forward with its Python glue (recording the
    graph), and the backward (fused operator backward + autograd glue) as the remainder."""
    import torch
    from mlpolar.electrostatics import mm_features
    excl = torch.zeros((0, 2), dtype=torch.long)

    def op():
        with torch.no_grad():
            torch.ops.mlpolar.embedding_field(ml, mm, q[:, None], w, None, box, excl, cutoff, 0.1, 0.0, 3)

    def fwd():
        x, y = ml.clone().requires_grad_(True), mm.clone().requires_grad_(True)
        return x, y, mm_features(x, w, y, q, box=box, cutoff=cutoff, switch_width=0.1, long_range=False)

    def cpu_ms(fn):
        fn()
        t = []
        for _ in range(repeats):
            c0 = time.process_time()
            fn()
            t.append(time.process_time() - c0)
        return 1e3 * statistics.median(t)

    def bwd_only():
        x, y, T = fwd()
        E = T.T0.sum() + T.T1.sum() + T.T2.sum() + T.T3.sum()
        c0 = time.process_time()
        torch.autograd.grad(E, (x, y))
        return time.process_time() - c0

    bwd_only()
    return dict(op_fwd_ms=cpu_ms(op), fwd_ms=cpu_ms(fwd),
                bwd_ms=1e3 * statistics.median([bwd_only() for _ in range(repeats)]))


def one_case(args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.method.endswith("f32") else torch.float64
    device = torch.device(args.device)
    ml, w, mm, q, box = make_system(args.n_ml, args.n_mm, dtype, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.method.startswith("mlpolar"):
        fn = lambda: run_mlpolar(ml, w, mm, q, box, args.cutoff, "ewald" in args.method,  # noqa: E731
                                 "wgrad" in args.method)
    elif args.method.startswith("torch"):
        fn = lambda: run_torch(ml, w, mm, q, box, args.cutoff)  # noqa: E731
    else:
        fn = lambda: run_mlipops(ml, w, mm, q, box, args.cutoff)  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024.0
    split = {}
    if args.method.startswith("mlpolar") and "ewald" not in args.method and device.type == "cpu":
        split = split_times(ml, w, mm, q, box, args.cutoff, args.repeats)
    return dict(method=args.method, n_ml=args.n_ml, n_mm=args.n_mm, cutoff=args.cutoff, device=args.device,
                threads=args.threads, median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times),
                cpu_ms=1e3 * statistics.median(cpu), peak_mb=peak,
                cuda_peak_mb=torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else "",
                load=os.getloadavg()[0], **split)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-ml", default="20,50,200")
    p.add_argument("--n-mm", default="5000,25000,100000")
    p.add_argument("--cutoffs", default="1.2")
    p.add_argument("--methods", default="mlpolar-f32,mlpolar-f64,mlpolar-ewald-f64,torch-f64,mlipops-nc-f64")
    p.add_argument("--max-dense", type=int, default=25000, help="largest N_MM for mlipops (dense ML x MM)")
    p.add_argument("--max-torch", type=int, default=250000, help="largest N_ML * N_MM for the plain PyTorch version "
                   "(its nested autograd takes seconds per call)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/embedding_cpu.csv")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--cutoff", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        args.n_ml, args.n_mm = int(args.n_ml), int(args.n_mm)
        print(json.dumps(one_case(args)))
        return
    rows = []
    for cutoff in [float(c) for c in args.cutoffs.split(",")]:
        for n_mm in [int(n) for n in args.n_mm.split(",")]:
            for n_ml in [int(n) for n in args.n_ml.split(",")]:
                for method in args.methods.split(","):
                    if not method.startswith("mlpolar") and n_mm > args.max_dense:
                        continue
                    if method.startswith("torch") and n_ml * n_mm > args.max_torch:
                        continue
                    cmd = [sys.executable, __file__, "--one", "--method", method, "--n-ml", str(n_ml), "--n-mm",
                           str(n_mm), "--cutoff", str(cutoff), "--device", args.device, "--threads",
                           str(args.threads), "--repeats", str(args.repeats)]
                    res = subprocess.run(cmd, capture_output=True, text=True)
                    if res.returncode != 0:
                        row = dict(method=method, n_ml=n_ml, n_mm=n_mm, cutoff=cutoff, device=args.device,
                                   threads=args.threads, median_ms="failed: " + res.stderr.strip()[-200:])
                    else:
                        row = json.loads(res.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["method", "n_ml", "n_mm", "cutoff", "device", "threads", "median_ms", "min_ms", "cpu_ms", "peak_mb",
            "cuda_peak_mb", "load", "op_fwd_ms", "fwd_ms", "bwd_ms"]
    with open(out, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: r.get(k, "") for k in keys})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
