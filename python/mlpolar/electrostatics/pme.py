"""Reciprocal-space (smooth particle-mesh Ewald) part for Cartesian multipoles.

Spreading and gathering run in the compiled operators on grid coordinates u = K * (fractional
coordinates); the frame change, the FFTs and the influence function are torch operations, so
the gradient with respect to the box (the virial) follows from autograd. Eager calls keep the
influence function of the last few (box, grid, alpha, order, dtype, device) in a small LRU cache:
it costs as much as the FFTs and changes only with the box.
"""
import math
from collections import OrderedDict
from typing import Callable, Dict, Hashable, List

import torch

from .. import ops
from .multipoles import from_frame, to_frame


def bspline_moduli(K: int, order: int, dtype: torch.dtype, device: torch.device, rfft: bool = False) -> torch.Tensor:
    """|b(m)|^2 of smooth PME (Essmann et al. 1995) for m = 0..K-1 (or 0..K//2 when rfft).

    Written without recursion or caches so that TorchScript compiles it for the exported model;
    eager callers get it cached through influence_function.
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

    Differentiable with respect to the box. Eager calls reuse earlier results (pme_cache_info): the
    whole G while the box does not require grad and its values are unchanged, otherwise only the
    box-independent B-spline moduli. TorchScript and torch.compile always compute it.
    """
    if torch.jit.is_scripting():
        return _influence(box, grid, alpha, moduli_product(grid, order, box.dtype, box.device))
    else:
        return _cached_influence(box, grid, alpha, order)


def _influence(box: torch.Tensor, grid: List[int], alpha: float, moduli: torch.Tensor) -> torch.Tensor:
    """influence_function from the product of the three axes' B-spline moduli [K1, K2, K3/2+1]."""
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
    G = torch.exp(-(math.pi ** 2) * k2 / alpha ** 2) / (math.pi * volume * k2 * moduli) * float(K1 * K2 * K3)
    G = G.clone()
    G[0, 0, 0] = 0.0
    return G


class _LRU:
    """A small least-recently-used cache with hit/miss counters (for the tests)."""

    def __init__(self, size: int):
        self.size = size
        self.items: "OrderedDict[Hashable, torch.Tensor]" = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = self.items.get(key)
        if value is not None:
            self.hits += 1
            self.items.move_to_end(key)
            return value
        self.misses += 1
        value = make()
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


# Per process. Moduli: a few KB each. Influence functions: K1 K2 (K3/2+1) values, 7 MB for a 120^3
# float64 grid; four entries cover the ML-ML, ML-MM and an MM-sized grid of one simulation, and
# a barostat's new box replaces the oldest entry instead of growing the cache.
_MODULI = _LRU(16)
_INFLUENCE = _LRU(4)


def pme_cache_info() -> Dict[str, int]:
    """Hits, misses and sizes of the influence-function and B-spline-moduli caches."""
    return {"influence_hits": _INFLUENCE.hits, "influence_misses": _INFLUENCE.misses,
            "influence_size": len(_INFLUENCE.items), "moduli_hits": _MODULI.hits,
            "moduli_misses": _MODULI.misses, "moduli_size": len(_MODULI.items)}


def clear_pme_cache() -> None:
    """Empty both caches and reset their counters."""
    for c in (_INFLUENCE, _MODULI):
        c.items.clear()
        c.hits = 0
        c.misses = 0


def moduli_product(grid: List[int], order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """|b1(m1)|^2 |b2(m2)|^2 |b3(m3)|^2 [K1, K2, K3/2+1] (rfft layout): the box-independent factor."""
    K1, K2, K3 = grid
    return (bspline_moduli(K1, order, dtype, device)[:, None, None]
            * bspline_moduli(K2, order, dtype, device)[None, :, None]
            * bspline_moduli(K3, order, dtype, device, rfft=True)[None, None, :])


def _moduli_product(grid: List[int], order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (grid[0], grid[1], grid[2], order, dtype, str(device))
    return _MODULI.get(key, lambda: moduli_product(grid, order, dtype, device))


def _cached_influence(box: torch.Tensor, grid: List[int], alpha: float, order: int) -> torch.Tensor:
    grid = [int(k) for k in grid]
    if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
        # compiling: reading the box's values would break the graph; inference mode: its tensors
        # could not be saved for a later backward, so nothing made there may be reused
        return _influence(box, grid, alpha, moduli_product(grid, order, box.dtype, box.device))
    moduli = _moduli_product(grid, order, box.dtype, box.device)
    if box.requires_grad:
        # the virial needs dG/dbox: only the box-independent moduli come from the cache
        return _influence(box, grid, alpha, moduli)
    # the key holds the box's values, not the tensor: a barostat's new box is a new entry
    values = tuple(box.detach().to("cpu", torch.float64).reshape(-1).tolist())
    key = (values, tuple(grid), float(alpha), int(order), box.dtype, str(box.device))
    return _INFLUENCE.get(key, lambda: _influence(box.detach(), grid, alpha, moduli))


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
