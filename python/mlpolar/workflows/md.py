"""Molecular dynamics with checkpoints: minimise, equilibrate, produce; resume where it stopped.

:func:`run_md` runs one simulation into an output folder::

    <outdir>/md.json          settings + progress (step, frames, CSV rows), written after each
                              checkpoint (atomically), so it always describes checkpoint.chk
    <outdir>/checkpoint.chk   OpenMM checkpoint (positions, velocities, box, RNG states)
    <outdir>/state.csv        StateDataReporter: step, time, energies, T, volume, speed
    <outdir>/trajectory.dcd   production frames (or trajectory.xtc)
    <outdir>/minimised.pdb, final.pdb

Calling it again with the same folder resumes from the checkpoint: output written after the last
checkpoint (by a run that was killed) is cut back first, so the files read as one continuous run.
On the Reference platform the resumed run is bit-for-bit the uninterrupted one (the checkpoint
holds the integrator's random-number state; tests/workflows/test_md.py checks this).
Asking for more production steps than a finished run had extends it.

Integrator: LangevinMiddleIntegrator (BAOAB-like, accurate configurational sampling at 2 fs
with H-bond constraints); optional MonteCarloBarostat. Units: nm, ps, K, kJ/mol.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

TRAJECTORY_FORMATS = ("dcd", "xtc")
# settings that may differ on resume (everything else must match the run being continued)
_RESUMABLE_CHANGES = {"steps", "progress", "platform_properties"}


@dataclass
class MDConfig:
    steps: int = 50_000                 # production steps
    equilibration_steps: int = 5_000    # after minimisation, not written to the trajectory
    minimise: bool = True
    minimise_max_iterations: int = 0    # 0: until converged
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0
    timestep_ps: float = 0.002
    pressure_bar: Optional[float] = None  # None: NVT; else MonteCarloBarostat every 25 steps
    report_interval: int = 1_000        # CSV row and trajectory frame
    checkpoint_interval: int = 10_000   # multiple of report_interval
    trajectory_format: str = "dcd"
    platform: Optional[str] = None      # None: OpenMM's fastest
    platform_properties: dict = field(default_factory=dict)
    seed: int = 0                       # velocities, Langevin and barostat RNG
    progress: bool = True

    def validate(self) -> None:
        for name in ("steps", "equilibration_steps", "minimise_max_iterations"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("report_interval", "checkpoint_interval"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive step count")
        if self.checkpoint_interval % self.report_interval:
            raise ValueError(f"checkpoint_interval={self.checkpoint_interval} must be a multiple "
                             f"of report_interval={self.report_interval} (so a checkpoint "
                             "always falls on a written frame)")
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K={self.temperature_K} must be positive (K)")
        if not 0 < self.timestep_ps <= 0.005:
            raise ValueError(f"timestep_ps={self.timestep_ps} must be in (0, 0.005] ps "
                             "(e.g. 0.002 with H-bond constraints)")
        if not self.friction_per_ps > 0:
            raise ValueError(f"friction_per_ps={self.friction_per_ps} must be positive (1/ps)")
        if self.pressure_bar is not None and not self.pressure_bar > 0:
            raise ValueError(f"pressure_bar={self.pressure_bar} must be positive or None (NVT)")
        if self.trajectory_format not in TRAJECTORY_FORMATS:
            raise ValueError(f"trajectory_format={self.trajectory_format!r}: use one of "
                             f"{TRAJECTORY_FORMATS}")


@dataclass
class MDResult:
    outdir: Path
    step: int                 # steps done in total (equilibration + production)
    finished: bool
    resumed_from: Optional[int]
    ns_per_day: Optional[float]  # this call's speed
    files: dict


def make_integrator(cfg: MDConfig) -> openmm.Integrator:
    integ = openmm.LangevinMiddleIntegrator(cfg.temperature_K * u.kelvin,
                                            cfg.friction_per_ps / u.picosecond,
                                            cfg.timestep_ps * u.picosecond)
    integ.setRandomNumberSeed(int(cfg.seed) + 1)  # 0 would mean "pick at random"
    return integ


def make_platform(name: Optional[str]):
    if name is None:
        return None
    names = [openmm.Platform.getPlatform(i).getName()
             for i in range(openmm.Platform.getNumPlatforms())]
    if name not in names:
        raise ValueError(f"platform={name!r} is not available; available: {names}")
    return openmm.Platform.getPlatformByName(name)


class ProgressReporter:
    """tqdm bar over the whole run, with this call's speed in ns/day."""

    def __init__(self, total_steps: int, start_step: int, timestep_ps: float, interval: int,
                 enabled: bool):
        from tqdm import tqdm
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                         disable=not enabled, desc="MD")
        self._interval = max(1, interval)
        self._dt = timestep_ps
        self._t0, self._s0, self._last = time.perf_counter(), start_step, start_step
        self.ns_per_day: Optional[float] = None

    def describeNextReport(self, simulation):
        steps = self._interval - simulation.currentStep % self._interval
        return dict(steps=steps, periodic=None, include=[])

    def report(self, simulation, state):
        step = simulation.currentStep
        self._bar.update(step - self._last)
        self._last = step
        wall = time.perf_counter() - self._t0
        if wall > 0 and step > self._s0:
            self.ns_per_day = (step - self._s0) * self._dt * 1e-3 / (wall / 86400.0)
            self._bar.set_postfix_str(f"{self.ns_per_day:.2f} ns/day")

    def close(self):
        self._bar.close()


class _CheckpointReporter:
    """Writes checkpoint.chk then md.json (atomically) every ``interval`` steps; placed last in
    the reporter list so the CSV/trajectory of the same step are already on disk."""

    def __init__(self, writer, interval: int):
        self._writer, self._interval = writer, interval

    def describeNextReport(self, simulation):
        steps = self._interval - simulation.currentStep % self._interval
        return dict(steps=steps, periodic=None, include=[])

    def report(self, simulation, state):
        self._writer(simulation)


def _atomic_write(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    os.replace(tmp, path)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes: CSV rows and DCD/XTC frames are appended in order,
    so the bytes written before a checkpoint are exactly that checkpoint's output."""
    have = _size(path)
    if have < size:
        raise RuntimeError(f"{path} has {have} bytes but its checkpoint recorded {size}; the "
                           "folder was modified after the checkpoint, start a new outdir")
    if have > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
    if size == 0 and path.exists():
        path.unlink()  # reporters then start a fresh file (with its header)
    if path.suffix == ".dcd" and size:
        _fix_dcd_header(path)


def _fix_dcd_header(path: Path) -> None:
    """Rewrite the frame count and last-step fields of a CHARMM/OpenMM DCD header after the
    file was cut back (layout as written by openmm.app.DCDFile)."""
    import struct
    with open(path, "r+b") as fh:
        head = fh.read(300)
        first, interval = struct.unpack("<ii", head[12:20])
        box_flag = struct.unpack("<i", head[48:52])[0]
        comments = struct.unpack("<i", head[92:96])[0]
        n_atoms = struct.unpack("<i", head[104 + comments:108 + comments])[0]
        header = 112 + comments
        frame = (56 if box_flag else 0) + 3 * (8 + 4 * n_atoms)
        n, rest = divmod(_size(path) - header, frame)
        if rest:
            raise RuntimeError(f"{path}: size is not a whole number of frames")
        fh.seek(8)
        fh.write(struct.pack("<i", n))
        fh.seek(20)
        fh.write(struct.pack("<i", first + max(n - 1, 0) * interval))


def run_md(topology: app.Topology, system: openmm.System, positions, outdir,
           config: Optional[MDConfig] = None, *, box_vectors=None,
           context_parameters: Optional[dict] = None, stop_after_steps: Optional[int] = None,
           extra_reporters: Sequence = (), minimise_with: Optional[openmm.System] = None) -> MDResult:
    """Run (or resume) MD of ``system`` into ``outdir``; see the module doc.

    positions: (N, 3) nm. box_vectors: (3, 3) nm or None (the System's default box).
    context_parameters: global parameters to set, e.g. ``{"lambda_interpolate": 1.0}``.
    stop_after_steps: return (after a checkpoint) once this many steps were run in this call —
    for wall-time-limited queue jobs; call again to continue.
    minimise_with: minimise with this System instead of ``system`` (same particles), e.g. the
    MM System before ML/MM dynamics: a minimiser calls a Python-side ML force hundreds of times.
    """
    cfg = config or MDConfig()
    cfg.validate()
    platform = make_platform(cfg.platform)
    pos = np.asarray(positions, dtype=float)
    if pos.shape != (system.getNumParticles(), 3):
        raise ValueError(f"positions has shape {pos.shape}; expected "
                         f"({system.getNumParticles()}, 3) in nm")
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(f"topology has {topology.getNumAtoms()} atoms, system "
                         f"{system.getNumParticles()} particles")
    if stop_after_steps is not None and int(stop_after_steps) <= 0:
        raise ValueError("stop_after_steps must be a positive step count or None")
    params = dict(context_parameters or {})
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    f_json, f_chk = out / "md.json", out / "checkpoint.chk"
    f_csv, f_traj = out / "state.csv", out / f"trajectory.{cfg.trajectory_format}"
    settings = {**asdict(cfg), "context_parameters": params}

    resumed_from = None
    if f_json.exists() and f_chk.exists():
        saved = json.loads(f_json.read_text())
        diff = sorted(k for k in set(settings) | set(saved["settings"])
                      if k not in _RESUMABLE_CHANGES
                      and settings.get(k) != saved["settings"].get(k))
        if diff:
            raise ValueError(f"{out} holds a run with different settings {diff}; resume it with "
                             "the same settings (only steps may grow) or use a new outdir")
        if cfg.steps < saved["settings"]["steps"] and saved["step"] > cfg.equilibration_steps + cfg.steps:
            raise ValueError(f"steps={cfg.steps} is fewer than the {saved['step']} already run")
        resumed_from = int(saved["step"])

    if cfg.pressure_bar is not None or box_vectors is not None:
        system = copy.deepcopy(system)  # the caller's System stays as it was
    if cfg.pressure_bar is not None:
        baro = openmm.MonteCarloBarostat(cfg.pressure_bar * u.bar, cfg.temperature_K * u.kelvin,
                                         25)
        baro.setRandomNumberSeed(int(cfg.seed) + 2)
        system.addForce(baro)
    if box_vectors is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in np.asarray(box_vectors)])
    sim = app.Simulation(topology, system, make_integrator(cfg), platform,
                         cfg.platform_properties or None)
    ctx = sim.context
    for k, v in params.items():
        ctx.setParameter(k, float(v))

    equil, total = int(cfg.equilibration_steps), int(cfg.equilibration_steps + cfg.steps)

    def write_checkpoint(simulation):
        step = simulation.currentStep
        _atomic_write(f_chk, simulation.context.createCheckpoint())
        _atomic_write(f_json, json.dumps(dict(
            settings=settings, step=step, bytes=dict(csv=_size(f_csv), trajectory=_size(f_traj)),
            finished=step >= total), indent=1))

    if resumed_from is not None:
        with open(f_chk, "rb") as fh:
            ctx.loadCheckpoint(fh.read())
        step0 = sim.currentStep
        _truncate(f_csv, int(saved["bytes"]["csv"]))
        _truncate(f_traj, int(saved["bytes"]["trajectory"]))
    else:
        for p in (f_csv, f_traj):
            if p.exists():
                p.unlink()
        ctx.setPositions(pos)
        if cfg.minimise and minimise_with is not None:
            if minimise_with.getNumParticles() != system.getNumParticles():
                raise ValueError("minimise_with must have the same particles as system")
            mini = copy.deepcopy(minimise_with)
            if box_vectors is not None:
                mini.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in np.asarray(box_vectors)])
            mctx = (openmm.Context(mini, openmm.VerletIntegrator(0.001)) if platform is None else
                    openmm.Context(mini, openmm.VerletIntegrator(0.001), platform,
                                   cfg.platform_properties or {}))
            mctx.setPositions(pos)
            openmm.LocalEnergyMinimizer.minimize(mctx, 10.0, int(cfg.minimise_max_iterations))
            ctx.setPositions(mctx.getState(getPositions=True).getPositions())
            del mctx
        elif cfg.minimise:
            sim.minimizeEnergy(maxIterations=int(cfg.minimise_max_iterations))
        if cfg.minimise:
            st = ctx.getState(getPositions=True, enforcePeriodicBox=True)
            with open(out / "minimised.pdb", "w") as fh:
                app.PDBFile.writeFile(topology, st.getPositions(), fh)
        ctx.setVelocitiesToTemperature(cfg.temperature_K * u.kelvin, int(cfg.seed) + 3)
        sim.currentStep = 0
        write_checkpoint(sim)
        step0 = 0

    csv = app.StateDataReporter(str(f_csv), cfg.report_interval, step=True, time=True,
                                potentialEnergy=True, kineticEnergy=True, totalEnergy=True,
                                temperature=True, volume=True, density=False, speed=True,
                                append=f_csv.exists() and resumed_from is not None)
    progress = ProgressReporter(total, step0, cfg.timestep_ps, cfg.report_interval,
                                cfg.progress)
    ckpt = _CheckpointReporter(write_checkpoint, cfg.checkpoint_interval)

    def traj_reporter():
        cls = app.DCDReporter if cfg.trajectory_format == "dcd" else app.XTCReporter
        return cls(str(f_traj), cfg.report_interval, append=f_traj.exists())

    budget = total - step0 if stop_after_steps is None else min(total - step0,
                                                                int(stop_after_steps))
    end = step0 + budget
    sim.reporters[:] = [csv, progress, *extra_reporters]
    t0, s_start = time.perf_counter(), step0
    try:
        if sim.currentStep < equil and sim.currentStep < end:
            sim.reporters.append(ckpt)
            sim.step(min(equil, end) - sim.currentStep)
            sim.reporters.remove(ckpt)
            if sim.currentStep % cfg.checkpoint_interval:
                write_checkpoint(sim)  # the production phase starts from a checkpoint
        if sim.currentStep >= equil and sim.currentStep < end:
            sim.reporters.insert(2, traj_reporter())
            sim.reporters.append(ckpt)
            sim.step(end - sim.currentStep)
        if sim.currentStep % cfg.checkpoint_interval:
            write_checkpoint(sim)
    finally:
        progress.close()
        for r in sim.reporters:  # close files of reporters holding them
            fh = getattr(r, "_out", None)
            if fh is not None and hasattr(fh, "close") and not getattr(fh, "closed", True):
                fh.close()
    wall = time.perf_counter() - t0
    done = sim.currentStep - s_start
    nsday = done * cfg.timestep_ps * 1e-3 / (wall / 86400.0) if done and wall > 0 else None
    finished = sim.currentStep >= total
    if finished:
        st = ctx.getState(getPositions=True, enforcePeriodicBox=True)
        with open(out / "final.pdb", "w") as fh:
            app.PDBFile.writeFile(topology, st.getPositions(), fh)
    files = dict(json=f_json, checkpoint=f_chk, csv=f_csv, trajectory=f_traj,
                 final=out / "final.pdb")
    return MDResult(out, int(sim.currentStep), finished, resumed_from, nsday, files)


def final_state(outdir, topology: app.Topology, system: openmm.System,
                platform: Optional[str] = "Reference") -> openmm.State:
    """Positions/velocities/box of the last checkpoint in ``outdir`` (for tests and analysis)."""
    saved = json.loads((Path(outdir) / "md.json").read_text())
    cfg = MDConfig(**{k: v for k, v in saved["settings"].items() if k in MDConfig.__dataclass_fields__})
    ctx = openmm.Context(system, make_integrator(cfg), make_platform(platform or cfg.platform))
    with open(Path(outdir) / "checkpoint.chk", "rb") as fh:
        ctx.loadCheckpoint(fh.read())
    return ctx.getState(getPositions=True, getVelocities=True, getEnergy=True)
