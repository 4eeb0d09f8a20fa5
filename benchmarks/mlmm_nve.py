"""NVE energy conservation of ML/MM with electrostatic embedding against the same run in pure MM:
alanine dipeptide in a 2.4 nm TIP3P box (Amber14, PME 0.9 nm, tolerance 5e-4, rigid water,
flexible solute), fixed-charge model, velocity Verlet at 0.5 fs, CPU platform.

    PYTHONPATH=python python benchmarks/mlmm_nve.py --steps 400 --out benchmarks/results/mlmm_nve_cpu.csv

The system and the run are the helpers of tests/openmm (mlmm_cases.py), so the CI test and this
longer run are the same experiment.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests" / "openmm"))

from mlmm_cases import nve_run, small_solvated_dipeptide  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/mlmm_nve_cpu.csv")
    args = p.parse_args()
    case = small_solvated_dipeptide()
    rows = {}
    for label, mlmm in (("mm", False), ("mlmm", True)):
        t, e, k = nve_run(case, args.steps, args.every, mlmm=mlmm)
        rows[label] = (t, e, k)
        slope = np.polyfit(t, e, 1)[0]
        print(f"{label}: {t[-1]:.3f} ps, max |E-E0| = {np.abs(e - e[0]).max():.4f} kJ/mol, "
              f"drift {slope:.3f} kJ/mol/ps, <KE> {k.mean():.1f} kJ/mol", flush=True)
    t = rows["mm"][0]
    data = np.column_stack([t, rows["mm"][1], rows["mlmm"][1], rows["mlmm"][2]])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(args.out, data, delimiter=",", header="time_ps,total_mm_kjmol,total_mlmm_kjmol,kinetic_mlmm_kjmol",
               comments="")


if __name__ == "__main__":
    main()
