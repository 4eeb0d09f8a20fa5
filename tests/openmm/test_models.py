"""Shipped-model registry (mlpolar.models) and the fixed-charge model's own checks."""
import openmm
import openmm.app as app
import pytest
import torch

import mlpolar
from mlpolar import models
from mlpolar.models.fixed_charge import FixedChargeModel, minimum_image


def test_available_lists_the_shipped_folder():
    names = models.available()
    on_disk = sorted(p.stem for p in models.SHIPPED_DIR.glob("*.pt"))
    assert names == on_disk
    for name in names:
        assert models.model_path(name) == models.SHIPPED_DIR / f"{name}.pt"


def test_load_model_by_path_and_errors(tmp_path):
    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * x
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(path))
    m = mlpolar.load_model(str(path))
    assert torch.equal(m(torch.ones(2)), torch.full((2,), 2.0))
    with pytest.raises(ValueError, match="neither a shipped model name"):
        mlpolar.load_model("no-such-model")
    bad = tmp_path / "junk.pt"
    bad.write_text("not a model")
    with pytest.raises(Exception):
        mlpolar.load_model(str(bad))


def test_fixed_charge_model_checks(vacuum):
    rf = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(vacuum.system))
    nb = next(f for f in rf.getForces() if isinstance(f, openmm.NonbondedForce))
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffNonPeriodic)
    with pytest.raises(ValueError, match="NoCutoff, Ewald and PME"):
        FixedChargeModel.from_system(rf, vacuum.ml_atoms)
    model = FixedChargeModel.from_system(vacuum.system, vacuum.ml_atoms)
    assert model.elements == [1, 6, 7, 8]
    with pytest.raises(ValueError, match="built for 22 ML atoms"):
        model(torch.ones(3, dtype=torch.int64), torch.zeros(3, 3, dtype=torch.float64), torch.zeros(1),
              torch.ones(1, dtype=torch.int64))


def test_minimum_image_triclinic():
    box = torch.tensor([[2.0, 0, 0], [0.6, 1.8, 0], [-0.5, 0.4, 1.9]], dtype=torch.float64)
    d = torch.randn(200, 3, dtype=torch.float64) * 3
    m = minimum_image(d, box)
    # the result is a lattice translate of d inside OpenMM's reduced-box cell: |x| <= ax/2,
    # |y| <= by/2, |z| <= cz/2 (c, then b, then a is subtracted)
    frac = torch.linalg.solve(box.T, (d - m).T).T
    assert torch.allclose(frac, frac.round(), atol=1e-9)
    half = 0.5 * box.diagonal() + 1e-9
    assert bool((m.abs() <= half).all())
    assert bool((d.abs() > half).any())        # the input needed reducing
