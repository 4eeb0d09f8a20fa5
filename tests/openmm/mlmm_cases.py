"""Shared systems for the OpenMM-layer tests: alanine dipeptide (openmmtools data) in vacuum and in
TIP3P water (PME, tight Ewald tolerance so that OpenMM's and mlpolar's PME agree closely)."""
import numpy as np
import openmm
import openmm.unit as u

import mlpolar.openmm  # noqa: F401  (registers the openmm-ml plugin)
from mlpolar.models.fixed_charge import FixedChargeModel


class Case:
    def __init__(self, testsystem):
        self.topology = testsystem.topology
        self.system = testsystem.system
        self.positions = np.asarray(testsystem.positions.value_in_unit(u.nanometer))
        self.ml_atoms = [a.index for a in self.topology.atoms() if a.residue.name != "HOH"]
        self.model = FixedChargeModel.from_system(self.system, self.ml_atoms, topology=self.topology)


def evaluate(system, positions, platform="Reference", parameters=None, groups=-1, box=None):
    """(energy kJ/mol, forces [N,3] kJ/mol/nm, {parameter: dE/dp}) from a fresh Context."""
    ctx = context(system, positions, platform)
    if box is not None:
        ctx.setPeriodicBoxVectors(*box)
        ctx.setPositions(positions)
    return state_values(ctx, parameters, groups)


def context(system, positions, platform="Reference"):
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(positions)
    return ctx


def state_values(ctx, parameters=None, groups=-1):
    """(energy, forces, {parameter: dE/dp}) of a Context after setting global parameters."""
    for k, v in (parameters or {}).items():
        ctx.setParameter(k, v)
    s = ctx.getState(getEnergy=True, getForces=True, getParameterDerivatives=bool(parameters), groups=groups)
    derivs = dict(s.getEnergyParameterDerivatives()) if parameters else {}
    return (s.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
            s.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer), derivs)


def assert_forces_match_fd(ctx, positions, forces, atoms, components, h, rtol, atol, group=1):
    """Central differences of the Context energy of force group `group` against `forces` for the
    given atoms and Cartesian components (nm steps of h)."""
    for atom in atoms:
        for k in components:
            x = positions.copy()
            x[atom, k] += h
            ctx.setPositions(x)
            Ep = state_values(ctx, groups={group})[0]
            x[atom, k] -= 2 * h
            ctx.setPositions(x)
            Em = state_values(ctx, groups={group})[0]
            fd = -(Ep - Em) / (2 * h)
            assert abs(fd - forces[atom, k]) < rtol * abs(forces[atom, k]) + atol, (atom, k, fd, forces[atom, k])


def small_solvated_dipeptide(box_nm=2.4, cutoff_nm=0.9, tolerance=5e-4, switch_nm=None):
    """Alanine dipeptide (openmmtools data) in a small cubic TIP3P box, Amber14, PME, flexible solute,
    rigid water, Lennard-Jones switched from `switch_nm` (None: hard cutoff), minimised with the MM
    force field. Returns a Case."""
    import openmm.app as app
    from openmmtools.testsystems import AlanineDipeptideVacuum
    vac = AlanineDipeptideVacuum()
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(vac.topology, vac.positions)
    modeller.addSolvent(ff, boxSize=openmm.Vec3(box_nm, box_nm, box_nm) * u.nanometer)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * u.nanometer,
                             constraints=None, rigidWater=True, ewaldErrorTolerance=tolerance,
                             **({} if switch_nm is None else dict(switchDistance=switch_nm * u.nanometer)))
    return _minimised_case(modeller.topology, system, modeller.positions)


def _minimised_case(topology, system, positions):
    """A Case of `system` at its local energy minimum from `positions` (CPU platform)."""
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 500)

    class T:
        pass
    t = T()
    t.topology, t.system, t.positions = topology, system, ctx.getState(getPositions=True).getPositions()
    return Case(t)


def tiny_mlpolar(seed=0):
    """A small untrained MLPolar (equivariant, 16 channels, 2 layers, float64) for H, C, N, O."""
    import torch
    from mlpolar.model import MLPolar, MLPolarConfig
    torch.manual_seed(seed)
    return MLPolar(MLPolarConfig(elements=[1, 6, 7, 8], channels=16, layers=2)).double()


def add_ml_bonded_terms(mixed, original, ml_atoms):
    """Copy the MM bonds, angles and torsions inside the ML region from `original` into `mixed`
    (which lost them in create_mixed_system). With an untrained model these hold the molecule
    together, so that an NVE run tests the conservation of the ML/MM forces, not a falling-apart
    molecule."""
    ml = set(int(i) for i in ml_atoms)
    for f in original.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            g = openmm.HarmonicBondForce()
            for k in range(f.getNumBonds()):
                i, j, r0, kb = f.getBondParameters(k)
                if i in ml and j in ml:
                    g.addBond(i, j, r0, kb)
        elif isinstance(f, openmm.HarmonicAngleForce):
            g = openmm.HarmonicAngleForce()
            for k in range(f.getNumAngles()):
                i, j, l, a0, ka = f.getAngleParameters(k)
                if {i, j, l} <= ml:
                    g.addAngle(i, j, l, a0, ka)
        elif isinstance(f, openmm.PeriodicTorsionForce):
            g = openmm.PeriodicTorsionForce()
            for k in range(f.getNumTorsions()):
                i, j, l, m, n, p, kt = f.getTorsionParameters(k)
                if {i, j, l, m} <= ml:
                    g.addTorsion(i, j, l, m, n, p, kt)
        else:
            continue
        g.setUsesPeriodicBoundaryConditions(original.usesPeriodicBoundaryConditions())
        mixed.addForce(g)
    return mixed


def nve_run(case, steps, report_every, dt_fs=0.5, temperature=300.0, platform="CPU", seed=11, mlmm=True,
            model=None, keep_ml_bonded=False, constraint_tolerance=1e-8):
    """Velocity-Verlet NVE of the ML/MM System of a Case (or of its MM System with mlmm=False);
    (times ps, total energies, kinetic energies). `model` replaces the case's fixed-charge model;
    keep_ml_bonded adds the MM bonded terms of the ML region back (add_ml_bonded_terms)."""
    from mlpolar.openmm import create_mixed_system
    if mlmm:
        mixed = create_mixed_system(case.topology, case.system, case.ml_atoms, model if model is not None else case.model)
        if keep_ml_bonded:
            add_ml_bonded_terms(mixed, case.system, case.ml_atoms)
    else:
        mixed = case.system
    integrator = openmm.VerletIntegrator(dt_fs * u.femtosecond)
    integrator.setConstraintTolerance(constraint_tolerance)
    ctx = openmm.Context(mixed, integrator, openmm.Platform.getPlatformByName(platform))
    ctx.setPositions(case.positions)
    ctx.setVelocitiesToTemperature(temperature * u.kelvin, seed)
    ctx.applyVelocityConstraints(1e-10)
    times, total, kinetic = [], [], []
    for k in range(steps // report_every + 1):
        if k:
            integrator.step(report_every)
        s = ctx.getState(getEnergy=True)
        ke = s.getKineticEnergy().value_in_unit(u.kilojoule_per_mole)
        times.append(s.getTime().value_in_unit(u.picosecond))
        total.append(ke + s.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole))
        kinetic.append(ke)
    return np.array(times), np.array(total), np.array(kinetic)


def small_solvated_pxylene(box_nm=2.5, cutoff_nm=0.9, tolerance=5e-4, switch_nm=0.8, cache_dir=None,
                          remove_cm_motion=False):
    """p-xylene in a small cubic TIP3P box from the project's own preparation
    (mlpolar.data.systems.prepare_system("pxylene_water", box_edge_nm=box_nm): GAFF/AM1-BCC ligand
    from openmmtools' ligand.prmtop, TIP3P, neutral so no ions), its System rebuilt by the same
    build_system with constraints=None: every ligand bond, X-H included, is free and has its GAFF
    bond term; water rigid; PME with `cutoff_nm` at `tolerance`, Lennard-Jones switched from
    `switch_nm` (None: hard cutoff); minimised with the MM force field. Returns a Case whose ML
    region is the ligand (18 atoms, H and C). cache_dir: prepare_system's cache (None: its default,
    the git-ignored data/systems).

    remove_cm_motion=False drops createSystem's CMMotionRemover: velocities drawn at 300 K carry a
    centre-of-mass kinetic energy (7.4 kJ/mol for nve_run's seed here) that the remover takes out
    at the first step, outside the Hamiltonian, which would put a 7 kJ/mol step into E - E0 of an
    NVE run. Without it the total momentum is conserved by the dynamics itself."""
    from mlpolar.data.systems import build_system, make_forcefield, prepare_system
    prepare_system("pxylene_water", cache_dir, box_edge_nm=box_nm)
    # the call that prepares returns the Modeller's positions, later ones the cache's PDB positions
    # (rounded to 0.001 A): always taking the cached ones gives every caller the same minimised start
    prep = prepare_system("pxylene_water", cache_dir, box_edge_nm=box_nm)
    ff, prmtop = make_forcefield()
    system, _ = build_system(prep.topology, ff, prmtop, cutoff_nm=cutoff_nm, constraints=None)
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in prep.box_vectors])
    if not remove_cm_motion:
        for k in reversed(range(system.getNumForces())):
            if isinstance(system.getForce(k), openmm.CMMotionRemover):
                system.removeForce(k)
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            f.setEwaldErrorTolerance(tolerance)
            if switch_nm is not None:
                f.setUseSwitchingFunction(True)
                f.setSwitchingDistance(switch_nm)
    assert system.getNumConstraints() == 3 * sum(r.name == "HOH" for r in prep.topology.residues())
    case = _minimised_case(prep.topology, system, prep.positions * u.nanometer)
    assert sorted(case.ml_atoms) == sorted(int(i) for i in prep.ligand_indices)
    return case
