"""MD sampling of configurations with OpenMM (Langevin, 300 K, PME, HBond constraints).

:func:`sample` writes one configuration every ``stride`` steps into an HDF5 trajectory file
(``positions`` (n, N, 3) float32 nm, molecules whole -- not wrapped into the box; ``box``
(n, 3, 3) nm; ``step`` (n,)), and after every frame an OpenMM checkpoint, atomically, with
the number of frames it belongs to. A killed run restarts from the checkpoint; frames written
after the last checkpoint are dropped and recomputed. The pocket training and test sets come from
separate trajectories (separate files, different seeds and equilibration), e.g.::

    sample(prep, "data/traj/t4_train.h5", n_frames=300, stride=2500, seed=1)
    sample(prep, "data/traj/t4_test.h5",  n_frames=100, stride=2500, seed=2)

``restart=`` also keeps a portable restart state (positions, velocities, box, step, frame count;
float32, ~0.6 MB for 25k atoms) after every frame. The trajectory and its OpenMM checkpoint are
caches that a new checkout does not have; the restart state is small enough to commit next to the
label store, and a trajectory started from it continues the old one: its first frame gets the
next index (``first_frame`` attribute), with no new minimisation or equilibration.

Units: nm, ps, K (OpenMM's).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import openmm
from openmm import app
import openmm.unit as u

from .systems import PreparedSystem


def make_simulation_context(prep: PreparedSystem, *, temperature_K: float = 300.0,
                            friction_per_ps: float = 1.0, timestep_ps: float = 0.002,
                            seed: int = 0, platform: str | None = None,
                            threads: int | None = None,
                            hydrogen_mass_amu: float | None = None,
                            flexible_ligand: bool = False) -> openmm.Context:
    """Context for sampling ``prep``. ``flexible_ligand`` removes the constraints between ligand
    atoms (its X-H bond lengths), so that the sampled configurations, and a model trained on
    their labels, cover bond stretching; it needs a step of at most 2 fs."""
    if flexible_ligand and timestep_ps > 0.002 + 1e-12:
        raise ValueError(f"flexible_ligand with timestep_ps={timestep_ps}: unconstrained X-H "
                         "bonds need timestep_ps <= 0.002")
    integ = openmm.LangevinMiddleIntegrator(temperature_K * u.kelvin,
                                            friction_per_ps / u.picosecond,
                                            timestep_ps * u.picosecond)
    integ.setRandomNumberSeed(int(seed))
    system = openmm.XmlSerializer.clone(prep.system)
    if hydrogen_mass_amu is not None:
        repartition_hydrogen_mass(system, prep.topology, hydrogen_mass_amu)
    if flexible_ligand:
        _unconstrain_ligand(system, prep.ligand_indices)
    if platform is None:
        names = [openmm.Platform.getPlatform(i).getName()
                 for i in range(openmm.Platform.getNumPlatforms())]
        platform = next(p for p in ("CUDA", "OpenCL", "CPU", "Reference") if p in names)
    plat = openmm.Platform.getPlatformByName(platform)
    props = {}
    if platform == "CPU" and threads:
        props["Threads"] = str(int(threads))
    ctx = openmm.Context(system, integ, plat, props)
    ctx.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in prep.box_vectors])
    ctx.setPositions(prep.positions)
    return ctx


def _unconstrain_ligand(system: openmm.System, ligand_indices) -> None:
    """Replace the constraints between ligand atoms by the force field's harmonic bonds. (The
    System was built with HBonds constraints, which leave those bonds without a bond term:
    removing the constraints alone would set the hydrogens free.)"""
    from .systems import add_constrained_bond_terms
    add_constrained_bond_terms(system, ligand_indices)
    lig = {int(i) for i in ligand_indices}
    for k in reversed(range(system.getNumConstraints())):
        i, j, _ = system.getConstraintParameters(k)
        if i in lig and j in lig:
            system.removeConstraint(k)


def repartition_hydrogen_mass(system: openmm.System, topology, hydrogen_mass_amu: float) -> None:
    """Hydrogen mass repartitioning: set every non-water hydrogen bonded to a heavy atom to
    ``hydrogen_mass_amu`` and take the difference from that heavy atom (total mass unchanged;
    water is rigid and left alone), as ``ForceField.createSystem(hydrogenMass=...)`` does.
    Masses do not enter the configurational Boltzmann distribution, so the sampled
    configurations keep their distribution while a 4 fs step becomes stable."""
    if not 1.0 < float(hydrogen_mass_amu) < 5.0:
        raise ValueError(f"hydrogen_mass_amu={hydrogen_mass_amu} should lie in (1, 5) amu; "
                         "1.5-4 is usual (4 with a 4 fs step)")
    h = app.element.hydrogen
    for a, b in topology.bonds():
        if a.element is h and b.element is h:
            continue
        if b.element is h:
            a, b = b, a
        if a.element is not h or a.residue.name in ("HOH", "WAT"):
            continue
        m_h = system.getParticleMass(a.index).value_in_unit(u.dalton)
        m_x = system.getParticleMass(b.index).value_in_unit(u.dalton)
        if m_h == 0 or m_x == 0:  # virtual site or fixed atom
            continue
        delta = float(hydrogen_mass_amu) - m_h
        if m_x - delta < 1.0:
            raise ValueError(f"hydrogen_mass_amu={hydrogen_mass_amu} leaves atom {b.index} "
                             f"({b.name}) lighter than 1 amu; use a smaller value")
        system.setParticleMass(a.index, float(hydrogen_mass_amu))
        system.setParticleMass(b.index, m_x - delta)


def _readable_h5(path: Path) -> bool:
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def sample(prep: PreparedSystem, out_path: str | os.PathLike, *, n_frames: int, stride: int,
           equilibration_steps: int = 5000, seed: int = 0, temperature_K: float = 300.0,
           timestep_ps: float = 0.002, minimize_max_iterations: int = 2000, platform: str | None = None,
           threads: int | None = None, hydrogen_mass_amu: float | None = None,
           flexible_ligand: bool = False, restart: str | os.PathLike | None = None,
           progress: bool = False) -> Path:
    """Run (or resume) MD and write ``n_frames`` configurations, one every ``stride`` steps,
    after energy minimisation (``minimize_max_iterations``, 0 = none) and
    ``equilibration_steps`` steps. Returns the trajectory path. Calling it again with the
    same file continues; calling it with a larger ``n_frames`` extends the trajectory.
    ``hydrogen_mass_amu`` (e.g. 4 with ``timestep_ps=0.004``) repartitions hydrogen masses
    for the sampling only (see :func:`repartition_hydrogen_mass`). ``flexible_ligand`` samples
    the ligand without its bond constraints (step <= 2 fs): labels of constrained MD never show
    a stretched X-H bond, so a model trained on them alone has an untrained stretch.
    ``restart``: a portable restart file (.npz), written after every frame; when ``out_path``
    does not exist yet and ``restart`` does, the trajectory continues from it (frame indices go
    on from the restart's frame count; the earlier frames are not in the new file)."""
    if int(n_frames) < 1:
        raise ValueError(f"n_frames={n_frames} must be >= 1")
    if int(stride) < 1:
        raise ValueError(f"stride={stride} must be >= 1 MD steps")
    if equilibration_steps < 0:
        raise ValueError("equilibration_steps must be >= 0")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    chk = out.with_name(out.name + ".chk")
    n_atoms = prep.n_atoms
    ctx = make_simulation_context(prep, temperature_K=temperature_K, timestep_ps=timestep_ps,
                                  seed=seed, platform=platform, threads=threads,
                                  hydrogen_mass_amu=hydrogen_mass_amu,
                                  flexible_ligand=bool(flexible_ligand))
    integ = ctx.getIntegrator()
    settings = dict(stride=int(stride), seed=int(seed), timestep_ps=float(timestep_ps),
                    hydrogen_mass_amu=float(hydrogen_mass_amu or 0.0),
                    flexible_ligand=bool(flexible_ligand))
    restart = Path(restart) if restart is not None else None
    if out.exists() and not chk.exists() and not _readable_h5(out):
        # killed before its first checkpoint (e.g. during the equilibration, the file still open):
        # nothing in it is kept on resume anyway (frames count only up to a checkpoint), so start it anew
        warnings.warn(f"{out} is not a readable HDF5 file and has no checkpoint: it held no kept frames; "
                      "starting it anew")
        out.unlink()
    resume_from = None
    if restart is not None and restart.exists() and not out.exists() and not chk.exists():
        resume_from = _read_restart(restart, n_atoms, settings)
    with h5py.File(out, "a") as f:
        if "positions" not in f:
            f.create_dataset("positions", (0, n_atoms, 3), maxshape=(None, n_atoms, 3),
                             dtype="f4", chunks=(1, n_atoms, 3))
            f.create_dataset("box", (0, 3, 3), maxshape=(None, 3, 3), dtype="f8")
            f.create_dataset("step", (0,), maxshape=(None,), dtype="i8")
            f.create_dataset("ligand_indices", data=prep.ligand_indices)
            f.attrs.update(system=prep.name, units="positions nm, box nm", temperature_K=temperature_K,
                           equilibration_steps=int(equilibration_steps),
                           integrator="LangevinMiddleIntegrator, friction 1/ps",
                           openmm_version=openmm.__version__, wrapped=False, **settings,
                           first_frame=int(resume_from["n_frames"]) if resume_from else 0)
            f.flush()  # a complete header on disk before the (long) equilibration
        elif f["positions"].shape[1] != n_atoms:
            raise ValueError(f"{out} holds a trajectory of {f['positions'].shape[1]} atoms, "
                             f"but the system has {n_atoms}; use another out_path")
        elif _recorded(f.attrs) != settings:
            raise ValueError(f"{out} was started with {_recorded(f.attrs)}; resume with the same "
                             f"values (given {settings}) or use another out_path")
        first = int(f.attrs.get("first_frame", 0))    # frames before it: in an earlier file
        done = first
        if chk.exists():
            blob = chk.read_bytes()
            nb = int.from_bytes(blob[:8], "little")
            ctx.loadCheckpoint(blob[8:])
            done = nb
        if first + f["positions"].shape[0] > done:  # frames written after the last checkpoint
            for k in ("positions", "box", "step"):
                f[k].resize(done - first, axis=0)
        if resume_from is not None:
            ctx.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in resume_from["box"]])
            ctx.setPositions(resume_from["positions"].astype(np.float64))
            ctx.setVelocities(resume_from["velocities"].astype(np.float64))
            ctx.setStepCount(int(resume_from["step"]))
            _write_checkpoint(ctx, chk, done)
        elif done == 0 and not chk.exists():
            if minimize_max_iterations:
                openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, int(minimize_max_iterations))
            ctx.setVelocitiesToTemperature(temperature_K * u.kelvin, int(seed))
            if equilibration_steps:
                integ.step(int(equilibration_steps))
            _write_checkpoint(ctx, chk, 0)
            if restart is not None:
                _write_restart(ctx, restart, 0, settings)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=int(n_frames), initial=done, desc=f"MD {out.name}")
        while done < n_frames:
            integ.step(int(stride))
            st = ctx.getState(getPositions=True, enforcePeriodicBox=False)
            pos = st.getPositions(asNumpy=True).value_in_unit(u.nanometer)
            box = st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)
            row = done - first
            for k in ("positions", "box", "step"):
                f[k].resize(row + 1, axis=0)
            f["positions"][row] = pos
            f["box"][row] = box
            f["step"][row] = ctx.getStepCount()
            f.flush()
            done += 1
            _write_checkpoint(ctx, chk, done)
            if restart is not None:
                _write_restart(ctx, restart, done, settings)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    return out


def _write_checkpoint(ctx: openmm.Context, chk: Path, n_frames: int) -> None:
    tmp = chk.with_name(chk.name + ".tmp")
    tmp.write_bytes(int(n_frames).to_bytes(8, "little") + ctx.createCheckpoint())
    os.replace(tmp, chk)


def _recorded(attrs) -> dict:
    """The sampling settings a trajectory file or restart state was written with (the keys of
    ``settings`` in :func:`sample`; files from before hydrogen_mass_amu/flexible_ligand existed
    read as 0 / False)."""
    return dict(stride=int(attrs["stride"]), seed=int(attrs["seed"]),
                timestep_ps=float(attrs["timestep_ps"]),
                hydrogen_mass_amu=float(attrs.get("hydrogen_mass_amu", 0.0)),
                flexible_ligand=bool(attrs.get("flexible_ligand", False)))


RESTART_FORMAT = 1


def _write_restart(ctx: openmm.Context, path: Path, n_frames: int, settings: dict) -> None:
    """The portable restart state (float32 positions and velocities, box, step, frame count and
    the sampling settings), written atomically."""
    st = ctx.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=False)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        tmp, format=RESTART_FORMAT, n_frames=int(n_frames), step=int(ctx.getStepCount()),
        positions=st.getPositions(asNumpy=True).value_in_unit(u.nanometer).astype(np.float32),
        velocities=st.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond).astype(np.float32),
        box=st.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer),
        **{k: np.asarray(v) for k, v in settings.items()})
    os.replace(tmp, path)


def _read_restart(path: Path, n_atoms: int, settings: dict) -> dict:
    try:
        with np.load(path) as z:
            r = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"restart={path} is not a restart file written by sample() ({e}); "
                         "remove it to start a new trajectory") from None
    if int(r.get("format", -1)) != RESTART_FORMAT or "positions" not in r:
        raise ValueError(f"restart={path} is not a restart file of format {RESTART_FORMAT}; "
                         "remove it to start a new trajectory")
    if r["positions"].shape != (n_atoms, 3):
        raise ValueError(f"restart={path} holds {r['positions'].shape[0]} atoms, the system "
                         f"{n_atoms}; it belongs to another system")
    old = _recorded({k: r[k].item() for k in settings})
    if old != settings:
        raise ValueError(f"restart={path} was written with {old}; continue with the same values "
                         f"(given {settings}) or use another restart path")
    return r


def first_frame(traj_path: str | os.PathLike) -> int:
    """Index of the first frame in the file (> 0 when it continues a restart state)."""
    with h5py.File(traj_path, "r") as f:
        return int(f.attrs.get("first_frame", 0))


def read_frame(traj_path: str | os.PathLike, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions (N, 3) float64 nm, box (3, 3) nm) of frame ``index``."""
    with h5py.File(traj_path, "r") as f:
        first = int(f.attrs.get("first_frame", 0))
        n = f["positions"].shape[0]
        if first <= index < first + n:
            row = index - first
            return np.asarray(f["positions"][row], dtype=np.float64), np.asarray(f["box"][row])
        if 0 <= index < first:
            raise IndexError(f"frame {index} of {traj_path} is gone: the file continues a restart "
                             f"state from frame {first} on")
        raise IndexError(f"index={index} out of range: {traj_path} has frames {first} to {first + n - 1}"
                         if n else f"index={index} out of range: {traj_path} has no frames")


def n_frames(traj_path: str | os.PathLike) -> int:
    """Frame count of the trajectory, frames before ``first_frame`` included."""
    with h5py.File(traj_path, "r") as f:
        return int(f.attrs.get("first_frame", 0)) + int(f["positions"].shape[0])
