"""The issue's accuracy metrics, in kcal/mol and kcal/mol/Å, and parity plots.

Inputs are in mlpolar units (kJ/mol, kJ/mol/nm); the figures are reported in the units of the
issue's targets:

* energy MAE after removing the mean offset: MAE of (ΔE − mean ΔE), ΔE = predicted − reference
  (the model's absolute energy zero is a per-species reference, only differences matter);
* QM force MAE: mean over all QM atoms and Cartesian components of |F_pred − F_ref|;
* MM force MAE over MM atoms within 0.6 nm of any QM atom (same configuration; the label's MM
  positions are already imaged around the QM region, so plain distances are minimum-image);
* interaction-energy MAE (embedded − vacuum at the same geometry) and its ratio to the fixed-charge
  baseline's MAE on the same configurations (the target is a ratio ≤ 1/3).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..units import ANGSTROM_TO_NM, KCAL_TO_KJ

KCAL = KCAL_TO_KJ                       # kJ/mol per kcal/mol
KCAL_PER_A = KCAL_TO_KJ / ANGSTROM_TO_NM  # kJ/mol/nm per kcal/mol/Å (= 41.84)
MM_FORCE_RADIUS_NM = 0.6


def energy_mae_offset_removed(pred, ref) -> float:
    """kJ/mol in, kcal/mol out."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(ref, dtype=np.float64)
    return float(np.mean(np.abs(d - d.mean())) / KCAL)


def force_mae(pred: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """MAE over all atoms and components of a list of (n_i, 3) arrays; kJ/mol/nm in,
    kcal/mol/Å out."""
    p = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in pred])
    r = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in ref])
    if p.shape != r.shape:
        raise ValueError(f"force arrays differ in size ({p.size} vs {r.size})")
    return float(np.mean(np.abs(p - r)) / KCAL_PER_A) if p.size else float("nan")


def near_mm_mask(qm_positions, mm_positions, radius_nm: float = MM_FORCE_RADIUS_NM) -> np.ndarray:
    """True for MM atoms within ``radius_nm`` of any QM atom."""
    a = np.asarray(qm_positions, dtype=np.float64)
    b = np.asarray(mm_positions, dtype=np.float64)
    r = np.linalg.norm(b[:, None, :] - a[None, :, :], axis=-1)
    return r.min(axis=1) < radius_nm


def mae(pred, ref, scale: float = 1.0) -> float:
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(ref, float))) / scale)


def compute_metrics(pred: Dict[str, list], ref: Dict[str, list],
                    baseline_interaction: Optional[Sequence[float]] = None) -> Dict[str, float]:
    """All metrics from per-configuration predictions and labels.

    ``pred`` / ``ref``: dicts of lists (one entry per configuration) with keys ``energy``,
    ``qm_forces``, ``mm_forces``, and optionally ``interaction_energy``, ``charges``,
    ``dipole``; ``ref`` also ``qm_positions`` and ``mm_positions`` (for the 0.6 nm selection).
    ``baseline_interaction``: the fixed-charge E_int per configuration (kJ/mol).
    """
    m = {"n_configurations": len(ref["energy"]),
         "energy_mae_kcal": energy_mae_offset_removed(pred["energy"], ref["energy"]),
         "qm_force_mae_kcal_A": force_mae(pred["qm_forces"], ref["qm_forces"])}
    masks = [near_mm_mask(q, x) for q, x in zip(ref["qm_positions"], ref["mm_positions"])]
    m["mm_force_mae_kcal_A"] = force_mae([f[k] for f, k in zip(pred["mm_forces"], masks)],
                                         [f[k] for f, k in zip(ref["mm_forces"], masks)])
    m["n_mm_near"] = int(sum(k.sum() for k in masks))
    if "interaction_energy" in pred and "interaction_energy" in ref:
        m["interaction_mae_kcal"] = mae(pred["interaction_energy"], ref["interaction_energy"], KCAL)
        if baseline_interaction is not None:
            b = mae(baseline_interaction, ref["interaction_energy"], KCAL)
            m["baseline_interaction_mae_kcal"] = b
            m["interaction_mae_ratio_to_baseline"] = m["interaction_mae_kcal"] / b if b > 0 else float("inf")
    if "charges" in pred and "charges" in ref:
        m["charge_mae_e"] = mae(np.concatenate(pred["charges"]), np.concatenate(ref["charges"]))
    if "dipole" in pred and "dipole" in ref:
        m["dipole_mae_e_nm"] = mae(np.stack(pred["dipole"]), np.stack(ref["dipole"]))
    return m


def parity_plots(pred: Dict[str, list], ref: Dict[str, list], out_dir, prefix: str = "",
                 title: str = "", baseline_interaction: Optional[Sequence[float]] = None) -> list:
    """PNG parity plots (energy with the mean offset removed, QM forces, MM forces within 0.6 nm,
    interaction energy when present, with the fixed-charge baseline's points when given) in
    kcal/mol and kcal/mol/Å. Returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    masks = [near_mm_mask(q, x) for q, x in zip(ref["qm_positions"], ref["mm_positions"])]
    e_p, e_r = np.asarray(pred["energy"], float), np.asarray(ref["energy"], float)
    units = {"energy": "kcal/mol", "qm_forces": "kcal/mol/Å", "mm_forces": "kcal/mol/Å",
             "interaction_energy": "kcal/mol"}
    panels = [
        ("energy", "energy − mean offset (kcal/mol)",
         (e_p - np.mean(e_p - e_r)) / KCAL, e_r / KCAL),
        ("qm_forces", "QM force components (kcal/mol/Å)",
         np.concatenate([f.reshape(-1) for f in pred["qm_forces"]]) / KCAL_PER_A,
         np.concatenate([f.reshape(-1) for f in ref["qm_forces"]]) / KCAL_PER_A),
        ("mm_forces", "MM force components, atoms < 0.6 nm (kcal/mol/Å)",
         np.concatenate([f[k].reshape(-1) for f, k in zip(pred["mm_forces"], masks)]) / KCAL_PER_A,
         np.concatenate([f[k].reshape(-1) for f, k in zip(ref["mm_forces"], masks)]) / KCAL_PER_A),
    ]
    if "interaction_energy" in pred and "interaction_energy" in ref:
        panels.append(("interaction_energy", "interaction energy (kcal/mol)",
                       np.asarray(pred["interaction_energy"]) / KCAL,
                       np.asarray(ref["interaction_energy"]) / KCAL))
    paths = []
    for name, label, p, r in panels:
        fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
        ax.scatter(r, p, s=6, alpha=0.6, label="model")
        lo, hi = (float(min(r.min(), p.min())), float(max(r.max(), p.max()))) if r.size else (0, 1)
        t = f"{title} MAE {np.mean(np.abs(p - r)):.3g} {units[name]}" if r.size else title
        if name == "interaction_energy" and baseline_interaction is not None:
            b = np.asarray(baseline_interaction, float) / KCAL
            ax.scatter(r, b, s=6, alpha=0.6, marker="x", label="fixed charges")
            ax.legend(fontsize=7)
            lo, hi = min(lo, float(b.min())), max(hi, float(b.max()))
            t += f" (fixed charges {np.mean(np.abs(b - r)):.3g})"
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(t.strip(), fontsize=8)
        ax.set_xlabel(f"reference {label}", fontsize=8)
        ax.set_ylabel(f"model {label}", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{prefix}parity_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
