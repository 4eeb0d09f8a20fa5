"""Energies and fields of Gaussian-smeared Cartesian multipoles, open or periodic (Ewald/PME).

    elec = GaussianMultipoles(cutoff=0.9, tolerance=1e-5)
    E = elec.energy(positions, charges, dipoles, quadrupoles, widths, box, exclusions)
    phi, field, field_grad = elec.potential(...)

Conventions in multipoles.py; units nm, kJ/mol, e. The real-space part and self/exclusion
corrections run in the compiled operators; the reciprocal part is smooth PME (pme.py).
"""
import math
import operator
from typing import List, Optional, Tuple

import torch

from .. import ops
from ..units import ONE_4PI_EPS0
from .ewald_parameters import ewald_parameters
from .multipoles import multipole_degree, parity, receiver_coefficients, split_derivatives
from .ewald_sum import ewald_reciprocal_field, ewald_sum_cutoff, ewald_sum_size
from .pme import reciprocal_energy, reciprocal_field


def _real(x) -> float:
    """x as a float, NaN when it is not a number (so that a range check fails)."""
    if isinstance(x, (bool, str)):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError, RuntimeError):
        return math.nan


def _integer(x) -> Optional[int]:
    """x as an int when it is an integer (Python, NumPy or 0-d torch), else None; 8.0 is not."""
    if isinstance(x, bool):
        return None
    try:
        return operator.index(x)
    except TypeError:
        return None


class GaussianMultipoles(torch.nn.Module):
    """Calculator for Gaussian (or point) charges, dipoles and quadrupoles.

    Args:
        cutoff: real-space cutoff (nm) under periodic boundaries; ignored without a box.
        tolerance: relative error tolerance that sets alpha and the PME grid (as OpenMM's
            ewaldErrorTolerance).
        alpha: Ewald splitting parameter (1/nm), overriding the tolerance.
        grid: PME grid size (three ints), overriding the tolerance.
        order: B-spline order of PME (5..10). Default: 5 for charge energies and forces (as
            OpenMM), 8 when dipoles, quadrupoles or field gradients are involved: OpenMM's grid
            rule is calibrated for point charges, and higher multipoles need smoother splines
            to stay within the tolerance at that grid.
        include_self: add each Gaussian's self-energy (needs widths > 0). Without it a site does
            not interact with its own density.
        reciprocal: "pme", "ewald" (direct sum over reciprocal vectors, ewald_sum.py) or "auto":
            the direct sum when its estimated cost is below PME's (a few dozen to a few hundred
            sites in a solvated box), PME otherwise and whenever `grid` is given. The direct sum
            may raise the real-space cutoff up to half the box (see reciprocal_plan).
    """

    def __init__(self, cutoff: float = 0.9, tolerance: float = 1e-5, alpha: Optional[float] = None,
                 grid: Optional[List[int]] = None, order: Optional[int] = None, include_self: bool = False,
                 reciprocal: str = "auto"):
        super().__init__()
        # every argument checked here, before any work, each error naming its argument
        if reciprocal not in ("auto", "pme", "ewald"):
            raise ValueError(f"reciprocal must be 'auto', 'pme' or 'ewald', got {reciprocal!r}")
        if not (_real(cutoff) > 0 and math.isfinite(_real(cutoff))):
            raise ValueError(f"cutoff must be a positive number (nm), got {cutoff!r}")
        if not 0 < _real(tolerance) < 0.5:
            # OpenMM's rule alpha = sqrt(-ln(2 tolerance)) / cutoff needs 2 tolerance < 1
            raise ValueError(f"tolerance must be in (0, 0.5) (relative error), got {tolerance!r}")
        if order is not None and not 5 <= (_integer(order) or 0) <= 10:
            raise ValueError(f"order must be an integer from 5 to 10 (B-spline order of PME), got {order!r}")
        if alpha is not None and not (_real(alpha) > 0 and math.isfinite(_real(alpha))):
            raise ValueError(f"alpha must be a positive number (1/nm), got {alpha!r}")
        sizes: Optional[List[int]] = None
        if grid is not None:
            least = _integer(order) or 8
            try:
                found = [_integer(k) for k in grid]
            except TypeError:  # not a sequence
                found = []
            if len(found) != 3 or any(k is None or k < least for k in found):
                raise ValueError(f"grid must be three integer sizes of at least the spline order ({least}), "
                                 f"got {grid!r}")
            sizes = [int(k) for k in found if k is not None]
        self.cutoff = float(cutoff)
        self.tolerance = float(tolerance)
        self.alpha = None if alpha is None else float(alpha)
        self.grid = sizes
        self.order = None if order is None else _integer(order)
        self.include_self = bool(include_self)
        self.reciprocal = reciprocal
        self.coulomb = ONE_4PI_EPS0   # an attribute: TorchScript does not read module-level floats

    def parameters_for(self, box: torch.Tensor, widths: Optional[torch.Tensor] = None,
                       degree: int = 0) -> Tuple[float, List[int], int]:
        """(alpha, grid, order) that a periodic call with this box and these widths uses;
        `degree` is the highest multipole or field-derivative degree of the call (0: charges)."""
        max_width = 0.0 if widths is None or widths.numel() == 0 else float(widths.detach().max())
        order = self.order if self.order is not None else (5 if degree == 0 else 8)
        alpha, grid = ewald_parameters(box, self.cutoff, self.tolerance, order, max_width)
        if self.alpha is not None:
            alpha = float(self.alpha)
        if self.grid is not None:
            grid = list(self.grid)
        return alpha, grid, order

    def reciprocal_plan(self, n: int, box: torch.Tensor, alpha: float, grid: List[int]) -> Tuple[bool, float, float]:
        """(direct sum?, real-space cutoff, alpha) of a periodic call with n sites, given PME's alpha and grid.

        Few sites (an ML region in a solvated box) take the direct reciprocal sum with the real-space
        cutoff raised to half the box, which shrinks alpha and with it the number of reciprocal
        vectors ~alpha^3 V: the n^2 real-space pairs cost little there. Cost model in units of one
        site x vector term (measured: a PME grid point costs about two, a real-space pair two)."""
        if self.reciprocal == "pme" or (self.reciprocal == "auto" and self.grid is not None):
            return False, self.cutoff, alpha
        b = box.detach()
        volume = float(torch.det(b))
        half = 0.5 * float(torch.min(b.diagonal())) * (1.0 - 1e-9)
        pairs_pme = 0.5 * n * n * min(1.0, 4.0 / 3.0 * math.pi * self.cutoff ** 3 / volume)
        cost_pme = 2.0 * (grid[0] * grid[1] * grid[2] + pairs_pme)
        best_cost = -1.0
        best_cutoff = self.cutoff
        best_alpha = alpha
        for rc in [self.cutoff, max(self.cutoff, half)]:
            a = alpha if self.alpha is not None else math.sqrt(-math.log(2.0 * self.tolerance)) / rc
            pairs = 0.5 * n * n * min(1.0, 4.0 / 3.0 * math.pi * rc ** 3 / volume)
            cost = n * ewald_sum_size(box, ewald_sum_cutoff(a, self.tolerance)) + 2.0 * pairs
            if best_cost < 0 or cost < best_cost:
                best_cost, best_cutoff, best_alpha = cost, rc, a
        use = self.reciprocal == "ewald" or best_cost <= cost_pme
        if not use:
            return False, self.cutoff, alpha
        return True, best_cutoff, best_alpha

    # the contract's name; nn.Module.parameters() keeps its meaning when called without a box
    def parameters(self, box=None, widths=None, recurse: bool = True, degree: int = 0):  # type: ignore[override]
        if box is None:
            return super().parameters(recurse)
        return self.parameters_for(box, widths, degree)

    def energy(self, positions: torch.Tensor, charges: torch.Tensor, dipoles: Optional[torch.Tensor] = None,
               quadrupoles: Optional[torch.Tensor] = None, widths: Optional[torch.Tensor] = None,
               box: Optional[torch.Tensor] = None, exclusions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Electrostatic energy (kJ/mol) of the sites, E = 1/2 sum_i U_i(phi of the others)."""
        self._check(positions, charges, dipoles, quadrupoles, widths, box, exclusions)
        d = receiver_coefficients(charges, dipoles, quadrupoles)
        deg = multipole_degree(dipoles, quadrupoles)
        pme = False
        alpha, grid, order = 0.0, [0, 0, 0], 0
        if box is not None:
            alpha, grid, order = self.parameters_for(box, widths, deg)
            pme = not self.reciprocal_plan(positions.shape[0], box, alpha, grid)[0]
        # with PME the reciprocal part enters as a grid sum: its forces then cost one gather
        # (see reciprocal_energy); _field adds the direct sum itself and, as here, the same plan
        V = self._field(positions, d, deg, charges, widths, box, exclusions, self.include_self, not pme)
        E = 0.5 * (d * V).sum()
        if pme:
            E = E + self.coulomb * reciprocal_energy(positions, d, box, alpha, grid, order)
        return E

    def potential(self, positions: torch.Tensor, charges: torch.Tensor, dipoles: Optional[torch.Tensor] = None,
                  quadrupoles: Optional[torch.Tensor] = None, widths: Optional[torch.Tensor] = None,
                  box: Optional[torch.Tensor] = None, exclusions: Optional[torch.Tensor] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(phi [n] kJ/mol/e, field [n,3] kJ/mol/e/nm, field gradient [n,3,3] kJ/mol/e/nm^2) at each site."""
        self._check(positions, charges, dipoles, quadrupoles, widths, box, exclusions)
        d = receiver_coefficients(charges, dipoles, quadrupoles)
        # the potential of the *other* sites: a site's own density never enters
        V = self._field(positions, d, 2, charges, widths, box, exclusions, False, True)
        phi, grad, hess = split_derivatives(V)
        return phi, -grad, -hess

    def field_derivatives(self, positions: torch.Tensor, d: torch.Tensor, deg_out: int, charges: torch.Tensor,
                          widths: Optional[torch.Tensor] = None, box: Optional[torch.Tensor] = None,
                          exclusions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Packed potential derivatives (kJ/mol/e/nm^k) at each site from receiver coefficients d
        (multipoles.py). For callers that already hold packed coefficients (the model)."""
        return self._field(positions, d, deg_out, charges, widths, box, exclusions, False, True)

    def _field(self, positions: torch.Tensor, d: torch.Tensor, deg_out: int, charges: torch.Tensor,
               widths: Optional[torch.Tensor], box: Optional[torch.Tensor], exclusions: Optional[torch.Tensor],
               include_self: bool, reciprocal: bool) -> torch.Tensor:
        """Packed potential derivatives; `reciprocal=False` leaves out PME's reciprocal-space part
        (energy() adds it as a grid sum); the direct reciprocal sum is always included."""
        n = positions.shape[0]
        ptr, idx = ops.exclusions_to_csr(exclusions, n, positions.device)
        c = d * parity(ops.degree_of(d.shape[1]), d)
        if box is None:
            V = ops.multipole_field(positions, c, widths, None, ptr, idx, 0.0, 0.0, deg_out, include_self)
            return self.coulomb * V
        alpha, grid, order = self.parameters_for(box, widths, max(ops.degree_of(d.shape[1]), deg_out))
        direct, cutoff, alpha = self.reciprocal_plan(n, box, alpha, grid)
        V = ops.multipole_field(positions, c, widths, box, ptr, idx, cutoff, alpha, deg_out, include_self)
        if direct:
            V = V + ewald_reciprocal_field(positions, d, box, alpha, ewald_sum_cutoff(alpha, self.tolerance), deg_out)
        elif reciprocal:
            V = V + reciprocal_field(positions, d, box, alpha, grid, order, deg_out)
        # Neutralising background for a net charge Q (tin-foil Ewald with the k = 0 term dropped):
        # E_bg = -pi Q^2 / (2 V alpha^2) + (2 pi / V) Q sum_i q_i sigma_i^2, and phi_bg = dE_bg/dq_i.
        volume = torch.det(box)
        Q = charges.sum()
        phi_bg = -math.pi * Q / (volume * alpha ** 2) + torch.zeros_like(charges)
        if widths is not None:
            s2 = widths * widths
            phi_bg = phi_bg + 2.0 * math.pi / volume * ((charges * s2).sum() + Q * s2)
        V = torch.cat([V[:, :1] + phi_bg[:, None], V[:, 1:]], dim=1)
        return self.coulomb * V

    def _check(self, positions, charges, dipoles, quadrupoles, widths, box, exclusions) -> None:
        if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must be a tensor of shape [n, 3] (nm), got "
                             f"{tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions)}")
        n = positions.shape[0]
        if positions.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"positions must be float32 or float64, got {positions.dtype}")
        if bool(torch.isnan(positions).any()) or bool(torch.isinf(positions).any()):
            raise ValueError("positions contain NaN or infinite values")
        named = {"charges": (charges, (n,)), "dipoles": (dipoles, (n, 3)), "quadrupoles": (quadrupoles, (n, 3, 3)),
                 "widths": (widths, (n,))}
        for name, (t, shape) in named.items():
            if t is None:
                if name == "charges":
                    raise ValueError("charges are required (use zeros for sites with dipoles only)")
                continue
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)} to match positions [n={n}, 3], got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)}")
            if t.dtype != positions.dtype:
                raise ValueError(f"{name} has dtype {t.dtype} but positions have {positions.dtype}; convert one")
            if t.device != positions.device:
                raise ValueError(f"{name} is on {t.device} but positions are on {positions.device}; move one")
        if quadrupoles is not None:
            qd = quadrupoles.detach()
            asym = (qd - qd.transpose(1, 2)).abs().max() if n else 0.0
            trace = qd.diagonal(dim1=1, dim2=2).sum(-1).abs().max() if n else 0.0
            scale = float(quadrupoles.detach().abs().max()) if n else 0.0
            if float(asym) > 1e-6 * max(scale, 1e-30) or float(trace) > 1e-6 * max(scale, 1e-30):
                raise ValueError("quadrupoles must be symmetric and traceless (Buckingham convention); "
                                 "symmetrise and remove the trace, Theta - tr(Theta) I / 3")
        if widths is not None and n and bool((widths < 0).any()):
            raise ValueError("widths must be >= 0 (nm); use widths=None for point multipoles")
        if self.include_self and (widths is None or (n and bool((widths <= 0).any()))):
            raise ValueError("include_self=True needs widths > 0 for every site: a point multipole's self-energy "
                             "is infinite")
        if box is not None:
            if not isinstance(box, torch.Tensor) or tuple(box.shape) != (3, 3):
                raise ValueError("box must be a [3, 3] tensor whose rows are the box vectors a, b, c (nm)")
            if box.dtype != positions.dtype or box.device != positions.device:
                raise ValueError("box must have the dtype and device of positions")
            b = box.detach().double().cpu()
            tol = 1e-6 * float(b.diagonal().abs().max())
            if not (b[0, 0] > 0 and b[1, 1] > 0 and b[2, 2] > 0 and abs(b[0, 1]) <= tol and abs(b[0, 2]) <= tol
                    and abs(b[1, 2]) <= tol):
                raise ValueError("box must be in OpenMM's reduced form: a = (ax,0,0), b = (bx,by,0), c = (cx,cy,cz)")
            if abs(b[1, 0]) > 0.5 * b[0, 0] + tol or abs(b[2, 0]) > 0.5 * b[0, 0] + tol or \
                    abs(b[2, 1]) > 0.5 * b[1, 1] + tol:
                raise ValueError("box must be reduced (|bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2); reduce it with "
                                 "openmm.app.internal.unitcell.reducePeriodicBoxVectors")
            half = 0.5 * float(min(b[0, 0], b[1, 1], b[2, 2]))
            if self.cutoff > half:
                raise ValueError(f"cutoff {self.cutoff} nm is more than half the smallest box width ({half:.4g} nm); "
                                 "use a larger box or a smaller cutoff")
        if exclusions is not None:
            if not isinstance(exclusions, torch.Tensor) or exclusions.dim() != 2 or exclusions.shape[1] != 2:
                raise ValueError("exclusions must be an integer tensor of shape [P, 2] of site index pairs")
            if exclusions.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"exclusions must be an integer tensor, got {exclusions.dtype}")
            if exclusions.numel() and (int(exclusions.min()) < 0 or int(exclusions.max()) >= n):
                raise ValueError(f"exclusions index sites outside [0, {n}); fix the pair list")
            if exclusions.numel() and bool((exclusions[:, 0] == exclusions[:, 1]).any()):
                raise ValueError("exclusions contain a site paired with itself; use include_self for self terms")
