"""Evaluate a model (docs/interfaces.md, "Model") on labelled configurations.

The labels are QM/MM energies in the field of the label's MM point charges without periodicity
(PySCF ``mm_charge``), so the model sees exactly those charges and ``box=None``. Forces are
−∂E/∂x by autograd, with ``create_graph=True`` while training (the force loss needs the
gradient of the gradient). The molecular dipole is Σ q_i (r_i − O) + Σ μ_i about the centroid
O of the QM positions, the labels' origin.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .dataset import Configuration


def model_outputs(model, c: Configuration, head: Optional[str], *, with_mm: bool = True):
    q = torch.tensor([c.total_charge], dtype=c.positions.dtype, device=c.positions.device)
    mult = torch.tensor([c.multiplicity], dtype=torch.int64, device=c.positions.device)
    return model(c.species, c.positions, q, mult, None,
                 c.mm_positions if with_mm else None, c.mm_charges if with_mm else None,
                 None, None, head)


def predict(model, c: Configuration, head: Optional[str] = None, *,
            reference: Optional[torch.Tensor] = None, create_graph: bool = False,
            interaction: bool = False) -> Dict[str, torch.Tensor]:
    """Energy, QM and MM forces, charges and dipole of one configuration.

    reference: per-element reference energies (kJ/mol, ``model.elements`` order) added to the
    energy when the model does not hold them itself (see :mod:`mlpolar.train.reference`).
    interaction: also the interaction energy E(with MM charges) − E(without) at this geometry.
    Tensors keep their graph when ``create_graph``; otherwise they are detached.
    """
    pos = c.positions.detach().requires_grad_(True)
    mm = c.mm_positions.detach().requires_grad_(True)
    cc = Configuration(**{**c.__dict__, "positions": pos, "mm_positions": mm})
    out = model_outputs(model, cc, head)
    energy = out["energy"]
    if reference is not None:
        energy = energy + reference_energy(model, c.species, reference)
    g_pos, g_mm = torch.autograd.grad(energy, [pos, mm], create_graph=create_graph,
                                      allow_unused=True)
    res = {"energy": energy,
           "qm_forces": -g_pos if g_pos is not None else torch.zeros_like(pos),
           "mm_forces": -g_mm if g_mm is not None else torch.zeros_like(mm)}
    if "charges" in out:
        qa = out["charges"]
        res["charges"] = qa
        x = pos - pos.mean(dim=0).detach()
        dip = (qa[:, None] * x).sum(dim=0)
        if out.get("dipoles") is not None:
            dip = dip + out["dipoles"].sum(dim=0)
        res["dipole"] = dip
    if interaction:
        # E(with MM) - E(without) at this geometry; the per-element reference cancels. With
        # create_graph the vacuum pass keeps its graph (the interaction loss trains through it).
        with torch.set_grad_enabled(create_graph):
            vac = model_outputs(model, c, head, with_mm=False)["energy"]
        res["interaction_energy"] = out["energy"] - vac
    if not create_graph:
        res = {k: v.detach() for k, v in res.items()}
    return res


def reference_energy(model, species: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Σ_i E_ref[Z_i] for per-element values in ``model.elements`` order."""
    lookup = torch.full((int(max(model.elements)) + 1,), -1, dtype=torch.int64,
                        device=species.device)
    lookup[torch.as_tensor(list(model.elements), device=species.device)] = \
        torch.arange(len(model.elements), device=species.device)
    idx = lookup[species]
    return reference.to(species.device)[idx].sum()
