"""ML/MM System with electrostatic embedding, built from an MM System by surgery with OpenMM's API.

What the MM System keeps and loses (the model adds back everything it loses):
- intra-ML bonds, angles, torsions (CMAP included) and constraints: removed (openmm-ml's
  ``removeBonds``, the same rule as its mechanical embedding);
- NonbondedForce: every ML-ML pair excluded (Coulomb and LJ); the ML atoms' charges set to zero so
  that neither real space nor PME sees them (ML-MM Coulomb gone, including periodic images);
  ML-MM Lennard-Jones kept; MM-MM unchanged;
- CustomNonbondedForce: ML-ML pairs excluded.
MLPolarForce then computes the ML energy with all electrostatics involving the ML atoms.

With ``interpolate=True`` the System carries the global parameter ``lambda_interpolate``:

    E(lambda) = E_common + lambda * (E_model + E_NB,mixed) + (1 - lambda) * (E_bonded,ML + E_NB,MM)

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
                        embedding_tolerance=None) -> openmm.System:
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
        device, backend, embedding_tolerance: passed to MLPolarForce (embedding_tolerance None: the
            ML-MM long range at the NonbondedForce's ewaldErrorTolerance).
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
                         backend=backend, embedding_tolerance=embedding_tolerance)
    force.setForceGroup(force_group)
    mlset = set(atoms)
    nb0 = checks.nonbonded_force(system, True, "")
    for k in range(nb0.getNumExceptions()):
        i, j, qq = nb0.getExceptionParameters(k)[:3]
        if (i in mlset) != (j in mlset) and qq.value_in_unit(openmm.unit.elementary_charge ** 2) != 0.0:
            raise ValueError(f"NonbondedForce exception {k} between ML atom and MM atom ({i}, {j}) has a nonzero "
                             "charge product; the model treats every ML-MM pair as a full Coulomb interaction, so "
                             "such scaled pairs cannot be represented: move both atoms to one region")

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
