"""``mlpolar md``: ML/MM molecular dynamics from the command line.

With no arguments it runs the shipped example: T4 lysozyme L99A with p-xylene in TIP3P water,
p-xylene (residue TMP) as the ML region, the shipped model. Running the same command again
resumes from the output folder's checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .command_inputs import (DEFAULT_SYSTEM, add_input_arguments, check_model_early, load_from_args,
                             run_reporting_errors, UsageError)
from .md import TRAJECTORY_FORMATS, MDConfig, run_md


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.description = __doc__.split("\n\n")[1].replace("\n", " ")
    add_input_arguments(ap, prepared_default=DEFAULT_SYSTEM)
    ap.add_argument("--mm-only", action="store_true",
                    help="plain MM: no ML region, no model")
    ap.add_argument("--lambda", dest="lam", type=float,
                    help="run the λ-interpolated System at this lambda_interpolate "
                         "(0 = MM, 1 = ML/MM); default: the plain ML/MM System")
    d = MDConfig()
    g = ap.add_argument_group("dynamics")
    g.add_argument("--steps", type=int, default=d.steps, help="production steps")
    g.add_argument("--equilibration-steps", type=int, default=d.equilibration_steps)
    g.add_argument("--timestep-fs", type=float, default=d.timestep_ps * 1000)
    g.add_argument("--temperature", type=float, default=d.temperature_K, help="K")
    g.add_argument("--friction", type=float, default=d.friction_per_ps, help="1/ps")
    g.add_argument("--pressure", type=float, help="bar (MonteCarloBarostat); default NVT")
    g.add_argument("--no-minimise", action="store_true")
    g.add_argument("--minimise-with", choices=["mm", "ml"], default="mm",
                   help="minimise with the MM System (default; fast) or the ML/MM System "
                        "(every step calls the model)")
    g.add_argument("--report-interval", type=int, default=d.report_interval)
    g.add_argument("--checkpoint-interval", type=int, default=d.checkpoint_interval)
    g.add_argument("--format", choices=TRAJECTORY_FORMATS, default=d.trajectory_format)
    g.add_argument("--platform", help="OpenMM platform (default: the fastest)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--max-steps-this-run", type=int,
                   help="stop (after a checkpoint) after this many steps; run again to go on")
    g.add_argument("--output", help="output folder (default md-<system>)")
    g.add_argument("--no-progress", action="store_true")


def command(a: argparse.Namespace) -> int:
    return run_reporting_errors("md", _run, a)


def _run(a) -> int:
    if a.mm_only and (a.model or a.lam is not None):
        raise UsageError("--mm-only runs without a model; drop --model/--lambda")
    cfg = MDConfig(steps=a.steps, equilibration_steps=a.equilibration_steps,
                   minimise=not a.no_minimise, temperature_K=a.temperature,
                   friction_per_ps=a.friction, timestep_ps=a.timestep_fs / 1000.0,
                   pressure_bar=a.pressure, report_interval=a.report_interval,
                   checkpoint_interval=a.checkpoint_interval, trajectory_format=a.format,
                   platform=a.platform, seed=a.seed, progress=not a.no_progress)
    cfg.validate()
    if not a.mm_only:
        check_model_early(a)  # before preparing a 30k-atom system
    inp, ml, label = load_from_args(a, DEFAULT_SYSTEM)
    system, params = inp.system, {}
    if not a.mm_only:
        if ml is None:
            raise UsageError("choose the ML region with --ml-resname, --ml-indices or "
                             "--ml-selection (or run --mm-only)")
        from mlpolar.models import default_name
        from .ml_region import make_ml_system
        system = make_ml_system(inp.topology, inp.system, ml, a.model, a.charge, a.multiplicity,
                                interpolate=a.lam is not None, ml_constraints=a.ml_constraints)
        if a.lam is not None:
            params["lambda_interpolate"] = a.lam
        print(f"[mlpolar md] {label}: {inp.n_atoms} atoms, ML region {len(ml)} atoms, "
              f"model {a.model or default_name() + ' (shipped default)'}")
    out = Path(a.output or f"md-{label}")
    res = run_md(inp.topology, system, inp.positions, out, cfg, box_vectors=inp.box_vectors,
                 context_parameters=params, stop_after_steps=a.max_steps_this_run,
                 minimise_with=inp.system if (not a.mm_only and a.minimise_with == "mm") else None)
    speed = f", {res.ns_per_day:.2f} ns/day" if res.ns_per_day else ""
    state = "finished" if res.finished else "stopped (run again to continue)"
    print(f"[mlpolar md] {state} at step {res.step}{speed}; output in {out}")
    return 0
