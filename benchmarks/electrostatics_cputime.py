"""CPU time of one energy+forces evaluation, mlpolar vs OpenMM's CPU platform, one thread each.

CPU time (not wall clock) of a single-threaded process barely depends on other jobs sharing the
machine, so this comparison holds on a busy machine where `electrostatics.py`'s wall-clock table
does not. Same water-like point-charge boxes, cutoff and tolerance as `electrostatics.py`.
Usage:  OMP_NUM_THREADS=1 python benchmarks/electrostatics_cputime.py --sizes 10000,30000
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from electrostatics import build_mlpolar, build_openmm, water_box  # noqa: E402
from electrostatics_breakdown import cpu_ms  # noqa: E402


def best_cpu_ms(compute, repeats):
    compute()  # warm-up (first-call setup is not part of the comparison)
    return cpu_ms(compute, repeats)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,30000")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    print(f"{'N':>7} {'method':<14} {'CPU ms':>9} {'ratio':>6}")
    for n in [int(s) for s in a.sizes.split(",")]:
        cfg = water_box(n)
        omm, _ = build_openmm(cfg, "cpu", 1)
        t_omm = best_cpu_ms(omm, a.repeats)
        print(f"{n:>7} {'openmm-cpu':<14} {t_omm:9.1f} {1.0:6.2f}")
        for dt in ("f64", "f32"):
            f, _ = build_mlpolar(cfg, "charges", dt, "cpu", 1)
            t = best_cpu_ms(f, a.repeats)
            print(f"{n:>7} {'mlpolar-' + dt:<14} {t:9.1f} {t / t_omm:6.2f}")


if __name__ == "__main__":
    main()
