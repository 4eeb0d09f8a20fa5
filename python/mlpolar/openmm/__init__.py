"""OpenMM integration: MLPolarForce and ML/MM Systems with electrostatic embedding.

    from mlpolar.openmm import MLPolarForce, create_mixed_system
    mixed = create_mixed_system(topology, system, ml_atoms, model, charge=0, multiplicity=1)

Importing this package also registers mlpolar with openmm-ml (``MLPotential('mlpolar', ...)`` and
``embedding='mlpolar-electrostatic'``), see openmmml_plugin.py.
"""
from .force import MLPolarForce, torchforce_status
from .mixed_system import LAMBDA, create_mixed_system
from . import openmmml_plugin

openmmml_plugin.register()

__all__ = ["MLPolarForce", "create_mixed_system", "torchforce_status", "LAMBDA"]
