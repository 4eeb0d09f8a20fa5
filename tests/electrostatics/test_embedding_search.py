"""The CPU fast path of mm_features (cell binning of the MM atoms kept around the ML region,
per-site partner lists, vectorised Hermite tensors and fused backward) against the double-precision
brute force of test_embedding: triclinic boxes with the ML region at the cell edge and straddling
the boundary, MM atoms exactly at the cutoff, sparse environments (coarse cells), exclusions, float32,
and one thread against two."""
import itertools
import math

import pytest
import torch

from mlpolar.electrostatics import mm_features
from mlpolar.electrostatics.embedding import traceless2, traceless3

from mlpolar.units import ONE_4PI_EPS0
from test_embedding import _switch, brute_features

F64 = torch.float64
TRICLINIC = torch.tensor([[4.0, 0.0, 0.0], [1.3, 3.8, 0.0], [-1.1, 1.2, 3.9]], dtype=F64)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _environment(n_ml, n_mm, box, centre, seed, spread=0.5):
    """n_mm MM charges filling the (triclinic) box, n_ml Gaussian ML sites around `centre`."""
    gen = torch.Generator().manual_seed(seed)
    mm = torch.rand(n_mm, 3, generator=gen, dtype=F64) @ box
    ml = centre + (torch.rand(n_ml, 3, generator=gen, dtype=F64) - 0.5) * spread
    q = torch.randn(n_mm, generator=gen, dtype=F64) * 0.4
    widths = 0.03 + 0.05 * torch.rand(n_ml, generator=gen, dtype=F64)
    return ml, widths, mm, q


def _pairs(ml, mm, box, reach):
    """(i, j, image shift) of every ML-MM pair over the 27 images closer than `reach`, found without
    gradients, so that the brute force below differentiates only those (fourth derivatives stay cheap)."""
    shifts = torch.zeros(1, 3, dtype=F64) if box is None else \
        torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=F64) @ box
    with torch.no_grad():
        d = ml[:, None, None, :] - mm[None, :, None, :] - shifts[None, None, :, :]
        i, j, k = torch.nonzero(d.norm(dim=-1) < reach, as_tuple=True)
    return i, j, shifts[k]


def _brute_pair_potential(x, s, y, c, pairs, cutoff, switch, excluded):
    i, j, shift = pairs
    keep = torch.tensor([(a, b) not in set(excluded) for a, b in zip(i.tolist(), j.tolist())], dtype=torch.bool)
    i, j, shift = i[keep], j[keep], shift[keep]
    r = (x[i] - y[j] - shift).norm(dim=-1)
    k = torch.erf(r / (math.sqrt(2) * s[i])) / r * _switch(r, cutoff, switch) * c[j]
    return ONE_4PI_EPS0 * torch.zeros(x.shape[0], dtype=x.dtype).index_add(0, i, k)


def _energy_and_forces(ml, widths, mm, q, box, cutoff, switch, excluded, weights, fast):
    """A model-like energy from all four orders and its gradients (ML, MM, charges, widths): from
    mm_features (fast) or by nested autograd of an explicit sum over the pairs and images (not fast)."""
    x, y, c, s = (t.clone().requires_grad_(True) for t in (ml, mm, q, widths))
    if fast:
        excl = torch.tensor(excluded) if excluded else None
        T = mm_features(x, s, y, c, box=box, cutoff=cutoff, switch_width=switch, exclusions=excl, long_range=False)
        feats = (T.T0, T.T1, T.T2, T.T3)
    else:
        phi = _brute_pair_potential(x, s, y, c, _pairs(ml, mm, box, cutoff + 0.05), cutoff, switch, excluded)
        g = torch.autograd.grad(phi.sum(), x, create_graph=True)[0]
        h = torch.stack([torch.autograd.grad(g[:, a].sum(), x, create_graph=True)[0] for a in range(3)], 1)
        t = torch.stack([torch.stack([torch.autograd.grad(h[:, a, b].sum(), x, create_graph=True)[0]
                                      for b in range(3)], 1) for a in range(3)], 1)
        feats = (phi, g, traceless2(h), traceless3(t))
    E = sum((w * f).sum() for w, f in zip(weights, feats))
    return (E.detach(), *torch.autograd.grad(E, (x, y, c, s)))


@pytest.mark.parametrize("where", ["corner", "face", "inside"])
def test_triclinic_region_at_the_cell_edge(where, one_thread):
    """ML region straddling the corner / a face of a triclinic box, or inside it: features and all
    gradients against the 27-image brute force (the search keeps part of the 350 atoms)."""
    centre = {"corner": torch.zeros(3, dtype=F64),
              "face": 0.5 * (TRICLINIC[1] + TRICLINIC[2]),
              "inside": 0.5 * TRICLINIC.sum(0)}[where]
    ml, widths, mm, q = _environment(5, 350, TRICLINIC, centre, seed=3 + len(where))
    excluded = [(0, 11), (3, 300), (4, 5)]
    cutoff, switch = 1.3, 0.2
    T = mm_features(ml, widths, mm, q, box=TRICLINIC, cutoff=cutoff, switch_width=switch,
                    exclusions=torch.tensor(excluded), long_range=False)
    phi, g, h, t = brute_features(ml, widths, mm, q, TRICLINIC, cutoff, switch, excluded)
    torch.testing.assert_close(T.T0, phi, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(T.T1, g, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(T.T2, traceless2(h), rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(T.T3, traceless3(t), rtol=1e-9, atol=1e-6)
    if where != "corner":
        return  # (the fourth-derivative brute force is slow: forces once, where the imaging is hardest)
    weights = [torch.randn(5, *([3] * k), dtype=F64) for k in range(4)]
    got = _energy_and_forces(ml, widths, mm, q, TRICLINIC, cutoff, switch, excluded, weights, fast=True)
    ref = _energy_and_forces(ml, widths, mm, q, TRICLINIC, cutoff, switch, excluded, weights, fast=False)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("switch", [0.0, 0.15])
def test_mm_atoms_exactly_at_the_cutoff(switch, one_thread):
    """Atoms at r = cutoff exactly along each axis (excluded: the kernel keeps r < cutoff), a hair
    inside and a hair outside (axes and a diagonal); with a hard cutoff the ones inside count fully."""
    cutoff = 1.25  # exactly representable, as are the axis displacements below
    ml = torch.tensor([[0.5, 0.25, -0.75], [0.0, 0.0, 0.0]], dtype=F64)
    offsets = []
    for axis in range(3):
        for sign in (1.0, -1.0):
            for r in (cutoff, cutoff * (1 - 1e-12), cutoff * (1 + 1e-12)):
                d = torch.zeros(3, dtype=F64)
                d[axis] = sign * r
                offsets.append(d)
    # off the axes r = cutoff is not representable (and the brute force's norm rounds either way):
    # there only atoms a hair inside and outside
    for r in (cutoff * (1 - 1e-12), cutoff * (1 + 1e-12)):
        offsets.append(torch.tensor([1.0, -1.0, 1.0], dtype=F64) / math.sqrt(3.0) * r)
    mm = torch.cat([ml[0] + torch.stack(offsets), torch.tensor([[0.9, 0.1, -0.5]], dtype=F64)])
    q = torch.linspace(-0.8, 0.9, mm.shape[0], dtype=F64)
    widths = torch.tensor([0.05, 0.07], dtype=F64)
    for box in (None, 4.0 * torch.eye(3, dtype=F64)):  # a power of 2: the brute force's wrapping is exact
        T = mm_features(ml, widths, mm, q, box=box, cutoff=cutoff, switch_width=switch, long_range=False)
        phi, g, h, t = brute_features(ml, widths, mm, q, box, cutoff, switch)
        torch.testing.assert_close(T.T0, phi, rtol=1e-10, atol=1e-9)
        torch.testing.assert_close(T.T1, g, rtol=1e-10, atol=1e-8)
        torch.testing.assert_close(T.T3, traceless3(t), rtol=1e-9, atol=1e-6)
    if switch == 0.0:  # the atoms a hair inside the hard cutoff count with their full 1/r
        inside = [k for k, d in enumerate(offsets) if float(d.norm()) < cutoff]
        lone = mm_features(ml[:1], widths[:1], mm[inside], q[inside], cutoff=cutoff + 0.1, switch_width=0.0)
        T = mm_features(ml[:1], widths[:1], mm[:-1], q[:-1], cutoff=cutoff, switch_width=0.0)
        torch.testing.assert_close(T.T0, lone.T0, rtol=1e-12, atol=0.0)


def test_sparse_wide_environment_open_boundaries(one_thread):
    """ML sites far apart in open space, each in its own cluster of MM atoms, with sparse atoms
    between: the kept region is wide and nearly empty, so the cells coarsen (at most ~2 per atom).
    Features and gradients against the brute force."""
    gen = torch.Generator().manual_seed(21)
    ml = (torch.rand(4, 3, generator=gen, dtype=F64) - 0.5) * 20.0
    clusters = (ml[:, None, :] + (torch.rand(4, 120, 3, generator=gen, dtype=F64) - 0.5) * 3.0).reshape(-1, 3)
    far = (torch.rand(300, 3, generator=gen, dtype=F64) - 0.5) * 30.0
    mm = torch.cat([far, clusters])
    q = torch.randn(mm.shape[0], generator=gen, dtype=F64) * 0.4
    widths = torch.tensor([0.05, 0.02, 0.08, 0.04], dtype=F64)
    weights = [torch.randn(4, *([3] * k), dtype=F64) for k in range(4)]
    got = _energy_and_forces(ml, widths, mm, q, None, 1.0, 0.1, [], weights, fast=True)
    ref = _energy_and_forces(ml, widths, mm, q, None, 1.0, 0.1, [], weights, fast=False)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-7)
    assert (got[2].abs().sum(1) > 0).sum() > 50  # the clusters do interact


def test_float32_and_threads_agree():
    """float32 against float64, and two threads against one (threads split the ML sites; the MM
    side is summed per thread)."""
    box = 3.4 * torch.eye(3, dtype=F64)
    ml, widths, mm, q = _environment(12, 3900, box, torch.tensor([0.1, 3.3, 1.7], dtype=F64), seed=8, spread=0.9)
    weights = [torch.randn(12, *([3] * k), dtype=F64) for k in range(4)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _energy_and_forces(ml, widths, mm, q, box, 1.2, 0.1, [(2, 9)], weights, fast=True)
        torch.set_num_threads(2)
        two = _energy_and_forces(ml, widths, mm, q, box, 1.2, 0.1, [(2, 9)], weights, fast=True)
        f32 = _energy_and_forces(*(t.float() for t in (ml, widths, mm, q, box)), 1.2, 0.1, [(2, 9)],
                                 [w.float() for w in weights], fast=True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
    for a, b in zip(f32, one):
        scale = float(b.abs().max())
        assert float((a.double() - b).abs().max()) < 2e-4 * scale


@pytest.mark.parametrize("dtype,long_range", [(torch.float64, False), (torch.float64, True), (torch.float32, False)])
def test_backward_reusing_the_forward_search(dtype, long_range, one_thread):
    """A first backward (no create_graph) reuses the binned MM atoms of its forward; a backward with
    create_graph takes the generic path that searches again. Both give the same gradients for ML
    sites at the cell edge, exclusions, learned widths, and (Ewald) excluded pairs' corrections."""
    ml, widths, mm, q = _environment(12, 3000, TRICLINIC, torch.tensor([0.1, 0.2, 3.7], dtype=F64), seed=5)
    ml, widths, mm, q, box = (t.to(dtype) for t in (ml, widths, mm, q, TRICLINIC))
    excl = torch.tensor([[0, 3], [4, 17], [4, 18], [11, 2999]])
    grads = []
    for create_graph in (False, True):
        x, s, y, c = (t.clone().requires_grad_(True) for t in (ml, widths, mm, q))
        T = mm_features(x, s, y, c, box=box, cutoff=1.0, switch_width=0.2, exclusions=excl, long_range=long_range)
        E = T.T0.sum() + (T.T1 * 0.3).sum() + (T.T2 * 0.2).sum() + (T.T3 * 0.1).sum()
        grads.append(torch.autograd.grad(E, (x, s, y, c), create_graph=create_graph))
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-3)
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b.detach(), **tol)


def test_float32_wide_gaussians_close_pairs_and_switch():
    """Wide Gaussians (sigma 0.12-0.2 nm): the float32 close-pair path (vectorised erf) covers most
    partners, some of them inside the switch, against the float64 brute force of test_embedding."""
    box = 4.0 * torch.eye(3, dtype=F64)  # reach (ML radius + cutoff) under half the box: the fast path
    ml, _, mm, q = _environment(6, 2000, box, torch.tensor([2.0, 2.0, 2.0], dtype=F64), seed=11, spread=0.5)
    widths = torch.linspace(0.12, 0.2, 6, dtype=F64)
    phi, g, h, t = brute_features(ml, widths, mm, q, box, 1.2, 0.3, [])
    ref = (phi, g, traceless2(h), traceless3(t))
    x = ml.float().requires_grad_(True)
    y = mm.float().requires_grad_(True)
    T = mm_features(x, widths.float(), y, q.float(), box=box.float(), cutoff=1.2, switch_width=0.3, long_range=False)
    for got, want in zip(T, ref):
        assert float((got.double() - want).abs().max()) < 1e-4 * float(want.abs().max())
    # forces: against float64 through the same operator (held to the brute force elsewhere)
    x64, y64 = ml.clone().requires_grad_(True), mm.clone().requires_grad_(True)
    T64 = mm_features(x64, widths, y64, q, box=box, cutoff=1.2, switch_width=0.3, long_range=False)
    g64 = torch.autograd.grad(sum(t.sum() for t in T64), (x64, y64))
    g32 = torch.autograd.grad(sum(t.sum() for t in T), (x, y))
    for a, b in zip(g32, g64):
        assert float((a.double() - b).abs().max()) < 1e-4 * float(b.abs().max())
