"""mm_features with long_range=True against an independent float64 Ewald sum written here: an
explicit sum over reciprocal vectors (no PME, no grid) with the ML site's Gaussian damping
exp(-k^2 sigma^2 / 2) in it, an erf-split real space over explicit images with a splitting
parameter of its own, the minimum-image exclusions removed, and the convention that the MM
charges' potential has zero cell average (tin-foil, k = 0 dropped). Small triclinic box; the
features T0..T3 and the gradients (ML and MM positions, widths, charges) against central
differences of this reference."""
import itertools
import math

import pytest
import torch

from mlpolar.electrostatics import mm_features
from mlpolar.electrostatics.embedding import traceless2, traceless3
from mlpolar.units import ONE_4PI_EPS0

F64 = torch.float64
BOX = torch.tensor([[2.6, 0.0, 0.0], [0.7, 2.5, 0.0], [-0.5, 0.8, 2.7]], dtype=F64)
BETA = 2.2  # the reference's own splitting (1/nm); mm_features picks its own from the tolerance
EXCLUDED = [(0, 2), (3, 11)]  # (ML site, MM atom)
KMAX = 14   # reciprocal vectors 2 pi h^-T m, |m_a| <= KMAX: exp(-k^2/(4 BETA^2)) < 1e-16 beyond


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _kvectors():
    m = torch.tensor(list(itertools.product(range(-KMAX, KMAX + 1), repeat=3)), dtype=F64)
    m = m[(m != 0).any(1)]
    return 2 * math.pi * m @ torch.linalg.inv(BOX).T  # rows k with k . a_i = 2 pi m_i


def reference(ml, widths, mm, q, excluded):
    """(T0, T1, T2, T3) full tensors in kJ/mol/e/nm^k at the ML sites, differentiable (autograd)."""
    volume = torch.det(BOX)
    s2 = widths ** 2
    # reciprocal space: the Gaussian of variance sigma^2 + 1/(2 beta^2) seen by the ML Gaussian
    k = _kvectors()
    k2 = (k * k).sum(1)
    damp = torch.exp(-k2[None, :] * (s2[:, None] / 2 + 1 / (4 * BETA ** 2))) / k2[None, :]  # [n, K]
    phase = ml @ k.T  # [n, K]
    mphase = mm @ k.T  # [m, K]
    re, im = (q[:, None] * torch.cos(mphase)).sum(0), (q[:, None] * torch.sin(mphase)).sum(0)
    c, s = torch.cos(phase) * re + torch.sin(phase) * im, torch.sin(phase) * re - torch.cos(phase) * im  # Re/Im
    pre = 4 * math.pi / volume * damp
    T0 = (pre * c).sum(1)
    T1 = -torch.einsum("nk,ka->na", pre * s, k)
    T2 = -torch.einsum("nk,ka,kb->nab", pre * c, k, k)
    T3 = torch.einsum("nk,ka,kb,kc->nabc", pre * s, k, k, k)
    # real space: erf(a r)/r - erf(g r)/r, g = (2 sigma^2 + 1/beta^2)^-1/2, over explicit images
    real = _real_space(ml, widths, mm, q, excluded)
    # zero cell average: the real-space kernel integrates to pi/beta^2 per unit charge
    T0 = T0 + real[0] - math.pi * q.sum() / (volume * BETA ** 2)
    out = [T0, T1 + real[1], T2 + real[2], T3 + real[3]]
    return [ONE_4PI_EPS0 * t for t in out]


def _real_space(ml, widths, mm, q, excluded):
    n = torch.tensor(list(itertools.product(range(-2, 3), repeat=3)), dtype=F64) @ BOX
    x = ml.detach().clone().requires_grad_(True) if not ml.requires_grad else ml

    def phi(x):
        a = 1 / (math.sqrt(2) * widths[:, None, None])
        g = 1 / torch.sqrt(2 * widths[:, None, None] ** 2 + 1 / BETA ** 2)
        d = x[:, None, None, :] - mm[None, :, None, :] - n[None, None, :, :]
        r = d.norm(dim=-1)
        kern = (torch.erf(a * r) - torch.erf(g * r)) / r
        out = (q[None, :, None] * kern).sum((1, 2))
        for i, j in excluded:  # the minimum-image pair does not interact at all
            dij = x[i] - mm[j] - n
            rij = dij.norm(dim=-1).min()
            out = out - torch.nn.functional.one_hot(torch.tensor(i), x.shape[0]).to(F64) * q[j] * torch.erf(
                rij / (math.sqrt(2) * widths[i])) / rij
        return out

    p = phi(x)
    g1 = torch.autograd.grad(p.sum(), x, create_graph=True)[0]
    g2 = torch.stack([torch.autograd.grad(g1[:, a].sum(), x, create_graph=True)[0] for a in range(3)], 1)
    g3 = torch.stack([torch.stack([torch.autograd.grad(g2[:, a, b].sum(), x, create_graph=True)[0]
                                   for b in range(3)], 1) for a in range(3)], 1)
    return p, g1, g2, g3


def _system(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ml = torch.rand(4, 3, generator=gen, dtype=F64) * 0.8 - 0.4  # across the box corner: images
    mm = torch.rand(30, 3, generator=gen, dtype=F64) @ BOX
    q = torch.randn(30, generator=gen, dtype=F64) * 0.5  # not neutral: the background matters
    widths = 0.04 + 0.06 * torch.rand(4, generator=gen, dtype=F64)
    # excluded MM atoms bonded-like to their ML site (inside the cutoff, as exclusions are)
    for i, j in EXCLUDED:
        mm[j] = ml[i] + 0.12 * torch.randn(3, generator=gen, dtype=F64)
    return ml, widths, mm, q




def _features(ml, widths, mm, q, tolerance):
    return mm_features(ml, widths, mm, q, box=BOX, cutoff=1.2, exclusions=torch.tensor(EXCLUDED),
                       tolerance=tolerance)


@pytest.mark.parametrize("tolerance", [1e-5, 1e-7])
def test_features_match_explicit_ewald_sum(tolerance):
    ml, widths, mm, q = _system(1)
    T = _features(ml, widths, mm, q, tolerance)
    R = [t.detach() for t in reference(ml, widths, mm, q, EXCLUDED)]
    R = [R[0], R[1], traceless2(R[2]), traceless3(R[3])]
    for order, (a, b) in enumerate(zip((T.T0, T.T1, T.T2, T.T3), R)):
        scale = float(b.abs().max())
        err = float((a - b).abs().max())
        # OpenMM's tolerance is a relative force error: allow 5x for the higher derivatives
        assert err < 5 * tolerance * scale, (order, err, scale)
    # the long-range part is not negligible here
    cut = mm_features(ml, widths, mm, q, box=BOX, cutoff=1.2, exclusions=torch.tensor(EXCLUDED), long_range=False)
    assert float((cut.T0 - R[0]).abs().max()) > 100 * tolerance * float(R[0].abs().max())


def test_gradients_match_differences_of_the_reference():
    """d/d(everything) of a model-like energy of T0..T3 (analytic: real-space operator, PME
    backward, background) against central differences of the explicit Ewald reference along
    random directions."""
    ml, widths, mm, q = _system(2)
    gen = torch.Generator().manual_seed(5)
    w = [torch.randn(4, *([3] * k), generator=gen, dtype=F64) for k in range(4)]
    w[2], w[3] = traceless2(0.5 * (w[2] + w[2].transpose(1, 2))), traceless3(
        sum(w[3].permute(0, *p) for p in itertools.permutations((1, 2, 3))) / 6)

    def energy(ts):
        return sum((wk * t).sum() for wk, t in zip(w, ts))

    inputs = [t.clone().requires_grad_(True) for t in (ml, widths, mm, q)]
    T = _features(*inputs, 1e-8)
    grads = torch.autograd.grad(energy((T.T0, T.T1, T.T2, T.T3)), inputs)
    h = 1e-5
    for k, g in enumerate(grads):
        d = torch.randn(inputs[k].shape, generator=gen, dtype=F64)
        args_p = [t.detach() + (h * d if i == k else 0) for i, t in enumerate(inputs)]
        args_m = [t.detach() - (h * d if i == k else 0) for i, t in enumerate(inputs)]
        numeric = (float(energy(reference(*args_p, EXCLUDED)).detach())
                   - float(energy(reference(*args_m, EXCLUDED)).detach())) / (2 * h)
        analytic = float((g * d).sum())
        assert abs(analytic - numeric) < 1e-6 * max(1.0, abs(numeric)), (k, analytic, numeric)
