"""Choice of the Ewald splitting parameter and PME grid from a relative error tolerance.

The one chooser of mlpolar, following OpenMM's NonbondedForce/AmoebaMultipoleForce rule for
ewaldErrorTolerance (delta): alpha = sqrt(-ln(2 delta)) / cutoff and, per axis,
K = ceil(2 alpha L / (3 delta^(1/5))) rounded up to a size with factors 2, 3, 5, 7 only.
Gaussian sites add a real-space truncation error of about erfc(a_min r_c) with
a_min = 1 / (2 sigma_max); the chooser refuses a cutoff too short for the widths.
"""
import math
from typing import List, Optional, Tuple

import torch


def _fft_friendly(n: int) -> int:
    smooth = False
    while not smooth:
        m = n
        for p in [2, 3, 5, 7]:
            while m % p == 0:
                m = m // p
        smooth = m == 1
        if not smooth:
            n += 1
    return n


def ewald_parameters(box: torch.Tensor, cutoff: float, tolerance: float, order: int = 5,
                     max_width: float = 0.0) -> Tuple[float, List[int]]:
    """(alpha in 1/nm, grid size [3]) for a reduced box [3,3] (nm), cutoff (nm) and tolerance."""
    if not 0.0 < tolerance < 0.5:
        raise ValueError(f"tolerance must be in (0, 0.5), got {tolerance}")
    alpha = math.sqrt(-math.log(2.0 * tolerance)) / cutoff
    if max_width > 0.0:
        a_min = 1.0 / (2.0 * max_width)
        if math.erfc(a_min * cutoff) > tolerance:
            need = _width_cutoff(max_width, tolerance)
            raise ValueError(
                f"widths up to {max_width} nm are too wide for cutoff {cutoff} nm at tolerance {tolerance}: "
                f"the Gaussians overlap beyond the cutoff; use cutoff >= {need} nm or narrower widths")
    diag: List[float] = box.detach().diagonal().tolist()
    grid = [_fft_friendly(max(order + 1, math.ceil(2.0 * alpha * L / (3.0 * tolerance ** 0.2)))) for L in diag]
    return alpha, grid


def _width_cutoff(max_width: float, tolerance: float) -> float:
    lo, hi = 0.0, 100.0 * max_width + 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if math.erfc(mid / (2.0 * max_width)) > tolerance:
            lo = mid
        else:
            hi = mid
    return hi
