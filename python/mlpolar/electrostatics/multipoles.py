"""Cartesian multipole conventions, written once.

A site carries a charge q (e), a dipole mu (e nm) and a traceless quadrupole Theta (e nm^2) in
Buckingham's convention, Theta = 1/2 sum q (3 r r - r^2 I), stored as a symmetric [3, 3] matrix.
Its energy in an external potential phi is

    U = q phi + mu . grad phi + 1/3 Theta : grad grad phi,

and a Gaussian site's density is rho = q g - mu . grad g + 1/3 Theta : grad grad g.

Packed forms (column order of ops.py: (000), (100)(010)(001), (200)(110)(101)(020)(011)(002)):
- receiver coefficients d: U = sum_t d_t d^t phi, i.e. d = (q, mu, Txx/3, 2Txy/3, 2Txz/3, Tyy/3, 2Tyz/3, Tzz/3);
- source coefficients c = (-1)^|t| d (the potential a site makes is sum_t c_t d^t K);
- potential derivatives V = (phi, dphi/dx, dphi/dy, dphi/dz, d2phi/dx2, d2phi/dxdy, ...).
"""
from typing import Optional, Tuple

import torch



def multipole_degree(dipoles: Optional[torch.Tensor], quadrupoles: Optional[torch.Tensor]) -> int:
    if quadrupoles is not None:
        return 2
    if dipoles is not None:
        return 1
    return 0


def receiver_coefficients(charges: torch.Tensor, dipoles: Optional[torch.Tensor],
                          quadrupoles: Optional[torch.Tensor]) -> torch.Tensor:
    """Packed receiver coefficients d [n, 1|4|10] of (q, mu, Theta)."""
    n = charges.shape[0]
    cols = [charges.reshape(n, 1)]
    deg = multipole_degree(dipoles, quadrupoles)
    if deg >= 1:
        cols.append(dipoles if dipoles is not None else charges.new_zeros(n, 3))
    if deg >= 2:
        assert quadrupoles is not None
        # (xx, xy, xz, yy, yz, zz) of Theta with their weights in d. Written as integers / 3:
        # TorchScript builds torch.tensor(list of floats) through float32, which would round 1/3.
        w = torch.tensor([1.0, 2.0, 2.0, 1.0, 2.0, 1.0], dtype=charges.dtype, device=charges.device) / 3.0
        th = torch.stack([quadrupoles[:, 0, 0], quadrupoles[:, 0, 1], quadrupoles[:, 0, 2],
                          quadrupoles[:, 1, 1], quadrupoles[:, 1, 2], quadrupoles[:, 2, 2]], dim=1)
        cols.append(th * w)
    return torch.cat(cols, dim=1)


def parity(degree: int, like: torch.Tensor) -> torch.Tensor:
    """(-1)^|t| for the packed monomials of degree <= `degree`."""
    signs = [1.0] + [-1.0] * 3 + [1.0] * 6 + [-1.0] * 10 + [1.0] * 15
    n = (degree + 1) * (degree + 2) * (degree + 3) // 6
    return torch.tensor(signs[:n], dtype=like.dtype, device=like.device)


def split_derivatives(V: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(phi [n], grad phi [n,3], grad grad phi [n,3,3]) from packed derivatives of degree 2."""
    phi = V[:, 0]
    grad = V[:, 1:4]
    h = V[:, 4:10]
    hess = torch.stack([torch.stack([h[:, 0], h[:, 1], h[:, 2]], -1),
                        torch.stack([h[:, 1], h[:, 3], h[:, 4]], -1),
                        torch.stack([h[:, 2], h[:, 4], h[:, 5]], -1)], -2)
    return phi, grad, hess


def to_frame(d: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Receiver coefficients in the frame u where d/dr = A d/du (d of degree <= 2)."""
    cols = [d[:, :1]]
    if d.shape[1] >= 4:
        cols.append(d[:, 1:4] @ A)
    if d.shape[1] >= 10:
        q = d[:, 4:10]
        # symmetric operator matrix D with D_bb = d_bb, D_bc = d_bc / 2 for b != c
        D = torch.stack([torch.stack([q[:, 0], 0.5 * q[:, 1], 0.5 * q[:, 2]], -1),
                         torch.stack([0.5 * q[:, 1], q[:, 3], 0.5 * q[:, 4]], -1),
                         torch.stack([0.5 * q[:, 2], 0.5 * q[:, 4], q[:, 5]], -1)], -2)
        Du = A.transpose(0, 1) @ D @ A
        cols.append(torch.stack([Du[:, 0, 0], 2 * Du[:, 0, 1], 2 * Du[:, 0, 2],
                                 Du[:, 1, 1], 2 * Du[:, 1, 2], Du[:, 2, 2]], -1))
    return torch.cat(cols, dim=1)


def from_frame(Vu: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Potential derivatives with respect to r from those with respect to u (d/dr = A d/du)."""
    cols = [Vu[:, :1]]
    if Vu.shape[1] >= 4:
        cols.append(Vu[:, 1:4] @ A.transpose(0, 1))
    if Vu.shape[1] >= 10:
        h = Vu[:, 4:10]
        H = torch.stack([torch.stack([h[:, 0], h[:, 1], h[:, 2]], -1),
                         torch.stack([h[:, 1], h[:, 3], h[:, 4]], -1),
                         torch.stack([h[:, 2], h[:, 4], h[:, 5]], -1)], -2)
        Hr = A @ H @ A.transpose(0, 1)
        cols.append(torch.stack([Hr[:, 0, 0], Hr[:, 0, 1], Hr[:, 0, 2], Hr[:, 1, 1], Hr[:, 1, 2], Hr[:, 2, 2]], -1))
    return torch.cat(cols, dim=1)
