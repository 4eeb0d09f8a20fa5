"""torch.compile of the model with the default (inductor) backend, CPU, against eager.

The fast variant with open boundaries calls the Fukui operator (forward and its C++ backward) and
the dense Coulomb path; both trace through FakeTensors (ops_fake.py) and compile. Kept small: one
block, one polarisation iteration, water, float64. Inductor's first compile takes ~70 s of CPU time
(4 min wall on the loaded 2-core VM) with a cold cache, ~8 s with a warm one: marked slow.
"""
import pytest
import torch

from mlpolar.model import MLPolar, MLPolarConfig, energy_and_forces

DT = torch.float64
WATER = (torch.tensor([8, 1, 1]), torch.tensor([[0.0, 0.0, 0.0], [0.0957, 0.0, 0.0], [-0.0240, 0.0927, 0.0]], dtype=DT))


@pytest.mark.slow
def test_inductor_matches_eager_fast_variant():
    torch.manual_seed(0)
    model = MLPolar(MLPolarConfig(elements=[1, 8], variant="fast", channels=8, layers=1, iterations=1,
                                  radial_basis=4, contraction_channels=2)).double()
    species, pos = WATER
    args = (torch.tensor([0.0], dtype=DT), torch.tensor([1]))
    field = torch.tensor([20.0, -10.0, 5.0], dtype=DT)
    ref = energy_and_forces(model, species, pos, *args, external_field=field)
    compiled = torch.compile(model)
    out = energy_and_forces(compiled, species, pos, *args, external_field=field)
    assert torch.allclose(out[0], ref[0], rtol=1e-10, atol=1e-9)
    assert torch.allclose(out[1], ref[1], rtol=1e-8, atol=1e-8)
    # new positions: the compiled graphs are reused (or recompiled) and still agree with eager
    moved = pos + 0.005 * torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    ref2 = energy_and_forces(model, species, moved, *args, external_field=field)
    out2 = energy_and_forces(compiled, species, moved, *args, external_field=field)
    assert not torch.allclose(ref2[0], ref[0])
    assert torch.allclose(out2[0], ref2[0], rtol=1e-10, atol=1e-9)
    assert torch.allclose(out2[1], ref2[1], rtol=1e-8, atol=1e-8)
