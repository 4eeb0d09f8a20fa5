"""``mlpolar bond-scan MODEL STORE``: a model's energy along one bond stretch, in vacuum, next to
DFT at the store's level of theory.

Why: a model learns a bond's stiffness only from labels in which that bond length varies. Labels
sampled with H-bond constraints hold every X-H length at its force-field value, and a model
trained on them can have a nearly flat X-H stretch that no test-set metric reveals (the test
configurations are constrained too). A scan shows it directly: the fitted minimum r0 and force
constant k of the model against DFT.

The stretch moves atom ``j`` along the i -> j direction (every other atom fixed), so only the
i-j length changes to first order. Energies are relative to each curve's lowest point; r0 and k
come from a quadratic fit E = E0 + k/2 (r - r0)^2 over the points within ``fit_window`` of the
lowest one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..units import ANGSTROM_TO_NM, KCAL_TO_KJ

# Longest X-H distance taken as a bond when the scan picks its default bond.
_XH_MAX_NM = 0.125


def stretched(positions: np.ndarray, i: int, j: int, lengths: Sequence[float]) -> np.ndarray:
    """Geometries (k, n, 3) with atom j moved along i -> j so that |r_j - r_i| = each length."""
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0]
    for name, a in (("i", i), ("j", j)):
        if not 0 <= a < n:
            raise ValueError(f"bond atom {name}={a} is out of range for {n} atoms")
    if i == j:
        raise ValueError(f"bond atoms i and j are both {i}; give two different atoms")
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.ndim != 1 or len(lengths) < 3 or np.any(lengths <= 0):
        raise ValueError(f"lengths must be >= 3 positive bond lengths (nm), got {lengths}")
    d = pos[j] - pos[i]
    u = d / np.linalg.norm(d)
    out = np.repeat(pos[None], len(lengths), axis=0)
    out[:, j] = pos[i][None] + lengths[:, None] * u[None]
    return out


def default_xh_bond(species: Sequence[int], positions: np.ndarray, heavy: int = 6) -> tuple:
    """The first (heavy, H) pair closer than 0.125 nm, heavy atom of element ``heavy``."""
    z = np.asarray(species)
    pos = np.asarray(positions, dtype=np.float64)
    for i in np.flatnonzero(z == heavy):
        for j in np.flatnonzero(z == 1):
            if np.linalg.norm(pos[j] - pos[i]) < _XH_MAX_NM:
                return int(i), int(j)
    raise ValueError(f"no bond between an element-{heavy} atom and a hydrogen within "
                     f"{_XH_MAX_NM} nm; pass --bond I J")


def model_energies(model, species: torch.Tensor, geometries: np.ndarray, *,
                   head: Optional[str] = None) -> np.ndarray:
    """Vacuum energies (kJ/mol) of ``model`` at each geometry (open boundaries, no MM)."""
    dtype = next(model.parameters()).dtype
    dev = next(model.parameters()).device
    q = torch.zeros(1, dtype=dtype, device=dev)
    mult = torch.ones(1, dtype=torch.int64, device=dev)
    head = head or list(model.heads)[0]
    out = []
    with torch.no_grad():
        for g in geometries:
            pos = torch.as_tensor(g, dtype=dtype, device=dev)
            e = model(species.to(dev), pos, q, mult, None, None, None, None, None, head)["energy"]
            out.append(float(e))
    return np.asarray(out)


def dft_energies(species: Sequence[int], geometries: np.ndarray, level) -> np.ndarray:
    """Vacuum energies (kJ/mol) at ``level`` (mlpolar.data.qmmm.Level), each SCF started from
    the previous density (neighbouring geometries)."""
    from ..data.qmmm import build_mol, make_scf
    from ..units import HARTREE_TO_KJMOL
    out, dm = [], None
    for g in geometries:
        mf = make_scf(build_mol(species, g, basis=level.basis,
                                max_memory_mb=level.max_memory_mb), level)
        e = mf.kernel(dm0=dm)
        if not mf.converged:
            raise RuntimeError(f"vacuum SCF did not converge in {level.max_cycle} cycles")
        dm = mf.make_rdm1()
        out.append(float(e) * HARTREE_TO_KJMOL)
    return np.asarray(out)


def fit_harmonic(lengths: Sequence[float], energies: Sequence[float],
                 fit_window: float = 0.006) -> dict:
    """r0 (nm) and k (kJ/mol/nm^2, and kcal/mol/Å^2) of E = E0 + k/2 (r - r0)^2 fitted to the
    points within ``fit_window`` nm of the lowest one. r0 is reported even when it falls
    outside the scan (a flat or inverted curve gives k <= 0: the fit says so)."""
    r = np.asarray(lengths, dtype=np.float64)
    e = np.asarray(energies, dtype=np.float64)
    sel = np.abs(r - r[np.argmin(e)]) <= fit_window + 1e-12
    if sel.sum() < 3:
        order = np.argsort(np.abs(r - r[np.argmin(e)]))
        sel = np.zeros_like(sel)
        sel[order[:3]] = True
    a, b, _ = np.polyfit(r[sel], e[sel], 2)
    k = 2.0 * a
    r0 = -b / (2.0 * a) if a != 0 else float("nan")
    return {"r0_nm": float(r0), "k_kj_mol_nm2": float(k),
            "k_kcal_mol_A2": float(k / KCAL_TO_KJ * ANGSTROM_TO_NM ** 2),
            "n_fit": int(sel.sum())}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("model", help="training checkpoint or saved model (as for 'mlpolar evaluate'), "
                    "or 'default' for the shipped model")
    ap.add_argument("store", help="label store (HDF5) giving the geometry and the level of theory")
    ap.add_argument("--index", type=int, help="configuration of the store (default: the first)")
    ap.add_argument("--bond", type=int, nargs=2, metavar=("I", "J"),
                    help="QM atom indices; J moves (default: the first C-H bond)")
    ap.add_argument("--lengths", default="0.095:0.125:13",
                    help="bond lengths 'start:stop:count' in nm (default 0.095:0.125:13)")
    ap.add_argument("--dft", action="store_true", help="also the DFT curve at the store's level "
                    "(about 10-20 s per point for p-xylene on one core)")
    ap.add_argument("--head", help="model head (default: the first)")
    ap.add_argument("--out", default="bond_scan", help="folder for bond_scan.json and .png")


def _parse_lengths(text: str) -> np.ndarray:
    try:
        a, b, n = text.split(":")
        return np.linspace(float(a), float(b), int(n))
    except ValueError as e:
        raise ValueError(f"--lengths {text!r} must be 'start:stop:count' in nm, e.g. "
                         "0.095:0.125:13") from e


def command(a: argparse.Namespace) -> int:
    from ..data.qmmm import Level
    from ..data.store import LabelStore
    from .evaluate import load_for_evaluation
    lengths = _parse_lengths(a.lengths)
    if not Path(a.store).exists():
        raise FileNotFoundError(f"label store {a.store} does not exist")
    with LabelStore(a.store, mode="r") as s:
        done = sorted(s.done_indices())
        if not done:
            raise ValueError(f"{a.store} holds no finished configuration")
        index = done[0] if a.index is None else a.index
        if index not in done:
            raise ValueError(f"--index {index} is not a finished configuration of {a.store}")
        r = s.read(index)
        level = Level.from_dict(s.level())
    species, pos = np.asarray(r["qm_atomic_numbers"], dtype=np.int64), np.asarray(r["qm_positions"])
    i, j = tuple(a.bond) if a.bond else default_xh_bond(species, pos)
    geoms = stretched(pos, i, j, lengths)
    if not Path(a.model).exists():  # a shipped model's name, or "default"
        from ..models import model_path
        a.model = str(model_path(a.model))
    model, _, head = load_for_evaluation(a.model)
    res = {"bond": [i, j], "elements": [int(species[i]), int(species[j])],
           "length_in_store_nm": float(np.linalg.norm(pos[j] - pos[i])),
           "lengths_nm": lengths.tolist(), "store": str(a.store), "index": int(index)}
    e_model = model_energies(model, torch.as_tensor(species), geoms, head=a.head or head)
    res["model"] = {"energy_kj_mol": (e_model - e_model.min()).tolist(),
                    **fit_harmonic(lengths, e_model)}
    if a.dft:
        e_dft = dft_energies(species, geoms, level)
        res["dft"] = {"level": level.describe(), "energy_kj_mol": (e_dft - e_dft.min()).tolist(),
                      **fit_harmonic(lengths, e_dft)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bond_scan.json").write_text(json.dumps(res, indent=1))
    _plot(res, out / "bond_scan.png")
    print(f"bond {i}-{j} (Z {species[i]}-{species[j]}), {res['length_in_store_nm']:.4f} nm in the store")
    print(f"{'r / nm':>8s} {'model':>10s}" + (f" {'DFT':>10s}" if a.dft else "") + "   (kJ/mol)")
    for n, L in enumerate(lengths):
        row = f"{L:8.4f} {res['model']['energy_kj_mol'][n]:10.2f}"
        if a.dft:
            row += f" {res['dft']['energy_kj_mol'][n]:10.2f}"
        print(row)
    for k in ("model", "dft"):
        if k in res:
            print(f"{k:5s}: r0 {res[k]['r0_nm']:.4f} nm, k {res[k]['k_kcal_mol_A2']:.0f} "
                  "kcal/mol/A^2 (E = k/2 (r - r0)^2)")
    print(f"written {out / 'bond_scan.json'} and {out / 'bond_scan.png'}")
    return 0


def _plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for k, style in (("model", "o-"), ("dft", "s--")):
        if k in res:
            ax.plot(res["lengths_nm"], res[k]["energy_kj_mol"], style, label=k)
    ax.axvline(res["length_in_store_nm"], color="grey", lw=0.8)
    ax.set_xlabel("bond length / nm")
    ax.set_ylabel("E − E_min / kJ mol⁻¹")
    ax.set_title(f"bond {res['bond'][0]}–{res['bond'][1]} stretch, vacuum")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
