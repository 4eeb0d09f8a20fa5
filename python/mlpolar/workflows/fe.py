"""Free-energy campaigns along one global parameter (λ = ``lambda_interpolate``: 0 = MM,
1 = ML/MM): equilibrium λ windows + MBAR, and non-equilibrium switching + BAR/Jarzynski, with
every window and every switching run an independent Dask task (:mod:`.campaign`).

A campaign has one or more *legs*, each a System (carrying the global parameter) with start
coordinates; for the MM → ML/MM correction of a binding free energy the legs are the ligand in the
complex and in solvent, and

    ΔΔG_bind(MM → ML/MM) = ΔG_{MM→ML/MM}(complex) − ΔG_{MM→ML/MM}(solvent),

so ΔG_bind(ML/MM) = ΔG_bind(MM) + ΔΔG_bind.

Layout of ``outdir``::

    campaign.json          settings and a fingerprint of every leg's System and coordinates;
                           a re-run with other settings is refused (use a new outdir)
    tasks/<leg>-window-<k>.npz, tasks/<leg>-forward-<i>.npz, tasks/<leg>-reverse-<i>.npz
    results.json, results.csv   ΔG per leg and method (kJ/mol, ±1σ), and the leg difference
    <leg>-overlap.png, <leg>-convergence.png, <leg>-work.png

Running the same call again resumes: only missing tasks are run, and the analysis is redone.
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import openmm

from . import estimators
from .campaign import run_tasks
from .fe_tasks import kT_kj_per_mol, sample_window, switch

METHODS = ("mbar", "switching")
KJ_PER_KCAL = 4.184
# settings that may change between a run and its resumption without touching finished tasks
_FREE_SETTINGS = {"retries", "progress", "threads"}


@dataclass
class FEConfig:
    parameter: str = "lambda_interpolate"
    lambdas: Sequence[float] = field(default_factory=lambda: list(np.linspace(0, 1, 11)))
    methods: Sequence[str] = METHODS
    # windows
    n_samples: int = 500
    steps_per_sample: int = 250
    equilibration_steps: int = 5_000
    # switching
    n_forward: int = 20
    n_reverse: int = 20
    switching_steps: int = 5_000
    switch_equilibration_steps: int = 5_000
    # dynamics
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0
    timestep_ps: float = 0.002
    minimise: bool = True
    platform: Optional[str] = None
    threads: int = 1
    seed: int = 0
    retries: int = 2
    progress: bool = True

    def validate(self) -> None:
        lam = np.asarray(self.lambdas, dtype=float)
        if lam.ndim != 1 or len(lam) < 2:
            raise ValueError("lambdas must list at least 2 values of the parameter, e.g. "
                             "numpy.linspace(0, 1, 11)")
        if lam[0] != 0.0 or lam[-1] != 1.0 or np.any(np.diff(lam) <= 0):
            raise ValueError(f"lambdas={lam.tolist()} must increase strictly from 0 to 1")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods={list(self.methods)}: choose from {METHODS}")
        ints = ["n_samples", "steps_per_sample", "n_forward", "n_reverse", "switching_steps"]
        for name in ints:
            v = getattr(self, name)
            if int(v) != v or v < (2 if name in ("n_samples", "n_forward", "n_reverse") else 1):
                raise ValueError(f"{name}={v} must be an integer >= "
                                 f"{2 if name in ('n_samples', 'n_forward', 'n_reverse') else 1}")
        for name in ("equilibration_steps", "switch_equilibration_steps", "retries"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.temperature_K > 0 or not self.friction_per_ps > 0:
            raise ValueError("temperature_K and friction_per_ps must be positive")
        if not 0 < self.timestep_ps <= 0.005:
            raise ValueError(f"timestep_ps={self.timestep_ps} must be in (0, 0.005] ps")

    def settings(self) -> dict:
        d = asdict(self)
        d["lambdas"] = [float(x) for x in self.lambdas]
        d["methods"] = list(self.methods)
        return d


@dataclass
class Leg:
    """One thermodynamic leg: a System with the global parameter, coordinates (nm), box (nm)."""
    system: openmm.System
    positions: np.ndarray
    box_vectors: Optional[np.ndarray] = None

    def system_xml(self) -> str:
        return openmm.XmlSerializer.serialize(self.system)


def _check_leg(name: str, leg: Leg, parameter: str) -> str:
    if not isinstance(leg, Leg):
        raise TypeError(f"legs[{name!r}] must be a mlpolar.workflows.fe.Leg, got "
                        f"{type(leg).__name__}")
    n = leg.system.getNumParticles()
    if np.asarray(leg.positions).shape != (n, 3):
        raise ValueError(f"legs[{name!r}].positions has shape {np.shape(leg.positions)}; "
                         f"expected ({n}, 3) nm")
    params = set()
    for f in leg.system.getForces():
        for i in range(getattr(f, "getNumGlobalParameters", lambda: 0)()):
            params.add(f.getGlobalParameterName(i))
    if parameter not in params:
        raise ValueError(f"legs[{name!r}]: the System has no global parameter {parameter!r} "
                         f"(it has {sorted(params) or 'none'}); build it with "
                         "create_mixed_system(..., interpolate=True)")
    return leg.system_xml()


def _fingerprint(xml: str, leg: Leg) -> str:
    h = hashlib.sha256(xml.encode())
    h.update(np.ascontiguousarray(leg.positions, dtype=np.float64).tobytes())
    if leg.box_vectors is not None:
        h.update(np.ascontiguousarray(leg.box_vectors, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def build_tasks(legs: Dict[str, Leg], cfg: FEConfig) -> tuple[dict, dict, dict]:
    """Task table for :func:`run_tasks`: name -> (function, kwargs). Returns (tasks, shared
    arguments per leg (System XML), fingerprints)."""
    tasks, xmls, prints = {}, {}, {}
    dyn = dict(temperature_K=cfg.temperature_K, friction_per_ps=cfg.friction_per_ps,
               timestep_ps=cfg.timestep_ps, minimise=cfg.minimise, platform=cfg.platform,
               threads=cfg.threads, parameter=cfg.parameter)
    lam = [float(x) for x in cfg.lambdas]
    for li, (leg_name, leg) in enumerate(legs.items()):
        if not leg_name.replace("_", "").isalnum():
            raise ValueError(f"leg name {leg_name!r}: use letters, digits and _ only")
        xml = _check_leg(leg_name, leg, cfg.parameter)
        xmls[leg_name], prints[leg_name] = xml, _fingerprint(xml, leg)
        base = dict(system_xml=xml, positions=np.asarray(leg.positions, dtype=float),
                    box=None if leg.box_vectors is None else np.asarray(leg.box_vectors))
        # distinct, reproducible seeds per task: a re-run task repeats its trajectory
        seed0 = (int(cfg.seed) * 97 + li) * 100_003
        if "mbar" in cfg.methods:
            for k in range(len(lam)):
                tasks[f"{leg_name}-window-{k:03d}"] = (sample_window, dict(
                    base, **dyn, lambdas=lam, k=k, n_samples=int(cfg.n_samples),
                    steps_per_sample=int(cfg.steps_per_sample),
                    equilibration_steps=int(cfg.equilibration_steps), seed=seed0 + k))
        if "switching" in cfg.methods:
            for direction, n, (a, b), off in (("forward", cfg.n_forward, (0.0, 1.0), 10_000),
                                              ("reverse", cfg.n_reverse, (1.0, 0.0), 20_000)):
                for i in range(int(n)):
                    tasks[f"{leg_name}-{direction}-{i:04d}"] = (switch, dict(
                        base, **dyn, start=a, end=b, switching_steps=int(cfg.switching_steps),
                        equilibration_steps=int(cfg.switch_equilibration_steps),
                        seed=seed0 + off + i))
    return tasks, xmls, prints


def _check_campaign(out: Path, settings: dict, prints: dict) -> None:
    f = out / "campaign.json"
    new = dict(settings={k: v for k, v in settings.items() if k not in _FREE_SETTINGS},
               legs=prints)
    if f.exists():
        old = json.loads(f.read_text())
        diff = sorted(k for k in set(old["settings"]) | set(new["settings"])
                      if old["settings"].get(k) != new["settings"].get(k))
        legs_diff = sorted(k for k in set(old["legs"]) & set(prints)
                           if old["legs"][k] != prints[k])
        if diff or legs_diff:
            raise ValueError(f"{out} holds a campaign with other settings {diff} or other "
                             f"systems/coordinates for legs {legs_diff}; resume it with the "
                             "same inputs or use a new outdir")
        new["legs"] = {**old["legs"], **prints}
    out.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=1))
    tmp.replace(f)


def run_fe(legs: Dict[str, Leg], outdir, config: Optional[FEConfig] = None, *, client=None,
           scheduler: Optional[str] = None, n_workers: int = 2,
           difference: Optional[tuple] = None, log: Callable = print) -> dict:
    """Run (or resume) the campaign and analyse it; see the module doc.

    difference: (leg_a, leg_b) to report ΔG(leg_a) − ΔG(leg_b), e.g. ("complex", "solvent").
    Returns the results dict also written to results.json (kJ/mol).
    """
    cfg = config or FEConfig()
    cfg.validate()
    if not legs:
        raise ValueError("legs is empty; give at least one name -> Leg")
    if difference is not None and (len(difference) != 2 or
                                   any(d not in legs for d in difference)):
        raise ValueError(f"difference={difference} must name two legs of {list(legs)}")
    out = Path(outdir)
    tasks, _, prints = build_tasks(legs, cfg)
    _check_campaign(out, cfg.settings(), prints)
    run = run_tasks(tasks, out / "tasks", client=client, scheduler=scheduler,
                    n_workers=n_workers, retries=cfg.retries, progress=cfg.progress, log=log)
    if run["failed"]:
        log(f"[mlpolar fe] {len(run['failed'])} tasks failed; analysing what finished, run "
            "again to retry them")
    results = analyse(out, list(legs), cfg, difference=difference)
    results["tasks"] = dict(total=len(tasks), new=len(run["new"]), failed=run["failed"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    return results


def _collect(outdir: Path, leg: str, kind: str) -> list:
    from .campaign import load_result
    return [load_result(p) for p in sorted((outdir / "tasks").glob(f"{leg}-{kind}-*.npz"))]


def analyse(outdir, leg_names: Sequence[str], cfg: FEConfig,
            difference: Optional[tuple] = None) -> dict:
    """Estimates from the task files on disk (kJ/mol), plots, results.csv."""
    out = Path(outdir)
    kT = kT_kj_per_mol(cfg.temperature_K)
    lam = np.asarray(cfg.lambdas, dtype=float)
    res = dict(kT_kj_per_mol=kT, temperature_K=cfg.temperature_K, legs={})
    rows = []
    for leg in leg_names:
        r = {}
        windows = _collect(out, leg, "window")
        if "mbar" in cfg.methods and len(windows) == len(lam):
            u_kln = np.stack([w["u_ln"] for w in windows])
            m = estimators.mbar_estimate(u_kln)
            r["mbar"] = dict(dg=m["dg"] * kT, ddg=m["ddg"] * kT,
                             n_effective=m["n_effective"].tolist(),
                             n_samples=int(u_kln.shape[2]),
                             overlap_min_offdiagonal=float(np.min(np.diag(m["overlap"], 1))),
                             overlap=np.round(m["overlap"], 6).tolist(),
                             sampled_ns_per_window=cfg.n_samples * cfg.steps_per_sample
                             * cfg.timestep_ps * 1e-3)
            dudl = np.array([np.mean(w["dudl_n"]) for w in windows])
            if np.all(np.isfinite(dudl)):  # thermodynamic integration as a cross-check
                r["ti"] = dict(dg=float(np.trapezoid(dudl, lam) * kT))
            estimators.plot_overlap(m["overlap"], lam, out / f"{leg}-overlap.png",
                                    f"{leg}: MBAR overlap")
            estimators.plot_convergence(m["convergence"], kT, out / f"{leg}-convergence.png",
                                        f"{leg}: MBAR ΔG vs samples")
            rows.append((leg, "MBAR", r["mbar"]["dg"], r["mbar"]["ddg"]))
        elif "mbar" in cfg.methods:
            r["mbar"] = dict(missing_windows=len(lam) - len(windows))
        fwd, rev = _collect(out, leg, "forward"), _collect(out, leg, "reverse")
        if "switching" in cfg.methods and len(fwd) >= 2 and len(rev) >= 2:
            w_f = np.array([w["work"] for w in fwd], dtype=float)
            w_r = np.array([w["work"] for w in rev], dtype=float)
            s = estimators.switching_estimate(w_f, w_r)
            r["switching"] = {k: (v * kT if isinstance(v, float) else v) for k, v in s.items()}
            r["switching"]["switching_ps"] = cfg.switching_steps * cfg.timestep_ps
            wd = np.array([w["work_dudl"] for w in fwd + rev], dtype=float)
            if np.all(np.isfinite(wd)):
                r["switching"]["max_work_difference_energy_vs_dudl"] = float(
                    np.max(np.abs(wd - np.concatenate([w_f, w_r]))) * kT)
            estimators.plot_work_distributions(w_f, w_r, kT, out / f"{leg}-work.png",
                                               dg=s["bar"] * kT, title=f"{leg}: work")
            rows.append((leg, "BAR", s["bar"] * kT, s["dbar"] * kT))
            rows.append((leg, "Jarzynski forward", s["jarzynski_forward"] * kT,
                         s["djarzynski_forward"] * kT))
            rows.append((leg, "Jarzynski reverse", s["jarzynski_reverse"] * kT,
                         s["djarzynski_reverse"] * kT))
        elif "switching" in cfg.methods:
            r["switching"] = dict(n_forward=len(fwd), n_reverse=len(rev),
                                  missing="need at least 2 forward and 2 reverse works")
        res["legs"][leg] = r
    if difference is not None:
        a, b = difference
        res["difference"] = {"of": f"{a} - {b}"}
        for method, key in (("mbar", "MBAR"), ("switching", "BAR")):
            ra, rb = res["legs"][a].get(method, {}), res["legs"][b].get(method, {})
            va = ra.get("dg", ra.get("bar"))
            vb = rb.get("dg", rb.get("bar"))
            if va is not None and vb is not None:
                ea = ra.get("ddg", ra.get("dbar"))
                eb = rb.get("ddg", rb.get("dbar"))
                res["difference"][method] = dict(dg=va - vb, ddg=float(np.hypot(ea, eb)))
                rows.append((f"{a} - {b}", key, va - vb, float(np.hypot(ea, eb))))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["leg", "method", "dG_kJ_per_mol", "sigma_kJ_per_mol", "dG_kcal_per_mol",
                    "sigma_kcal_per_mol"])
        for leg, method, dg, ddg in rows:
            w.writerow([leg, method, f"{dg:.4f}", f"{ddg:.4f}", f"{dg / KJ_PER_KCAL:.4f}",
                        f"{ddg / KJ_PER_KCAL:.4f}"])
    res["table"] = [dict(leg=a, method=b, dg=c, ddg=d) for a, b, c, d in rows]
    return res


def format_table(results: dict) -> str:
    lines = [f"{'leg':<22} {'method':<18} {'ΔG / kJ mol-1':>18}"]
    for r in results["table"]:
        lines.append(f"{r['leg']:<22} {r['method']:<18} {r['dg']:>10.3f} ± {r['ddg']:.3f}")
    return "\n".join(lines)
