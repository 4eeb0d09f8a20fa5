"""Per-element reference energies, fitted before training.

The DFT label is a total QM/MM energy (≈ −8·10⁵ kJ/mol for p-xylene), the network's output is
an interaction-scale quantity; the gap is a sum of per-element atomic energies
E ≈ Σ_Z n_Z E_Z, fitted by linear least squares on the training set (one fit per head: the atomic
energies belong to a level of theory). With one composition only (p-xylene) the problem is rank
deficient; ``numpy.linalg.lstsq`` then returns the minimum-norm solution, which still reproduces
the mean energy exactly — all that matters, as the metrics remove the mean offset.

The values go into the model (docs/interfaces.md: the model reports ``energy_reference``):
through ``model.set_energy_reference(head, values)`` when it has that method, else into its
``reference_energy`` tensor [n_heads, n_elements] (MLPolar's parameter, row = head, column =
``model.elements`` order). A model with neither gets them added outside, by the trainer
(:func:`mlpolar.train.predict.predict`), and they are stored in the checkpoint.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def fit_reference(configs, elements: Sequence[int]) -> np.ndarray:
    """Least-squares per-element energies (kJ/mol, order of ``elements``) for the labels'
    total energies."""
    elements = [int(z) for z in elements]
    pos = {z: k for k, z in enumerate(elements)}
    A = np.zeros((len(configs), len(elements)))
    y = np.zeros(len(configs))
    for r, c in enumerate(configs):
        for z in c.species.tolist():
            if z not in pos:
                raise ValueError(f"element Z={z} of {c.key} is not in the model's elements "
                                 f"{elements}; add it to the model config")
            A[r, pos[z]] += 1
        y[r] = float(c.energy)
    if not len(configs):
        raise ValueError("no training configurations to fit the reference energies on")
    # energies of ~1e6 kJ/mol: one step of iterative refinement brings the residual of the
    # least-squares solution from ~1e-8 relative to round-off
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    sol += np.linalg.lstsq(A, y - A @ sol, rcond=None)[0]
    return sol


def install_reference(model, head: str, values) -> bool:
    """Put the reference into the model if it supports it; True when it did."""
    setter = getattr(model, "set_energy_reference", None)
    p = next(model.parameters())
    v = torch.as_tensor(np.asarray(values), dtype=p.dtype, device=p.device)
    if setter is not None:
        setter(head, v)
        return True
    table = getattr(model, "reference_energy", None)
    if isinstance(table, torch.Tensor) and tuple(table.shape) == (len(model.heads),
                                                                 len(model.elements)):
        with torch.no_grad():
            table[list(model.heads).index(head)] = v.to(table)
        return True
    return False
