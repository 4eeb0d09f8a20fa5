"""Reciprocal-space part by a direct Ewald sum over reciprocal vectors, for few sites.

The same quantity as smooth PME (pme.py): the point-multipole reciprocal potential derivatives
at every site (no Coulomb constant, the site's own term included, the k = 0 term dropped),

    V_t(r_i) = sum_{m != 0} exp(-pi^2 m^2 / alpha^2) / (pi V m^2) d^t/dr^t [e^{2 pi i m.r} S(m)]_{r=r_i},
    S(m) = sum_j e^{-i k.r_j} sum_t d_jt (-i k)^t,   k = 2 pi m,

with m = inv(box) n over integer vectors n. Gaussian widths never enter here: the Ewald split
puts the difference between a Gaussian and a point into real space (gaussian_multipoles.py).

Cost: O(N n_k) with n_k ~ (4/3) pi m_max^3 V / 2 vectors, against PME's grid of
K^3 ~ (2 alpha L / 3 delta^0.2)^3 points plus N order^3 spreading. For an ML region of tens of
atoms in a solvated box the direct sum is one to two orders of magnitude cheaper than a PME grid
sized by the box; GaussianMultipoles picks it automatically then (reciprocal="auto").
Everything is torch arithmetic: derivatives of any order, box derivatives (virial) included,
come from autograd, and TorchScript compiles it.
"""
import math
from typing import List

import torch


def ewald_sum_cutoff(alpha: float, tolerance: float) -> float:
    """m_max (1/nm, no 2 pi): reciprocal vectors with |m| > m_max are dropped.

    The terms fall off as exp(-pi^2 m^2 / alpha^2); the extra factor 1e-2 covers the powers of k
    (up to k^4 for quadrupole receivers) and the many vectors near the sphere's surface, so that
    the sum stays within `tolerance` as PME does at the same alpha (tests/electrostatics)."""
    return alpha * math.sqrt(-math.log(1e-2 * tolerance)) / math.pi


def reciprocal_vectors(box: torch.Tensor, m_max: float) -> torch.Tensor:
    """Reciprocal vectors m [n_k, 3] (1/nm, no 2 pi) with 0 < |m| <= m_max, one of each +-m pair.

    The integer vectors come from the detached box; m = n inv(box)^T stays differentiable with
    respect to the box."""
    recip = torch.linalg.inv(box)                          # columns a*, b*, c*
    lengths = torch.linalg.norm(box.detach(), dim=1)       # n_a = m . a, so |n_a| <= m_max |a|
    ranges: List[torch.Tensor] = []
    for a in range(3):
        n_a = int(math.floor(m_max * float(lengths[a])))
        ranges.append(torch.arange(-n_a, n_a + 1, dtype=box.dtype, device=box.device))
    g = torch.meshgrid(ranges[0], ranges[1], ranges[2], indexing="ij")
    n = torch.stack([g[0].reshape(-1), g[1].reshape(-1), g[2].reshape(-1)], dim=1)
    # half space: the first non-zero integer component is positive (drops 0 and one of +-n)
    half = (n[:, 0] > 0) | ((n[:, 0] == 0) & (n[:, 1] > 0)) | ((n[:, 0] == 0) & (n[:, 1] == 0) & (n[:, 2] > 0))
    n = n[half]
    m_det = n @ recip.detach().transpose(0, 1)
    n = n[(m_det * m_det).sum(1) <= m_max * m_max]
    return n @ recip.transpose(0, 1)


def _monomials(k: torch.Tensor, degree: int) -> torch.Tensor:
    """k^t [n_k, ncart] for the packed monomials of one degree, in ops.py's column order
    ((200)(110)(101)(020)(011)(002) for degree 2): exponent of x descending, then y."""
    cols: List[torch.Tensor] = []
    for a in range(degree, -1, -1):
        for b in range(degree - a, -1, -1):
            c = degree - a - b
            cols.append(k[:, 0] ** a * k[:, 1] ** b * k[:, 2] ** c)
    return torch.stack(cols, dim=1)


def ewald_reciprocal_field(positions: torch.Tensor, d: torch.Tensor, box: torch.Tensor, alpha: float,
                           m_max: float, deg_out: int) -> torch.Tensor:
    """Reciprocal-space potential derivatives [n, ncart(deg_out)] from receiver coefficients d
    [n, 1|4|10] (multipoles.py), by the direct sum. Drop-in for pme.reciprocal_field."""
    m = reciprocal_vectors(box, m_max)
    k = 2.0 * math.pi * m
    m2 = (m * m).sum(1)
    # 2 for the -m half of the sum, whose terms are complex conjugates of the +m ones
    g = 2.0 * torch.exp(-(math.pi ** 2) * m2 / (alpha * alpha)) / (math.pi * torch.det(box) * m2)
    phase = positions @ k.transpose(0, 1)                   # [n, n_k]
    c, s = torch.cos(phase), torch.sin(phase)
    # P_j(k) = sum_t d_jt (-i k)^t = A + i B: (-i)^n is 1, -i, -1 for degrees 0, 1, 2
    deg_in = 0 if d.shape[1] == 1 else (1 if d.shape[1] == 4 else 2)
    A = d[:, :1].expand(-1, k.shape[0])
    B = torch.zeros_like(A)
    if deg_in >= 1:
        B = B - d[:, 1:4] @ _monomials(k, 1).transpose(0, 1)
    if deg_in >= 2:
        A = A - d[:, 4:10] @ _monomials(k, 2).transpose(0, 1)
    # S(m) = sum_j (c_j - i s_j)(A_j + i B_j)
    S_re = (c * A + s * B).sum(0)
    S_im = (c * B - s * A).sum(0)
    # e^{i k.r_i} S(m) = X + i Y; the derivative of degree n multiplies by (i k)^t
    X = (c * S_re - s * S_im) * g
    Y = (c * S_im + s * S_re) * g
    cols: List[torch.Tensor] = []
    for n in range(deg_out + 1):
        K = _monomials(k, n)
        r = n % 4                                           # Re[i^n (X + i Y)] = X, -Y, -X, Y
        if r == 0:
            cols.append(X @ K)
        elif r == 1:
            cols.append(-(Y @ K))
        elif r == 2:
            cols.append(-(X @ K))
        else:
            cols.append(Y @ K)
    return torch.cat(cols, dim=1)


def ewald_sum_size(box: torch.Tensor, m_max: float) -> int:
    """Estimated number of reciprocal vectors (half space) of the direct sum: the sphere's volume
    in reciprocal space over the volume per vector, 1/V."""
    return int((2.0 / 3.0) * math.pi * m_max ** 3 * float(torch.det(box.detach())))
