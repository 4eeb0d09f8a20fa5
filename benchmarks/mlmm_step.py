"""ML/MM step time: electrostatic embedding (mlpolar) against mechanical embedding (openmm-ml's
"mechanical" with the same model) and pure MM, on systems from openmmtools' data folder.

Systems: alanine dipeptide in TIP3P (ML = the dipeptide, 22 atoms); CB7-B2 host-guest in TIP3P
(ML = the B2 guest); DHFR JAC (23,558 atoms; ML = the 17 waters nearest the protein's centre, 51
atoms: whole molecules, as link atoms are not supported yet).
Models: the fixed-charge model (mlpolar.models.fixed_charge, the force field's own ML-region
terms) and a small untrained MLPolar (mlpolar.model) when it can run the configuration.

    PYTHONPATH=python python benchmarks/mlmm_step.py --steps 5 --threads 1   # -> results/mlmm_step_cpu_1thread.csv
    PYTHONPATH=python python benchmarks/mlmm_step.py --threads 1 --features 1e-5,5e-4   # mm_features alone

Electrostatic embedding runs the model's ML-MM long range at the NonbondedForce's
ewaldErrorTolerance (MLPolarForce's default; openmmtools builds these systems at 1e-5, OpenMM's
ForceField.createSystem would use 5e-4: --ewald-tolerance); --embedding-tolerance sets another value.

Writes one CSV row per (system, method, model) as it goes; rows already in the CSV (same platform
and threads) are skipped, so an interrupted run resumes. The default file name follows the settings
(benchmarks/results/mlmm_step_<platform>_<threads>thread[_ewald<tol>][_embedding<tol>].csv), so a
run with other settings starts its own file; a CSV whose header is not this script's columns (an
older version's) is refused rather than appended to. Timings: wall-clock ms per VerletIntegrator
step (0.5 fs) after one warm-up step, CPU platform (CUDA platform, with the models on the GPU, and
ns/day when a GPU is present).
"""
import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from mlpolar.models.fixed_charge import FixedChargeModel  # noqa: E402
from mlpolar.openmm import create_mixed_system  # noqa: E402
from mlpolar.openmm.force import accepts_mm_tolerance  # noqa: E402

FIELDS = ["system", "atoms", "ml_atoms", "method", "model", "platform", "threads", "ms_per_step", "cpu_ms_per_step",
          "ns_per_day", "embedding_tolerance", "note"]


def load_system(name, ewald_tolerance=None):
    """(openmmtools test system, ML atom indices); ewald_tolerance: the NonbondedForce's
    ewaldErrorTolerance (None: openmmtools' default, 1e-5)."""
    from openmmtools import testsystems as ts
    kw = {} if ewald_tolerance is None else dict(ewaldErrorTolerance=ewald_tolerance)
    if name == "alanine_dipeptide_water":
        t = ts.AlanineDipeptideExplicit(constraints=None, **kw)
        ml = [a.index for a in t.topology.atoms() if a.residue.name != "HOH"]
    elif name == "cb7_b2_water":
        t = ts.HostGuestExplicit(constraints=None, **kw)
        residues = list(t.topology.residues())
        guest = residues[1]        # residue 0 is the CB7 host, 1 the B2 guest
        ml = [a.index for a in guest.atoms()]
    elif name == "dhfr_jac":
        t = ts.DHFRExplicit(constraints=None, **kw)
        x = np.asarray(t.positions.value_in_unit(u.nanometer))
        protein = [a.index for a in t.topology.atoms() if a.residue.name not in ("HOH", "WAT", "NA", "CL")]
        centre = x[protein].mean(0)
        waters = [r for r in t.topology.residues() if r.name in ("HOH", "WAT")]
        oxygen = [next(a for a in r.atoms() if a.element.symbol == "O") for r in waters]
        order = np.argsort([np.linalg.norm(x[o.index] - centre) for o in oxygen])[:17]
        ml = sorted(a.index for k in order for a in waters[k].atoms())
    else:
        raise ValueError(f"unknown system {name}")
    return t, ml


def time_steps(system, positions, steps, platform, threads=None):
    integrator = openmm.VerletIntegrator(0.5 * u.femtosecond)
    props = {"Threads": str(threads)} if (threads and platform == "CPU") else {}
    ctx = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(positions)
    ctx.setVelocitiesToTemperature(300 * u.kelvin, 1)
    integrator.step(1)
    t0, c0 = time.perf_counter(), time.process_time()
    integrator.step(steps)
    ctx.getState(getEnergy=True)
    ms = 1000.0 * (time.perf_counter() - t0) / steps
    # process CPU time (all threads): robust to other jobs on a shared machine, unlike wall time
    cpu_ms = 1000.0 * (time.process_time() - c0) / steps
    return ms, cpu_ms, 0.5e-6 * 86400e3 / ms   # ns/day at 0.5 fs


def pick_platform() -> str:
    """CUDA when both torch and OpenMM can use a GPU, else CPU."""
    names = {openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())}
    return "CUDA" if torch.cuda.is_available() and "CUDA" in names else "CPU"


def models_for_platform(models: dict, platform: str) -> dict:
    """The models on the device that matches the OpenMM platform: on CUDA the model runs on the GPU
    (MLPolarForce runs the model where it lives; a CPU model under the CUDA platform would time
    host-device copies and a CPU model, not the GPU path). CPU: unchanged."""
    if platform != "CUDA":
        return models
    return {name: m.to(torch.device("cuda")) for name, m in models.items()}


def _short(x: float) -> str:
    """5e-4 -> '5e-4', 1.5e-05 -> '1.5e-5' (as in the cited file names)."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def default_out(platform: str, threads: int, ewald_tolerance=None, embedding_tolerance=None) -> Path:
    """The results file for these settings (the naming of the files docs/performance.md cites)."""
    name = f"mlmm_step_{platform.lower()}_{threads}thread"
    if ewald_tolerance is not None:
        name += f"_ewald{_short(ewald_tolerance)}"
    if embedding_tolerance is not None:
        name += f"_embedding{_short(embedding_tolerance)}"
    return Path("benchmarks/results") / f"{name}.csv"


def rows_done(out: Path, platform: str, threads: int) -> set:
    """(system, method, model) already measured in `out` on this platform with these threads. A file
    whose header is not FIELDS is refused (SystemExit naming both headers): appending would put
    rows under the wrong columns, and skipping its rows would measure nothing."""
    if not out.exists() or out.stat().st_size == 0:
        return set()
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != FIELDS:
            raise SystemExit(f"{out} has the columns {reader.fieldnames}, not this script's {FIELDS} (a file "
                             "from an older version); pass --out with a new file name, or move that file away")
        return {(r["system"], r["method"], r["model"]) for r in reader
                if r["platform"] == platform and r["threads"] == str(threads)}


def tiny_mlpolar():
    from mlpolar.model import MLPolar, MLPolarConfig
    torch.manual_seed(0)
    return MLPolar(MLPolarConfig(elements=[1, 6, 7, 8], channels=32, layers=2)).double()


def time_features(names, tolerances, repeats=7):
    """CPU ms of mm_features (T0..T3 of the MM charges at the ML atoms, sigma 0.05 nm, cutoff 1.2 nm,
    full Ewald) forward + backward, the ML-MM part of an electrostatic-embedding step, per system
    and tolerance: with the influence-function cache (the steady state of an MD run at constant
    volume) and with the cache emptied before each call (a barostat's box change every step); and
    the tiny MLPolar force's evaluation (model + autograd, no OpenMM) with and without the MM
    charges."""
    from mlpolar.electrostatics import mm_features, pme
    from mlpolar.electrostatics.embedding import _ewald_parameters
    from mlpolar.openmm.force import prepare_evaluator
    print("system, tolerance, grid, mm_features cpu_ms cached, uncached, MLPolar force cpu_ms with MM, "
          "without MM (medians of %d)" % repeats)
    for name in names:
        t, ml = load_system(name)
        x = torch.tensor(np.asarray(t.positions.value_in_unit(u.nanometer)), dtype=torch.float64)
        nb = next(f for f in t.system.getForces() if isinstance(f, openmm.NonbondedForce))
        mm = [i for i in range(len(x)) if i not in set(ml)]
        q = torch.tensor([nb.getParticleParameters(i)[0].value_in_unit(u.elementary_charge) for i in mm],
                         dtype=torch.float64)
        box = torch.tensor([list(v.value_in_unit(u.nanometer)) for v in t.system.getDefaultPeriodicBoxVectors()],
                           dtype=torch.float64)
        widths = torch.full((len(ml),), 0.05, dtype=torch.float64)
        for tol in tolerances:
            cpu = {True: [], False: []}
            for _ in range(repeats + 1):
                for cached in (True, False):
                    if not cached:
                        pme.clear_pme_cache()
                    a, b = x[ml].requires_grad_(True), x[mm].requires_grad_(True)
                    c0 = time.process_time()
                    T = mm_features(a, widths, b, q, box, 1.2, 3, 0.1, None, True, tol)
                    (T.T0.sum() + T.T1.sum() + T.T2.sum() + T.T3.sum()).backward()
                    cpu[cached].append(1000.0 * (time.process_time() - c0))
            grid = _ewald_parameters(box, 1.2, tol, 8, 0.05)[1]
            # the MLPolar force alone (no OpenMM): the model with the MM charges at this tolerance
            # against the model in vacuum (what mechanical embedding evaluates)
            model = tiny_mlpolar()
            evs = {True: prepare_evaluator(model, ml, t.system, topology=t.topology, embedding_tolerance=tol),
                   False: prepare_evaluator(model, ml, t.system, topology=t.topology, embed=False)}
            force = {True: [], False: []}
            for _ in range(repeats + 1):
                for embed, ev in evs.items():
                    c0 = time.process_time()
                    ev.evaluate(x, box)
                    force[embed].append(1000.0 * (time.process_time() - c0))
            print(f"{name}, {tol:g}, {'x'.join(map(str, grid))}, {np.median(cpu[True][1:]):.1f}, "
                  f"{np.median(cpu[False][1:]):.1f}, {np.median(force[True][1:]):.1f}, "
                  f"{np.median(force[False][1:]):.1f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", nargs="+", default=["alanine_dipeptide_water", "cb7_b2_water", "dhfr_jac"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None,
                   help="CSV file (default: benchmarks/results/mlmm_step_<platform>_<threads>thread[_ewald<tol>]"
                        "[_embedding<tol>].csv)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch and OpenMM CPU threads (1 makes the CPU-time column robust on a shared machine)")
    p.add_argument("--ewald-tolerance", type=float, default=None,
                   help="the systems' NonbondedForce ewaldErrorTolerance (default: openmmtools' 1e-5; OpenMM's "
                        "ForceField.createSystem uses 5e-4)")
    p.add_argument("--embedding-tolerance", type=float, default=None,
                   help="accuracy of the ML-MM long range (default: the NonbondedForce's ewaldErrorTolerance)")
    p.add_argument("--features", metavar="TOLERANCES", default=None,
                   help="instead of MD steps, time mm_features alone at these comma-separated tolerances")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.features:
        time_features(args.systems, [float(v) for v in args.features.split(",")])
        return
    from openmmml import MLPotential
    platform = pick_platform()
    threads = torch.get_num_threads()
    out = Path(args.out) if args.out else default_out(platform, threads, args.ewald_tolerance,
                                                      args.embedding_tolerance)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = rows_done(out, platform, threads)
    print(f"writing {out} ({len(done)} rows already measured there are skipped)", flush=True)
    new = not out.exists() or out.stat().st_size == 0
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        for name in args.systems:
            t, ml = load_system(name, args.ewald_tolerance)
            n = t.system.getNumParticles()
            models = {"fixed-charge": FixedChargeModel.from_system(t.system, ml, topology=t.topology)}
            try:
                models["mlpolar-tiny"] = tiny_mlpolar()
            except ImportError as e:
                print(f"mlpolar.model not importable ({e}); fixed-charge model only")
            models = models_for_platform(models, platform)
            runs = [("mm", "-", None)]
            for mname in models:
                runs += [("mechanical", mname, "mechanical"), ("electrostatic", mname, "electrostatic")]
            for method, mname, kind in runs:
                if (name, method, mname) in done:
                    continue
                note = ""
                tolerance = "-"
                try:
                    if kind is None:
                        system = t.system
                    elif kind == "mechanical":
                        system = MLPotential("mlpolar", model=models[mname]).createMixedSystem(t.topology, t.system, ml)
                    else:
                        settable = accepts_mm_tolerance(models[mname])   # else: the model's own setting
                        system = create_mixed_system(t.topology, t.system, ml, models[mname],
                                                     embedding_tolerance=args.embedding_tolerance if settable else None)
                        if settable:
                            nb = next(f for f in t.system.getForces() if isinstance(f, openmm.NonbondedForce))
                            tolerance = f"{args.embedding_tolerance or nb.getEwaldErrorTolerance():g}"
                    ms, cpu_ms, nsday = time_steps(system, t.positions, args.steps, platform, args.threads)
                except Exception as e:   # record what could not run, keep going
                    ms = cpu_ms = nsday = float("nan")
                    note = f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"
                row = dict(system=name, atoms=n, ml_atoms=len(ml), method=method, model=mname, platform=platform,
                           threads=threads, ms_per_step=f"{ms:.1f}", cpu_ms_per_step=f"{cpu_ms:.1f}", ns_per_day=f"{nsday:.4f}",
                           embedding_tolerance=tolerance, note=note)
                writer.writerow(row)
                f.flush()
                print(row, flush=True)


if __name__ == "__main__":
    main()
