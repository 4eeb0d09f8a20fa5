"""CPU-checkable paths of the OpenMM layer: the device checks of prepare_evaluator (with torch's
'meta' device standing in for a second device), and the shipped model through mlpolar.load_model
and through openmm-ml's entry point in a fresh interpreter that never imports mlpolar.openmm."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlpolar.openmm import MLPolarForce
from mlpolar.openmm.force import prepare_evaluator

from test_force import _PointChargeModel

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = "pxylene-t4l99a-v6"


def test_device_differs_from_the_models(vacuum):
    c = vacuum
    model = _PointChargeModel(c.model.ml_charges)      # on the CPU
    with pytest.raises(ValueError, match=r"device=meta differs from the model's device cpu; move the model with "
                                         r"model.to\('meta'\) first"):
        prepare_evaluator(model, c.ml_atoms, c.system, device="meta")
    with pytest.raises(ValueError, match="device=meta differs"):
        MLPolarForce(model, c.ml_atoms, c.system, device=torch.device("meta"))
    # the model's own device, named or not, is accepted
    for device in (None, "cpu", torch.device("cpu")):
        assert prepare_evaluator(model, c.ml_atoms, c.system, device=device).device == torch.device("cpu")


def test_model_on_several_devices(vacuum):
    c = vacuum
    model = _PointChargeModel(c.model.ml_charges)
    model.register_buffer("stray", torch.zeros(1, device="meta"))
    with pytest.raises(ValueError, match=r"model has tensors on several devices \['cpu', 'meta'\]; move it with "
                                         r"model.to\(device\)"):
        prepare_evaluator(model, c.ml_atoms, c.system)
    with pytest.raises(ValueError, match="several devices"):
        MLPolarForce(model, c.ml_atoms, c.system, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bare_cuda_means_the_models_gpu(vacuum):
    """model.to('cuda') puts the tensors on 'cuda:0'; device='cuda' names the same GPU."""
    c = vacuum
    model = _PointChargeModel(c.model.ml_charges).to("cuda")
    assert prepare_evaluator(model, c.ml_atoms, c.system, device="cuda").device == next(model.buffers()).device


def test_shipped_model_loads():
    import mlpolar
    import mlpolar.models
    assert SHIPPED in mlpolar.models.available(), "the shipped model changed: update SHIPPED"
    model = mlpolar.load_model(SHIPPED)
    assert list(model.elements) == [1, 6] and model.mm_cutoff > 0 and model.mm_ewald_cutoff > 0


_FRESH = r"""
import json, sys
import numpy as np
import openmm, openmm.app as app, openmm.unit as u
import torch
import mlpolar
model = mlpolar.load_model(sys.argv[1])
assert "mlpolar.openmm" not in sys.modules    # nothing of ours registers the plugin
from openmmml import MLPotential             # openmm-ml loads its entry points (mlpolar's among them)
pdb = app.PDBFile(sys.argv[2])     # p-xylene (openmmtools' T4 lysozyme L99A ligand)
system = MLPotential("mlpolar", modelPath=sys.argv[1]).createSystem(pdb.topology)
ctx = openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
ctx.setPositions(pdb.positions)
s = ctx.getState(getEnergy=True, getForces=True)
x = torch.tensor(np.asarray(pdb.positions.value_in_unit(u.nanometer)), dtype=torch.float64, requires_grad=True)
species = torch.tensor([a.element.atomic_number for a in pdb.topology.atoms()])
out = model(species, x, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.int64),
            None, None, None, None, None, None)
(g,) = torch.autograd.grad(out["energy"], [x])
print(json.dumps(dict(
    modules=sorted(m for m in sys.modules if m.startswith("mlpolar.openmm")),
    forces=[type(f).__name__ for f in system.getForces()],
    energy=s.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole), energy_ref=float(out["energy"]),
    force_err=float(np.abs(s.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)
                           + g.numpy()).max()),
    force_max=float(g.abs().max()))))
"""


def test_shipped_model_through_openmmml_entry_point_in_a_fresh_process():
    """`MLPotential('mlpolar', modelPath=<shipped name>)` with nothing but openmm-ml's entry-point
    discovery (pyproject.toml's openmmml.potentials) registering mlpolar: a fresh interpreter that
    imports mlpolar and openmmml but not mlpolar.openmm. The Context (all atoms ML) equals the
    model called directly."""
    import mlpolar
    import openmmtools
    import mlpolar.models
    assert SHIPPED in mlpolar.models.available(), "the shipped model changed: update SHIPPED"
    ligand = Path(openmmtools.__file__).parent / "data" / "T4-lysozyme-L99A-implicit" / "ligand.pdb"
    run = subprocess.run([sys.executable, "-c", _FRESH, SHIPPED, str(ligand)], capture_output=True, text=True,
                         env=_env(), timeout=300, cwd=str(ROOT))
    assert run.returncode == 0, run.stderr[-3000:]
    r = json.loads(run.stdout.strip().splitlines()[-1])
    assert "mlpolar.openmm.openmmml_plugin" in r["modules"]     # loaded through the entry point
    assert r["forces"][0] == "PythonForce" and "PythonForce" not in r["forces"][1:]
    assert abs(r["energy"] - r["energy_ref"]) <= 1e-9 * abs(r["energy_ref"]) + 1e-9
    assert r["force_max"] > 1.0 and r["force_err"] <= 1e-8 * r["force_max"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env
