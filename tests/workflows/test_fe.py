"""The free-energy engine end to end on the exact case (harmonic oscillators switched through
``lambda_interpolate``, real OpenMM on the Reference platform, real Dask LocalCluster with 2
worker processes): MBAR over windows, BAR/Jarzynski over switching runs, TI as a cross-check,
resume from the task files, refusal of mismatched settings."""
import json

import numpy as np
import openmm
import pytest

from harmonic import PARAM, exact_dg_kT, harmonic_system, start_positions
from mlpolar.workflows import fe_tasks
from mlpolar.workflows.fe import FEConfig, Leg, run_fe

KW = dict(lambdas=list(np.linspace(0, 1, 4)), n_samples=300, steps_per_sample=50,
          equilibration_steps=200, n_forward=20, n_reverse=20, switching_steps=200,
          switch_equilibration_steps=200, friction_per_ps=10.0, minimise=False,
          platform="Reference", progress=False)


@pytest.fixture(scope="module")
def campaign(client, tmp_path_factory):
    out = tmp_path_factory.mktemp("fe")
    legs = {"wide": Leg(harmonic_system(5, 1000.0, 1500.0), start_positions(5)),
            "narrow": Leg(harmonic_system(3, 1000.0, 2000.0), start_positions(3, seed=1))}
    res = run_fe(legs, out, FEConfig(**KW), client=client, difference=("wide", "narrow"),
                 log=lambda *a: None)
    return out, legs, res


def test_estimates_match_exact_free_energy(campaign):
    out, legs, res = campaign
    kT = res["kT_kj_per_mol"]
    exact = {"wide": exact_dg_kT(5, 1000.0, 1500.0) * kT,
             "narrow": exact_dg_kT(3, 1000.0, 2000.0) * kT}
    for leg, dg in exact.items():
        r = res["legs"][leg]
        assert abs(r["mbar"]["dg"] - dg) < 4 * r["mbar"]["ddg"], (leg, r["mbar"], dg)
        assert abs(r["switching"]["bar"] - dg) < 4 * r["switching"]["dbar"], (leg, dg)
        for d in ("forward", "reverse"):  # Jarzynski: biased at finite N, looser
            j, dj = r["switching"][f"jarzynski_{d}"], r["switching"][f"djarzynski_{d}"]
            assert abs(j - dg) < 4 * dj + 0.5, (leg, d, j, dg)
        assert abs(r["ti"]["dg"] - dg) < 0.05 * dg + 4 * r["mbar"]["ddg"]
        # U is linear in λ: dE/dλ-trapezoid work equals the energy-difference work
        assert r["switching"]["max_work_difference_energy_vs_dudl"] < 1e-9
        assert r["switching"]["dissipation_forward"] > 0
    d = res["difference"]["mbar"]
    assert abs(d["dg"] - (exact["wide"] - exact["narrow"])) < 4 * d["ddg"]
    for f in ("wide-overlap.png", "wide-convergence.png", "wide-work.png", "results.csv",
              "results.json", "campaign.json"):
        assert (out / f).stat().st_size > 0
    assert len(list((out / "tasks").glob("*.npz"))) == 2 * (4 + 20 + 20)
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("leg,method,dG_kJ_per_mol") and len(rows) == 1 + 2 * 4 + 2


def test_resume_runs_nothing_and_reproduces(campaign, client):
    out, legs, res = campaign
    res2 = run_fe(legs, out, FEConfig(**KW), client=client, difference=("wide", "narrow"),
                  log=lambda *a: None)
    assert res2["tasks"]["new"] == 0 and res2["tasks"]["total"] == 88
    assert res2["legs"]["wide"]["mbar"]["dg"] == res["legs"]["wide"]["mbar"]["dg"]
    # a missing task file is re-run, reproducing the same numbers (seeded, Reference)
    f = out / "tasks" / "wide-window-002.npz"
    before = np.load(f)["u_ln"]
    f.unlink()
    res3 = run_fe(legs, out, FEConfig(**KW), client=client, difference=("wide", "narrow"),
                  log=lambda *a: None)
    assert res3["tasks"]["new"] == 1
    np.testing.assert_array_equal(np.load(f)["u_ln"], before)
    with pytest.raises(ValueError, match="other settings"):
        run_fe(legs, out, FEConfig(**{**KW, "n_samples": 301}), client=client)
    moved = {**legs, "wide": Leg(legs["wide"].system, legs["wide"].positions + 0.01)}
    with pytest.raises(ValueError, match="wide"):
        run_fe(moved, out, FEConfig(**KW), client=client)


def test_window_task_reduced_potentials_are_exact():
    """A window's u_ln row is E(x; λ_l)/kT of its configurations: check against the formula."""
    sysm = harmonic_system(2, 1000.0, 1500.0)
    xml = openmm.XmlSerializer.serialize(sysm)
    lam = [0.0, 0.5, 1.0]
    r = fe_tasks.sample_window(xml, start_positions(2), None, parameter=PARAM, lambdas=lam, k=1,
                               n_samples=3, steps_per_sample=5, equilibration_steps=0,
                               temperature_K=300.0, platform="Reference")
    kT = fe_tasks.kT_kj_per_mol(300.0)
    # u(λ) = ½(k0 + λ(k1−k0))|x|²/kT is affine in λ, so the λ=0.5 row is the mean of the ends
    np.testing.assert_allclose(r["u_ln"][1], 0.5 * (r["u_ln"][0] + r["u_ln"][2]), rtol=1e-12)
    np.testing.assert_allclose(r["u_ln"][2] / r["u_ln"][0], 1.5, rtol=1e-12)
    np.testing.assert_allclose(r["dudl_n"], r["u_ln"][2] - r["u_ln"][0], rtol=1e-10)
    assert np.all(r["u_ln"] > 0) and kT > 2.49


def test_bad_input_errors(tmp_path):
    legs = {"a": Leg(harmonic_system(), start_positions())}
    with pytest.raises(ValueError, match="lambdas"):
        run_fe(legs, tmp_path, FEConfig(lambdas=[0.0, 0.7]))
    with pytest.raises(ValueError, match="methods"):
        run_fe(legs, tmp_path, FEConfig(methods=["tI"]))
    with pytest.raises(ValueError, match="n_samples"):
        run_fe(legs, tmp_path, FEConfig(n_samples=1))
    plain = openmm.System()
    plain.addParticle(1.0)
    with pytest.raises(ValueError, match="lambda_interpolate"):
        run_fe({"a": Leg(plain, np.zeros((1, 3)))}, tmp_path, FEConfig())
    with pytest.raises(ValueError, match="positions"):
        run_fe({"a": Leg(harmonic_system(), np.zeros((2, 3)))}, tmp_path, FEConfig())
    with pytest.raises(TypeError, match="Leg"):
        run_fe({"a": (harmonic_system(), start_positions())}, tmp_path, FEConfig())
    with pytest.raises(ValueError, match="difference"):
        run_fe(legs, tmp_path, FEConfig(), difference=("a", "b"))
    assert not (tmp_path / "campaign.json").exists()  # nothing started
