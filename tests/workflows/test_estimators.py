"""Estimators on exactly sampled data: configurations of 3-D harmonic oscillators drawn from the
Boltzmann distribution itself (numpy), so ΔG = (3N/2) ln(k1/k0) kT is known exactly and the only
error is statistical."""
import numpy as np
import pytest

from harmonic import exact_dg_kT
from mlpolar.workflows import estimators

N_ATOMS, K0, K1 = 4, 1000.0, 1600.0
KT = 2.494


def u_red(x, k):  # reduced potential ½ k |x|² / kT, x (..., N, 3)
    return 0.5 * k * np.sum(x * x, axis=(-1, -2)) / KT


def draw(k, n, rng):
    return rng.normal(scale=np.sqrt(KT / k), size=(n, N_ATOMS, 3))


def test_mbar_recovers_exact_dg_and_overlap():
    rng = np.random.default_rng(1)
    lam = np.linspace(0, 1, 6)
    ks = K0 + lam * (K1 - K0)
    x = [draw(k, 400, rng) for k in ks]
    u_kln = np.array([[u_red(x[a], kb) for kb in ks] for a in range(len(ks))])
    r = estimators.mbar_estimate(u_kln, subsample=True)
    exact = exact_dg_kT(N_ATOMS, K0, K1)
    assert abs(r["dg"] - exact) < 4 * r["ddg"] + 1e-3
    assert 0 < r["ddg"] < 0.2
    # each state's ΔG from state 0 is exact too
    exact_states = 1.5 * N_ATOMS * np.log(ks / K0)
    assert np.all(np.abs(r["dg_states"] - exact_states) < 4 * r["ddg_states"] + 1e-3)
    ov = r["overlap"]
    assert ov.shape == (6, 6) and np.allclose(ov.sum(axis=1), 1.0, atol=1e-8)
    assert np.all(np.diag(ov, 1) > 0.05)  # neighbouring windows overlap
    c = r["convergence"]
    assert c["fraction"][-1] == 1.0 and np.isclose(c["forward"][-1], r["dg"])
    assert np.isclose(c["reverse"][-1], r["dg"])


def test_bar_and_jarzynski_on_instantaneous_switching():
    # instantaneous switches: W_F = u1(x) − u0(x), x ~ p0; W_R = u0(x) − u1(x), x ~ p1
    rng = np.random.default_rng(2)
    x0, x1 = draw(K0, 3000, rng), draw(K1, 3000, rng)
    w_f, w_r = u_red(x0, K1) - u_red(x0, K0), u_red(x1, K0) - u_red(x1, K1)
    r = estimators.switching_estimate(w_f, w_r)
    exact = exact_dg_kT(N_ATOMS, K0, K1)
    assert abs(r["bar"] - exact) < 4 * r["dbar"] + 1e-3
    assert abs(r["jarzynski_forward"] - exact) < 4 * r["djarzynski_forward"] + 0.02
    assert abs(r["jarzynski_reverse"] - exact) < 4 * r["djarzynski_reverse"] + 0.02
    # second law: mean work exceeds ΔG in both directions
    assert r["dissipation_forward"] > 0 and r["dissipation_reverse"] > 0


def test_estimator_input_errors():
    with pytest.raises(ValueError, match="u_kln"):
        estimators.mbar_estimate(np.zeros((3, 2, 10)))
    bad = np.zeros((2, 2, 10))
    bad[0, 1, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        estimators.mbar_estimate(bad)
    with pytest.raises(ValueError, match="w_r"):
        estimators.switching_estimate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="w_f"):
        estimators.switching_estimate([np.nan, 1.0], [1.0, 2.0])


def test_plots_write_png(tmp_path):
    ov = np.array([[0.6, 0.4], [0.4, 0.6]])
    estimators.plot_overlap(ov, [0, 1], tmp_path / "o.png")
    conv = dict(fraction=np.array([0.5, 1.0]), forward=np.array([1.0, 1.1]),
                dforward=np.array([0.1, 0.1]), reverse=np.array([1.2, 1.1]),
                dreverse=np.array([0.1, 0.1]))
    estimators.plot_convergence(conv, 2.5, tmp_path / "c.png", reference=2.7)
    estimators.plot_work_distributions(np.array([1.0, 2.0, 3.0]), np.array([-1.0, -2.0]), 2.5,
                                       tmp_path / "w.png", dg=4.0)
    for f in ("o.png", "c.png", "w.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
