"""mm_features (issue 3): the embedding operator against a double-precision brute force with
autograd derivatives, finite differences (first and second order), rotational covariance,
continuity at the cutoff, exclusions, Ewald consistency with the electrostatics core, TorchScript
and input errors."""
import itertools
import math
import warnings

import pytest
import torch

from mlpolar.electrostatics import GaussianMultipoles, MMFeatures, mm_features
from mlpolar.electrostatics.embedding import traceless2, traceless3
from mlpolar.units import ONE_4PI_EPS0

F64 = torch.float64
TRICLINIC = torch.tensor([[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [-0.6, 0.9, 3.1]], dtype=F64)


def _switch(r, cutoff, width):
    """1 - smoothstep of order 4 on [cutoff - width, cutoff], 0 beyond."""
    if width == 0:
        return (r < cutoff).to(r.dtype)
    x = ((r - (cutoff - width)) / width).clamp(0, 1)
    s = 1 - x ** 5 * (126 - 420 * x + 540 * x ** 2 - 315 * x ** 3 + 70 * x ** 4)
    return torch.where(r < cutoff, s, torch.zeros_like(s))


def brute_potential(ml, widths, mm, q, box, cutoff, width, excluded=()):
    """phi_i (kJ/mol/e) by explicit pairs (all 27 images of wrapped positions under a box)."""
    if box is not None:
        frac = mm @ torch.linalg.inv(box)
        mm = (frac - torch.floor(frac)) @ box
        fml = ml @ torch.linalg.inv(box)
        ml = ml - torch.floor(fml).detach() @ box
        shifts = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=ml.dtype) @ box
    else:
        shifts = torch.zeros(1, 3, dtype=ml.dtype)
    mask = torch.ones(ml.shape[0], mm.shape[0], dtype=ml.dtype)
    for i, j in excluded:
        mask[i, j] = 0
    phi = 0
    for s in shifts:
        d = ml[:, None, :] - (mm[None, :, :] + s)
        r = d.norm(dim=-1)
        if widths is None:
            k = 1.0 / r
        else:
            k = torch.erf(r / (math.sqrt(2) * widths[:, None])) / r
        phi = phi + (mask * _switch(r, cutoff, width) * k * q[None, :]).sum(1)
    return ONE_4PI_EPS0 * phi


def brute_features(ml, widths, mm, q, box, cutoff, width, excluded=()):
    """(T0, T1, T2 full, T3 full) by autograd of the brute-force potential, in float64."""
    x = ml.detach().clone().requires_grad_(True)
    phi = brute_potential(x, widths, mm, q, box, cutoff, width, excluded)
    g = torch.autograd.grad(phi.sum(), x, create_graph=True)[0]
    h = torch.stack([torch.autograd.grad(g[:, a].sum(), x, create_graph=True)[0] for a in range(3)], 1)
    t = torch.stack([torch.stack([torch.autograd.grad(h[:, a, b].sum(), x, retain_graph=True)[0]
                                  for b in range(3)], 1) for a in range(3)], 1)
    return phi.detach(), g.detach(), h.detach(), t.detach()


def _system(n_ml=4, n_mm=150, box=None, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    if box is None:
        mm = torch.rand(n_mm, 3, generator=gen, dtype=F64) * 2.4 - 1.2
        ml = torch.rand(n_ml, 3, generator=gen, dtype=F64) * 0.6 - 0.3
    else:
        mm = torch.rand(n_mm, 3, generator=gen, dtype=F64) @ box
        # an ML cluster straddling the box corner: minimum images across the boundary
        ml = torch.rand(n_ml, 3, generator=gen, dtype=F64) * 0.6 - 0.3
    # keep MM atoms away from ML sites (MM atoms never sit on top of an ML site)
    q = torch.randn(n_mm, generator=gen, dtype=F64) * 0.4
    widths = 0.03 + 0.05 * torch.rand(n_ml, generator=gen, dtype=F64)
    return ml.to(dtype), widths.to(dtype), mm.to(dtype), q.to(dtype)


def _full(T: MMFeatures):
    return T.T0, T.T1, T.T2, T.T3


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("gaussian", [False, True])
def test_all_orders_against_brute_force(periodic, gaussian):
    box = TRICLINIC if periodic else None
    ml, widths, mm, q = _system(box=box, seed=1 + periodic + 2 * gaussian)
    widths = widths if gaussian else None
    excluded = [(0, 3), (2, 7), (2, 8)]
    excl = torch.tensor(excluded)
    T = mm_features(ml, widths, mm, q, box=box, cutoff=1.1, switch_width=0.25, exclusions=excl, long_range=False)
    phi, g, h, t = brute_features(ml, widths, mm, q, box, 1.1, 0.25, excluded)
    torch.testing.assert_close(T.T0, phi, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(T.T1, g, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(T.T2, traceless2(h), rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(T.T3, traceless3(t), rtol=1e-9, atol=1e-6)
    # T2 and T3 are symmetric and traceless
    assert T.T2.diagonal(dim1=1, dim2=2).sum(-1).abs().max() < 1e-9
    assert (T.T3 - T.T3.transpose(1, 3)).abs().max() < 1e-9
    assert T.T3.diagonal(dim1=1, dim2=2).sum(-1).abs().max() < 1e-8


def test_orders_are_selectable_and_float32_agrees():
    ml, widths, mm, q = _system(seed=5)
    full = mm_features(ml, widths, mm, q, cutoff=1.0)
    for order in range(4):
        T = mm_features(ml, widths, mm, q, cutoff=1.0, max_order=order)
        for k, (a, b) in enumerate(zip(_full(T), _full(full))):
            if k > order:
                assert a is None
            else:
                torch.testing.assert_close(a, b)
    T32 = mm_features(ml.float(), widths.float(), mm.float(), q.float(), cutoff=1.0)
    for a, b in zip(_full(T32), _full(full)):
        assert a.dtype == torch.float32
        scale = b.abs().max()
        assert (a.double() - b).abs().max() < 1e-4 * scale  # float32 rounding of the inputs near close pairs


def test_large_environment_forces_against_brute_force():
    """Thousands of MM atoms of which the ML-centric search keeps a few hundred: features and the
    forces on ML and MM atoms (a model-like energy) against brute-force autograd."""
    box = torch.diag(torch.tensor([3.8, 3.9, 3.7], dtype=F64))
    ml, widths, mm, q = _system(n_ml=6, n_mm=1600, box=box, seed=7)
    mu = torch.randn(6, 3, dtype=F64) * 0.02
    theta = traceless2(torch.randn(6, 3, 3, dtype=F64) * 0.01)
    theta = 0.5 * (theta + theta.transpose(1, 2))
    charges = torch.randn(6, dtype=F64) * 0.3

    def energy(T0, T1, T2):
        return (charges * T0).sum() + (mu * T1).sum() + (theta * T2).sum() / 3

    xml, xmm, xq = (t.clone().requires_grad_(True) for t in (ml, mm, q))
    T = mm_features(xml, widths, xmm, xq, box=box, cutoff=1.2, long_range=False)
    gml, gmm, gq = torch.autograd.grad(energy(T.T0, T.T1, T.T2), (xml, xmm, xq))
    yml, ymm, yq = (t.clone().requires_grad_(True) for t in (ml, mm, q))
    phi = brute_potential(yml, widths, ymm, yq, box, 1.2, 0.1)
    g = torch.autograd.grad(phi.sum(), yml, create_graph=True)[0]
    hh = torch.stack([torch.autograd.grad(g[:, a].sum(), yml, create_graph=True)[0] for a in range(3)], 1)
    rml, rmm, rq = torch.autograd.grad(energy(phi, g, traceless2(hh)), (yml, ymm, yq))
    torch.testing.assert_close(gml, rml, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(gmm, rmm, rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(gq, rq, rtol=1e-9, atol=1e-8)
    assert (gmm.abs().sum(1) > 0).sum() < 1000  # the search did drop distant atoms (they get no force)


@pytest.fixture
def one_thread():
    """Tiny systems: threads only add start-up and spin-wait costs on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("mode", ["open", "periodic", "ewald"])
def test_gradcheck_and_gradgradcheck(mode, one_thread):
    box = torch.diag(torch.tensor([2.2, 2.3, 2.4], dtype=F64)) if mode != "open" else None
    ml, widths, mm, q = _system(n_ml=2, n_mm=5 if mode == "ewald" else 7, box=box, seed=11)
    if box is None:
        mm = mm * 0.6
    excl = torch.tensor([[0, 1]])

    weights = [torch.randn(2, *([3] * k), dtype=F64) for k in range(4)]

    def f(x, y, c):
        T = mm_features(x, widths, y, c, box=box, cutoff=1.0, switch_width=0.3, exclusions=excl,
                        long_range=mode == "ewald", grid=[10, 10, 10])
        return T.T0, T.T1, T.T2, T.T3

    def energies(x, y, c):  # one model-like energy per ML site from all four orders
        return sum((w * t).reshape(2, -1).sum(1) for w, t in zip(weights, f(x, y, c)))

    inputs = tuple(t.clone().requires_grad_(True) for t in (ml, mm, q))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradgradcheck(energies, inputs, eps=1e-6, atol=1e-4, rtol=1e-3)


def test_rotational_covariance():
    ml, widths, mm, q = _system(seed=13)
    R = torch.linalg.qr(torch.randn(3, 3, dtype=F64))[0]
    T = mm_features(ml, widths, mm, q, cutoff=1.0)
    U = mm_features(ml @ R.T, widths, mm @ R.T, q, cutoff=1.0)
    torch.testing.assert_close(U.T0, T.T0)
    torch.testing.assert_close(U.T1, T.T1 @ R.T)
    torch.testing.assert_close(U.T2, torch.einsum("ai,bj,nij->nab", R, R, T.T2))
    torch.testing.assert_close(U.T3, torch.einsum("ai,bj,ck,nijk->nabc", R, R, R, T.T3))


def test_continuity_across_the_cutoff():
    """An MM charge crossing the cutoff: T0..T3 and the force on it from an energy built on T3 (a
    fourth derivative) go to zero as the distance to the cutoff eps does (C4 switch: T_k ~ eps^(5-k))."""
    ml = torch.zeros(1, 3, dtype=F64)
    direction = torch.tensor([0.3, -0.5, 0.8], dtype=F64)
    direction = direction / direction.norm()
    q = torch.tensor([0.7], dtype=F64)
    cutoff = 1.0

    def quantities(r):
        mm = (r * direction)[None, :].clone().requires_grad_(True)
        T = mm_features(ml, torch.tensor([0.05], dtype=F64), mm, q, cutoff=cutoff, switch_width=0.2)
        force = torch.autograd.grad(T.T3.sum(), mm)[0]
        return torch.tensor([float(t.detach().abs().max()) for t in (*_full(T), force)])

    near, nearer, beyond = quantities(cutoff - 1e-4), quantities(cutoff - 1e-6), quantities(cutoff + 1e-6)
    expected = torch.tensor([1e-10, 1e-8, 1e-6, 1e-4, 1e-2], dtype=F64)  # (1e-2)^(5-k) for T_k, 1e-2 for the force
    assert (nearer < 3 * expected * near + 1e-20).all(), nearer / near
    assert (beyond == 0).all()
    far = mm_features(ml, None, (0.5 * direction)[None, :], q, cutoff=cutoff).T0.abs().item()
    assert near[0] < 1e-8 * far


def test_exclusions_remove_exactly_the_excluded_pairs():
    ml, widths, mm, q = _system(seed=17)
    excl = torch.tensor([[1, 4], [1, 5], [3, 0]])
    T = mm_features(ml, widths, mm, q, cutoff=1.0, exclusions=excl)
    full = mm_features(ml, widths, mm, q, cutoff=1.0)
    for i, j in excl.tolist():
        single = mm_features(ml[i:i + 1], widths[i:i + 1], mm[j:j + 1], q[j:j + 1], cutoff=1.0)
        full = MMFeatures(*(t.index_add(0, torch.tensor([i]), -s) for t, s in zip(_full(full), _full(single))))
    for a, b in zip(_full(T), _full(full)):
        torch.testing.assert_close(a, b)


def _consistency(box, widths_on, seed):
    """sum_i q T0 + mu.T1 + Theta:T2/3 against the core's E(ML+MM) - E(ML) - E(MM)."""
    ml, widths, mm, q = _system(n_ml=5, n_mm=60, box=box, seed=seed)
    widths = widths if widths_on else None
    gen = torch.Generator().manual_seed(seed + 100)
    qml = torch.randn(5, generator=gen, dtype=F64) * 0.4
    mu = torch.randn(5, 3, generator=gen, dtype=F64) * 0.03
    th = torch.randn(5, 3, 3, generator=gen, dtype=F64) * 0.01
    th = traceless2(0.5 * (th + th.transpose(1, 2)))
    kw = dict(cutoff=1.0, alpha=3.2, grid=[36, 36, 36], order=8) if box is not None else dict(cutoff=1.0)
    core = GaussianMultipoles(**kw)
    zeros = torch.zeros(60, 3, dtype=F64)
    pos = torch.cat([ml, mm])
    w_all = None if widths is None else torch.cat([widths, torch.zeros(60, dtype=F64)])
    excl = torch.tensor([[0, 2], [3, 17], [4, 30]])  # (ml, mm) pairs; the core numbers MM after ML
    E_all = core.energy(pos, torch.cat([qml, q]), torch.cat([mu, zeros]),
                        torch.cat([th, zeros[:, :, None].expand(60, 3, 3)]), w_all, box,
                        exclusions=excl + torch.tensor([0, 5]))
    E_ml = core.energy(ml, qml, mu, th, widths, box)
    E_mm = core.energy(mm, q, None, None, None if widths is None else torch.zeros(60, dtype=F64), box)
    if box is not None:
        T = mm_features(ml, widths, mm, q, box=box, cutoff=1.0, alpha=3.2, grid=[36, 36, 36], pme_order=8,
                        exclusions=excl)
    else:  # the core sums all pairs under open boundaries: a cutoff beyond every pair, no switch
        T = mm_features(ml, widths, mm, q, cutoff=50.0, switch_width=0.0, exclusions=excl)
    E_emb = (qml * T.T0).sum() + (mu * T.T1).sum() + (th * T.T2).sum() / 3
    return E_emb, E_all - E_ml - E_mm


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("widths_on", [False, True])
def test_energy_matches_electrostatics_core(periodic, widths_on):
    box = TRICLINIC if periodic else None
    E_emb, E_ref = _consistency(box, widths_on, seed=21 + periodic)
    assert abs(float(E_emb - E_ref)) < 1e-7 * max(1.0, abs(float(E_ref)))


def test_ewald_t3_is_the_gradient_of_t2():
    """Under Ewald, T3 = traceless symmetric part of grad T2 (double backward through op and PME)."""
    ml, widths, mm, q = _system(n_ml=3, n_mm=40, box=TRICLINIC, seed=31)
    x = ml.clone().requires_grad_(True)
    T = mm_features(x, widths, mm, q, box=TRICLINIC, cutoff=1.0, grid=[30, 30, 30])
    dT2 = torch.stack([torch.stack([torch.autograd.grad(T.T2[:, a, b].sum(), x, retain_graph=True)[0]
                                    for b in range(3)], 1) for a in range(3)], 1)  # [n, a, b, c]
    sym = sum(dT2.permute(0, *p) for p in itertools.permutations((1, 2, 3))) / 6
    torch.testing.assert_close(T.T3, traceless3(sym), rtol=1e-8, atol=1e-6)
    # the reciprocal part matters: Ewald differs from the switched cut-off potential
    cut = mm_features(ml, widths, mm, q, box=TRICLINIC, cutoff=1.0, long_range=False)
    assert (cut.T0 - T.T0).abs().max() > 1e-3


def test_torchscript_module():
    class Embed(torch.nn.Module):
        def forward(self, ml: torch.Tensor, w: torch.Tensor, mm: torch.Tensor, q: torch.Tensor,
                    box: torch.Tensor) -> torch.Tensor:
            T = mm_features(ml, w, mm, q, box=box, cutoff=1.0, grid=[24, 24, 24])
            T1, T2 = T.T1, T.T2
            assert T1 is not None
            assert T2 is not None
            return T.T0.sum() + T1.sum() + T2.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(Embed())
    ml, widths, mm, q = _system(box=TRICLINIC, seed=41)
    box = TRICLINIC
    x = ml.clone().requires_grad_(True)
    e1 = scripted(x, widths, mm, q, box)
    g1 = torch.autograd.grad(e1, x)[0]
    y = ml.clone().requires_grad_(True)
    e2 = Embed()(y, widths, mm, q, box)
    g2 = torch.autograd.grad(e2, y)[0]
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("max_order", [0, 1, 2, 3])
def test_graph_free_calls_and_lower_orders(max_order):
    """No graph (inference mode, no_grad) runs the operator's plain kernel: the same features as a
    call that records a graph; orders above max_order are None and the lower ones unchanged."""
    ml, widths, mm, q = _system(box=TRICLINIC, seed=61)
    excl = torch.tensor([[1, 4]])

    def feats(**kw):
        return _full(mm_features(ml, widths, mm, q, box=TRICLINIC, cutoff=1.0, exclusions=excl, long_range=False,
                                 **kw))

    full = feats()
    x = ml.clone().requires_grad_(True)
    recorded = _full(mm_features(x, widths, mm, q, box=TRICLINIC, cutoff=1.0, exclusions=excl, long_range=False,
                                 max_order=max_order))
    with torch.inference_mode():
        inference = feats(max_order=max_order)
    with torch.no_grad():
        no_grad = feats(max_order=max_order)
    for k in range(4):
        for T in (recorded, inference, no_grad):
            if k > max_order:
                assert T[k] is None
            else:
                torch.testing.assert_close(T[k].detach(), full[k], rtol=1e-12, atol=1e-12)
    assert recorded[max_order].grad_fn is not None


BAD_INPUT = [
    (dict(ml_positions=torch.zeros(3, 2, dtype=F64)), "ml_positions"),
    (dict(mm_charges=torch.zeros(7, dtype=F64)), "mm_charges"),
    (dict(mm_positions=torch.zeros(10, 3, dtype=torch.float32)), "dtype"),
    (dict(ml_widths=-torch.ones(3, dtype=F64)), "ml_widths must be >= 0"),
    (dict(ml_widths=torch.tensor([0.1, float("nan"), 0.1], dtype=F64)), "ml_widths must be >= 0"),
    (dict(ml_positions=torch.tensor([[0.0, 0.0, 0.0], [0.1, float("nan"), 0.0], [0.2, 0.0, 0.0]], dtype=F64)),
     "contain NaN or infinite"),
    (dict(mm_positions=torch.rand(10, 3, dtype=F64).index_fill(0, torch.tensor([4]), float("inf"))),
     "contain NaN or infinite"),
    (dict(mm_charges=torch.zeros(10, dtype=F64).index_fill(0, torch.tensor([9]), float("nan"))),
     "mm_charges contain NaN"),
    (dict(max_order=4), "max_order"),
    (dict(switch_width=1.5), "switch_width"),
    (dict(exclusions=torch.tensor([[0, 10]])), r"exclusions\[:, 1\]"),
    (dict(exclusions=torch.tensor([[-1, 2]])), r"exclusions\[:, 0\]"),
    (dict(box=torch.tensor([[2.2, 0.3, 0.0], [0.0, 2.2, 0.0], [0.0, 0.0, 2.2]], dtype=F64)), "reduced form"),
    (dict(box=torch.tensor([[2.2, 0.0, 0.0], [1.5, 2.2, 0.0], [0.0, 0.0, 2.2]], dtype=F64)), "must be reduced"),
    (dict(box=torch.eye(3, dtype=F64) * 1.5), "half the smallest box width"),
]


@pytest.mark.parametrize("boundary", ["open", "box-real-space", "box-ewald"])
@pytest.mark.parametrize("change, message", BAD_INPUT)
def test_bad_input_raises_value_error(change, message, boundary):
    """The same errors from every path: the real-space operator checks the values in C++
    (embedding_features), the Ewald path in Python (_check_values)."""
    args = dict(ml_positions=torch.zeros(3, 3, dtype=F64), ml_widths=None,
                mm_positions=torch.rand(10, 3, dtype=F64) + 1, mm_charges=torch.zeros(10, dtype=F64), cutoff=1.0,
                box=None if boundary == "open" else torch.eye(3, dtype=F64) * 3.0,
                long_range=boundary == "box-ewald")
    args.update(change)
    with pytest.raises(ValueError, match=message):
        mm_features(**args)


def test_operator_checks_values_before_work():
    """Called directly, embedding_features raises the value errors itself (ValueError)."""
    x, y, q = torch.zeros(3, 3, dtype=F64), torch.rand(10, 3, dtype=F64) + 1, torch.zeros(10, dtype=F64)
    excl = torch.zeros(0, 2, dtype=torch.long)
    y[2, 1] = float("nan")
    with pytest.raises(ValueError, match="contain NaN or infinite"):
        torch.ops.mlpolar.embedding_features(x, None, y, q, None, excl, 1.0, 0.1, 3)
    with pytest.raises(ValueError, match="half the smallest box width"):
        torch.ops.mlpolar.embedding_features(x, None, y.nan_to_num(), q, torch.eye(3, dtype=F64) * 1.5, excl, 1.0,
                                             0.1, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("long_range", [False, True])
def test_cuda_matches_cpu(long_range):
    ml, widths, mm, q = _system(n_ml=6, n_mm=400, box=TRICLINIC, seed=51)
    excl = torch.tensor([[0, 3], [5, 9]])

    def run(device):
        x, y, c = (t.to(device).clone().requires_grad_(True) for t in (ml, mm, q))
        T = mm_features(x, widths.to(device), y, c, box=TRICLINIC.to(device), cutoff=1.0, exclusions=excl.to(device),
                        long_range=long_range, grid=[30, 30, 30])
        E = sum(t.sum() for t in _full(T))
        return [t.detach().cpu() for t in (*_full(T), *torch.autograd.grad(E, (x, y, c)))]

    for a, b in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-8)
