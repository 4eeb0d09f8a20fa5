"""ML/MM System with electrostatic embedding, built from an MM System by surgery with OpenMM's API.

What the MM System keeps and loses (the model adds back everything it loses):
- intra-ML bonds, angles, torsions (CMAP included) and constraints: removed (openmm-ml's
  ``removeBonds``, the same rule as its mechanical embedding);
- NonbondedForce: every ML-ML pair excluded (Coulomb and LJ); the ML atoms' charges set to zero so
  that neither real space nor PME sees them (ML-MM Coulomb gone, including periodic images);
  ML-MM Lennard-Jones kept; MM-MM unchanged; parameter offsets: the charge part of the ML atoms'
  particle offsets and all of the ML-ML exception offsets zeroed (ML-MM exception offsets that
  scale a charge product are refused, like ML-MM exceptions with a charge product);
- CustomNonbondedForce (CHARMM NBFIX, LJ tables, ...): ML-ML pairs excluded (with interpolate, the
  lambda = 0 term carries a copy restricted to the ML-ML pairs, so that lambda = 0 is the MM System).
MLPolarForce then computes the ML energy with all electrostatics involving the ML atoms.

With ``interpolate=True`` the System carries the global parameter ``lambda_interpolate``:

    E(lambda) = E_common + lambda * (E_model + E_NB,mixed) + (1 - lambda) * (E_bonded,ML + E_NB,MM + E_CNB,ML-ML)

through two CustomCVForces (the mixed and the original NonbondedForce are both collective
variables, as in openmm-ml's InterpolationHelper, so interpolation costs a second NonbondedForce
evaluation). E is linear in lambda, so
dE/dlambda = E_ML/MM - E_MM exactly, reported by State.getEnergyParameterDerivatives(); lambda = 0
is the original MM energy, lambda = 1 the ML/MM one. (Charge offsets on one NonbondedForce would be
cheaper but make the ML-ML image interactions quadratic in lambda.)
"""
from __future__ import annotations

import copy

import openmm
import openmm.app as app
from openmmml.embeddings import utilities as mlutil

from ..system_pairs import bond_term_pairs, constrained_pairs
from . import checks
from .force import MLPolarForce

LAMBDA = "lambda_interpolate"


def create_mixed_system(topology: app.Topology, system: openmm.System, ml_atoms, model, charge: int = 0,
                        multiplicity: int = 1, interpolate: bool = False, remove_constraints: bool = True,
                        force_group: int = 0, device=None, backend: str = "python",
                        embedding_tolerance=None, cutoff=None) -> openmm.System:
    """A new System for ML/MM with electrostatic embedding (see the module docstring).

    Args:
        topology, system: the MM description (the System is not modified).
        ml_atoms: indices of the ML atoms (whole molecules: no covalent ML-MM bonds).
        model: an mlpolar model (docs/interfaces.md).
        charge, multiplicity: of the ML region.
        interpolate: add the global parameter ``lambda_interpolate`` (0 = MM, 1 = ML/MM).
        remove_constraints: drop constraints between ML atoms (as openmm-ml does by default). With
            interpolate, every such constraint needs a bond term in the System for the MM end
            (createSystem(flexibleConstraints=True)); a clear error otherwise.
        force_group: force group of the MLPolarForce (or of the interpolating CustomCVForce).
        device, backend, embedding_tolerance, cutoff: passed to MLPolarForce (embedding_tolerance None:
            the ML-MM long range at the NonbondedForce's ewaldErrorTolerance; cutoff: checked against
            the model's ML-MM cutoff, None: the model's).
    """
    if not isinstance(topology, app.Topology):
        raise TypeError(f"topology must be an openmm.app.Topology, got {type(topology).__name__}")
    if not isinstance(system, openmm.System):
        raise TypeError(f"system must be an openmm.System, got {type(system).__name__}")
    if topology.getNumAtoms() != system.getNumParticles():
        raise ValueError(f"topology has {topology.getNumAtoms()} atoms but system has {system.getNumParticles()} "
                         "particles; pass the matching pair")
    atoms = checks.ml_atom_list(ml_atoms, system.getNumParticles())
    if interpolate and remove_constraints:
        _check_constrained_bonds(system, set(atoms))
    checks.nonbonded_force(system, required=True, why="to remove the ML atoms' charges and ML-ML pairs")
    # All checks of the force (elements, charge/multiplicity, link bonds, cutoff vs box, device) run
    # before the System surgery.
    force = MLPolarForce(model, atoms, system, charge, multiplicity, topology=topology, device=device,
                         backend=backend, embedding_tolerance=embedding_tolerance, cutoff=cutoff)
    force.setForceGroup(force_group)
    mlset = set(atoms)
    nb0 = checks.nonbonded_force(system, True, "")
    for k in range(nb0.getNumExceptions()):
        i, j, qq = nb0.getExceptionParameters(k)[:3]
        if (i in mlset) != (j in mlset) and qq.value_in_unit(openmm.unit.elementary_charge ** 2) != 0.0:
            raise ValueError(f"NonbondedForce exception {k} between ML atom and MM atom ({i}, {j}) has a nonzero "
                             "charge product; the model treats every ML-MM pair as a full Coulomb interaction, so "
                             "such scaled pairs cannot be represented: move both atoms to one region")
    for k in range(nb0.getNumExceptionParameterOffsets()):
        parameter, e, qq_scale = nb0.getExceptionParameterOffset(k)[:3]
        i, j = nb0.getExceptionParameters(e)[:2]
        if (i in mlset) != (j in mlset) and qq_scale != 0.0:
            raise ValueError(f"NonbondedForce exception parameter offset {k} (global parameter {parameter!r}, "
                             f"chargeProdScale {qq_scale}) changes the charge product of the ML-MM exception {e} "
                             f"({i}, {j}); the model treats every ML-MM pair as a full Coulomb interaction, so a "
                             "scaled ML-MM charge product cannot be represented: remove the offset (or set its "
                             "chargeProdScale to 0 with setExceptionParameterOffset), or move both atoms to one region")

    mixed = mlutil.removeBonds(system, topology, atoms, True)
    for f in mixed.getForces():
        if isinstance(f, openmm.NonbondedForce):
            for a in atoms:
                _, sigma, epsilon = f.getParticleParameters(a)
                f.setParticleParameters(a, 0.0, sigma, epsilon)
            # exclude every ML-ML pair (replace=True overwrites the 1-2/1-3/1-4 exceptions)
            for x in range(len(atoms)):
                for y in range(x):
                    f.addException(atoms[x], atoms[y], 0.0, 1.0, 0.0, True)
            # ML-MM exceptions (LJ-only by the check above) keep their LJ; their charge product is 0
            # Parameter offsets (addParticleParameterOffset / addExceptionParameterOffset, e.g. alchemical
            # charge scaling) would put charge back on the ML atoms, or Coulomb and LJ back on ML-ML
            # pairs, whenever their global parameter is nonzero: the model owns those interactions here.
            # So the charge part of an ML atom's offset is zeroed (its LJ part stays: ML-MM LJ is kept), and
            # ML-ML exception offsets are zeroed entirely. With interpolate=True the MM end keeps the
            # original NonbondedForce, offsets included. ML-MM exception offsets were checked above.
            for k in range(f.getNumParticleParameterOffsets()):
                parameter, a, q_scale, sigma_scale, epsilon_scale = f.getParticleParameterOffset(k)
                if a in mlset and q_scale != 0.0:
                    f.setParticleParameterOffset(k, parameter, a, 0.0, sigma_scale, epsilon_scale)
            for k in range(f.getNumExceptionParameterOffsets()):
                parameter, e = f.getExceptionParameterOffset(k)[:2]
                i, j = f.getExceptionParameters(e)[:2]
                if i in mlset and j in mlset:
                    f.setExceptionParameterOffset(k, parameter, e, 0.0, 0.0, 0.0)
        elif isinstance(f, openmm.CustomNonbondedForce):
            mlutil.addCustomNonbondedExclusions(f, atoms)
    if remove_constraints:
        for k in reversed(range(mixed.getNumConstraints())):
            i, j, _ = mixed.getConstraintParameters(k)
            if i in mlset and j in mlset:
                mixed.removeConstraint(k)

    if not interpolate:
        mixed.addForce(force)
        return mixed

    # Two CustomCVForces, each with its own inner Context: the CPU and CUDA platforms demand identical
    # exclusions of all nonbonded forces in one Context, and the mixed and original NonbondedForces
    # differ exactly there (openmm-ml's InterpolationHelper aligns them by turning ML-ML pairs into
    # exceptions, which drops their LJ switch and cutoff: lambda = 0 would not be the MM System).
    index = next(k for k, f in enumerate(mixed.getForces()) if isinstance(f, openmm.NonbondedForce))
    ml_term = openmm.CustomCVForce(f"{LAMBDA}*(model + nonbonded)")
    ml_term.addCollectiveVariable("model", force)
    ml_term.addCollectiveVariable("nonbonded", copy.deepcopy(mixed.getForce(index)))
    mixed.removeForce(index)
    mm_names, mm_forces = ["nonbonded"], [copy.deepcopy(checks.nonbonded_force(system, True, ""))]
    bonded = mlutil.removeBonds(system, topology, atoms, False)   # the intra-ML bonded terms only
    for f in bonded.getForces():
        if hasattr(f, "addBond") or hasattr(f, "addAngle") or hasattr(f, "addTorsion"):
            mm_names.append(f"bonded{len(mm_names)}")
            mm_forces.append(copy.deepcopy(f))
    # The shared part keeps each CustomNonbondedForce with its ML-ML pairs excluded (the model owns
    # them at lambda = 1); the MM end gets those pairs back from a copy restricted to them.
    for f in system.getForces():
        if isinstance(f, openmm.CustomNonbondedForce):
            ml_pairs = _ml_ml_part(f, atoms)
            if ml_pairs is not None:
                mm_names.append(f"customnonbonded{len(mm_names)}")
                mm_forces.append(ml_pairs)
    mm_term = openmm.CustomCVForce(f"(1-{LAMBDA})*({'+'.join(mm_names)})")
    for name, f in zip(mm_names, mm_forces):
        mm_term.addCollectiveVariable(name, f)
    for term, name in ((ml_term, "MLPolarInterpolationML"), (mm_term, "MLPolarInterpolationMM")):
        term.addGlobalParameter(LAMBDA, 1.0)
        term.addEnergyParameterDerivative(LAMBDA)
        term.setForceGroup(force_group)
        term.setName(name)
        mixed.addForce(term)
    return mixed


def _ml_ml_part(force: openmm.CustomNonbondedForce, atoms) -> openmm.CustomNonbondedForce | None:
    """A copy of `force` that computes only its ML-ML pairs (None if it has none).

    The same expression, parameters, tabulated functions, cutoff, switch and exclusions, so that
    (force with ML-ML pairs excluded) + (this copy) is the original force pair by pair. The copy
    has no long-range (dispersion) correction: OpenMM computes that correction from the particle
    parameters and interaction groups while ignoring exclusions, so the force with ML-ML pairs
    excluded already carries the original correction in full, and a second one here would count
    the ML-ML tail twice at lambda = 0."""
    ml = set(atoms)
    part = copy.deepcopy(force)
    part.setUseLongRangeCorrection(False)
    if part.getNumInteractionGroups() == 0:
        part.addInteractionGroup(ml, ml)
        return part
    # groups of the original: keep each one's ML-ML pairs (an emptied group computes nothing)
    kept = 0
    for k in range(part.getNumInteractionGroups()):
        a, b = part.getInteractionGroupParameters(k)
        a, b = set(a) & ml, set(b) & ml
        part.setInteractionGroupParameters(k, a, b)
        kept += bool(a and b)
    return part if kept else None


def _check_constrained_bonds(system: openmm.System, mlset: set) -> None:
    """With interpolation the lambda = 0 end is the MM description of the ML region; once its
    constraints are removed, only a bond term keeps a constrained pair bonded there. A System
    built with constraints=HBonds (and flexibleConstraints=False) has none for its X-H bonds."""
    have = bond_term_pairs(system)
    bare = [p for p in constrained_pairs(system, mlset) if p not in have]
    if bare:
        raise ValueError(
            f"{len(bare)} constraints between ML atoms (e.g. {bare[:3]}) have no bond term in the "
            "System, so with remove_constraints=True nothing would hold those atoms together at "
            "lambda_interpolate = 0 (the MM end). Build the MM System with "
            "createSystem(..., flexibleConstraints=True), which keeps the bond terms of "
            "constrained bonds, or keep the constraints (remove_constraints=False)")
