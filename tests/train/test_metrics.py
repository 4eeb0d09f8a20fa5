"""The issue's metrics against values worked out by hand on tiny arrays."""
import numpy as np
import pytest

from mlpolar.train.metrics import (KCAL_PER_A, compute_metrics, energy_mae_offset_removed,
                                   force_mae, near_mm_mask, parity_plots)


def test_energy_mae_removes_the_mean_offset():
    ref = np.array([0.0, 0.0, 0.0, 0.0])
    # errors 10, 12, 8, 10 kJ/mol: offset 10, residuals 0, 2, -2, 0 -> MAE 1 kJ/mol
    pred = np.array([10.0, 12.0, 8.0, 10.0])
    assert energy_mae_offset_removed(pred, ref) == pytest.approx(1.0 / 4.184)
    # a pure offset costs nothing
    assert energy_mae_offset_removed(ref + 123.0, ref) == pytest.approx(0.0, abs=1e-12)


def test_force_mae_units():
    # |errors| 41.84 and 0 kJ/mol/nm over 6 components: 41.84*3/6 kJ/mol/nm = 0.5 kcal/mol/Å
    ref = [np.zeros((2, 3))]
    pred = [np.array([[41.84, -41.84, 41.84], [0, 0, 0]])]
    assert force_mae(pred, ref) == pytest.approx(0.5)
    assert KCAL_PER_A == pytest.approx(41.84)


def test_near_mm_mask_and_mm_force_mae():
    qm = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    mm = np.array([[0.5, 0.55, 0], [1.59, 0, 0], [3.0, 0, 0], [-0.61, 0, 0]])
    # distances to nearest QM atom: 0.743, 0.59, 2.0, 0.61
    assert near_mm_mask(qm, mm).tolist() == [False, True, False, False]
    ref = {"energy": [0.0, 1.0], "qm_forces": [np.zeros((2, 3))] * 2,
           "mm_forces": [np.zeros((4, 3))] * 2, "qm_positions": [qm, qm],
           "mm_positions": [mm, mm], "interaction_energy": [-4.184, -8.368]}
    f = np.zeros((4, 3))
    f[1] = [83.68, 0, 0]       # the one near atom: error 2 kcal/mol/Å in one of 3 components
    f[2] = [1e6, 1e6, 1e6]     # far atoms do not count
    pred = {"energy": [5.0, 6.0], "qm_forces": [np.zeros((2, 3))] * 2, "mm_forces": [f, f],
            "interaction_energy": [-4.184 - 4.184, -8.368]}
    m = compute_metrics(pred, ref, baseline_interaction=[0.0, 0.0])
    assert m["mm_force_mae_kcal_A"] == pytest.approx(2.0 / 3)
    assert m["n_mm_near"] == 2
    assert m["energy_mae_kcal"] == pytest.approx(0.0)
    assert m["qm_force_mae_kcal_A"] == 0.0
    assert m["interaction_mae_kcal"] == pytest.approx(0.5)       # errors 1 and 0 kcal/mol
    assert m["baseline_interaction_mae_kcal"] == pytest.approx(1.5)  # |−1| and |−2|
    assert m["interaction_mae_ratio_to_baseline"] == pytest.approx(1 / 3)


def test_force_mae_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in size"):
        force_mae([np.zeros((2, 3))], [np.zeros((3, 3))])


def test_parity_plots_are_png(tmp_path):
    rng = np.random.default_rng(0)
    qm = rng.normal(size=(3, 3)) * 0.1
    mm = qm[[0]] + 0.3
    ref = {"energy": [1.0, 2.0], "qm_forces": [rng.normal(size=(3, 3))] * 2,
           "mm_forces": [rng.normal(size=(1, 3))] * 2, "qm_positions": [qm] * 2,
           "mm_positions": [mm] * 2}
    pred = {k: v for k, v in ref.items() if k in ("energy", "qm_forces", "mm_forces")}
    paths = parity_plots(pred, ref, tmp_path, prefix="x_")
    assert [p.name for p in paths] == ["x_parity_energy.png", "x_parity_qm_forces.png",
                                       "x_parity_mm_forces.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
