"""Dense pair geometry of small open-boundary ML regions: the fast variant's Coulomb operator and
local pair list, built once per step.

The fast variant asks for the potential (and field) of the *current* ML charges five times per step
(every block, every polarisation iteration and the final energy) with the same positions and widths.
Charges enter linearly, so the geometry is built once as a [4, n, n] operator W and every later
evaluation is one matrix product, (φ, ∂φ/∂x, ∂φ/∂y, ∂φ/∂z) = W q:

    W_0ij = J_ij = k erf(a_ij r_ij) / r_ij,   a_ij = 1 / √(2(σ_i² + σ_j²))      (j ≠ i, W_ii = 0)
    W_aij = ∂J_ij/∂x_ia = k (2a/√π e^{−a²r²} − erf(a r)/r) (x_i − x_j)_a / r²

(the kernel of two normalised Gaussians of docs/electrostatics_api.md, self term removed; k = 1/(4πε0)).
Autograd goes through W once, however many times it is used. The same n×n distances give the local
message-passing pairs. Memory and work are O(n²), so the model uses this path only for ML regions
up to DENSE_MAX atoms without a box; larger regions and periodic boxes (Ewald/PME) use the
electrostatics core and geometry.neighbour_pairs.
"""
import math
from typing import Tuple

import torch

DENSE_MAX = 1024   # atoms; at 1024, W and its autograd buffers take ~0.2 GB in float32


def dense_geometry(positions: torch.Tensor, widths: torch.Tensor, coulomb: float, cutoff: float
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W [4, n, n], receiver i [E], sender j [E], r_ij = x_j − x_i [E, 3], |r_ij| [E]) with the pairs
    closer than `cutoff` in the order of geometry.neighbour_pairs. Atoms must not coincide."""
    n = positions.shape[0]
    eye = torch.eye(n, dtype=positions.dtype, device=positions.device)
    r = positions[:, None, :] - positions[None, :, :]     # x_i − x_j
    d2 = (r * r).sum(-1) + eye           # the diagonal is masked below; 1 keeps sqrt and 1/r finite
    d = d2.sqrt()
    s2 = widths * widths
    a = torch.rsqrt(2.0 * (s2[:, None] + s2[None, :]))
    off = (1.0 - eye) * coulomb
    erf_r = torch.erf(a * d) / d
    G = off * ((2.0 / math.sqrt(math.pi)) * a * torch.exp(-(a * a) * d2) - erf_r) / d2
    W = torch.cat([(off * erf_r)[None], G[None] * r.permute(2, 0, 1)], dim=0)
    with torch.no_grad():
        near = (d2 < cutoff * cutoff) & (eye == 0)
    ij = near.nonzero()
    i, j = ij[:, 0], ij[:, 1]
    return W, i, j, -r[i, j], d[i, j]


def potential(W: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    """φ [n] (kJ/mol/e) of the charges [n] at every atom."""
    return W[0] @ charges


def potential_and_gradient(W: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
    """Packed (φ, ∂φ/∂x, ∂φ/∂y, ∂φ/∂z) [n, 4] of the charges, the layout of the core's degree-1 output."""
    return (W @ charges).t()
