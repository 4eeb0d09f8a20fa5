"""Neighbour pairs, minimum-image displacements and smooth radial features of the local model."""
import math
from typing import Optional, Tuple

import torch


def minimum_image(r: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
    """Displacements [E, 3] reduced to the nearest image in a reduced triclinic box (rows a, b, c).

    Subtracting c, then b, then a (OpenMM's order) is exact for any pair closer than half the
    smallest box width, which covers every pair inside the cutoffs the model checks.
    """
    if box is None:
        return r
    r = r - torch.round(r[:, 2:3] / box[2, 2]) * box[2]
    r = r - torch.round(r[:, 1:2] / box[1, 1]) * box[1]
    r = r - torch.round(r[:, 0:1] / box[0, 0]) * box[0]
    return r


def neighbour_pairs(positions: torch.Tensor, cutoff: float, box: Optional[torch.Tensor]
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(receiver i [E], sender j [E], r_ij = x_j − x_i [E, 3]) of all ordered pairs closer than cutoff.

    All n² pairs are screened: ML regions are small (≤ a few hundred atoms), and one dense pass
    is cheaper than a cell list at that size.
    """
    n = positions.shape[0]
    idx = torch.arange(n, device=positions.device)
    i = idx.repeat_interleave(n)
    j = idx.repeat(n)
    keep = i != j
    i, j = i[keep], j[keep]
    with torch.no_grad():
        d = minimum_image(positions[j] - positions[i], box).norm(p=2, dim=1)
        near = d < cutoff
    i, j = i[near], j[near]
    return i, j, minimum_image(positions[j] - positions[i], box)


def envelope(x: torch.Tensor, p: int) -> torch.Tensor:
    """Polynomial cutoff of DimeNet: 1 at x = 0, zero with two vanishing derivatives at x = 1."""
    xp = x ** p
    u = 1.0 - 0.5 * (p + 1) * (p + 2) * xp + p * (p + 2) * xp * x - 0.5 * p * (p + 1) * xp * x * x
    return torch.where(x < 1.0, u, torch.zeros_like(x))


def bessel_basis(d: torch.Tensor, cutoff: float, n: int, p: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(radial basis [E, n], envelope [E]): sqrt(2/rc) sin(kπ d/rc)/d times the smooth envelope, and
    the envelope itself (zero at rc with its first two derivatives). Every learned radial weight is
    multiplied by the envelope too, so energies and forces are continuous when a pair crosses rc."""
    k = torch.arange(1, n + 1, dtype=d.dtype, device=d.device) * math.pi / cutoff
    env = envelope(d / cutoff, p)
    basis = math.sqrt(2.0 / cutoff) * torch.sin(k[None, :] * d[:, None]) / d[:, None]
    return basis * env[:, None], env
