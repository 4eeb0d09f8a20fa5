"""The direct reciprocal-space Ewald sum (mlpolar.electrostatics.ewald_sum) that GaussianMultipoles
uses for few sites: against the brute-force reference (tests/reference.py) at tight tolerance, for
every periodic case of test_gaussian_multipoles; gradients to second order by finite differences;
the automatic choice between it and PME; TorchScript; bad input."""
import pytest
import torch

from mlpolar.electrostatics import GaussianMultipoles
from mlpolar.electrostatics.ewald_sum import ewald_sum_size, reciprocal_vectors
from test_gaussian_multipoles import (PERIODIC_CASES, _box_from_lower, _small, _traceless, assert_tight, maxrel,
                                      mlpolar_result, reference_result, system)

DT = torch.float64


@pytest.mark.parametrize("kind,sites,charged", PERIODIC_CASES,
                         ids=[f"{k}-{s}-{'charged' if c else 'neutral'}" for k, s, c in PERIODIC_CASES])
def test_direct_sum_tight(device, kind, sites, charged):
    """Tight tolerance: energy to 1e-6, every gradient (box included) and the potential, field and
    field gradient to 1e-5 of the reference, as PME at tight settings."""
    key = (kind, "qdQ", sites, True, charged)
    ref = reference_result(key)
    elec = GaussianMultipoles(cutoff=1.1, tolerance=1e-9, reciprocal="ewald")
    assert_tight(mlpolar_result(elec, system(*key), device), ref)


def test_direct_sum_equals_pme_term_by_term():
    """Same alpha and real-space cutoff: the direct sum and a fine PME grid give the same
    reciprocal potential derivatives up to degree 2 (the sum is the exact quantity PME approximates)."""
    from mlpolar.electrostatics.ewald_sum import ewald_reciprocal_field
    from mlpolar.electrostatics.multipoles import receiver_coefficients
    from mlpolar.electrostatics.pme import reciprocal_field
    s = system("triclinic", "qdQ", "gauss", False, True)
    d = receiver_coefficients(s["charges"], s["dipoles"], s["quadrupoles"])
    direct = ewald_reciprocal_field(s["positions"], d, s["box"], 3.0, 8.0, 2)
    pme = reciprocal_field(s["positions"], d, s["box"], 3.0, [64, 64, 64], 10, 2)
    for lo, hi in ((0, 1), (1, 4), (4, 10)):
        assert maxrel(direct[:, lo:hi], pme[:, lo:hi]) <= 1e-6, (lo, maxrel(direct[:, lo:hi], pme[:, lo:hi]))


def test_reciprocal_vectors_half_space():
    """One of each +-m pair, none zero, all within m_max, and as many as the sphere's volume says."""
    box = torch.tensor([[2.5, 0, 0], [0.8, 2.4, 0], [-0.6, 0.9, 2.3]], dtype=DT)
    m = reciprocal_vectors(box, 3.0)
    n = torch.round(m @ box.T)  # integer coordinates
    assert torch.allclose(m @ box.T, n, atol=1e-10)
    assert bool(((m * m).sum(1) > 0).all()) and float((m * m).sum(1).max()) <= 9.0 + 1e-12
    keys = {tuple(int(v) for v in row) for row in n}
    assert len(keys) == m.shape[0] and not any(tuple(-v for v in k) in keys for k in keys)
    assert abs(m.shape[0] - ewald_sum_size(box, 3.0)) <= 0.1 * m.shape[0]


@pytest.mark.parametrize("kind", ["energy", "potential"])
def test_direct_sum_gradcheck(device, kind):
    (pos, q, mu, th, s), lower = _small("periodic", device, 5)
    elec = GaussianMultipoles(cutoff=0.9, alpha=3.0, tolerance=1e-6, reciprocal="ewald")
    ex = torch.tensor([[0, 1]], device=device)

    def f(p, qq, m, a, w, low):
        b = _box_from_lower(low)
        if kind == "energy":
            return elec.energy(p, qq, m, _traceless(a), w, b, ex)
        phi, field, grad = elec.potential(p, qq, m, _traceless(a), w, b, ex)
        return phi.sum() + (field * p).sum() + grad[:, 0, 1].sum()

    inputs = [t.clone().requires_grad_(True) for t in (pos, q, mu, th, s, lower)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_direct_sum_gradgradcheck(device):
    (pos, q, mu, th, s), lower = _small("periodic", device, 4)
    box = _box_from_lower(lower)
    elec = GaussianMultipoles(cutoff=0.9, alpha=3.0, tolerance=1e-6, reciprocal="ewald")

    def f(p, qq, m):
        return elec.energy(p, qq, m, th, s, box)

    inputs = [t.clone().requires_grad_(True) for t in (pos, q, mu)]
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_auto_choice():
    """A few dozen sites in a solvated box take the direct sum with the cutoff raised to half the
    box; a full box of atoms takes PME at the requested cutoff; an explicit grid forces PME."""
    box = torch.eye(3, dtype=DT) * 6.2
    auto = GaussianMultipoles(cutoff=0.9, tolerance=1e-5)
    alpha, grid, _ = auto.parameters_for(box)
    direct, cutoff, a = auto.reciprocal_plan(51, box, alpha, grid)
    assert direct and cutoff == pytest.approx(3.1) and a < alpha
    assert auto.reciprocal_plan(23558, box, alpha, grid) == (False, 0.9, alpha)
    fixed = GaussianMultipoles(cutoff=0.9, tolerance=1e-5, grid=[64, 64, 64])
    assert not fixed.reciprocal_plan(51, box, alpha, grid)[0]
    forced = GaussianMultipoles(cutoff=0.9, tolerance=1e-5, reciprocal="pme")
    assert not forced.reciprocal_plan(51, box, alpha, grid)[0]


def test_torchscript_matches_eager():
    """The model scripts GaussianMultipoles and calls field_derivatives (no input checks there)."""
    from mlpolar.electrostatics.multipoles import receiver_coefficients
    s = system("triclinic", "qdQ", "gauss", True, True)

    class Energy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.elec = GaussianMultipoles(cutoff=0.9, tolerance=1e-6, reciprocal="ewald")

        def forward(self, x: torch.Tensor, d: torch.Tensor, q: torch.Tensor, w: torch.Tensor, box: torch.Tensor):
            return self.elec.field_derivatives(x, d, 2, q, w, box, None)

    eager = Energy()
    scripted = torch.jit.script(eager)
    d = receiver_coefficients(s["charges"], s["dipoles"], s["quadrupoles"])
    args = (s["positions"], d, s["charges"], s["widths"], s["box"])
    assert eager.elec.reciprocal_plan(20, s["box"], *eager.elec.parameters_for(s["box"], s["widths"], 2)[:2])[0]
    assert torch.allclose(scripted(*args), eager(*args), rtol=1e-12, atol=1e-12)


def test_bad_reciprocal_raises():
    with pytest.raises(ValueError, match="reciprocal"):
        GaussianMultipoles(reciprocal="fft")
