"""mm_features: gradients with respect to the ML widths sigma_i (the analytic width derivative of
the damped, switched pair kernel in the fused operator) against a float64 brute force with
autograd through erf, finite differences (gradcheck), mixed second derivatives (forces in a loss),
the point limit sigma -> 0 and the error for a second width derivative."""
import itertools
import math

import pytest
import torch

from mlpolar.electrostatics import mm_features
from mlpolar.electrostatics.embedding import traceless2, traceless3
from mlpolar.units import ONE_4PI_EPS0

F64 = torch.float64
TRICLINIC = torch.tensor([[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [-0.6, 0.9, 3.1]], dtype=F64)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny systems: threads only add start-up costs on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _switch(r, cutoff, width):
    x = ((r - (cutoff - width)) / width).clamp(0, 1)
    s = 1 - x ** 5 * (126 - 420 * x + 540 * x ** 2 - 315 * x ** 3 + 70 * x ** 4)
    return torch.where(r < cutoff, s, torch.zeros_like(s))


def brute_phi(ml, widths, mm, q, box, cutoff, width):
    """phi_i by explicit pairs (27 images under a box), differentiable in everything incl. widths."""
    shifts = torch.zeros(1, 3, dtype=F64)
    if box is not None:
        frac = mm @ torch.linalg.inv(box)
        mm = mm - torch.floor(frac).detach() @ box
        ml = ml - torch.floor(ml @ torch.linalg.inv(box)).detach() @ box
        shifts = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=F64) @ box
    r = (ml[:, None, None, :] - mm[None, :, None, :] - shifts[None, None, :, :]).norm(dim=-1)  # [n, m, images]
    point = widths[:, None, None] == 0  # 1/r there; a finite dummy width keeps the other branch's grads finite
    a = 1.0 / (math.sqrt(2) * torch.where(point, torch.ones_like(widths[:, None, None]), widths[:, None, None]))
    k = torch.where(point, torch.ones_like(r), torch.erf(a * r)) / r
    return ONE_4PI_EPS0 * (_switch(r, cutoff, width) * k * q[None, :, None]).sum((1, 2))


def _system(n_ml=4, n_mm=120, box=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mm = torch.rand(n_mm, 3, generator=gen, dtype=F64)
    mm = mm @ box if box is not None else mm * 2.4 - 1.2
    ml = torch.rand(n_ml, 3, generator=gen, dtype=F64) * 0.6 - 0.3
    q = torch.randn(n_mm, generator=gen, dtype=F64) * 0.4
    widths = 0.05 + 0.1 * torch.rand(n_ml, generator=gen, dtype=F64)
    return ml, widths, mm, q


def _weights(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *([3] * k), generator=gen, dtype=F64) for k in range(4)]


@pytest.mark.parametrize("periodic", [False, True])
def test_width_gradient_against_brute_force(periodic):
    """A model-like energy of all four orders; its sigma gradient (and the position gradients with
    sigma live) against autograd of the brute-force potential's derivatives."""
    box = TRICLINIC if periodic else None
    ml, widths, mm, q = _system(box=box, seed=3 + periodic)
    widths[1] = 0.0  # a point site among Gaussians: its derivative is that of the point limit, 0
    cutoff, sw = 1.1, 0.3
    w = _weights(4, 7)

    def energy(T0, T1, T2, T3):
        return sum((wk * t).sum() for wk, t in zip(w, (T0, T1, T2, T3)))

    xs, xml = widths.clone().requires_grad_(True), ml.clone().requires_grad_(True)
    T = mm_features(xml, xs, mm, q, box=box, cutoff=cutoff, switch_width=sw, long_range=False)
    g_s, g_ml = torch.autograd.grad(energy(T.T0, T.T1, T.T2, T.T3), (xs, xml))

    ys, yml = widths.clone().requires_grad_(True), ml.clone().requires_grad_(True)
    phi = brute_phi(yml, ys, mm, q, box, cutoff, sw)
    g = torch.autograd.grad(phi.sum(), yml, create_graph=True)[0]
    h = torch.stack([torch.autograd.grad(g[:, a].sum(), yml, create_graph=True)[0] for a in range(3)], 1)
    t = torch.stack([torch.stack([torch.autograd.grad(h[:, a, b].sum(), yml, create_graph=True)[0]
                                  for b in range(3)], 1) for a in range(3)], 1)
    # the features are the traceless parts (T3 of a symmetric tensor already)
    E_ref = (w[0] * phi).sum() + (w[1] * g).sum() + (w[2] * traceless2(h)).sum() + (w[3] * traceless3(t)).sum()
    r_s, r_ml = torch.autograd.grad(E_ref, (ys, yml))
    torch.testing.assert_close(T.T3, traceless3(t).detach(), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(g_s, r_s, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(g_ml, r_ml, rtol=1e-9, atol=1e-6)
    assert g_s[1] == 0 and g_s.abs().max() > 1.0  # a point site has none, the Gaussians a real one


@pytest.mark.parametrize("mode", ["open", "periodic", "ewald"])
def test_width_gradcheck(mode):
    """Finite differences in sigma, positions and charges together (float64), every order."""
    box = torch.diag(torch.tensor([2.2, 2.3, 2.4], dtype=F64)) if mode != "open" else None
    ml, widths, mm, q = _system(n_ml=2, n_mm=6, box=box, seed=11)
    if box is None:
        mm = mm * 0.6
    widths = torch.tensor([0.12, 0.2], dtype=F64)  # wide enough that the pairs feel sigma
    excl = torch.tensor([[0, 1]])

    def f(s, x, y, c):
        T = mm_features(x, s, y, c, box=box, cutoff=1.0, switch_width=0.3, exclusions=excl,
                        long_range=mode == "ewald", grid=[10, 10, 10], tolerance=1e-3)
        return T.T0, T.T1, T.T2, T.T3

    inputs = tuple(t.clone().requires_grad_(True) for t in (widths, ml, mm, q))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_width_derivative_of_forces():
    """Forces in a loss: d/dsigma of the ML and MM forces (a position derivative of the width
    derivative kernel and vice versa) against central differences in sigma."""
    ml, widths, mm, q = _system(n_ml=3, n_mm=40, seed=19)
    widths = widths + 0.15  # wide enough that every site has MM charges inside its Gaussian
    w = _weights(3, 23)

    def forces(s, create_graph):
        x, y = ml.clone().requires_grad_(True), mm.clone().requires_grad_(True)
        T = mm_features(x, s, y, q, cutoff=1.0, switch_width=0.2, long_range=False)
        E = sum((wk * t).sum() for wk, t in zip(w, (T.T0, T.T1, T.T2, T.T3)))
        return torch.autograd.grad(E, (x, y), create_graph=create_graph)

    s = widths.clone().requires_grad_(True)
    fx, fy = forces(s, True)
    gen = torch.Generator().manual_seed(29)
    u, v = torch.randn(fx.shape, generator=gen, dtype=F64), torch.randn(fy.shape, generator=gen, dtype=F64)
    (analytic,) = torch.autograd.grad((u * fx).sum() + (v * fy).sum(), s)
    h = 1e-6
    numeric = torch.zeros_like(widths)
    for k in range(3):
        e = torch.zeros_like(widths)
        e[k] = h
        p, m = forces(widths + e, False), forces(widths - e, False)
        numeric[k] = ((u * (p[0] - m[0])).sum() + (v * (p[1] - m[1])).sum()) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-7 * float(numeric.abs().max()))
    assert analytic.abs().min() > 1e-3 * analytic.abs().max()


def test_point_limit():
    """sigma -> 0: the features tend to the point-charge ones, the sigma gradient to 0 (the
    Gaussian's correction falls off as exp(-r^2 / 2 sigma^2)), with no NaN at sigma = 0 exactly
    or at widths whose a^3 would overflow; an MM charge well inside a Gaussian gives a nonzero one."""
    ml, _, mm, q = _system(n_ml=3, n_mm=60, seed=31)
    mm = torch.cat([mm, ml[:1] + torch.tensor([[0.02, 0.01, -0.015]], dtype=F64)])  # one close pair
    q = torch.cat([q, torch.tensor([0.5], dtype=F64)])
    point = mm_features(ml, None, mm, q, cutoff=1.0)
    for sigma in (0.0, 1e-200, 1e-5):
        s = torch.full((3,), sigma, dtype=F64, requires_grad=True)
        T = mm_features(ml, s, mm, q, cutoff=1.0)
        for a, b in zip((T.T0, T.T1, T.T2, T.T3), (point.T0, point.T1, point.T2, point.T3)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
        (g,) = torch.autograd.grad(sum(t.sum() for t in (T.T0, T.T1, T.T2, T.T3)), s)
        assert torch.isfinite(g).all() and (g == 0).all(), (sigma, g)
    s = torch.full((3,), 0.02, dtype=F64, requires_grad=True)
    T = mm_features(ml, s, mm, q, cutoff=1.0)
    (g,) = torch.autograd.grad(T.T0.sum(), s)
    # only site 0 has an MM charge within a few sigma; its phi falls as sigma grows (q > 0)
    assert g[0] < -1.0 and g[1:].abs().max() < 1e-6 * g[0].abs()


def test_second_width_derivative_raises():
    ml, widths, mm, q = _system(n_ml=2, n_mm=10, seed=37)
    s = widths.clone().requires_grad_(True)
    T = mm_features(ml, s, mm, q, cutoff=1.0)
    (g,) = torch.autograd.grad(T.T0.sum(), s, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives with respect to the Gaussian widths"):
        torch.autograd.grad(g.sum(), s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("long_range", [False, True])
def test_cuda_width_gradient_matches_cpu(long_range):
    ml, widths, mm, q = _system(n_ml=5, n_mm=300, box=TRICLINIC, seed=43)
    excl = torch.tensor([[0, 3], [4, 9]])

    def run(device):
        s, x, y = (t.to(device).clone().requires_grad_(True) for t in (widths, ml, mm))
        T = mm_features(x, s, y, q.to(device), box=TRICLINIC.to(device), cutoff=1.0, exclusions=excl.to(device),
                        long_range=long_range, grid=[30, 30, 30])
        E = sum((t * t).sum() for t in (T.T0, T.T1, T.T2, T.T3))
        return [g.detach().cpu() for g in torch.autograd.grad(E, (s, x, y))]

    for a, b in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-8)
