"""A small but complete polarisable model with the interface of ``mlpolar.model.MLPolar``
(docs/interfaces.md), used to exercise the training loop while the project's model (issue 4) is
built elsewhere, and to keep the trainer's tests fast.

Physics (charge-equilibration flavoured): a radial descriptor of each atom's ML neighbours gives a
local energy e_i (per head) and an electronegativity χ_i; the MM point charges' potential φ_i
(Coulomb, no cutoff, no periodicity) shifts the charges, q_i = −χ_i − a_Z φ_i / (4πε0·1 nm⁻¹),
then the total charge is restored by an equal shift. Energy:
    E = Σ e_i + Σ q_i φ_i + ½ Σ J_Z q_i² + Σ E_ref[head, Z_i].
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn

ONE_4PI_EPS0 = 138.93545764438198


class TinyPolarModel(nn.Module):
    def __init__(self, elements: List[int], heads: List[str], n_basis: int = 6,
                 hidden: int = 16, mm_cutoff: float = 1.2):
        super().__init__()
        self.elements = [int(z) for z in elements]
        self.heads = list(heads)
        self.mm_cutoff = float(mm_cutoff)
        self.config = {"elements": self.elements, "heads": self.heads, "n_basis": n_basis,
                       "hidden": hidden, "mm_cutoff": mm_cutoff}
        lookup = torch.full((max(self.elements) + 1,), -1, dtype=torch.int64)
        lookup[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("lookup", lookup)
        self.register_buffer("centers", torch.linspace(0.08, 0.45, n_basis))
        self.register_buffer("energy_ref", torch.zeros(len(self.heads), len(self.elements)))
        self.embed = nn.Embedding(len(self.elements), hidden)
        self.net = nn.Sequential(nn.Linear(hidden + n_basis, hidden), nn.SiLU(),
                                 nn.Linear(hidden, len(self.heads) + 1))
        self.polarisability = nn.Parameter(torch.full((len(self.elements),), 0.05))
        self.hardness = nn.Parameter(torch.full((len(self.elements),), 500.0))

    def set_energy_reference(self, head: str, values: torch.Tensor) -> None:
        with torch.no_grad():
            self.energy_ref[self.heads.index(head)] = values.to(self.energy_ref)

    def forward(self, species, positions, total_charge, multiplicity, fragments=None,
                mm_positions=None, mm_charges=None, box=None, external_field=None,
                head: Optional[str] = None) -> Dict[str, torch.Tensor]:
        h = 0 if head is None else self.heads.index(head)
        s = self.lookup[species]
        n = positions.shape[0]
        d = positions[:, None, :] - positions[None, :, :]
        r = torch.sqrt((d ** 2).sum(-1) + torch.eye(n, dtype=positions.dtype,
                                                      device=positions.device))
        off = 1.0 - torch.eye(n, dtype=positions.dtype, device=positions.device)
        g = torch.exp(-((r[..., None] - self.centers) / 0.05) ** 2) * off[..., None]
        x = torch.cat([self.embed(s), g.sum(1)], dim=-1)
        y = self.net(x)
        e_local, chi = y[:, h], y[:, -1] * 0.1
        if mm_positions is not None and mm_charges is not None and mm_positions.shape[0] > 0:
            rm = torch.linalg.norm(positions[:, None, :] - mm_positions[None, :, :], dim=-1)
            phi = ONE_4PI_EPS0 * (mm_charges[None, :] / rm).sum(-1)
        else:
            phi = torch.zeros(n, dtype=positions.dtype, device=positions.device)
        q = -chi - self.polarisability[s] * phi / ONE_4PI_EPS0
        q = q + (total_charge.sum() - q.sum()) / n
        e_emb = (q * phi).sum()
        e_self = 0.5 * (self.hardness[s] * q ** 2).sum()
        e_ref = self.energy_ref[h][s].sum()
        energy = e_local.sum() + e_emb + e_self + e_ref
        return {"energy": energy, "energy_reference": e_ref, "energy_local": e_local.sum() + e_self,
                "energy_embedding": e_emb, "charges": q,
                "dipoles": torch.zeros_like(positions)}


def make(**kwargs) -> TinyPolarModel:
    return TinyPolarModel(**kwargs)
