"""The bond-stretch check (`mlpolar bond-scan`): geometry, harmonic fit, a real PySCF curve, and
the command on the shipped model."""
import json

import numpy as np
import pytest
import torch

from mlpolar.cli import main
from mlpolar.data.qmmm import Level
from mlpolar.train.bond_scan import (default_xh_bond, dft_energies, fit_harmonic,
                                     model_energies, stretched)


def _methane():
    # tetrahedral CH4 with C-H 0.109 nm
    d = 0.109 / np.sqrt(3.0)
    pos = np.array([[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]], float) + 0.3
    return [6, 1, 1, 1, 1], pos


def test_stretch_moves_only_the_second_atom_along_the_bond():
    z, pos = _methane()
    i, j = default_xh_bond(z, pos)
    assert (i, j) == (0, 1)
    lengths = [0.10, 0.11, 0.12]
    g = stretched(pos, i, j, lengths)
    assert g.shape == (3, 5, 3)
    np.testing.assert_allclose(np.linalg.norm(g[:, j] - g[:, i], axis=1), lengths, atol=1e-14)
    others = [k for k in range(5) if k != j]
    np.testing.assert_array_equal(g[:, others], np.repeat(pos[None, others], 3, axis=0))
    # the direction is kept
    u = (pos[j] - pos[i]) / np.linalg.norm(pos[j] - pos[i])
    np.testing.assert_allclose((g[:, j] - g[:, i]) / np.array(lengths)[:, None], [u] * 3,
                               atol=1e-14)


def test_bad_scan_input_names_the_argument():
    z, pos = _methane()
    with pytest.raises(ValueError, match="bond atom j=7"):
        stretched(pos, 0, 7, [0.1, 0.11, 0.12])
    with pytest.raises(ValueError, match="both 1"):
        stretched(pos, 1, 1, [0.1, 0.11, 0.12])
    with pytest.raises(ValueError, match="lengths"):
        stretched(pos, 0, 1, [0.1, 0.11])
    with pytest.raises(ValueError, match="pass --bond"):
        default_xh_bond([8, 8], np.array([[0, 0, 0], [0.12, 0, 0]]))
    with pytest.raises(ValueError, match="start:stop:count"):
        main(["bond-scan", "default", "x.h5", "--lengths", "0.1:0.2"])


def test_harmonic_fit_recovers_minimum_and_force_constant():
    r = np.linspace(0.095, 0.125, 13)
    k, r0 = 2.8e5, 0.1093            # kJ/mol/nm^2 (about 670 kcal/mol/A^2), nm
    e = 0.5 * k * (r - r0) ** 2 - 3.0e6 * (r - r0) ** 3   # with Morse-like anharmonicity
    f = fit_harmonic(r, e)
    assert f["r0_nm"] == pytest.approx(r0, abs=3e-4)
    assert f["k_kj_mol_nm2"] == pytest.approx(k, rel=0.1)
    assert f["k_kcal_mol_A2"] == pytest.approx(k / 4.184 / 100, rel=0.1)
    flat = fit_harmonic(r, -0.5 * k * (r - r0) ** 2)   # an inverted curve says so: k < 0
    assert flat["k_kj_mol_nm2"] < 0


def test_dft_curve_of_methane_has_the_known_bond_length():
    # HF/STO-3G CH4: r(C-H) = 1.083 A (a textbook value). A C-H stretch near 3000 cm^-1 has
    # k = mu omega^2 ~ 700 kcal/mol/A^2 (E = k/2 x^2); HF in a minimal basis is stiffer.
    z, pos = _methane()
    lengths = np.linspace(0.100, 0.118, 7)
    e = dft_energies(z, stretched(pos, 0, 1, lengths),
                     Level(method="hf", basis="sto-3g", auxbasis=None, disp=None))
    f = fit_harmonic(lengths, e)
    assert f["r0_nm"] == pytest.approx(0.1083, abs=0.0015)
    assert 600 < f["k_kcal_mol_A2"] < 1300


def test_model_energies_equal_direct_model_calls():
    import mlpolar
    model = mlpolar.load_model("default")
    z, pos = _methane()   # C and H are among the model's elements
    g = stretched(pos, 0, 1, [0.10, 0.11, 0.12])
    e = model_energies(model, torch.as_tensor(z), g)
    dtype = next(model.parameters()).dtype
    for n in range(3):
        out = model(torch.as_tensor(z), torch.as_tensor(g[n], dtype=dtype),
                    torch.zeros(1, dtype=dtype), torch.ones(1, dtype=torch.int64),
                    None, None, None, None, None, list(model.heads)[0])
        assert e[n] == pytest.approx(float(out["energy"]), rel=1e-12, abs=1e-9)


def test_command_writes_the_scan(store_path, tmp_path, capsys):
    assert main(["bond-scan", "default", str(store_path), "--index", "2",
                 "--lengths", "0.100:0.120:5", "--out", str(tmp_path / "scan")]) == 0
    out = capsys.readouterr().out
    assert "model: r0" in out
    res = json.loads((tmp_path / "scan" / "bond_scan.json").read_text())
    assert res["index"] == 2 and res["elements"] == [6, 1]
    assert len(res["model"]["energy_kj_mol"]) == 5 and min(res["model"]["energy_kj_mol"]) == 0.0
    assert 0.105 < res["length_in_store_nm"] < 0.112
    assert (tmp_path / "scan" / "bond_scan.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="--index 99"):
        main(["bond-scan", "default", str(store_path), "--index", "99"])
