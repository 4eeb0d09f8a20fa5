"""One non-self-consistent polarisation iteration: fields in, multipole updates and Fukui weights out.

The fields at atom i are the potential derivatives of everything but the atom's own density:
the current ML density (electrostatics core, self term removed), the MM charges (Taylor features
T0..T3 of the embedding operator) and a uniform external field. They enter, made dimensionless
(feature_length), as in Lei, Yagi & Sugita: learned per-atom multipoles (q_c, μ_c, Θ_c) of C_p
channels are contracted with them into interaction-energy-like invariants

    q_c φ,   μ_c·∇φ,   ⅓ Θ_c:∇∇φ,   Θ_c:(∇∇∇φ·μ_c)

and into equivariant sources for the dipole (∇φ, ∇∇φ·μ_c, μ_c) and quadrupole updates.
"""
from typing import Optional, Tuple

import torch
from torch import nn

from .blocks import mlp, traceless_sym


class EquivariantUpdate(nn.Module):
    def __init__(self, channels: int, contraction: int, quadrupoles: bool):
        super().__init__()
        C, P = channels, contraction
        self.P = P
        self.quadrupoles = quadrupoles
        self.lin_q = nn.Linear(C, P)
        self.lin_mu = nn.Linear(C, P, bias=False)
        self.lin_th = nn.Linear(C, P, bias=False)
        self.update = mlp(C + 4 * P + 3, C, C)
        self.n_vec = 1 + 2 * P
        self.n_ten = 1 + 2 * P
        n_out = 4 + 2 * self.n_vec + (2 * self.n_ten if quadrupoles else 0)
        self.head = nn.Linear(C, n_out)

    def forward(self, s: torch.Tensor, v: torch.Tensor, t: torch.Tensor, q: torch.Tensor, phi: torch.Tensor,
                grad: torch.Tensor, hess: torch.Tensor, t3: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(s', Δq^σ [n,2], Fukui logits [n,2], Δμ^σ [n,3,2], ΔΘ^σ [n,3,3,2] or None)."""
        n, P = s.shape[0], self.P
        qc = self.lin_q(s)
        mc = self.lin_mu(v)                                       # [n, 3, P]
        tc = self.lin_th(t)                                       # [n, 3, 3, P]
        inv = [qc * phi[:, None], (mc * grad[:, :, None]).sum(1), (tc * hess[:, :, :, None]).sum((1, 2)) / 3.0]
        if t3 is not None:
            t3m = torch.einsum("nabc,nck->nabk", t3, mc)
            inv.append((tc * t3m).sum((1, 2)))
        else:
            inv.append(torch.zeros_like(qc))
        g2 = (grad * grad).sum(1, keepdim=True)
        s = s + self.update(torch.cat([s] + inv + [g2, q], dim=1))
        out = self.head(s)
        dq, logits = out[:, 0:2], out[:, 2:4]
        k = 4 + 2 * self.n_vec
        w = out[:, 4:k].view(n, self.n_vec, 2)
        hm = torch.einsum("nab,nbk->nak", hess, mc)
        vec = torch.cat([grad[:, :, None], hm, mc], dim=2)        # [n, 3, 1 + 2P]
        dmu = torch.einsum("nas,nsk->nak", vec, w)
        dth: Optional[torch.Tensor] = None
        if self.quadrupoles:
            wt = out[:, k:].view(n, self.n_ten, 2)
            mg = traceless_sym(mc[:, :, None, :] * grad[:, None, :, None])
            ten = torch.cat([traceless_sym(hess[..., None]), tc, mg], dim=3)
            dth = torch.einsum("nabs,nsk->nabk", ten, wt)
        return s, dq, logits, dmu, dth


class ChargeUpdate(nn.Module):
    """Invariant update of the fast variant: charges only, from the potential and the field norm."""

    def __init__(self, channels: int, contraction: int):
        super().__init__()
        C, P = channels, contraction
        self.lin_q = nn.Linear(C, P)
        self.update = mlp(C + P + 3, C, C)
        self.head = nn.Linear(C, 4)

    def forward(self, s: torch.Tensor, q: torch.Tensor, phi: torch.Tensor, grad: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qc = self.lin_q(s)
        g2 = (grad * grad).sum(1, keepdim=True)
        s = s + self.update(torch.cat([s, qc * phi[:, None], g2, q], dim=1))
        out = self.head(s)
        return s, out[:, 0:2], out[:, 2:4]
