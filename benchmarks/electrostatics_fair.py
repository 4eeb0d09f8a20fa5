#!/usr/bin/env python
"""mlpolar vs graph_longrange at equal accuracy: the 'dipoles' case of electrostatics.py, one thread.

Same system as `electrostatics.py --cases dipoles` (TIP3P-like water box at 100 atoms/nm^3,
Gaussian charges + Gaussian dipoles of width 0.1 nm), same workers (each point in a fresh
subprocess: its own peak RSS), same reference (the float64 k-space Ewald sum, exact for Gaussians
up to exp(-k^2 sigma^2) < 2e-9). What differs: each method runs at several settings of its own
accuracy knob, so that times can be compared where the errors match:

  mlpolar          `tolerance` of GaussianMultipoles (alpha, PME grid; order 8 for dipoles) and
                   its real-space `cutoff` (default 0.9 nm; `f32:5e-4@0.5` sets 0.5 nm): at a
                   given tolerance the cutoff only moves work between real space and PME
  graph_longrange  `kspace_cutoff` (1/A) of GTOElectrostaticEnergy: all k-vectors with |k| below
                   it are summed densely over the atoms; n_k grows as kspace_cutoff^3 * volume, time
                   and memory as N * n_k. 'default' = PolarMACE's heuristic (4.155/A at sigma = 1 A).

Times are the median process CPU time of one thread (robust on a shared machine). A
graph_longrange point whose estimated memory (bytes per N * n_k element measured at 3k atoms:
up to 29 in float32, 54 in float64) exceeds --max-mem-gb is skipped and reported with its estimate.

Usage (from the repository root):
  OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/electrostatics_fair.py --n 3000 \\
      --glr f32:2.0,f32:2.5,f32:3.0,f32:default --mlpolar f32:5e-4,f64:5e-4,f64:1e-7 \\
      --csv benchmarks/results/electrostatics_fair_3k.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from electrostatics import (accuracy, graph_longrange_kspace_cutoff, loadavg, provenance,  # noqa: E402
                            run_worker, water_box)

BYTES_PER_NK = {"f32": 29.0, "f64": 54.0}   # peak RSS / (N * n_k), the largest measured at 3k atoms


def n_kvectors(cfg, kcut):
    import torch
    from graph_longrange.kspace import compute_k_vectors_flat
    cell = torch.tensor(cfg["box"] * 10.0, dtype=torch.float64)
    rcell = 2 * math.pi * torch.linalg.inv(cell.mT)
    return int(compute_k_vectors_flat(kcut, cell[None], rcell[None])[0].shape[0])


def parse_points(text):
    out = []
    for item in text.split(","):
        item = item.strip()
        if item:
            dt, val = item.split(":")
            out.append((dt.strip(), val.strip()))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--glr", default="f32:default", help="graph_longrange points dtype:kspace_cutoff(1/A)|default")
    p.add_argument("--mlpolar", default="f32:5e-4,f64:5e-4",
                   help="mlpolar points dtype:tolerance[@cutoff_nm]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mem-gb", type=float, default=12.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--csv", default="")
    a = p.parse_args(argv)

    cfg = water_box(a.n, seed=a.seed, sigma=a.sigma)
    n = len(cfg["charges"])
    workdir = Path(tempfile.mkdtemp(prefix="mlpolar_fair_"))
    cfg_path = workdir / "config.npz"
    np.savez(cfg_path, **cfg)
    print(f"# OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/electrostatics_fair.py {' '.join(sys.argv[1:])}")
    print(f"# mlpolar: {provenance()}; load average {loadavg():.1f}; N={n} dipoles, sigma {a.sigma} nm, one thread")
    base = dict(case="dipoles", device="cpu", threads=1, config=str(cfg_path), workdir=str(workdir))
    rows = []
    try:
        t0 = time.perf_counter()
        ref = run_worker(dict(base, method="kspace-reference", repeats=0, tag="ref",
                              forces_out=str(workdir / "F_ref.npy")), a.timeout)
        if "error" in ref:
            raise SystemExit(f"reference failed: {ref['error']}")
        f_ref = np.load(workdir / "F_ref.npy")
        print(f"  reference: float64 k-space Ewald sum, {ref['info']}, E={ref['energy']:.6f} kJ/mol "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        points = [("mlpolar", dt, v) for dt, v in parse_points(a.mlpolar)] + \
                 [("graph_longrange", dt, v) for dt, v in parse_points(a.glr)]
        for k, (family, dt, val) in enumerate(points):
            spec = dict(base, method=f"{family}-{dt}", repeats=a.repeats, min_time=a.min_time,
                        tag=f"p{k}", forces_out=str(workdir / f"F_p{k}.npy"))
            row = dict(n=n, method=f"{family}-{dt}")
            if family == "mlpolar":
                tol, _, cut = val.partition("@")
                spec["tolerance"] = float(tol)
                row["setting"] = f"tolerance {float(tol):g}"
                if cut:
                    spec["cutoff"] = float(cut)
                    row["setting"] += f" cutoff {float(cut):g} nm"
            else:
                kcut = graph_longrange_kspace_cutoff(a.sigma * 10.0, 1) if val == "default" else float(val)
                spec["kspace_cutoff"] = kcut
                nk = n_kvectors(cfg, kcut)
                est_gb = BYTES_PER_NK[dt] * n * nk / 2**30
                row.update(setting=f"kspace_cutoff {kcut:.3f}/A{' (default)' if val == 'default' else ''}",
                           n_k=nk, est_mem_gb=est_gb)
                if est_gb > a.max_mem_gb:
                    row["status"] = f"skipped: estimated {est_gb:.1f} GB > --max-mem-gb"
                    print(f"  {row['method']:20s} {row['setting']:32s} n_k={nk}  {row['status']}", flush=True)
                    rows.append(row)
                    continue
            res = run_worker(spec, a.timeout)
            if "error" in res:
                row["status"] = res["error"]
                print(f"  {row['method']:20s} {row['setting']:32s} FAILED: {res['error']}", flush=True)
                rows.append(row)
                continue
            de, df = accuracy(res["energy"], np.load(spec["forces_out"]), ref["energy"], f_ref)
            row.update(status="ok", cpu_ms=1e3 * float(np.median(res["cpu_times"])),
                       wall_ms=1e3 * float(np.median(res["times"])), n_calls=len(res["times"]),
                       peak_mb=res["peak_delta_mb"], rel_energy_err=de, rel_rms_force_err=df,
                       params=json.dumps(res["info"], sort_keys=True), other_cpu=res.get("other_cpu"),
                       load_after=res.get("load_after"))
            rows.append(row)
            print(f"  {row['method']:20s} {row['setting']:32s} cpu {row['cpu_ms']:10.1f} ms  "
                  f"peak {row['peak_mb']:8.1f} MB  dE/E {de:.1e}  dF/F {df:.1e}  calls {row['n_calls']}  "
                  f"{res['info']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if a.csv:
        path = Path(a.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ["n", "method", "setting", "status", "cpu_ms", "wall_ms", "n_calls", "peak_mb", "n_k",
                  "est_mem_gb", "rel_energy_err", "rel_rms_force_err", "params", "other_cpu", "load_after"]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
