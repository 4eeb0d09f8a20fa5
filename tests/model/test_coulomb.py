"""The fast variant's dense Coulomb operator (model/coulomb.py) against a brute-force double loop,
the electrostatics core, finite differences, and its pair list against geometry.neighbour_pairs."""
import math

import torch

from mlpolar.electrostatics import GaussianMultipoles
from mlpolar.model.coulomb import dense_geometry, potential, potential_and_gradient
from mlpolar.model.geometry import neighbour_pairs
from mlpolar.units import ONE_4PI_EPS0

D = torch.float64


def system(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = 0.6 * torch.rand(n, 3, generator=g, dtype=D)
    widths = 0.03 + 0.08 * torch.rand(n, generator=g, dtype=D)
    q = torch.randn(n, generator=g, dtype=D)
    return pos, widths, q


def brute_force(pos, widths, q):
    """φ_i and ∇_i φ by a double loop over pairs with math.erf, derivative by hand."""
    n = len(q)
    out = torch.zeros(n, 4, dtype=D)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = [float(pos[i, a] - pos[j, a]) for a in range(3)]
            d = math.sqrt(sum(x * x for x in r))
            a = 1.0 / math.sqrt(2.0 * (float(widths[i]) ** 2 + float(widths[j]) ** 2))
            out[i, 0] += ONE_4PI_EPS0 * float(q[j]) * math.erf(a * d) / d
            dk = (2 * a / math.sqrt(math.pi) * math.exp(-a * a * d * d) / d - math.erf(a * d) / d ** 2)
            for c in range(3):
                out[i, 1 + c] += ONE_4PI_EPS0 * float(q[j]) * dk * r[c] / d
    return out


def test_matches_brute_force_and_core():
    pos, widths, q = system()
    W, *_ = dense_geometry(pos, widths, ONE_4PI_EPS0, 0.5)
    V = potential_and_gradient(W, q)
    ref = brute_force(pos, widths, q)
    assert torch.allclose(V, ref, rtol=1e-12, atol=1e-10)
    assert torch.allclose(potential(W, q), ref[:, 0], rtol=1e-12, atol=1e-10)
    phi, field, _ = GaussianMultipoles().potential(pos, q, widths=widths)
    assert torch.allclose(V[:, 0], phi, rtol=1e-10, atol=1e-9)
    assert torch.allclose(V[:, 1:], -field, rtol=1e-10, atol=1e-9)


def test_gradients_match_finite_differences():
    pos, widths, q = system(n=5, seed=3)
    weights = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=D)

    def f(p, w, c):
        W, i, j, r, d = dense_geometry(p, w, ONE_4PI_EPS0, 0.4)
        return (weights * potential_and_gradient(W, c)).sum() + (d * d).sum()

    args = (pos.requires_grad_(True), widths.requires_grad_(True), q.requires_grad_(True))
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_pairs_match_neighbour_pairs():
    pos, widths, _ = system(n=30, seed=5)
    _, i, j, r, d = dense_geometry(pos, widths, ONE_4PI_EPS0, 0.3)
    i2, j2, r2 = neighbour_pairs(pos, 0.3, None)
    assert torch.equal(i, i2) and torch.equal(j, j2)
    assert torch.allclose(r, r2) and torch.allclose(d, r2.norm(dim=1))
    assert 0 < len(i) < 30 * 29


def test_model_dense_path_equals_core_path():
    """The fast variant without a box: dense operator (default) and electrostatics core (regions
    above DENSE_MAX atoms) give the same energy, charges and forces, with MM charges and a field."""
    from mlpolar.model import MLPolar, MLPolarConfig, energy_and_forces
    torch.manual_seed(0)
    model = MLPolar(MLPolarConfig(elements=[1, 8], variant="fast", channels=8, contraction_channels=2)).double()
    pos, _, _ = system(n=9, seed=7)
    species = torch.tensor([8, 1, 1] * 3)
    g = torch.Generator().manual_seed(8)
    mm_pos = 1.2 * torch.rand(30, 3, generator=g, dtype=D) - 0.3
    mm_q = 0.4 * torch.randn(30, generator=g, dtype=D)
    kw = dict(mm_positions=mm_pos, mm_charges=mm_q, external_field=torch.tensor([5.0, -3.0, 2.0], dtype=D))
    args = (species, pos, torch.tensor([0.0], dtype=D), torch.tensor([1]))
    dense = model(*args, **kw)
    e1, f1, g1 = energy_and_forces(model, *args, **kw)
    model.dense_max = 0
    core = model(*args, **kw)
    e2, f2, g2 = energy_and_forces(model, *args, **kw)
    for key in ("energy", "energy_electrostatic", "energy_nonlocal", "charges"):
        assert torch.allclose(dense[key], core[key], rtol=1e-10, atol=1e-10), key
    assert torch.allclose(f1, f2, rtol=1e-8, atol=1e-8) and torch.allclose(g1, g2, rtol=1e-8, atol=1e-8)
