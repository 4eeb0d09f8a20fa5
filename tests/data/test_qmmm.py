import numpy as np
import pytest

from mlpolar.data.qmmm import (TINY_LEVEL, Level, label_configuration, select_mm_charges,
                               single_point)
from mlpolar.units import HARTREE_TO_KJMOL


def _brute_selection(pos, box, q, qm, res, radius):
    """Reference: 27 images per residue, residue kept in the image of its first atom nearest to
    the QM centroid; kept if any atom of that image is within radius of any QM atom."""
    c = pos[qm].mean(0)
    out = {}
    for r in np.unique(res):
        idx = np.nonzero(res == r)[0]
        idx = idx[~np.isin(idx, qm)]
        if len(idx) == 0:
            continue
        best = None
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                for k in (-1, 0, 1):
                    s = i * box[0] + j * box[1] + k * box[2]
                    d = np.linalg.norm(pos[idx[0]] + s - c)
                    if best is None or d < best[0]:
                        best = (d, s)
        p = pos[idx] + best[1]
        if np.linalg.norm(p[:, None] - pos[qm][None], axis=-1).min() < radius:
            for a, x in zip(idx, p):
                out[a] = x
    return out


def test_select_mm_charges_matches_brute_force(traj, pxw, atom_arrays):
    from mlpolar.data.sampling import read_frame
    z, res, q = atom_arrays
    pos, box = read_frame(traj, 1)
    # move one selected water by a whole box vector: selection must not change
    idx, mm = select_mm_charges(pos, box, q, pxw.ligand_indices, res, 0.6)
    ref = _brute_selection(pos, box, q, pxw.ligand_indices, res, 0.6)
    assert sorted(ref) == sorted(idx.tolist())
    np.testing.assert_allclose(mm, np.array([ref[i] for i in idx]), atol=1e-12)
    assert abs(q[idx].sum()) < 1e-6          # whole waters: neutral
    assert not np.isin(idx, pxw.ligand_indices).any()
    w = res[idx[0]]
    moved = pos.copy()
    moved[res == w] += box[0] - 2 * box[2]
    idx2, mm2 = select_mm_charges(moved, box, q, pxw.ligand_indices, res, 0.6)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_allclose(mm, mm2, atol=1e-9)
    with pytest.raises(ValueError, match="charges"):
        select_mm_charges(pos, box, q[:-1], pxw.ligand_indices, res, 0.6)
    with pytest.raises(ValueError, match="radius_nm"):
        select_mm_charges(pos, box, q, pxw.ligand_indices, res, -1.0)


@pytest.fixture(scope="module")
def labelled(traj, pxw, atom_arrays):
    from mlpolar.data.sampling import read_frame
    z, res, q = atom_arrays
    pos, box = read_frame(traj, 0)
    r = label_configuration(pos, box, q, pxw.ligand_indices, z, res, radius_nm=0.45,
                            level=TINY_LEVEL)
    return r


def _e(r, qm_pos=None, mm_pos=None):
    return single_point(r["qm_atomic_numbers"],
                        r["qm_positions"] if qm_pos is None else qm_pos,
                        r["mm_positions"] if mm_pos is None else mm_pos, r["mm_charges"],
                        level=TINY_LEVEL, vacuum=False, charges=False)["energy"]


def test_single_point_contents(labelled):
    r = labelled
    n_qm, n_mm = len(r["qm_indices"]), len(r["mm_indices"])
    assert n_qm == 18 and n_mm > 20
    assert r["qm_forces"].shape == (n_qm, 3) and r["mm_forces"].shape == (n_mm, 3)
    # PySCF HF/STO-3G p-xylene is about -305 Hartree: energies are in kJ/mol
    assert -310 * HARTREE_TO_KJMOL < r["energy"] < -300 * HARTREE_TO_KJMOL
    eint = r["energy"] - r["energy_vacuum"]
    assert eint != 0 and abs(eint) < 100
    # Hirshfeld charges: sum to the QM charge, C negative-ish vs H positive on average
    hq = r["hirshfeld_charges"]
    assert abs(hq.sum()) < 2e-3
    assert hq[r["qm_atomic_numbers"] == 1].mean() > hq[r["qm_atomic_numbers"] == 6].mean()
    # dipole in e nm: p-xylene is nearly apolar (|mu| < 0.5 D = 0.0104 e nm)
    assert np.linalg.norm(r["dipole_vacuum"]) < 0.0104
    assert np.linalg.norm(r["dipole"] - r["dipole_vacuum"]) > 1e-5
    # momentum: total force on QM + MM vanishes (translation invariance of E)
    tot = r["qm_forces"].sum(0) + r["mm_forces"].sum(0)
    assert np.abs(tot).max() < 1e-3 * np.abs(r["qm_forces"]).max()


def test_energy_against_plain_pyscf(labelled):
    from pyscf import gto, qmmm, scf
    r = labelled
    mol = gto.M(atom=[(int(z), tuple(p * 10)) for z, p in zip(r["qm_atomic_numbers"],
                                                             r["qm_positions"])],
                basis="sto-3g", unit="Angstrom", verbose=0)
    mf = qmmm.mm_charge(scf.RHF(mol).density_fit(auxbasis="def2-universal-jkfit"),
                        r["mm_positions"] * 10, r["mm_charges"], unit="Angstrom")
    mf.conv_tol = 1e-10
    assert mf.kernel() * HARTREE_TO_KJMOL == pytest.approx(r["energy"], abs=1e-4)


@pytest.mark.parametrize("which", ["mm", "qm"])
def test_forces_finite_difference(labelled, which):
    r = labelled
    h = 1e-4  # nm
    key, pos = (("mm_forces", r["mm_positions"]) if which == "mm"
                else ("qm_forces", r["qm_positions"]))
    # the atom with the largest force, one component
    a, c = np.unravel_index(np.abs(r[key]).argmax(), r[key].shape)
    p = pos.copy()
    p[a, c] += h
    ep = _e(r, **{f"{which}_pos": p})
    p[a, c] -= 2 * h
    em = _e(r, **{f"{which}_pos": p})
    fd = -(ep - em) / (2 * h)
    assert abs(r[key][a, c]) > 1.0
    assert fd == pytest.approx(r[key][a, c], rel=2e-4, abs=1e-3)


def test_level_validation():
    with pytest.raises(ValueError, match="unknown keys"):
        Level.from_dict({"method": "hf", "basis_set": "sto-3g"})
    with pytest.raises(ValueError, match="mm_charges"):
        single_point([1, 1], [[0, 0, 0], [0.074, 0, 0]], np.zeros((3, 3)), np.zeros(2),
                     level=TINY_LEVEL)
    with pytest.raises(ValueError, match="spin"):
        single_point([1], [[0, 0, 0]], np.zeros((0, 3)), np.zeros(0), level=TINY_LEVEL)
    assert Level().describe() == "B3LYP-D3BJ/def2-svp with density fitting (def2-universal-jkfit)"


def test_a_broken_qm_region_is_refused_before_dft():
    from mlpolar.data.qmmm import check_qm_region_whole, label_configuration
    ring = np.array([[0.0, 0.0, 0.0], [0.14, 0.0, 0.0], [0.07, 0.12, 0.0], [0.07, 0.04, 0.1]])
    check_qm_region_whole(ring)
    check_qm_region_whole(ring[:1])          # one atom: nothing to check
    far = ring.copy()
    far[3] += [0.0, 0.0, 2.0]                 # a hydrogen 2 nm away from its molecule
    with pytest.raises(ValueError, match=r"QM atoms \[3\].*not whole"):
        check_qm_region_whole(far)
    with pytest.raises(ValueError, match="not whole"):
        label_configuration(far, None, np.zeros(4), [0, 1, 2, 3], [6, 6, 6, 1], np.arange(4))
