"""The influence-function / B-spline-moduli cache of pme.py: hits return what a fresh computation
gives, a changed box (new tensor or the same tensor changed in place, as a barostat does) gives
new values, the cache stays bounded, and the virial (gradient with respect to the box) is still
exact when the box requires grad."""
import math

import pytest
import torch

from mlpolar.electrostatics import GaussianMultipoles, pme
from mlpolar.electrostatics.embedding import mm_features

F64 = torch.float64
BOX = torch.tensor([[2.0, 0.0, 0.0], [0.4, 1.9, 0.0], [-0.3, 0.5, 2.1]], dtype=F64)
GRID = [16, 15, 18]


@pytest.fixture(autouse=True)
def empty_cache():
    pme.clear_pme_cache()
    yield
    pme.clear_pme_cache()


def fresh(box, grid, alpha, order):
    """The influence function computed from scratch (no cache involved)."""
    return pme._influence(box, grid, alpha, pme.moduli_product(grid, order, box.dtype, box.device))


def charges(n=12, seed=0, box=BOX):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen, dtype=F64) @ box
    q = torch.randn(n, generator=gen, dtype=F64)
    return x, q - q.mean()


def test_hit_equals_fresh_computation():
    G1 = pme.influence_function(BOX, GRID, 3.1, 6)
    G2 = pme.influence_function(BOX.clone(), GRID, 3.1, 6)   # equal values, another tensor: a hit
    info = pme.pme_cache_info()
    assert (info["influence_misses"], info["influence_hits"]) == (1, 1)
    assert G2 is G1
    assert torch.equal(G1, fresh(BOX, GRID, 3.1, 6))


@pytest.mark.parametrize("what", ["grid", "alpha", "order", "dtype"])
def test_every_key_part_separates_entries(what):
    G1 = pme.influence_function(BOX, GRID, 3.1, 6)
    box, grid, alpha, order = BOX, GRID, 3.1, 6
    if what == "grid":
        grid = [16, 15, 20]
    elif what == "alpha":
        alpha = 3.2
    elif what == "order":
        order = 8
    else:
        box = BOX.float()
    G2 = pme.influence_function(box, grid, alpha, order)
    assert pme.pme_cache_info()["influence_misses"] == 2
    assert G2.dtype == box.dtype and G2.shape == (grid[0], grid[1], grid[2] // 2 + 1)
    ref = fresh(box.double(), grid, alpha, order)
    assert torch.allclose(G2.double(), ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    if what == "dtype":
        assert G1.dtype == F64
    else:
        assert G2.shape != G1.shape or not torch.allclose(G2, G1)


def test_box_changed_in_place_gives_new_values():
    """A barostat scales the box: the same tensor with new values must not hit the old entry."""
    box = BOX.clone()
    x, q = charges()
    E1 = pme.reciprocal_energy(x, q[:, None], box, 3.1, GRID, 6)
    box.mul_(1.01)
    x = x * 1.01
    E2 = pme.reciprocal_energy(x, q[:, None], box, 3.1, GRID, 6)
    assert pme.pme_cache_info()["influence_misses"] == 2
    pme.clear_pme_cache()
    E2_fresh = pme.reciprocal_energy(x, q[:, None], box.clone(), 3.1, GRID, 6)
    assert float(E2) == float(E2_fresh) and float(E1) != float(E2)


def test_cache_is_bounded_and_least_recently_used_goes():
    boxes = [BOX * (1.0 + 0.01 * k) for k in range(6)]
    for b in boxes:
        pme.influence_function(b, GRID, 3.1, 6)
    assert pme.pme_cache_info()["influence_size"] == 4
    pme.influence_function(boxes[-1], GRID, 3.1, 6)   # most recent: a hit
    pme.influence_function(boxes[0], GRID, 3.1, 6)    # evicted: a miss
    info = pme.pme_cache_info()
    assert (info["influence_hits"], info["influence_misses"]) == (1, 7)


def test_box_requiring_grad_bypasses_the_cache_and_keeps_the_virial():
    # a cached entry for these very values exists: it must not be used (it has no graph)
    pme.influence_function(BOX, GRID, 3.1, 6)
    box = BOX.clone().requires_grad_(True)
    G = pme.influence_function(box, GRID, 3.1, 6)
    assert G.requires_grad and pme.pme_cache_info()["influence_hits"] == 0
    x, q = charges(8)
    frac = x @ torch.linalg.inv(BOX)     # atoms move with the box (fractional coordinates fixed)

    def energy(b):
        return pme.reciprocal_energy(frac @ b, q[:, None], b, 3.1, GRID, 6)
    assert torch.autograd.gradcheck(energy, (box,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_virial_equals_finite_difference_of_a_cached_energy():
    """dE/dbox by autograd (uncached path) against central differences of energies whose influence
    functions all come from the cache path (box without grad): both paths agree."""
    x, q = charges(10, seed=3)
    frac = x @ torch.linalg.inv(BOX)
    box = BOX.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pme.reciprocal_energy(frac @ box, q[:, None], box, 3.1, GRID, 6), [box])
    h = 1e-6
    for a, b in [(0, 0), (1, 0), (2, 1), (2, 2)]:
        d = torch.zeros(3, 3, dtype=F64)
        d[a, b] = h
        ep = pme.reciprocal_energy(frac @ (BOX + d), q[:, None], BOX + d, 3.1, GRID, 6)
        em = pme.reciprocal_energy(frac @ (BOX - d), q[:, None], BOX - d, 3.1, GRID, 6)
        assert abs(float(ep - em) / (2 * h) - float(g[a, b])) < 1e-7 * max(1.0, abs(float(g[a, b])))
    assert pme.pme_cache_info()["influence_misses"] == 8


def test_entry_made_in_inference_mode_is_not_reused():
    with torch.inference_mode():
        pme.influence_function(BOX, GRID, 3.1, 6)
    assert pme.pme_cache_info()["influence_size"] == 0 and pme.pme_cache_info()["moduli_size"] == 0
    x, q = charges()
    x.requires_grad_(True)
    V = pme.reciprocal_field(x, q[:, None], BOX, 3.1, GRID, 6, 1)
    V.sum().backward()                    # would fail on an inference tensor saved for backward
    assert torch.isfinite(x.grad).all()


def test_gaussian_multipoles_repeat_calls_hit_and_agree():
    """Energy and forces of a PME system twice: the second call reuses the influence function and
    gives bitwise the same result."""
    x, q = charges(40, seed=5, box=BOX * 1.5)
    gm = GaussianMultipoles(cutoff=0.9, tolerance=1e-5, reciprocal="pme")
    out = []
    for _ in range(2):
        xx = x.clone().requires_grad_(True)
        E = gm.energy(xx, q, box=BOX * 1.5)
        (f,) = torch.autograd.grad(E, [xx])
        out.append((E.detach(), f))
    assert pme.pme_cache_info()["influence_hits"] >= 1
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_scripted_embedding_computes_without_the_cache():
    """TorchScript compiles influence_function's scripted branch (no Python cache): the scripted
    mm_features equals the eager one, whose influence function came from the cache."""
    gen = torch.Generator().manual_seed(2)
    ml = torch.rand(3, 3, generator=gen, dtype=F64)
    mm, q = charges(30, seed=4)
    widths = torch.full((3,), 0.05, dtype=F64)
    box = BOX * 1.3
    eager = [mm_features(ml, widths, mm, q, box, 0.9, 3, 0.1, None, True, 5e-4) for _ in range(2)]
    assert pme.pme_cache_info()["influence_hits"] >= 1
    scripted = torch.jit.script(mm_features)(ml, widths, mm, q, box, 0.9, 3, 0.1, None, True, 5e-4)
    for a, b, c in zip(eager[0], eager[1], scripted):
        assert torch.equal(a, b)
        assert torch.allclose(a, c, rtol=1e-12, atol=1e-12 * float(a.abs().max()))
    assert not math.isnan(float(scripted.T3.sum()))
