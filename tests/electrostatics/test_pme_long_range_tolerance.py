"""The ML-MM long range (mm_features under a box) at a requested tolerance, as the OpenMM layer
runs it at the force field's ewaldErrorTolerance: T0..T3 against the independent explicit Ewald
sum of test_embedding_ewald_reference, the grid's share of the error against a much finer PME at
the same splitting, the grid rule for order 8, and gradients."""
import math

import pytest
import torch

from mlpolar.electrostatics import mm_features
from mlpolar.electrostatics.embedding import _ewald_parameters, traceless2, traceless3
from mlpolar.electrostatics.ewald_parameters import _fft_friendly

import test_embedding_ewald_reference as ref

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _features(system, tolerance, **kw):
    ml, widths, mm, q = system
    return mm_features(ml, widths, mm, q, box=ref.BOX, cutoff=1.2, exclusions=torch.tensor(ref.EXCLUDED),
                       tolerance=tolerance, **kw)


@pytest.mark.parametrize("seed", [1, 3])
@pytest.mark.parametrize("tolerance", [5e-4, 1e-4, 2e-5])
def test_features_within_tolerance_of_explicit_ewald_sum(tolerance, seed):
    """Worst error of each order relative to its largest value: within the tolerance for T0 and T1
    (OpenMM's tolerance is a relative force error), twice it for T2 and T3. Measured: at most 0.14,
    0.44, 0.68, 0.87 times the tolerance (T0..T3), dominated by the real-space truncation."""
    system = ref._system(seed)
    T = _features(system, tolerance)
    R = [t.detach() for t in ref.reference(*system, ref.EXCLUDED)]
    R = [R[0], R[1], traceless2(R[2]), traceless3(R[3])]
    for order, (a, b, allowed) in enumerate(zip((T.T0, T.T1, T.T2, T.T3), R, (1.0, 1.0, 2.0, 2.0))):
        err = float((a - b).abs().max()) / float(b.abs().max())
        assert err < allowed * tolerance, (order, err / tolerance)


@pytest.mark.parametrize("tolerance", [5e-4, 1e-4, 1e-5])
def test_grid_error_is_a_small_share_of_the_tolerance(tolerance):
    """The PME grid's own error at the default order 8 on 0.7 times OpenMM's grid, against order 10
    on a 2.5x finer grid at the same alpha: below a fifth of the tolerance for every order (the
    rest of the budget is the real-space truncation's)."""
    system = ref._system(1)
    ml, widths, mm, q = system
    alpha, grid = _ewald_parameters(ref.BOX, 1.2, tolerance, 8, float(widths.max()))
    T = _features(system, tolerance)
    R = _features(system, tolerance, pme_order=10, alpha=alpha, grid=[_fft_friendly(int(2.5 * k)) for k in grid])
    for k, (a, b) in enumerate(zip(T, R)):
        err = float((a - b).abs().max()) / float(b.abs().max())
        assert err < 0.2 * tolerance, (k, err / tolerance)
    # and the comparison can see a grid error: order 6 on a grid 2x coarser fails it
    C = _features(system, tolerance, pme_order=6, grid=[max(7, k // 2) for k in grid])
    assert float((C.T3 - R.T3).abs().max()) > 0.5 * tolerance * float(R.T3.abs().max())


def test_grid_rule():
    """Order 8: 0.7 times OpenMM's K = 2 alpha L / (3 tol^0.2), rounded up to 2,3,5,7-smooth
    sizes; lower orders: OpenMM's K."""
    box = torch.diag(torch.tensor([3.2852863, 3.2861648, 3.1855098], dtype=F64))   # the dipeptide's box
    for tolerance, expected8 in [(1e-5, [45, 45, 42]), (5e-4, [16, 16, 15])]:
        alpha, grid = _ewald_parameters(box, 1.2, tolerance, 8, 0.05)
        assert alpha == math.sqrt(-math.log(2 * tolerance)) / 1.2
        assert grid == expected8
    assert _ewald_parameters(box, 1.2, 1e-5, 6, 0.05)[1] == [63, 63, 60]


def test_orders_that_break_force_continuity_or_bad_tolerances_are_rejected():
    system = ref._system(1)
    with pytest.raises(ValueError, match="pme_order"):
        _features(system, 5e-4, pme_order=5)   # T3's forces need the 4th derivative: order >= 6
    for bad in (0.0, -1e-4, 0.5, float("nan")):
        with pytest.raises(ValueError, match="tolerance"):
            _features(system, bad)


def test_gradients_at_a_loose_tolerance():
    """gradcheck (float64) of a model-like energy of T0..T3 at tolerance 5e-4 (order 8, coarse grid)
    with respect to ML and MM positions and the MM charges."""
    gen = torch.Generator().manual_seed(7)
    ml, widths, mm, q = ref._system(2)
    mm, q = mm[:12], q[:12]
    w = [torch.randn(4, *([3] * k), generator=gen, dtype=F64) for k in range(4)]

    def energy(x, y, c):
        T = mm_features(x, widths, y, c, box=ref.BOX, cutoff=1.2, tolerance=5e-4)
        return sum((wk * t).sum() for wk, t in zip(w, T))
    args = (ml.clone().requires_grad_(True), mm.clone().requires_grad_(True), q.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(energy, args, eps=1e-6, atol=1e-6, rtol=1e-5)
