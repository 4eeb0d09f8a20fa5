"""torch.compile of the whole model (forward and the backward that gives forces), CPU, against eager.

Every configuration that the OpenMM layer and training use: both variants, open boundaries with a
uniform field, MM embedding, and a periodic box with MM charges (Ewald/PME of the ML density and the
MM long range). The operators trace through FakeTensors (ops_fake.py); their C++ autograd runs on
fake/functional tensors inside AOTAutograd (csrc/trace_safe.h). One graph break per step is left on
purpose, the argument checks (`_validate_eagerly`, which read values); the others are listed in
ALLOWED_BREAKS below.

`aot_eager` runs the same tracing (dynamo + AOTAutograd, FakeTensors, the operators' backward traced
into the joint graph) without inductor's code generation, so it checks every configuration in
seconds; inductor itself (C++ code generation, ~1 min of CPU per configuration with a cold cache)
is marked slow. Kept small: water, float64, one block, one polarisation iteration.
"""
import pytest
import torch

from mlpolar.model import MLPolar, MLPolarConfig, energy_and_forces

DT = torch.float64
WATER = (torch.tensor([8, 1, 1]), torch.tensor([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.0240, 0.0927, 0.0]], dtype=DT))
# two TIP3P-like waters as MM point charges, 0.3–0.5 nm from the ML water
MM_POS = torch.tensor([[0.30, 0.05, 0.02], [0.36, 0.12, 0.03], [0.33, -0.04, 0.05],
                       [-0.10, 0.42, -0.08], [-0.05, 0.50, -0.12], [-0.19, 0.44, -0.05]], dtype=DT)
MM_Q = torch.tensor([-0.834, 0.417, 0.417, -0.834, 0.417, 0.417], dtype=DT)
BOX = torch.tensor([[2.1, 0.0, 0.0], [0.2, 2.2, 0.0], [-0.1, 0.3, 2.3]], dtype=DT)

CASES = {
    "fast-open-field": ("fast", False, False),
    "equivariant-open-field": ("equivariant", False, False),
    "fast-mm": ("fast", True, False),
    "equivariant-mm": ("equivariant", True, False),
    "fast-periodic-mm": ("fast", True, True),
    "equivariant-periodic-mm": ("equivariant", True, True),
}


def model_of(variant):
    torch.manual_seed(0)
    return MLPolar(MLPolarConfig(elements=[1, 8], variant=variant, channels=8, layers=1, iterations=1,
                                 radial_basis=4, contraction_channels=2, mm_cutoff=0.9,
                                 quadrupoles=variant == "equivariant")).double()


def inputs(mm, periodic, pos):
    species, _ = WATER
    kw = dict(species=species, positions=pos, total_charge=torch.tensor([0.0], dtype=DT),
              multiplicity=torch.tensor([1]))
    if mm:
        kw.update(mm_positions=MM_POS, mm_charges=MM_Q)
    if periodic:
        kw["box"] = BOX
    else:
        kw["external_field"] = torch.tensor([20.0, -10.0, 5.0], dtype=DT)
    return kw


def assert_compiled_equals_eager(name, backend):
    variant, mm, periodic = CASES[name]
    model = model_of(variant)
    compiled = torch.compile(model, backend=backend)
    pos = WATER[1]
    moved = pos + 0.005 * torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    energies = []
    for x in (pos, moved):   # the second call reuses (or recompiles) the graphs
        ref = energy_and_forces(model, **inputs(mm, periodic, x))
        out = energy_and_forces(compiled, **inputs(mm, periodic, x))
        assert torch.allclose(out[0], ref[0], rtol=1e-10, atol=1e-9), (float(out[0]), float(ref[0]))
        assert torch.allclose(out[1], ref[1], rtol=1e-8, atol=1e-8), (out[1] - ref[1]).abs().max()
        assert out[2].shape == ref[2].shape
        assert torch.allclose(out[2], ref[2], rtol=1e-8, atol=1e-8)
        if mm:
            assert ref[2].abs().max() > 0   # the MM forces are really there
        energies.append(ref[0])
    assert not torch.allclose(energies[0], energies[1])


# one configuration in the fast suite (Fukui and the embedding operator traced with their backward; every
# operator's traced backward is also checked by opcheck in test_ops_fake.py); the other five are slow
# (the periodic equivariant one alone takes ~1.5 min: ~40 graphs, see ALLOWED_BREAKS)
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "fast-mm" else pytest.mark.slow)
                                  for n in sorted(CASES)])
def test_aot_autograd_matches_eager(name):
    torch._dynamo.reset()
    assert_compiled_equals_eager(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fast-open-field", "equivariant-mm", "fast-periodic-mm"])
def test_inductor_matches_eager(name):
    torch._dynamo.reset()
    assert_compiled_equals_eager(name, "inductor")


# Where dynamo splits the forward, and why each split is there (docs/model.md, "torch.compile"):
# pair lists (nonzero: their length depends on the positions) and, in the electrostatics package,
# Ewald/PME parameters and the MM region chosen from the box and positions (item()/tolist()).
# The model's own blocks, polarisation updates, Fukui calls and energy terms never split a graph.
ALLOWED_BREAKS = {"coulomb.py", "geometry.py", "embedding.py", "gaussian_multipoles.py", "ewald_parameters.py",
                  "ewald_sum.py"}


@pytest.mark.parametrize("name", ["fast-open-field", pytest.param("equivariant-mm", marks=pytest.mark.slow)])
def test_graph_breaks_only_where_shapes_or_parameters_depend_on_data(name):
    torch._dynamo.reset()
    variant, mm, periodic = CASES[name]
    explanation = torch._dynamo.explain(model_of(variant))(**inputs(mm, periodic, WATER[1]))
    where = {b.user_stack[-1].filename.rsplit("/", 1)[-1] for b in explanation.break_reasons if b.user_stack}
    assert where <= ALLOWED_BREAKS, [str(b.reason)[:120] for b in explanation.break_reasons]
    assert all("mlpolar::" not in str(b.reason) for b in explanation.break_reasons)
