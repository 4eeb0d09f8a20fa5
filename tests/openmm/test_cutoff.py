"""The `cutoff=` argument of MLPolarForce / create_mixed_system (the issue's API). The ML-MM cutoff
belongs to the model (its forward takes no cutoff: it sits in the model's MM-embedding module, and
without a box it is the range of MM charges the model was trained with), so the argument is checked
against the model's own (mm_ewald_cutoff under a box, mm_cutoff without one) and a different value is
refused, before any work, with both values and the way to build a model with that cutoff."""
import copy
import dataclasses

import openmm
import openmm.unit as u
import pytest
import torch

from mlpolar.openmm import MLPolarForce, create_mixed_system
from mlpolar.openmm.force import prepare_evaluator

from test_force import _PointChargeModel


@pytest.fixture(scope="module")
def model(mlpolar_model):
    return mlpolar_model


def test_open_boundaries_cutoff_is_mm_cutoff(open_water, model):
    c = open_water
    assert (model.mm_cutoff, model.mm_ewald_cutoff) == (1.2, 1.0)
    for same in (1.2, 1.2 * u.nanometer, 12.0 * u.angstrom, None):
        assert MLPolarForce(model, c.ml_atoms, c.system, topology=c.topology, cutoff=same).getCutoff() == 1.2
    with pytest.raises(ValueError, match=r"cutoff=1.0 nm differs from the model's ML-MM cutoff mm_cutoff = 1.2 nm "
                                         r"for this non-periodic System.*MLPolarConfig\(mm_cutoff=1.0"):
        MLPolarForce(model, c.ml_atoms, c.system, topology=c.topology, cutoff=1.0)
    with pytest.raises(ValueError, match="differs from the model's"):
        create_mixed_system(c.topology, c.system, c.ml_atoms, model, cutoff=0.9)


def test_periodic_cutoff_is_mm_ewald_cutoff(solvated, model):
    """Under a box the model's cutoff is the ML-MM Ewald real-space cutoff; the error's recipe (the same
    weights with another mm_ewald_cutoff) gives a model that is accepted with that cutoff and has the
    same energy up to the Ewald tolerance."""
    from mlpolar.model import MLPolar
    c = solvated
    assert MLPolarForce(model, c.ml_atoms, c.system, topology=c.topology, cutoff=1.0).getCutoff() == 1.0
    with pytest.raises(ValueError, match=r"cutoff=1.2 nm differs from the model's ML-MM cutoff mm_ewald_cutoff = "
                                         r"1.0 nm for this periodic System.*mm_ewald_cutoff=1.2"):
        MLPolarForce(model, c.ml_atoms, c.system, topology=c.topology, cutoff=1.2)
    with pytest.raises(ValueError, match="mm_ewald_cutoff = 1.0 nm"):
        create_mixed_system(c.topology, c.system, c.ml_atoms, model, cutoff=0.8)
    from openmmml import MLPotential
    with pytest.raises(ValueError, match="mm_ewald_cutoff = 1.0 nm"):
        MLPotential("mlpolar", model=model).createMixedSystem(c.topology, c.system, c.ml_atoms,
                                                              embedding="mlpolar-electrostatic", cutoff=0.8)
    other = MLPolar(dataclasses.replace(model.config, mm_ewald_cutoff=0.8)).to(model.reference_energy.dtype)
    other.load_state_dict(model.state_dict())
    x = torch.tensor(c.positions)
    box = torch.tensor([list(v.value_in_unit(u.nanometer)) for v in c.system.getDefaultPeriodicBoxVectors()],
                       dtype=torch.float64)
    E = float(prepare_evaluator(model, c.ml_atoms, c.system, topology=c.topology,
                                embedding_tolerance=1e-5).evaluate(x, box)[0])
    E_other = float(prepare_evaluator(other, c.ml_atoms, c.system, topology=c.topology, embedding_tolerance=1e-5,
                                      cutoff=0.8).evaluate(x, box)[0])
    assert E != E_other and abs(E - E_other) < 0.01
    # a cutoff that fits the model but not the box: the box check still applies
    small = copy.deepcopy(c.system)
    small.setDefaultPeriodicBoxVectors(openmm.Vec3(1.8, 0, 0), openmm.Vec3(0, 1.8, 0), openmm.Vec3(0, 0, 1.8))
    with pytest.raises(ValueError, match="more than half the smallest periodic box"):
        MLPolarForce(model, c.ml_atoms, small, topology=c.topology, cutoff=1.0)


def test_bad_cutoff_values(vacuum, model):
    c = vacuum
    with pytest.raises(TypeError, match="cutoff must be a length"):
        MLPolarForce(model, c.ml_atoms, c.system, cutoff="1.2")
    with pytest.raises(TypeError, match="cutoff must be a length"):
        MLPolarForce(model, c.ml_atoms, c.system, cutoff=1.2 * u.kelvin)
    with pytest.raises(TypeError, match="cutoff must be a length"):
        MLPolarForce(model, c.ml_atoms, c.system, cutoff=True)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cutoff must be a positive length"):
            MLPolarForce(model, c.ml_atoms, c.system, cutoff=bad)
    with pytest.raises(ValueError, match=r"declares no ML-MM cutoff \(no mm_cutoff attribute\)"):
        MLPolarForce(_PointChargeModel(c.model.ml_charges), c.ml_atoms, c.system, cutoff=1.0)
    # the fixed-charge model's cutoff is its mm_cutoff (it has no mm_ewald_cutoff)
    assert MLPolarForce(c.model, c.ml_atoms, c.system, cutoff=c.model.mm_cutoff).getCutoff() == c.model.mm_cutoff
