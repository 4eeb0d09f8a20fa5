"""The compiled operators on their own: cell-list pairs against brute force, autograd against
finite differences (first and second derivatives), and PME spread/gather adjointness."""
import itertools
import math

import pytest
import torch

from mlpolar import ops


def _csr(n, pairs, device):
    return ops.exclusions_to_csr(torch.tensor(pairs, dtype=torch.long) if pairs else None, n, device)


def _brute_field(pos, c, widths, box, cutoff, beta, deg_out, excluded=()):
    """Real-space field by explicit image sums and autograd derivatives of the radial kernel."""
    n = pos.shape[0]
    din = ops.degree_of(c.shape[1])
    exps = [(t, u, v) for d in range(max(din, deg_out) + 1) for t in range(d, -1, -1) for u in range(d - t, -1, -1)
            for v in [d - t - u]]
    out = torch.zeros(n, ops.ncart(deg_out), dtype=torch.float64)
    if box is not None:  # wrap, so that the image inside the cutoff has shifts in {-1, 0, 1}
        frac = pos @ torch.linalg.inv(box)
        pos = (frac - torch.floor(frac)) @ box
    shifts = [torch.tensor(s, dtype=torch.float64) for s in itertools.product((-1, 0, 1), repeat=3)] if box is not None \
        else [torch.zeros(3, dtype=torch.float64)]

    def kernel(x, a):
        r = x.norm()
        k = torch.erf(a * r) / r if a is not None else 1.0 / r
        if beta > 0:
            k = k - torch.erf(beta * r) / r
        return k

    def deriv(x, a, m):
        x = x.clone().requires_grad_(True)
        f = kernel(x, a)
        for axis, count in enumerate(m):
            for _ in range(count):
                f = torch.autograd.grad(f, x, create_graph=True)[0][axis]
        return f.detach()

    def dfact(k):  # (k)!! for odd k >= -1
        return math.prod(range(k, 0, -2)) if k > 0 else 1

    def self_deriv(m):  # d^m of erf(beta r)/r at r = 0, from its Taylor series in r^2
        if any(x % 2 for x in m):
            return 0.0
        p, q, r = (x // 2 for x in m)
        nn = p + q + r
        b_n = 2.0 / math.sqrt(math.pi) * 2 ** nn * beta ** (2 * nn + 1) / (2 * nn + 1)
        return (-1) ** nn * dfact(2 * p - 1) * dfact(2 * q - 1) * dfact(2 * r - 1) * b_n

    if box is not None and beta > 0:  # the reciprocal sum's self-interaction, removed in real space
        for i in range(n):
            for it, t in enumerate(exps[:ops.ncart(deg_out)]):
                out[i, it] -= sum(c[i, js] * self_deriv(tuple(p + q for p, q in zip(t, s_)))
                                  for js, s_ in enumerate(exps[:ops.ncart(din)]))
    for i in range(n):
        for j in range(n):
            if i == j or (i, j) in excluded or (j, i) in excluded:
                continue
            for s in shifts:
                x = pos[i] - pos[j] - (s @ box if box is not None else 0)
                if box is not None and x.norm() >= cutoff:
                    continue
                a = None if widths is None else 1.0 / math.sqrt(2 * (widths[i] ** 2 + widths[j] ** 2))
                for it, t in enumerate(exps[:ops.ncart(deg_out)]):
                    out[i, it] += sum(c[j, js] * deriv(x, a, tuple(p + q for p, q in zip(t, s_)))
                                      for js, s_ in enumerate(exps[:ops.ncart(din)]))
    return out


@pytest.mark.parametrize("din,dout", [(0, 0), (1, 2), (2, 1)])
@pytest.mark.parametrize("gauss", [False, True])
def test_periodic_cell_list_matches_image_sum(din, dout, gauss):
    torch.manual_seed(din * 10 + dout)
    n = 10
    box = torch.tensor([[2.0, 0, 0], [0.7, 1.9, 0], [-0.5, 0.8, 2.1]], dtype=torch.float64)
    pos = torch.rand(n, 3, dtype=torch.float64) @ box + torch.randn(n, 3, dtype=torch.float64)  # some outside the box
    c = torch.randn(n, ops.ncart(din), dtype=torch.float64)
    widths = torch.rand(n, dtype=torch.float64) * 0.1 + 0.05 if gauss else None
    ptr, idx = _csr(n, [], pos.device)
    got = ops.multipole_field(pos, c, widths, box, ptr, idx, 0.9, 0.0 if gauss else 1.5, dout, False)
    ref = _brute_field(pos, c, widths, box, 0.9, 0.0 if gauss else 1.5, dout)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_open_with_exclusions_matches_brute_force():
    torch.manual_seed(3)
    n = 8
    pos = torch.rand(n, 3, dtype=torch.float64)
    c = torch.randn(n, 4, dtype=torch.float64)
    widths = torch.rand(n, dtype=torch.float64) * 0.1 + 0.02
    excl = [(0, 3), (2, 5), (5, 6)]
    ptr, idx = _csr(n, excl, pos.device)
    got = ops.multipole_field(pos, c, widths, None, ptr, idx, 0.0, 0.0, 2, False)
    ref = _brute_field(pos, c, widths, None, 0.0, 0.0, 2, excluded=set(excl))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("periodic", [False, True])
def test_field_gradcheck_first_and_second_order(device, periodic):
    torch.manual_seed(5)
    n = 6
    dt = torch.float64
    box = torch.tensor([[1.9, 0, 0], [0.3, 2.0, 0], [-0.4, 0.5, 1.95]], dtype=dt, device=device)
    pos = (torch.rand(n, 3, dtype=dt, device=device) @ box).requires_grad_(True)
    c = torch.randn(n, 4, dtype=dt, device=device, requires_grad=True)
    w = (torch.rand(n, dtype=dt, device=device) * 0.05 + 0.05).requires_grad_(True)
    bx = box.clone().requires_grad_(periodic)
    ptr, idx = _csr(n, [(0, 1), (2, 4)], device)

    def f(p, cc, ww, b):
        return ops.multipole_field(p, cc, ww, b if periodic else None, ptr, idx, 0.9, 2.5 if periodic else 0.0, 1,
                                   True)

    inputs = (pos, c, w, bx)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    # second derivatives with respect to positions, coefficients and widths (box: first order only)
    def g(p, cc, ww):
        return f(p, cc, ww, bx.detach())
    assert torch.autograd.gradgradcheck(g, (pos, c, w), eps=1e-6, atol=1e-4, rtol=1e-3)


def test_virial_has_no_second_derivative():
    n = 4
    box = (torch.eye(3, dtype=torch.float64) * 2.0).requires_grad_(True)
    pos = torch.rand(n, 3, dtype=torch.float64)
    c = torch.randn(n, 1, dtype=torch.float64)
    ptr, idx = _csr(n, [], pos.device)
    V = ops.multipole_field(pos, c, None, box, ptr, idx, 0.9, 3.0, 0, False)
    (gb,) = torch.autograd.grad((V * c).sum(), box, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives through the periodic box"):
        torch.autograd.grad(gb.sum(), box)


@pytest.mark.parametrize("deg", [0, 1, 2])
def test_spread_gather_adjoint_and_gradcheck(device, deg):
    torch.manual_seed(deg)
    K = [7, 8, 9]
    n = 5
    u = (torch.rand(n, 3, dtype=torch.float64, device=device) * torch.tensor(K, dtype=torch.float64, device=device))
    e = torch.randn(n, ops.ncart(deg), dtype=torch.float64, device=device)
    grid = torch.randn(*K, dtype=torch.float64, device=device)
    lhs = (ops.pme_spread(u, e, K, 5) * grid).sum()
    rhs = (e * ops.pme_gather(u, grid, deg, 5)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    u.requires_grad_(True)
    e.requires_grad_(True)
    grid.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda uu, ee: ops.pme_spread(uu, ee, K, 5), (u, e), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda uu, gg: ops.pme_gather(uu, gg, deg, 5), (u, grid), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(lambda uu, ee: ops.pme_spread(uu, ee, K, 5), (u, e), eps=1e-6, atol=1e-5)


def test_spline_partition_of_unity_and_derivatives():
    # sum_g W(u, g) = 1 and the derivatives of a constant grid vanish
    u = torch.rand(20, 3, dtype=torch.float64) * 10
    ones = torch.ones(10, 10, 10, dtype=torch.float64)
    g = ops.pme_gather(u, ones, 2, 6)
    torch.testing.assert_close(g[:, 0], torch.ones(20, dtype=torch.float64))
    torch.testing.assert_close(g[:, 1:], torch.zeros(20, 9, dtype=torch.float64), atol=1e-12, rtol=0)


def test_op_errors_name_the_argument():
    pos = torch.rand(4, 3, dtype=torch.float64)
    ptr, idx = _csr(4, [], pos.device)
    with pytest.raises(RuntimeError, match="coeffs"):
        ops.multipole_field(pos, torch.rand(4, 2, dtype=torch.float64), None, None, ptr, idx, 0.0, 0.0, 0, False)
    with pytest.raises(RuntimeError, match="cutoff"):
        ops.multipole_field(pos, torch.rand(4, 1, dtype=torch.float64), None, torch.eye(3, dtype=torch.float64),
                            ptr, idx, 0.9, 3.0, 0, False)
    with pytest.raises(RuntimeError, match="order"):
        ops.pme_gather(pos, torch.zeros(8, 8, 8, dtype=torch.float64), 5, 5)
