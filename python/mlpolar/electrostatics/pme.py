"""Reciprocal-space (smooth particle-mesh Ewald) part for Cartesian multipoles.

Spreading and gathering run in the compiled operators on grid coordinates u = K * (fractional
coordinates); the frame change, the FFTs and the influence function are torch operations, so
the gradient with respect to the box (the virial) follows from autograd.
"""
import math
from typing import List

import torch

from .. import ops
from .multipoles import from_frame, to_frame


def bspline_moduli(K: int, order: int, dtype: torch.dtype, device: torch.device, rfft: bool = False) -> torch.Tensor:
    """|b(m)|^2 of smooth PME (Essmann et al. 1995) for m = 0..K-1 (or 0..K//2 when rfft).

    Recomputed on each call (K x order work, negligible next to the FFTs); written without
    recursion or caches so that TorchScript compiles it for the exported model.
    """
    w = _bspline_at_integers(order)[None, :]
    m = torch.arange(K, dtype=torch.float64)
    k = torch.arange(order - 1, dtype=torch.float64)
    arg = 2.0 * math.pi * m[:, None] * k[None, :] / K
    re = (w * torch.cos(arg)).sum(1)
    im = (w * torch.sin(arg)).sum(1)
    mod = re * re + im * im
    # odd orders vanish at the Nyquist frequency: interpolate from the neighbours as OpenMM does
    neighbours = 0.5 * (torch.roll(mod, 1) + torch.roll(mod, -1))
    mod = torch.where(mod < 1e-7, neighbours, mod)
    if rfft:
        mod = mod[: K // 2 + 1]
    return mod.to(dtype=dtype, device=device)


def _bspline_at_integers(order: int) -> torch.Tensor:
    """Cardinal B-spline M_order at x = 1..order-1 (float64), from
    M_n(x) = (x M_{n-1}(x) + (n-x) M_{n-1}(x-1)) / (n-1). Tensor arithmetic throughout: TorchScript
    rounds Python float lists and scalar stores through float32."""
    x = torch.arange(order + 1, dtype=torch.float64)
    m = (x == 0).to(torch.float64)   # M_1 at x = 0..order
    for n in range(2, order + 1):
        prev = torch.cat([torch.zeros(1, dtype=torch.float64), m[:-1]])
        m = (x * m + (n - x) * prev) / (n - 1)
    return m[1:order]


def influence_function(box: torch.Tensor, grid: List[int], alpha: float, order: int) -> torch.Tensor:
    """G(m) exp(-pi^2 m^2 / alpha^2) / (pi V m^2) / |b(m)|^2 times the grid size, in rfft layout.

    Differentiable with respect to the box.
    """
    K1, K2, K3 = grid
    dtype, device = box.dtype, box.device
    recip = torch.linalg.inv(box)  # columns: reciprocal vectors a*, b*, c* (no 2 pi)
    m1 = torch.fft.fftfreq(K1, d=1.0 / K1, dtype=dtype, device=device)
    m2 = torch.fft.fftfreq(K2, d=1.0 / K2, dtype=dtype, device=device)
    m3 = torch.fft.rfftfreq(K3, d=1.0 / K3, dtype=dtype, device=device)
    mm = torch.stack(torch.meshgrid(m1, m2, m3, indexing="ij"), dim=-1)  # [K1, K2, K3/2+1, 3]
    kvec = mm @ recip.transpose(0, 1)
    k2 = (kvec * kvec).sum(-1)
    k2 = torch.where(k2 == 0, torch.ones_like(k2), k2)
    volume = torch.det(box)
    b = (bspline_moduli(K1, order, dtype, device)[:, None, None]
         * bspline_moduli(K2, order, dtype, device)[None, :, None]
         * bspline_moduli(K3, order, dtype, device, rfft=True)[None, None, :])
    G = torch.exp(-(math.pi ** 2) * k2 / alpha ** 2) / (math.pi * volume * k2 * b) * float(K1 * K2 * K3)
    G = G.clone()
    G[0, 0, 0] = 0.0
    return G


def reciprocal_field(positions: torch.Tensor, d: torch.Tensor, box: torch.Tensor, alpha: float, grid: List[int],
                     order: int, deg_out: int) -> torch.Tensor:
    """Reciprocal-space potential derivatives [n, ncart(deg_out)] from receiver coefficients d."""
    recip = torch.linalg.inv(box)
    K = torch.tensor(grid, dtype=box.dtype, device=box.device)
    A = recip * K[None, :]  # d/dr_b = sum_a A[b, a] d/du_a
    u = positions @ A
    Q = ops.pme_spread(u, to_frame(d, A), grid, order)
    phi = torch.fft.irfftn(torch.fft.rfftn(Q) * influence_function(box, grid, alpha, order), s=grid)
    return from_frame(ops.pme_gather(u, phi, deg_out, order), A)


def reciprocal_energy(positions: torch.Tensor, d: torch.Tensor, box: torch.Tensor, alpha: float, grid: List[int],
                      order: int) -> torch.Tensor:
    """Reciprocal-space energy 1/2 sum_i d_i . V_rec(r_i) without the Coulomb constant, as the
    grid sum E = 1/(2 K1 K2 K3) sum_m G(m) |Q^(m)|^2 (G from influence_function).

    Equal to 1/2 sum_i d_i . reciprocal_field(...)_i, but its autograd costs one gather of one
    degree more (dE/dQ = phi, then the spread's backward) instead of a second spread, two more
    FFTs and two gathers: the reciprocal counterpart of the real-space one-pass energy + forces.
    """
    recip = torch.linalg.inv(box)
    K = torch.tensor(grid, dtype=box.dtype, device=box.device)
    A = recip * K[None, :]
    Q = ops.pme_spread(positions @ A, to_frame(d, A), grid, order)
    Qh = torch.fft.rfftn(Q)
    # rfft keeps m3 = 0..K3/2: every other m3 stands for itself and its mirror -m3
    weight = torch.full([grid[2] // 2 + 1], 2.0, dtype=box.dtype, device=box.device)
    weight[0] = 1.0
    if grid[2] % 2 == 0:
        weight[-1] = 1.0
    power = Qh.real * Qh.real + Qh.imag * Qh.imag
    G = influence_function(box, grid, alpha, order)
    return (G * weight * power).sum() * (0.5 / float(grid[0] * grid[1] * grid[2]))


# --- TorchScript-compatible variants (issue 3: the embedding runs inside scripted models) ---

def bspline_moduli_scripted(K: int, order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """|b(m)|^2 for m = 0..K-1: bspline_moduli, which scripts itself now (kept for issue 3's callers)."""
    return bspline_moduli(K, order, dtype, device)


def influence_function_scripted(box: torch.Tensor, grid: List[int], alpha: float, order: int) -> torch.Tensor:
    """influence_function, which scripts itself now (kept for issue 3's callers). The former copy
    built its B-spline values with torch.tensor(list of floats), which TorchScript rounds through
    float32: scripted and eager Ewald features then differed at 1e-8 relative."""
    return influence_function(box, grid, alpha, order)


def reciprocal_potential_derivatives(src_positions: torch.Tensor, src_charges: torch.Tensor,
                                     recv_positions: torch.Tensor, box: torch.Tensor, alpha: float, grid: List[int],
                                     order: int, deg_out: int) -> torch.Tensor:
    """Reciprocal-space potential derivatives d^t phi [n_recv, ncart(deg_out)] in the *grid frame*
    u = K (fractional coordinates): point charges spread at their positions, gathered at other
    positions (no Coulomb constant). Convert with d/dr = A d/du, A = inv(box) * K."""
    recip = torch.linalg.inv(box)
    K = torch.tensor(grid, dtype=box.dtype, device=box.device)
    A = recip * K[None, :]
    Q = torch.ops.mlpolar.pme_spread(src_positions @ A, src_charges[:, None], grid, order)
    phi = torch.fft.irfftn(torch.fft.rfftn(Q) * influence_function_scripted(box, grid, alpha, order), s=grid)
    return torch.ops.mlpolar.pme_gather(recv_positions @ A, phi, deg_out, order)
