"""``mlpolar fe``: MM → ML/MM free-energy corrections, every window and switching run a Dask task.

With no system options it runs the shipped example: p-xylene (TMP) in T4 lysozyme L99A
(leg "complex") and in water (leg "solvent"), giving the correction to the binding free energy
ΔΔG = ΔG_MM→ML/MM(complex) − ΔG_MM→ML/MM(solvent). With --system-xml/--pdb the System is used
as given (it must carry lambda_interpolate); with other inputs an ML region is needed.
Running the same command again resumes: finished tasks are read from the output folder.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .command_inputs import (add_input_arguments, check_model_early, input_kind, load_from_args,
                             run_reporting_errors, UsageError)
from .fe import METHODS, FEConfig, Leg, format_table, run_fe

EXAMPLE_LEGS = {"complex": "t4l99a_pxylene_water", "solvent": "pxylene_water"}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.description = __doc__.split("\n\n")[0]
    add_input_arguments(ap, prepared_default="both example legs")
    ap.add_argument("--legs", default="complex,solvent",
                    help="example legs to run (complex, solvent); default both")
    d = FEConfig()
    g = ap.add_argument_group("free energy")
    g.add_argument("--methods", default=",".join(METHODS), help="mbar, switching or both")
    g.add_argument("--lambdas", type=int, default=len(d.lambdas),
                   help="number of evenly spaced λ windows (including 0 and 1)")
    g.add_argument("--samples", type=int, default=d.n_samples, help="samples per window")
    g.add_argument("--steps-per-sample", type=int, default=d.steps_per_sample)
    g.add_argument("--equilibration-steps", type=int, default=d.equilibration_steps,
                   help="per window")
    g.add_argument("--forward", type=int, default=d.n_forward, help="switching runs 0 → 1")
    g.add_argument("--reverse", type=int, default=d.n_reverse, help="switching runs 1 → 0")
    g.add_argument("--switching-steps", type=int, default=d.switching_steps)
    g.add_argument("--switch-equilibration-steps", type=int,
                   default=d.switch_equilibration_steps)
    g.add_argument("--timestep-fs", type=float, default=d.timestep_ps * 1000)
    g.add_argument("--temperature", type=float, default=d.temperature_K)
    g.add_argument("--friction", type=float, default=d.friction_per_ps)
    g.add_argument("--no-minimise", action="store_true")
    g.add_argument("--platform", help="OpenMM platform on the workers")
    g.add_argument("--threads", type=int, default=d.threads, help="CPU threads per task")
    g.add_argument("--seed", type=int, default=d.seed)
    c = ap.add_argument_group("Dask")
    c.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    c.add_argument("--scheduler", help="address of a running Dask scheduler "
                                       "(e.g. from dask-jobqueue) instead of a LocalCluster")
    c.add_argument("--retries", type=int, default=d.retries)
    ap.add_argument("--output", help="campaign folder (default fe-<legs>)")
    ap.add_argument("--no-progress", action="store_true")


def command(a: argparse.Namespace) -> int:
    return run_reporting_errors("fe", _run, a)


def _config(a) -> FEConfig:
    cfg = FEConfig(lambdas=[float(x) for x in np.linspace(0.0, 1.0, a.lambdas)]
                   if a.lambdas >= 2 else [0.0],
                   methods=[m.strip() for m in a.methods.split(",") if m.strip()],
                   n_samples=a.samples, steps_per_sample=a.steps_per_sample,
                   equilibration_steps=a.equilibration_steps, n_forward=a.forward,
                   n_reverse=a.reverse, switching_steps=a.switching_steps,
                   switch_equilibration_steps=a.switch_equilibration_steps,
                   temperature_K=a.temperature, friction_per_ps=a.friction,
                   timestep_ps=a.timestep_fs / 1000.0, minimise=not a.no_minimise,
                   platform=a.platform, threads=a.threads, seed=a.seed, retries=a.retries,
                   progress=not a.no_progress)
    cfg.validate()
    return cfg


def _run(a) -> int:
    cfg = _config(a)
    from .ml_region import make_ml_system
    difference = None
    if input_kind(a) == "prepared" and not a.system:
        names = [x.strip() for x in a.legs.split(",") if x.strip()]
        bad = [x for x in names if x not in EXAMPLE_LEGS]
        if bad or not names:
            raise UsageError(f"--legs {a.legs!r}: choose from {list(EXAMPLE_LEGS)}")
        check_model_early(a)
        legs = {}
        for leg in names:
            a.system = EXAMPLE_LEGS[leg]
            inp, ml, _ = load_from_args(a, EXAMPLE_LEGS[leg])
            mixed = make_ml_system(inp.topology, inp.system, ml, a.model, a.charge,
                                   a.multiplicity, interpolate=True,
                                   ml_constraints=a.ml_constraints)
            legs[leg] = Leg(mixed, inp.positions, inp.box_vectors)
        if len(legs) == 2:
            difference = ("complex", "solvent")
        label = "-".join(names)
    elif a.system_xml and not any([a.ml_resname, a.ml_indices, a.ml_selection]):
        inp, _, _ = load_from_args(a, "")
        legs, label = {"system": Leg(inp.system, inp.positions, inp.box_vectors)}, "system"
    else:
        check_model_early(a)
        inp, ml, label = load_from_args(a, a.system or "")
        if ml is None:
            raise UsageError("choose the ML region with --ml-resname, --ml-indices or "
                             "--ml-selection")
        mixed = make_ml_system(inp.topology, inp.system, ml, a.model, a.charge, a.multiplicity,
                               interpolate=True, ml_constraints=a.ml_constraints)
        legs = {"system": Leg(mixed, inp.positions, inp.box_vectors)}
    out = Path(a.output or f"fe-{label}")
    res = run_fe(legs, out, cfg, scheduler=a.scheduler, n_workers=a.workers,
                 difference=difference)
    print(format_table(res))
    print(f"[mlpolar fe] results in {out}/results.json, results.csv and PNG plots; "
          f"{res['tasks']['new']} tasks run now, {len(res['tasks']['failed'])} failed")
    if res["tasks"]["failed"]:
        print(json.dumps(res["tasks"]["failed"], indent=1), file=sys.stderr)
        return 1
    return 0
