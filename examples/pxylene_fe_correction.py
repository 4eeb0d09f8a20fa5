"""MM → ML/MM free-energy correction of p-xylene binding to T4 lysozyme L99A.

For each leg (p-xylene in the complex, p-xylene in water): MM equilibration with `run_md`
(checkpointed, resumable), then λ windows (MBAR) and switching runs (BAR/Jarzynski) along
lambda_interpolate of the ML/MM System, all legs' tasks in one Dask campaign. Prints the table;
plots and per-task files are in the output folder. Run again to resume.

    python examples/pxylene_fe_correction.py --model fixed-charge --legs solvent   # baseline, ΔG≈0
    python examples/pxylene_fe_correction.py --model default --workers 8           # shipped model
    python examples/pxylene_fe_correction.py --scheduler tcp://login1:8786 --platform CUDA \\
        --samples 2000 --forward 100 --reverse 100                                # on a cluster

Sampling defaults are small (a CPU workstation); the report of a campaign should quote the
sampled time per window and the uncertainties from results.csv, not more digits.
"""
import argparse
import math
from pathlib import Path

import numpy as np
import openmm.app as app
import openmm.unit as u

from mlpolar.data.systems import add_constrained_bond_terms, prepare_system
from mlpolar.workflows.fe import FEConfig, Leg, format_table, run_fe
from mlpolar.workflows.md import MDConfig, run_md
from mlpolar.workflows.ml_region import make_ml_system

LEGS = {"complex": "t4l99a_pxylene_water", "solvent": "pxylene_water"}


def equilibrated_leg(name, out, args):
    # the complex in a rhombic dodecahedron (1 nm padding): 25k atoms instead of the cube's 36k
    prep = prepare_system(LEGS[name], **({"box_shape": args.box_shape} if name == "complex" else {}))
    # bond terms for the ligand's X-H constraints: the lambda = 0 (MM) end needs them when the
    # ML region runs without constraints (--ml-constraints remove)
    add_constrained_bond_terms(prep.system, prep.ligand_indices)
    md_dir = out / f"mm-equilibration-{name}"
    run_md(prep.topology, prep.system, prep.positions, md_dir,
           MDConfig(steps=args.mm_steps, equilibration_steps=0,
                    report_interval=math.gcd(500, args.mm_steps),
                    checkpoint_interval=args.mm_steps, platform=args.platform,
                    pressure_bar=1.0, seed=args.seed, progress=not args.no_progress),
           box_vectors=prep.box_vectors)
    pdb = app.PDBFile(str(md_dir / "final.pdb"))
    pos = np.asarray(pdb.getPositions().value_in_unit(u.nanometer))
    box = np.asarray([v.value_in_unit(u.nanometer)
                      for v in pdb.topology.getPeriodicBoxVectors()])
    mixed = make_ml_system(prep.topology, prep.system, prep.ligand_indices, args.model,
                           charge=0, multiplicity=1, interpolate=True,
                           ml_constraints=args.ml_constraints)
    return Leg(mixed, pos, box)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="fixed-charge",
                    help="shipped model name, model file, or fixed-charge")
    ap.add_argument("--legs", default="complex,solvent")
    ap.add_argument("--ml-constraints", choices=("keep", "remove"), default="keep",
                    help="constraints between ML atoms (see mlpolar md --help)")
    ap.add_argument("--box-shape", choices=("dodecahedron", "cube"), default="dodecahedron",
                    help="water box of the complex leg")
    ap.add_argument("--mm-steps", type=int, default=25_000, help="MM NPT equilibration steps")
    ap.add_argument("--lambdas", type=int, default=6)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps-per-sample", type=int, default=250)
    ap.add_argument("--forward", type=int, default=10)
    ap.add_argument("--reverse", type=int, default=10)
    ap.add_argument("--switching-steps", type=int, default=2_500)
    ap.add_argument("--equilibration-steps", type=int, default=2_500,
                    help="per window and per switching run, from the MM-equilibrated start")
    ap.add_argument("--platform", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="fe-pxylene")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    out = Path(args.output)
    names = [x for x in args.legs.split(",") if x]
    # the campaign's settings are checked before the (long) MM equilibration of the legs
    cfg = FEConfig(lambdas=list(np.linspace(0, 1, args.lambdas)), n_samples=args.samples,
                   steps_per_sample=args.steps_per_sample,
                   equilibration_steps=args.equilibration_steps, minimise=False,
                   n_forward=args.forward, n_reverse=args.reverse,
                   switching_steps=args.switching_steps,
                   switch_equilibration_steps=args.equilibration_steps,
                   platform=args.platform, seed=args.seed, progress=not args.no_progress)
    cfg.validate()
    legs = {n: equilibrated_leg(n, out, args) for n in names}
    res = run_fe(legs, out / "campaign", cfg, scheduler=args.scheduler, n_workers=args.workers,
                 difference=("complex", "solvent") if len(legs) == 2 else None)
    print(format_table(res))


if __name__ == "__main__":
    main()
