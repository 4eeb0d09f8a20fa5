"""Free-energy estimators on sampled data, all through pymbar; everything here is in units of kT
(reduced), the callers convert with kT = R·T (kJ/mol).

* :func:`mbar_estimate` — λ windows: u_kln[k, l, n] is the reduced potential of sample n drawn
  in window k evaluated at state l. Correlated samples are thinned per window by the statistical
  inefficiency of the window's own reduced potential (pymbar.timeseries) before MBAR.
  Returns ΔG(first → last state), its asymptotic uncertainty, the overlap matrix, and a
  forward/reverse convergence series (the estimate from growing leading or trailing fractions
  of every window's samples).
* :func:`switching_estimate` — non-equilibrium work: forward works w_F (0 → 1) and reverse works
  w_R (1 → 0), each in kT. BAR (Crooks: p_F(w)/p_R(−w) = exp(w − ΔG)) uses both; Jarzynski
  (ΔG = −ln⟨exp(−w)⟩) each direction on its own. Jarzynski is biased for few samples when the
  dissipation is large; BAR is the estimate to quote.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np


def _quiet_pymbar():
    # pymbar prints a banner about JAX on import; the import itself is what we need
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pymbar
    return pymbar


def subsample_indices(u_n: np.ndarray) -> np.ndarray:
    """Indices of effectively uncorrelated samples of a time series (pymbar.timeseries)."""
    pymbar = _quiet_pymbar()
    u_n = np.asarray(u_n, dtype=float)
    if len(u_n) < 4 or np.ptp(u_n) == 0:
        return np.arange(len(u_n))
    g = pymbar.timeseries.statistical_inefficiency(u_n)
    return np.asarray(pymbar.timeseries.subsample_correlated_data(u_n, g=g), dtype=int)


def _check_u_kln(u_kln) -> np.ndarray:
    u = np.asarray(u_kln, dtype=float)
    if u.ndim != 3 or u.shape[0] != u.shape[1] or u.shape[0] < 2:
        raise ValueError(f"u_kln must have shape (K, K, N) with K >= 2 states; got {u.shape}")
    if u.shape[2] < 2:
        raise ValueError("u_kln needs at least 2 samples per window")
    if not np.all(np.isfinite(u)):
        raise ValueError("u_kln contains non-finite reduced potentials (a blown-up window?)")
    return u


def _mbar_df(u_kln: np.ndarray, keep: list) -> tuple[float, float, object]:
    pymbar = _quiet_pymbar()
    K = u_kln.shape[0]
    N_k = np.array([len(k) for k in keep])
    u_kn = np.concatenate([u_kln[k][:, keep[k]] for k in range(K)], axis=1)
    mbar = pymbar.MBAR(u_kn, N_k, solver_protocol="robust")
    r = mbar.compute_free_energy_differences()
    return float(r["Delta_f"][0, -1]), float(r["dDelta_f"][0, -1]), mbar


def mbar_estimate(u_kln, *, subsample: bool = True, n_convergence: int = 10) -> dict:
    """MBAR over λ windows (see module doc). Returns a dict with ``dg`` and ``ddg`` (kT),
    ``dg_states`` [K] (ΔG from state 0 to each state), ``overlap`` [K, K], ``n_effective``
    [K] (samples kept per window), and ``convergence`` = dict(fraction, forward, dforward,
    reverse, dreverse)."""
    u = _check_u_kln(u_kln)
    K, _, N = u.shape
    keep = [subsample_indices(u[k, k]) if subsample else np.arange(N) for k in range(K)]
    dg, ddg, mbar = _mbar_df(u, keep)
    r = mbar.compute_free_energy_differences()
    overlap = np.asarray(mbar.compute_overlap()["matrix"])
    fr = np.linspace(1.0 / n_convergence, 1.0, n_convergence)
    fwd, dfwd, rev, drev = [], [], [], []
    for f in fr:
        for series, dseries, take in ((fwd, dfwd, lambda k: k[: max(2, int(round(f * len(k))))]),
                                      (rev, drev, lambda k: k[-max(2, int(round(f * len(k)))):])):
            try:
                a, b, _ = _mbar_df(u, [take(k) for k in keep])
            except Exception:  # too few samples at the smallest fractions
                a, b = np.nan, np.nan
            series.append(a)
            dseries.append(b)
    return dict(dg=dg, ddg=ddg, dg_states=np.asarray(r["Delta_f"][0]),
                ddg_states=np.asarray(r["dDelta_f"][0]), overlap=overlap,
                n_effective=np.array([len(k) for k in keep]),
                convergence=dict(fraction=fr, forward=np.array(fwd), dforward=np.array(dfwd),
                                 reverse=np.array(rev), dreverse=np.array(drev)))


def switching_estimate(w_f, w_r) -> dict:
    """BAR and Jarzynski from forward (0→1) and reverse (1→0) works in kT. Returns a dict of
    ``bar``, ``dbar``, ``jarzynski_forward``, ``djarzynski_forward``, ``jarzynski_reverse``,
    ``djarzynski_reverse`` (all as ΔG of 0 → 1, kT), and the mean dissipated works."""
    pymbar = _quiet_pymbar()
    w_f, w_r = np.asarray(w_f, dtype=float), np.asarray(w_r, dtype=float)
    for name, w in (("w_f", w_f), ("w_r", w_r)):
        if w.ndim != 1 or len(w) < 2:
            raise ValueError(f"{name} must be a 1-D array of at least 2 works (kT)")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{name} contains non-finite works (a blown-up switching run?)")
    b = pymbar.other_estimators.bar(w_f, w_r)
    jf = pymbar.other_estimators.exp(w_f)
    jr = pymbar.other_estimators.exp(w_r)
    dg = float(b["Delta_f"])
    return dict(bar=dg, dbar=float(b["dDelta_f"]),
                jarzynski_forward=float(jf["Delta_f"]), djarzynski_forward=float(jf["dDelta_f"]),
                jarzynski_reverse=-float(jr["Delta_f"]), djarzynski_reverse=float(jr["dDelta_f"]),
                dissipation_forward=float(np.mean(w_f) - dg),
                dissipation_reverse=float(np.mean(w_r) + dg),
                n_forward=len(w_f), n_reverse=len(w_r))


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_overlap(overlap: np.ndarray, lambdas, path, title: str = "") -> None:
    plt = _pyplot()
    K = len(lambdas)
    fig, ax = plt.subplots(figsize=(0.5 * K + 2, 0.5 * K + 1.5))
    im = ax.imshow(overlap, cmap="Blues", vmin=0, vmax=max(1e-12, float(np.max(overlap))))
    if K <= 16:
        for i in range(K):
            for j in range(K):
                ax.text(j, i, f"{overlap[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ticks = [f"{x:.2g}" for x in lambdas]
    ax.set_xticks(range(K), ticks, rotation=90)
    ax.set_yticks(range(K), ticks)
    ax.set_xlabel("λ")
    ax.set_ylabel("λ")
    ax.set_title(title or "MBAR overlap matrix")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_convergence(conv: dict, kT: float, path, title: str = "",
                     reference: Optional[float] = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    f = conv["fraction"]
    ax.errorbar(f, conv["forward"] * kT, yerr=conv["dforward"] * kT, marker="o", ms=3,
                capsize=2, label="leading fraction")
    ax.errorbar(f, conv["reverse"] * kT, yerr=conv["dreverse"] * kT, marker="s", ms=3,
                capsize=2, label="trailing fraction")
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls="--", label="reference")
    ax.set_xlabel("fraction of samples per window")
    ax.set_ylabel("ΔG (kJ/mol)")
    ax.set_title(title or "MBAR convergence")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_work_distributions(w_f, w_r, kT: float, path, dg: Optional[float] = None,
                            title: str = "") -> None:
    """Histograms of W_F and −W_R (kJ/mol); by Crooks they cross at ΔG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    a, b = np.asarray(w_f) * kT, -np.asarray(w_r) * kT
    bins = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), 30)
    ax.hist(a, bins=bins, alpha=0.5, density=True, label="forward W (0→1)")
    ax.hist(b, bins=bins, alpha=0.5, density=True, label="−reverse W (1→0)")
    if dg is not None:
        ax.axvline(dg, color="k", lw=0.8, ls="--", label="BAR ΔG")
    ax.set_xlabel("work (kJ/mol)")
    ax.set_ylabel("density")
    ax.set_title(title or "non-equilibrium work")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
