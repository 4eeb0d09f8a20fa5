"""The fixed-charge baseline against an independent Coulomb sum (OpenMM, NoCutoff)."""
import h5py
import numpy as np
import openmm
import pytest

from mlpolar.train.baseline import (baseline_interaction_energies, coulomb_interaction,
                                    ligand_am1bcc_charges, ligand_charges_for, summary)
from mlpolar.train.dataset import load_store


def _openmm_coulomb(positions, charges) -> float:
    """Coulomb energy of point charges by OpenMM's reference platform (no cutoff), kJ/mol."""
    s = openmm.System()
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for q in charges:
        s.addParticle(1.0)
        nb.addParticle(float(q), 0.1, 0.0)
    s.addForce(nb)
    ctx = openmm.Context(s, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.asarray(positions))
    return ctx.getState(getEnergy=True).getPotentialEnergy()._value


def test_baseline_matches_openmm_coulomb(store_path):
    c = load_store(store_path, [0])[0]
    q = ligand_charges_for(c.species.numpy())
    x_qm, x_mm, q_mm = c.positions.numpy(), c.mm_positions.numpy(), c.mm_charges.numpy()
    mine = coulomb_interaction(x_qm, q, x_mm, q_mm)
    # interaction = E(QM ∪ MM) − E(QM) − E(MM), each a plain OpenMM Coulomb sum
    both = _openmm_coulomb(np.vstack([x_qm, x_mm]), np.concatenate([q, q_mm]))
    ref = both - _openmm_coulomb(x_qm, q) - _openmm_coulomb(x_mm, q_mm)
    assert mine == pytest.approx(ref, rel=1e-8, abs=1e-6)
    assert -60 < mine < 0   # a few kcal/mol of attraction, as the DFT label


def test_ligand_charges_are_the_prmtop_am1bcc_set(store_path):
    q, z = ligand_am1bcc_charges()
    assert z.tolist() == [6] * 8 + [1] * 10
    assert abs(q.sum()) < 1e-3            # neutral p-xylene (prmtop charges to 4 decimals)
    with h5py.File(store_path, "r") as f:
        # the store lists the QM atoms as the ligand in prmtop order
        assert f["configs/00000000/qm_indices"][()].tolist() == list(range(18))
    with pytest.raises(ValueError, match="prmtop"):
        ligand_charges_for(np.array([1] * 10 + [6] * 8))


def test_baseline_and_dft_interaction_energies(store_path):
    cs = load_store(store_path)
    ff, dft = baseline_interaction_energies(cs)
    with h5py.File(store_path, "r") as f:
        g = [f["configs"][k] for k in sorted(f["configs"])]
        np.testing.assert_allclose(dft, [x.attrs["energy"] - x.attrs["energy_vacuum"] for x in g])
    # both attractive and of the magnitude (−6.8 ± 2.1 kcal/mol for DFT in water)
    assert np.all(dft < 0) and np.all(ff < 0)
    # the fixture's 8 configurations: baseline MAE 1.12 kcal/mol (the issue quotes ≈0.9 on its
    # data); fixed charges miss polarisation, so the error is well above zero and below E_int
    mae = np.mean(np.abs(ff - dft)) / 4.184
    assert 0.3 < mae < 0.5 * np.mean(np.abs(dft)) / 4.184
    s = summary(cs)
    assert s["baseline_interaction_mae_kcal"] == pytest.approx(mae)
    assert s["dft_interaction_mean_kcal"] == pytest.approx(dft.mean() / 4.184)


def test_coincident_positions_are_an_error():
    with pytest.raises(ValueError, match="coincide"):
        coulomb_interaction(np.zeros((1, 3)), [1.0], np.zeros((1, 3)), [1.0])
