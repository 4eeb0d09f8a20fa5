"""NVE energy conservation of ML/MM with electrostatic embedding, next to the same run in pure MM:
alanine dipeptide in a 2.4 nm TIP3P box (Amber14, PME 0.9 nm, tolerance 5e-4, Lennard-Jones
switched from 0.8 nm, rigid water, flexible solute), velocity Verlet at 0.5 fs, CPU platform,
same minimised start and velocities for every run.

Runs: ``mm`` (OpenMM alone); ``fixed-charge`` (ML/MM System with the fixed-charge model, which is
the force field: the trajectory must match ``mm``); ``mlpolar`` (ML/MM with a small untrained
MLPolar, float64, its polarisation iterations, the Ewald ML-ML sum and the MM embedding operator,
plus the MM bonded terms of the ML region to hold the molecule together).

    PYTHONPATH=python python benchmarks/mlmm_nve.py --steps 6000 --out benchmarks/results/mlmm_nve_cpu.csv

``--system pxylene``: p-xylene in a 2.5 nm TIP3P box (1446 atoms) from the project's own
preparation (mlpolar.data.systems.prepare_system("pxylene_water"), GAFF/AM1-BCC ligand), its
System rebuilt without constraints on the ligand (every X-H bond free, with its GAFF bond term in
the MM System), same PME/LJ/water/integrator settings, no CMMotionRemover (its first-step
removal of the centre-of-mass kinetic energy would be a step in E - E0; see
mlmm_cases.small_solvated_pxylene). Runs: ``mm``, ``fixed-charge`` and ``shipped``: ML/MM with the
trained shipped model (``mlpolar.load_model("default")``; pxylene-t4l99a-v2 in the recorded run) on the 18 ligand
atoms, no MM bonded terms added back. Default output
benchmarks/results/mlmm_nve_pxylene_cpu.csv (-> ``_mm.csv``, ``_shipped.csv``):

    PYTHONPATH=python python benchmarks/mlmm_nve.py --system pxylene --runs mm,shipped --steps 10000 --every 50

Each run is written to its own CSV (``<out stem>_<run>.csv``) when it finishes and skipped when
present, so an interrupted benchmark resumes with the unfinished runs. The systems and the run are
the helpers of tests/openmm (mlmm_cases.py): the CI test and this longer run are one experiment.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests" / "openmm"))

from mlmm_cases import nve_run, small_solvated_dipeptide, small_solvated_pxylene, tiny_mlpolar  # noqa: E402

SYSTEMS = {  # system: (runs, default --out)
    "dipeptide": (("mm", "fixed-charge", "mlpolar"), "benchmarks/results/mlmm_nve_cpu.csv"),
    "pxylene": (("mm", "fixed-charge", "shipped"), "benchmarks/results/mlmm_nve_pxylene_cpu.csv"),
}
RUNS = SYSTEMS["dipeptide"][0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=tuple(SYSTEMS), default="dipeptide")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--every", type=int, default=40)
    p.add_argument("--runs", default=None,
                   help="comma-separated subset of the system's runs (default all): "
                        + "; ".join(f"{k}: {','.join(v[0])}" for k, v in SYSTEMS.items()))
    p.add_argument("--out", default=None, help="default: " + "; ".join(f"{k}: {v[1]}" for k, v in SYSTEMS.items()))
    args = p.parse_args()
    allowed, default_out = SYSTEMS[args.system]
    runs = [r for r in (args.runs or ",".join(allowed)).split(",") if r]
    bad = [r for r in runs if r not in allowed]
    if bad:
        p.error(f"--runs: unknown for --system {args.system}: {bad}; choose from {allowed}")
    if args.steps < args.every or args.every < 1:
        p.error("--steps must be >= --every >= 1")
    out = Path(args.out or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    case = small_solvated_dipeptide(switch_nm=0.8) if args.system == "dipeptide" else small_solvated_pxylene()
    print(f"{case.system.getNumParticles()} atoms, {len(case.ml_atoms)} ML atoms, {args.steps} steps of 0.5 fs", flush=True)
    for run in runs:
        path = out.with_name(f"{out.stem}_{run}.csv")
        if path.exists():
            data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
            if data.shape[0] == args.steps // args.every + 1:
                report(run, data[:, 0], data[:, 1], data[:, 2], float("nan"))
                continue
        c0 = time.process_time()
        kw = dict(mlmm=run != "mm")
        if run == "mlpolar":
            kw.update(model=tiny_mlpolar(), keep_ml_bonded=True)
        elif run == "shipped":
            import mlpolar
            kw.update(model=mlpolar.load_model("default"))   # trained; nothing holds the ligand but the model
        t, e, k = nve_run(case, args.steps, args.every, **kw)
        cpu_ms = 1000.0 * (time.process_time() - c0) / args.steps
        tmp = path.with_suffix(".tmp")
        np.savetxt(tmp, np.column_stack([t, e, k]), delimiter=",", comments="",
                   header="time_ps,total_kjmol,kinetic_kjmol")
        tmp.replace(path)
        report(run, t, e, k, cpu_ms)


def report(run, t, e, k, cpu_ms):
    slope = np.polyfit(t, e, 1)[0]
    print(f"{run}: {t[-1]:.3f} ps, max |E-E0| = {np.abs(e - e[0]).max():.3f} kJ/mol, "
          f"drift {slope:.3f} kJ/mol/ps, <KE> {k.mean():.1f} kJ/mol, {cpu_ms:.1f} CPU ms/step", flush=True)


if __name__ == "__main__":
    main()
