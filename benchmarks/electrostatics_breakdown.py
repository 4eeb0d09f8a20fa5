"""Where the time of one energy+forces evaluation goes (mlpolar only, CPU time of one thread).

CPU time of a single thread is robust to other processes on a shared machine, so this is the
figure to compare between versions of the kernels. Usage:
    OMP_NUM_THREADS=1 python benchmarks/electrostatics_breakdown.py --n 10000 --dtype float64
"""
import argparse
import time

import torch

from mlpolar import ops
from mlpolar.electrostatics import GaussianMultipoles
from mlpolar.electrostatics.pme import reciprocal_energy


def cpu_ms(f, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        f()
        best = min(best, time.process_time() - t0)
    return 1e3 * best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dt = getattr(torch, args.dtype)
    L = (args.n / 100.0) ** (1 / 3)  # water density, 100 atoms / nm^3
    pos = torch.rand(args.n, 3, dtype=dt) * L
    q = torch.randn(args.n, dtype=dt)
    q -= q.mean()
    box = torch.eye(3, dtype=dt) * L
    elec = GaussianMultipoles(cutoff=0.9, tolerance=5e-4)
    alpha, grid, order = elec.parameters_for(box)
    ptr, idx = ops.exclusions_to_csr(None, args.n, pos.device)
    c = q[:, None]
    K = torch.tensor(grid, dtype=dt)
    u = pos @ (torch.linalg.inv(box) * K[None, :])
    Q = ops.pme_spread(u, c, grid, order)
    with torch.no_grad():
        rows = [
            ("real space, potential (degree 0)",
             cpu_ms(lambda: ops.multipole_field(pos, c, None, box, ptr, idx, 0.9, alpha, 0, False), args.repeats)),
            ("real space, potential + field (degree 1, one pass)",
             cpu_ms(lambda: ops.multipole_field(pos, c, None, box, ptr, idx, 0.9, alpha, 1, False), args.repeats)),
            ("PME spread (charges)", cpu_ms(lambda: ops.pme_spread(u, c, grid, order), args.repeats)),
            ("PME gather, degree 1", cpu_ms(lambda: ops.pme_gather(u, Q, 1, order), args.repeats)),
            ("reciprocal energy (spread, FFT, grid sum)",
             cpu_ms(lambda: reciprocal_energy(pos, c, box, alpha, grid, order), args.repeats)),
        ]
    p = pos.clone().requires_grad_(True)

    def reciprocal_forces():
        torch.autograd.grad(reciprocal_energy(p, c, box, alpha, grid, order), p)

    def energy_forces():
        e = elec.energy(p, q, box=box)
        torch.autograd.grad(e, p)

    rows.append(("reciprocal energy + forces (one more gather)", cpu_ms(reciprocal_forces, args.repeats)))
    rows.append(("energy + forces, total", cpu_ms(energy_forces, args.repeats)))
    print(f"N = {args.n}, {args.dtype}, alpha {alpha:.3f}/nm, grid {grid}, order {order}; CPU time of one thread")
    for name, ms in rows:
        print(f"  {name:55s} {ms:8.1f} ms")


if __name__ == "__main__":
    main()
