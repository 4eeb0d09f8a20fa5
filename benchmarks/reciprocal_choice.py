"""Direct reciprocal Ewald sum against PME for few sites in a large box (the ML region of an ML/MM
system): energy + forces + potential/field/field gradient of Gaussian charges and dipoles.

    OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/reciprocal_choice.py \\
        --out benchmarks/results/reciprocal_choice_cpu.csv

Single-thread CPU time (robust to other jobs on the machine), best of --repeats calls after a
warm-up; also the relative energy difference between the two (both within the tolerance of the
reference, see tests/electrostatics/test_ewald_sum.py) and what reciprocal="auto" picks.
"""
import argparse
import csv
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from electrostatics_breakdown import cpu_ms  # noqa: E402  (one timer for the benchmarks)
from mlpolar.electrostatics import GaussianMultipoles  # noqa: E402

CASES = [(22, 2.7), (51, 6.2), (200, 6.2), (1000, 6.2)]


def run(elec, x, q, mu, w, box):
    xg = x.clone().requires_grad_(True)
    e = elec.energy(xg, q, mu, None, w, box)
    torch.autograd.grad(e, xg)
    elec.potential(x, q, mu, None, w, box)
    return float(e.detach())


def best_cpu_ms(fn, repeats):
    fn()  # warm-up
    return cpu_ms(fn, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--out", default="benchmarks/results/reciprocal_choice_cpu.csv")
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n, L in CASES:
        g = torch.Generator().manual_seed(n)
        box = torch.eye(3, dtype=torch.float64) * L
        x = torch.rand(n, 3, generator=g, dtype=torch.float64) * (0.8 * (n / 22) ** (1 / 3)) + L / 3
        q = torch.randn(n, generator=g, dtype=torch.float64)
        mu = 0.02 * torch.randn(n, 3, generator=g, dtype=torch.float64)
        w = torch.full((n,), 0.06, dtype=torch.float64)
        res = {}
        for rec in ("pme", "ewald"):
            elec = GaussianMultipoles(cutoff=0.9, tolerance=a.tolerance, reciprocal=rec)
            res[rec] = (best_cpu_ms(lambda: run(elec, x, q, mu, w, box), a.repeats), run(elec, x, q, mu, w, box))
        auto = GaussianMultipoles(cutoff=0.9, tolerance=a.tolerance)
        alpha, grid, _ = auto.parameters_for(box, w, 2)
        picks = "ewald" if auto.reciprocal_plan(n, box, alpha, grid)[0] else "pme"
        row = dict(sites=n, box_nm=L, pme_cpu_ms=round(res["pme"][0], 2), ewald_cpu_ms=round(res["ewald"][0], 2),
                   rel_energy_diff=f"{abs(res['pme'][1] - res['ewald'][1]) / abs(res['pme'][1]):.1e}", auto=picks)
        print(row, flush=True)
        rows.append(row)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)


if __name__ == "__main__":
    main()
