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
        self.model = FixedChargeModel.from_system(self.system, self.ml_atoms)


def evaluate(system, positions, platform="Reference", parameters=None, groups=-1, box=None):
    """(energy kJ/mol, forces [N,3] kJ/mol/nm, {parameter: dE/dp}) from a fresh Context."""
    ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName(platform))
    if box is not None:
        ctx.setPeriodicBoxVectors(*box)
    ctx.setPositions(positions)
    for k, v in (parameters or {}).items():
        ctx.setParameter(k, v)
    s = ctx.getState(getEnergy=True, getForces=True, getParameterDerivatives=bool(parameters), groups=groups)
    derivs = dict(s.getEnergyParameterDerivatives()) if parameters else {}
    return (s.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole),
            s.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer), derivs)


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
