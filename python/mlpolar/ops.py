"""Thin Python front of the compiled operators in torch.ops.mlpolar.

The operators work on *packed Cartesian multi-index* arrays: column k of a degree-d array holds
the monomial (t,u,v) in the order (000), (100)(010)(001), (200)(110)(101)(020)(011)(002), ...
Coefficients are *source* coefficients c: a site's potential is phi(x) = sum_s c_s d^s K(x).
Outputs are potential derivatives d^t phi at each site. Physics conventions (charges, dipoles,
quadrupoles, units) live in mlpolar.electrostatics; this module only checks shapes and calls.
"""
from typing import List, Optional

import torch

from . import _library  # noqa: F401  (loads the operator library)
from . import ops_fake  # noqa: F401,E402  (fake kernels for torch.compile, after the library is loaded)


def ncart(degree: int) -> int:
    """Number of packed Cartesian monomials of degree <= `degree`."""
    return (degree + 1) * (degree + 2) * (degree + 3) // 6


def degree_of(ncols: int) -> int:
    """Degree d with ncart(d) == ncols."""
    for d in range(9):
        if ncart(d) == ncols:
            return d
    raise ValueError(f"{ncols} columns is no packed Cartesian degree (1, 4, 10, 20, ... columns)")


def multipole_field(positions: torch.Tensor, coeffs: torch.Tensor, widths: Optional[torch.Tensor],
                    box: Optional[torch.Tensor], exclusion_ptr: torch.Tensor, exclusion_idx: torch.Tensor,
                    cutoff: float, beta: float, deg_out: int, include_self: bool) -> torch.Tensor:
    """Real-space potential derivatives [n, ncart(deg_out)] at every site (no Coulomb constant).

    Open boundaries (box None): all non-excluded pairs with the Gaussian (or point) kernel.
    Periodic: minimum-image pairs inside `cutoff` with the kernel minus erf(beta r)/r, plus
    corrections for excluded pairs and the self term, so that adding the reciprocal sum at
    splitting `beta` gives the full Ewald result.
    """
    return torch.ops.mlpolar.multipole_field(positions, coeffs, widths, box, exclusion_ptr, exclusion_idx,
                                             float(cutoff), float(beta), int(deg_out), bool(include_self))


def pme_spread(grid_positions: torch.Tensor, coeffs: torch.Tensor, grid_size: List[int], order: int) -> torch.Tensor:
    """Grid density sum_i sum_t coeffs[i,t] d^t W(u_i, g) of grid-frame multipoles at grid coordinates u."""
    return torch.ops.mlpolar.pme_spread(grid_positions, coeffs, grid_size, int(order))


def pme_gather(grid_positions: torch.Tensor, grid: torch.Tensor, deg: int, order: int) -> torch.Tensor:
    """sum_g grid(g) d^t W(u_i, g) for |t| <= deg: the grid field interpolated to each site."""
    return torch.ops.mlpolar.pme_gather(grid_positions, grid, int(deg), int(order))


def exclusions_to_csr(exclusions: Optional[torch.Tensor], n: int, device: torch.device):
    """Symmetric CSR (ptr [n+1], idx) of excluded pairs given as an [P, 2] integer tensor."""
    if exclusions is None or exclusions.numel() == 0:
        return (torch.zeros(n + 1, dtype=torch.long, device=device),
                torch.zeros(0, dtype=torch.long, device=device))
    pairs = exclusions.to(device=device, dtype=torch.long)
    i = torch.cat([pairs[:, 0], pairs[:, 1]])
    j = torch.cat([pairs[:, 1], pairs[:, 0]])
    key = torch.unique(i * n + j)  # sorted by i, duplicates removed
    i, j = key // n, key % n
    ptr = torch.zeros(n + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(torch.bincount(i, minlength=n), 0)
    return ptr, j.contiguous()
