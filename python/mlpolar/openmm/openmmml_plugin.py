"""openmm-ml (openmmml 1.8) entry points for mlpolar.

    import mlpolar.openmm                      # registers, or the entry points in pyproject.toml do
    from openmmml import MLPotential
    potential = MLPotential("mlpolar", modelPath="model.pt")        # or model=<module>, or a shipped name
    mixed = potential.createMixedSystem(topology, system, ml_atoms, embedding="mlpolar-electrostatic",
                                        charge=0, multiplicity=1, interpolate=False)
    pure = potential.createSystem(topology, charge=0, multiplicity=1)        # everything ML

What is hooked, through openmm-ml 1.8's plugin API:
- the potential "mlpolar" (MLPotentialImplFactory): ``addForces`` adds an MLPolarForce;
- the potential-specific embedding "mlpolar-electrostatic" (``getSupportedEmbeddings`` /
  ``createMixedSystem`` of the MLPotentialImpl): the same System as
  ``mlpolar.openmm.create_mixed_system``, interpolation included;
- openmm-ml's own "mechanical" embedding with the mlpolar model: the model then sees no MM charges
  (vacuum ML energy; ML-ML images through its Ewald, so ``getMLLongRange()`` is True) and the force
  field keeps the ML-MM Coulomb with the ML atoms' MM charges.
Not hooked: "mlpolar-electrostatic" is not a generic embedding plugin (openmmml.embeddings): it
needs the mlpolar model, so it is offered only by the "mlpolar" potential. Link atoms (openmm-ml's
virtual-site caps) are refused, as in create_mixed_system.
"""
from __future__ import annotations

from openmmml.mlpotential import MLPotential, MLPotentialImpl, MLPotentialImplFactory

NAME = "mlpolar"
EMBEDDING = "mlpolar-electrostatic"


class MLPolarPotentialImplFactory(MLPotentialImplFactory):
    def createImpl(self, name: str, modelPath=None, model=None, device=None, **args) -> MLPotentialImpl:
        return MLPolarPotentialImpl(name, modelPath=modelPath, model=model, device=device)


class MLPolarPotentialImpl(MLPotentialImpl):
    """openmm-ml's view of an mlpolar model (from ``modelPath``, a shipped name, or ``model``)."""

    def __init__(self, name: str, modelPath=None, model=None, device=None):
        if (modelPath is None) == (model is None):
            raise ValueError("MLPotential('mlpolar', ...) needs exactly one of modelPath= (a file or shipped model "
                             "name, see mlpolar.models.available()) or model= (a loaded model)")
        if model is None:
            from ..models import load_model
            model = load_model(modelPath, map_location=device)
        self.name = name
        self.model = model
        self.device = device

    def addForces(self, topology, system, atoms, forceGroup, charge=0, multiplicity=1, **args):
        from .force import MLPolarForce
        atoms = list(range(system.getNumParticles())) if atoms is None else list(atoms)
        # openmm-ml's mechanical embedding: the force field keeps ML-MM Coulomb, so the model
        # runs in vacuum here (no MM charges).
        force = MLPolarForce(self.model, atoms, system, charge, multiplicity, topology=topology,
                             device=self.device, embed=False)
        force.setForceGroup(forceGroup)
        system.addForce(force)

    def getSupportedEmbeddings(self):
        return [EMBEDDING]

    def getMLLongRange(self):
        # under a box the model sums the ML charges' periodic images itself (Ewald)
        return True

    def createMixedSystem(self, topology, system, atoms, forceGroup, interpolate, embedding, returnInfo=False,
                          charge=0, multiplicity=1, **args):
        from .mixed_system import create_mixed_system
        if embedding != EMBEDDING:
            raise ValueError(f"unknown mlpolar embedding {embedding!r}; use {EMBEDDING!r} or openmm-ml's generic "
                             "'mechanical'")
        unknown = set(args) - {"backend", "embedding_tolerance", "cutoff"}
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)} for embedding {EMBEDDING!r}")
        mixed = create_mixed_system(topology, system, atoms, self.model, charge=charge, multiplicity=multiplicity,
                                    interpolate=interpolate, force_group=forceGroup, device=self.device,
                                    backend=args.get("backend", "python"),
                                    embedding_tolerance=args.get("embedding_tolerance"), cutoff=args.get("cutoff"))
        if returnInfo:
            return dict(system=mixed, topology=topology, oldToNew=list(range(topology.getNumAtoms())))
        return mixed


def register() -> None:
    """Register the "mlpolar" potential with openmm-ml (idempotent; the entry point does the same)."""
    MLPotential.registerImplFactory(NAME, MLPolarPotentialImplFactory())
