"""The fixed-charge baseline of the QM/MM interaction energy (issue 7).

A classical force field sees the ligand–environment electrostatics as the Coulomb energy of the
ligand's fixed AM1-BCC charges with the MM charges:

    E_int^FF = (1/4πε0) Σ_i∈QM Σ_J∈MM q_i q_J / |r_i − r_J|

with the *same* MM charges and positions as the label (the store's selection, imaged around the
QM region, no periodicity, no cutoff). The DFT interaction energy is ``energy − energy_vacuum``
of the same geometry: it contains the polarisation of the ligand's density by the environment,
which fixed charges lack (and which the model is meant to learn). The baseline's error is the MAE
of E_int^FF against E_int^DFT.

The ligand charges are those of openmmtools' ``T4-lysozyme-L99A-implicit/ligand.prmtop`` (GAFF,
AM1-BCC), the parameters ``mlpolar.data.systems`` gives the ligand; the stores list the QM atoms
as ``prep.ligand_indices``, i.e. in prmtop order, which :func:`ligand_charges_for` checks
element by element.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from ..units import KCAL_TO_KJ, ONE_4PI_EPS0


@lru_cache(maxsize=1)
def ligand_am1bcc_charges() -> tuple[np.ndarray, np.ndarray]:
    """(charges e, atomic numbers) of the ligand prmtop atoms, in prmtop order."""
    from ..data.systems import ligand_prmtop, nonbonded_charges
    import openmm.app as app
    prm = ligand_prmtop()
    q = nonbonded_charges(prm.createSystem(nonbondedMethod=app.NoCutoff))
    z = np.array([a.element.atomic_number for a in prm.topology.atoms()], dtype=np.int64)
    return q, z


def ligand_charges_for(species: Sequence[int]) -> np.ndarray:
    """AM1-BCC charges for a QM region given as the ligand's atoms in prmtop order."""
    q, z = ligand_am1bcc_charges()
    species = np.asarray(species, dtype=np.int64)
    if species.shape != z.shape or not np.array_equal(species, z):
        raise ValueError(f"the QM region's atomic numbers {species.tolist()} are not the ligand "
                         f"prmtop's {z.tolist()} in order; the fixed-charge baseline needs the QM "
                         "atoms listed as prep.ligand_indices (as mlpolar.data writes them)")
    return q


def coulomb_interaction(qm_positions, qm_charges, mm_positions, mm_charges) -> float:
    """(1/4πε0) Σ_ij q_i Q_j / r_ij in kJ/mol (positions nm, charges e), direct sum, no cutoff."""
    a = np.asarray(qm_positions, dtype=np.float64)
    b = np.asarray(mm_positions, dtype=np.float64)
    r = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    if np.any(r < 1e-6):
        raise ValueError("a QM and an MM position coincide (r < 1e-6 nm); the MM set must exclude "
                         "the QM atoms")
    return float(ONE_4PI_EPS0 * np.asarray(qm_charges) @ (1.0 / r) @ np.asarray(mm_charges))


def baseline_interaction_energies(configs) -> tuple[np.ndarray, np.ndarray]:
    """(fixed-charge E_int, DFT E_int) in kJ/mol, one entry per configuration."""
    ff, dft = [], []
    for c in configs:
        q = ligand_charges_for(c.species.cpu().numpy())
        ff.append(coulomb_interaction(c.positions.cpu().numpy(), q, c.mm_positions.cpu().numpy(),
                                      c.mm_charges.cpu().numpy()))
        dft.append(float(c.energy - c.energy_vacuum))
    return np.array(ff), np.array(dft)


def summary(configs) -> dict:
    """Baseline MAE and the spread of both interaction energies, kcal/mol."""
    ff, dft = baseline_interaction_energies(configs)
    k = KCAL_TO_KJ
    return {"n_configurations": len(dft),
            "baseline_interaction_mae_kcal": float(np.mean(np.abs(ff - dft)) / k),
            "dft_interaction_mean_kcal": float(dft.mean() / k), "dft_interaction_std_kcal": float(dft.std() / k),
            "baseline_interaction_mean_kcal": float(ff.mean() / k),
            "baseline_interaction_std_kcal": float(ff.std() / k)}


if __name__ == "__main__":   # python -m mlpolar.train.baseline STORE.h5 [...]
    import json
    import sys

    from .dataset import load_store
    for path in sys.argv[1:]:
        print(path, json.dumps(summary(load_store(path)), indent=1))
