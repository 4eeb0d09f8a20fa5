"""MM environment embedding: Taylor-expansion features of the MM point charges at the ML sites.

    T = mm_features(ml_positions, ml_widths, mm_positions, mm_charges, box=None, cutoff=1.2,
                    max_order=3, switch_width=0.1, exclusions=None, long_range=True)

T.T0 = phi_i, T.T1 = grad phi_i, T.T2 = grad grad phi_i and T.T3 = grad^3 phi_i (traces removed)
of the MM charges' potential as seen by the Gaussian of width sigma_i at ML site i (point
sites for sigma = 0), in kJ/mol/e/nm^k. An ML Gaussian multipole (q, mu, Theta traceless)
interacts with the MM charges as q T0 + mu . T1 + 1/3 Theta : T2 (docs/interfaces.md).

Real space runs in the compiled `embedding_features` operator (`embedding_field`'s ML-centric
search, C4 switch over the last `switch_width` of the cutoff, Gaussian damping, exclusions, with
the trace removal and the Coulomb constant in the same autograd node); with a box and
long_range=True the switch is off and the result is full Ewald: erfc-damped real space, smooth
PME for the reciprocal part, exclusion corrections and the neutralising background. Every
function here compiles with torch.jit.script.
"""
import math
from typing import List, NamedTuple, Optional, Tuple

import torch

from .. import _library  # noqa: F401  (loads torch.ops.mlpolar)
from .ewald_parameters import _fft_friendly
from .pme import reciprocal_potential_derivatives

from ..units import ONE_4PI_EPS0


class MMFeatures(NamedTuple):
    """Potential derivatives of the MM charges at the ML sites; orders above max_order are None."""
    T0: torch.Tensor                   # [n]         kJ/mol/e
    T1: Optional[torch.Tensor]         # [n, 3]      kJ/mol/e/nm
    T2: Optional[torch.Tensor]         # [n, 3, 3]   kJ/mol/e/nm^2, symmetric traceless
    T3: Optional[torch.Tensor]         # [n, 3, 3, 3] kJ/mol/e/nm^3, symmetric traceless


def mm_features(ml_positions: torch.Tensor, ml_widths: Optional[torch.Tensor], mm_positions: torch.Tensor,
                mm_charges: torch.Tensor, box: Optional[torch.Tensor] = None, cutoff: float = 1.2,
                max_order: int = 3, switch_width: float = 0.1, exclusions: Optional[torch.Tensor] = None,
                long_range: bool = True, tolerance: float = 1e-5, pme_order: int = 8,
                alpha: Optional[float] = None, grid: Optional[List[int]] = None) -> MMFeatures:
    """Features T0..T3 of the MM charges at the ML sites (see the module docstring).

    Args:
        ml_positions [n, 3] nm; ml_widths [n] nm (sigma of each ML Gaussian) or None for points;
        mm_positions [m, 3] nm; mm_charges [m] e.
        box: [3, 3] rows a, b, c (OpenMM reduced form, nm) or None for open boundaries.
        cutoff: real-space cutoff (nm); at most half the smallest box width.
        max_order: highest order returned (0..3).
        switch_width: width (nm) of the C4 switch at the end of the cutoff (0: hard cutoff).
            Not used under Ewald (box with long_range), where the real-space kernel is erfc-damped.
        exclusions: [P, 2] integer (ml_index, mm_index) pairs that do not interact.
        long_range: with a box, add the reciprocal (PME) part: the full Ewald potential.
        tolerance, pme_order, alpha, grid: Ewald accuracy as in GaussianMultipoles (alpha 1/nm
            and grid override the choice from the tolerance, see _ewald_parameters). The OpenMM
            layer passes the NonbondedForce's ewaldErrorTolerance here.
    """
    _check_arguments(ml_positions, ml_widths, mm_positions, mm_charges, box, cutoff, max_order, switch_width,
                     exclusions, tolerance, pme_order)
    dtype, device = ml_positions.dtype, ml_positions.device
    excl = torch.zeros((0, 2), dtype=torch.long, device=device) if exclusions is None \
        else exclusions.to(device=device, dtype=torch.long)
    ewald = box is not None and long_range
    beta = 0.0
    grid_size: List[int] = [0, 0, 0]
    if box is not None and ewald:
        max_width = 0.0 if ml_widths is None or ml_widths.numel() == 0 else float(ml_widths.detach().max())
        beta, grid_size = _ewald_parameters(box, cutoff, tolerance, pme_order, max_width)
        if alpha is not None:
            beta = float(alpha)
        if grid is not None:
            grid_size = [int(g) for g in grid]
    if not ewald:
        # one operator and one autograd node: the kernel, the trace removal and the Coulomb constant;
        # it makes _check_values' checks itself (in C++, before any work)
        F0, F1, F2, F3 = torch.ops.mlpolar.embedding_features(ml_positions, ml_widths, mm_positions, mm_charges, box,
                                                              excl, float(cutoff), float(switch_width), int(max_order))
        return MMFeatures(F0, F1 if max_order >= 1 else None, F2 if max_order >= 2 else None,
                          F3 if max_order >= 3 else None)
    _check_values(ml_positions, ml_widths, mm_positions, mm_charges, box, cutoff, exclusions)
    coeffs = mm_charges[:, None]  # charges are their own source coefficients
    V = torch.ops.mlpolar.embedding_field(ml_positions, mm_positions, coeffs, ml_widths, None, box, excl,
                                          float(cutoff), 0.0, beta, int(max_order))
    T0, T1, T2, T3 = unpack_derivatives(V, max_order)
    if box is not None and ewald:
        recip = torch.linalg.inv(box)
        K = torch.tensor(grid_size, dtype=dtype, device=device)
        A = recip * K[None, :]  # d/dr_b = sum_a A[b, a] d/du_a
        Vu = reciprocal_potential_derivatives(mm_positions, mm_charges, ml_positions, box, beta, grid_size,
                                              pme_order, max_order)
        U0, U1, U2, U3 = unpack_derivatives(Vu, max_order)
        T0 = T0 + U0
        if T1 is not None and U1 is not None:
            T1 = T1 + U1 @ A.transpose(0, 1)
        if T2 is not None and U2 is not None:
            T2 = T2 + torch.einsum("ai,bj,nij->nab", A, A, U2)
        if T3 is not None and U3 is not None:
            T3 = T3 + torch.einsum("ai,bj,ck,nijk->nabc", A, A, A, U3)
        # Neutralising background of the net MM charge Q seen by ML site i (tin-foil Ewald, k = 0
        # dropped): the ML-MM cross term of GaussianMultipoles' background energy, differentiated
        # by q_i: -pi Q / (V beta^2) + 2 pi Q sigma_i^2 / V.
        volume = torch.det(box)
        Q = mm_charges.sum()
        shift = -math.pi * Q / (volume * beta ** 2) + torch.zeros_like(T0)
        if ml_widths is not None:
            shift = shift + 2.0 * math.pi * Q * ml_widths * ml_widths / volume
        T0 = T0 + shift
    k = _coulomb()
    T0 = k * T0
    if T1 is not None:
        T1 = k * T1
    if T2 is not None:
        T2 = k * traceless2(T2)
    if T3 is not None:
        T3 = k * traceless3(T3)
    return MMFeatures(T0, T1, T2, T3)


def _coulomb() -> float:
    """ONE_4PI_EPS0 (mlpolar.units) as a literal: TorchScript cannot read module globals."""
    return 138.93545764438198


def _index3() -> List[int]:
    """Packed column of d^3/dx_a dx_b dx_c for (a, b, c) in row-major [3, 3, 3] order."""
    return [10, 11, 12, 11, 13, 14, 12, 14, 15,
            11, 13, 14, 13, 16, 17, 14, 17, 18,
            12, 14, 15, 14, 17, 18, 15, 18, 19]


def unpack_derivatives(V: torch.Tensor, max_order: int) -> Tuple[torch.Tensor, Optional[torch.Tensor],
                                                                    Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Packed potential derivatives [n, ncart(max_order)] as full symmetric tensors (orders 0..3)."""
    n = V.shape[0]
    T1: Optional[torch.Tensor] = None
    T2: Optional[torch.Tensor] = None
    T3: Optional[torch.Tensor] = None
    if max_order >= 1:
        T1 = V[:, 1:4]
    if max_order >= 2:
        idx2 = torch.tensor([4, 5, 6, 5, 7, 8, 6, 8, 9], device=V.device)
        T2 = V.index_select(1, idx2).reshape(n, 3, 3)
    if max_order >= 3:
        idx3 = torch.tensor(_index3(), device=V.device)
        T3 = V.index_select(1, idx3).reshape(n, 3, 3, 3)
    return V[:, 0], T1, T2, T3


def traceless2(T: torch.Tensor) -> torch.Tensor:
    """T - tr(T) I / 3 for [n, 3, 3]."""
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    return T - T.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None] * eye / 3.0


def traceless3(T: torch.Tensor) -> torch.Tensor:
    """Symmetric [n, 3, 3, 3] minus its traces: T_abc - (d_ab v_c + d_ac v_b + d_bc v_a) / 5, v_c = T_aac."""
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    v = T.diagonal(dim1=1, dim2=2).sum(-1)  # [n, 3]
    corr = (eye[None, :, :, None] * v[:, None, None, :] + eye[None, :, None, :] * v[:, None, :, None]
            + eye[None, None, :, :] * v[:, :, None, None])
    return T - corr / 5.0


def _ewald_parameters(box: torch.Tensor, cutoff: float, tolerance: float, order: int,
                      max_width: float) -> Tuple[float, List[int]]:
    """ewald_parameters (OpenMM's rule for ewaldErrorTolerance) in a form TorchScript compiles.
    ML Gaussians meet MM points, so the damping of a pair is 1/(sqrt(2) sigma).

    Grid: OpenMM's rule K = 2 alpha L / (3 tol^0.2) is made for order-5 splines and forces. The
    features need up to T3 and their forces the fourth derivative of the splines; order p is
    C^(p-2), so p >= 6 keeps those forces continuous (_check), and the default order 8 (C^6)
    interpolates so much better per grid point that 0.7 K suffices. Measured against order 10 on a
    3.6x finer grid at the same alpha (ML regions of alanine dipeptide, CB7-B2 and DHFR in water;
    tolerance 1e-5, 1e-4, 5e-4): worst grid error of T0..T3, relative to each one's largest
    value, <= 0.13 x tolerance at order 8 with 0.7 K (<= 0.009 with K), while order 6 with K
    reaches 1.35 x tolerance in T3 at 1e-5; 0.5 K fails at 5e-4 (T1 1.8 x). At 1e-5 the grid of a 3.3 nm box goes from 63^2 x 60 to 45^2 x 42 (FFTs ~3x
    cheaper). Lower orders keep OpenMM's grid."""
    alpha = math.sqrt(-math.log(2.0 * tolerance)) / cutoff
    if max_width > 0.0 and math.erfc(cutoff / (math.sqrt(2.0) * max_width)) > tolerance:
        raise ValueError("ml_widths are too wide for the cutoff at this tolerance: the Gaussians reach beyond the "
                         "cutoff; use a longer cutoff or narrower widths (need erfc(cutoff / (sqrt(2) sigma)) <= "
                         "tolerance)")
    scale = 0.7 if order >= 8 else 1.0
    diag = box.detach().diagonal()
    grid: List[int] = []
    for k in range(3):
        L = float(diag[k])
        grid.append(_fft_friendly(max(order + 1, int(math.ceil(scale * 2.0 * alpha * L / (3.0 * tolerance ** 0.2))))))
    return alpha, grid


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or inf in t. One reduction per call (a NaN or inf anywhere makes the sum non-finite);
    the elementwise test only when the sum is not finite, which finite values reach only by overflow."""
    return math.isfinite(float(t.detach().sum())) or bool(torch.isfinite(t).all())


def _check_arguments(ml_positions: torch.Tensor, ml_widths: Optional[torch.Tensor], mm_positions: torch.Tensor,
                     mm_charges: torch.Tensor, box: Optional[torch.Tensor], cutoff: float, max_order: int,
                     switch_width: float, exclusions: Optional[torch.Tensor], tolerance: float, pme_order: int) -> None:
    """Clear errors before any kernel runs: shapes, dtypes, devices and scalar arguments (no tensor
    data is read; _check_values reads it)."""
    if ml_positions.dim() != 2 or ml_positions.shape[1] != 3:
        raise ValueError("ml_positions must have shape [n, 3] (nm)")
    if ml_positions.dtype != torch.float32 and ml_positions.dtype != torch.float64:
        raise ValueError("ml_positions must be float32 or float64")
    if mm_positions.dim() != 2 or mm_positions.shape[1] != 3:
        raise ValueError("mm_positions must have shape [m, 3] (nm)")
    n, m = ml_positions.shape[0], mm_positions.shape[0]
    if mm_charges.dim() != 1 or mm_charges.shape[0] != m:
        raise ValueError("mm_charges must have shape [m] to match mm_positions [m, 3]")
    for t in [mm_positions, mm_charges]:
        if t.dtype != ml_positions.dtype:
            raise ValueError("mm_positions and mm_charges must have the dtype of ml_positions; convert them")
        if t.device != ml_positions.device:
            raise ValueError("mm_positions and mm_charges must be on the device of ml_positions; move them")
    if ml_widths is not None:
        if ml_widths.dim() != 1 or ml_widths.shape[0] != n:
            raise ValueError("ml_widths must have shape [n] to match ml_positions [n, 3], or be None for point sites")
        if ml_widths.dtype != ml_positions.dtype or ml_widths.device != ml_positions.device:
            raise ValueError("ml_widths must have the dtype and device of ml_positions")
    if not cutoff > 0.0:
        raise ValueError("cutoff must be positive (nm)")
    if max_order < 0 or max_order > 3:
        raise ValueError("max_order must be 0, 1, 2 or 3")
    if switch_width < 0.0 or switch_width >= cutoff:
        raise ValueError("switch_width must be in [0, cutoff) (nm); 0 gives a hard cutoff")
    if not 0.0 < tolerance < 0.5:
        raise ValueError("tolerance must be in (0, 0.5)")
    if pme_order < max_order + 3 or pme_order > 10:
        raise ValueError("pme_order must be between max_order + 3 (derivatives of the forces) and 10")
    if box is not None:
        if box.dim() != 2 or box.shape[0] != 3 or box.shape[1] != 3:
            raise ValueError("box must be a [3, 3] tensor whose rows are the box vectors a, b, c (nm)")
        if box.dtype != ml_positions.dtype or box.device != ml_positions.device:
            raise ValueError("box must have the dtype and device of ml_positions")
    if exclusions is not None:
        if exclusions.dim() != 2 or exclusions.shape[1] != 2:
            raise ValueError("exclusions must be an integer tensor of shape [P, 2] of (ml_index, mm_index) pairs")
        if exclusions.dtype != torch.int64 and exclusions.dtype != torch.int32:
            raise ValueError("exclusions must be an int32 or int64 tensor")


def _check_values(ml_positions: torch.Tensor, ml_widths: Optional[torch.Tensor], mm_positions: torch.Tensor,
                  mm_charges: torch.Tensor, box: Optional[torch.Tensor], cutoff: float,
                  exclusions: Optional[torch.Tensor]) -> None:
    """Clear errors before any kernel runs: the values (finite, widths >= 0, box reduced form,
    exclusion indices). The real-space operator embedding_features makes the same checks in C++
    (check_feature_values in csrc/embedding_autograd.cpp, same messages)."""
    n, m = ml_positions.shape[0], mm_positions.shape[0]
    if not _all_finite(ml_positions) or not _all_finite(mm_positions):
        raise ValueError("ml_positions or mm_positions contain NaN or infinite values")
    if not _all_finite(mm_charges):
        raise ValueError("mm_charges contain NaN or infinite values")
    if ml_widths is not None and n > 0 and not bool((ml_widths >= 0).all()):
        raise ValueError("ml_widths must be >= 0 (nm); use None for point sites")
    if box is not None:
        # one host copy of the nine numbers (each float(b[i, j]) would be an indexing op and a sync)
        b: List[List[float]] = box.detach().to(torch.float64).cpu().tolist()
        tol = 1e-6 * max(abs(b[0][0]), abs(b[1][1]), abs(b[2][2]))
        if not (b[0][0] > 0 and b[1][1] > 0 and b[2][2] > 0 and abs(b[0][1]) <= tol and abs(b[0][2]) <= tol
                and abs(b[1][2]) <= tol):
            raise ValueError("box must be in OpenMM's reduced form: a = (ax,0,0), b = (bx,by,0), c = (cx,cy,cz)")
        if abs(b[1][0]) > 0.5 * b[0][0] + tol or abs(b[2][0]) > 0.5 * b[0][0] + tol \
                or abs(b[2][1]) > 0.5 * b[1][1] + tol:
            raise ValueError("box must be reduced (|bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2); reduce it with "
                             "openmm.app.internal.unitcell.reducePeriodicBoxVectors")
        if cutoff > 0.5 * min(b[0][0], b[1][1], b[2][2]):
            raise ValueError("cutoff is more than half the smallest box width; use a larger box or a smaller cutoff")
    if exclusions is not None and exclusions.shape[0] > 0:
        if int(exclusions[:, 0].min()) < 0 or int(exclusions[:, 0].max()) >= n:
            raise ValueError("exclusions[:, 0] must index ML sites in [0, n)")
        if int(exclusions[:, 1].min()) < 0 or int(exclusions[:, 1].max()) >= m:
            raise ValueError("exclusions[:, 1] must index MM atoms in [0, m)")
