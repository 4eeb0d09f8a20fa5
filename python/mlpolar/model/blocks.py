"""Message-passing blocks of the local backbone.

Equivariant features in Cartesian form, channels last: scalars s [n, C], vectors v [n, 3, C],
symmetric traceless rank-2 tensors t [n, 3, 3, C]. A block couples a sender's features with the
pair direction u (unit vector) through the nine products that keep rank ≤ 2 and parity, weighs
each by a learned function of the distance (smooth Bessel basis), sums over neighbours and
updates: scalars through an MLP of themselves and the norms of the vector and tensor messages,
vectors and tensors by channel mixing gated with the new scalars (gates are invariant, so the
update stays equivariant).
"""
from typing import Tuple

import torch
from torch import nn


def mlp(n_in: int, n_hidden: int, n_out: int, bias_out: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out, bias=bias_out))


def traceless_sym(a: torch.Tensor) -> torch.Tensor:
    """Symmetric traceless part of [..., 3, 3, C] tensors (matrix axes 1 and 2)."""
    s = 0.5 * (a + a.transpose(1, 2))
    tr = s.diagonal(dim1=1, dim2=2).sum(-1)  # [n, C]
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    return s - tr[:, None, None] * eye[None, :, :, None] / 3.0


class CartesianBlock(nn.Module):
    """One equivariant interaction (scalar, vector and rank-2 channels)."""

    def __init__(self, channels: int, radial_basis: int, avg_neighbours: float):
        super().__init__()
        C = channels
        self.channels = C
        self.norm = 1.0 / avg_neighbours
        self.radial = mlp(radial_basis, C, 9 * C)
        self.mix_s = nn.Linear(C, C)
        self.mix_v = nn.Linear(C, C, bias=False)
        self.mix_t = nn.Linear(C, C, bias=False)
        self.update_s = mlp(4 * C, C, C)
        self.out_v = nn.Linear(C, C, bias=False)
        self.out_t = nn.Linear(C, C, bias=False)
        self.gates = nn.Linear(C, 2 * C)

    def forward(self, s: torch.Tensor, v: torch.Tensor, t: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                u: torch.Tensor, basis: torch.Tensor, env: torch.Tensor):
        n, C, E = s.shape[0], self.channels, i.shape[0]
        R = (self.radial(basis) * env[:, None]).view(E, 9, C)
        sj = self.mix_s(s)[j]                    # [E, C]
        vj = self.mix_v(v)[j]                    # [E, 3, C]
        tj = self.mix_t(t)[j]                    # [E, 3, 3, C]
        uc = u[:, :, None]                       # [E, 3, 1]
        tu = (tj * u[:, None, :, None]).sum(2)   # t·u  [E, 3, C]
        eye = torch.eye(3, dtype=u.dtype, device=u.device)
        uu = u[:, :, None] * u[:, None, :] - eye / 3.0
        m_s = R[:, 0] * sj + R[:, 1] * (vj * uc).sum(1) + R[:, 2] * (tu * uc).sum(1)
        m_v = (R[:, 3] * sj)[:, None, :] * uc + R[:, 4, None, :] * vj + R[:, 5, None, :] * tu
        vu = traceless_sym(vj[:, :, None, :] * u[:, None, :, None])
        m_t = (R[:, 6] * sj)[:, None, None, :] * uu[..., None] + R[:, 7, None, None, :] * vu \
            + R[:, 8, None, None, :] * tj
        M_s = torch.zeros(n, C, dtype=s.dtype, device=s.device).index_add(0, i, m_s) * self.norm
        M_v = torch.zeros(n, 3, C, dtype=s.dtype, device=s.device).index_add(0, i, m_v) * self.norm
        M_t = torch.zeros(n, 3, 3, C, dtype=s.dtype, device=s.device).index_add(0, i, m_t) * self.norm
        s = s + self.update_s(torch.cat([s, M_s, (M_v * M_v).sum(1), (M_t * M_t).sum((1, 2))], dim=1))
        g = torch.sigmoid(self.gates(s))
        v = v + self.out_v(M_v) * g[:, None, :C]
        t = t + self.out_t(M_t) * g[:, None, None, C:]
        return s, v, t


class ChargeBlock(nn.Module):
    """One invariant interaction of the fast variant (MPNICE): messages from the neighbours' scalars
    weighed by the distance, plus charge-weighted radial features Σ_j b_k(r_ij) q_j^σ, plus the
    electrostatic potential of the current charges at the atom."""

    def __init__(self, channels: int, radial_basis: int, avg_neighbours: float):
        super().__init__()
        C = channels
        self.channels = C
        self.norm = 1.0 / avg_neighbours
        self.radial = mlp(radial_basis, C, C)
        self.mix = nn.Linear(C, C)
        self.update = mlp(2 * C + 2 * radial_basis + 3, C, C)
        self.charge_head = nn.Linear(C, 4)   # new (q_α, q_β, Fukui logits α, β) before equilibration

    def forward(self, s: torch.Tensor, q: torch.Tensor, phi: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                basis: torch.Tensor, env: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        n = s.shape[0]
        m = self.radial(basis) * env[:, None] * self.mix(s)[j]
        M = torch.zeros(n, self.channels, dtype=s.dtype, device=s.device).index_add(0, i, m) * self.norm
        qb = (basis[:, :, None] * q[j][:, None, :]).reshape(i.shape[0], -1)   # [E, 2K]
        Q = torch.zeros(n, qb.shape[1], dtype=s.dtype, device=s.device).index_add(0, i, qb)
        s = s + self.update(torch.cat([s, M, Q, q, phi[:, None]], dim=1))
        return s, self.charge_head(s)
