"""Fake kernels of the mlpolar operators (ops_fake.py) against the real kernels, by torch.library.opcheck.

test_faketensor runs each operator on real and on fake tensors and compares shapes, dtypes and
strides; test_schema checks the schema's mutation/aliasing claims; test_autograd_registration that
an operator taking tensors that require grad has an autograd kernel; test_aot_dispatch_dynamic traces
forward and backward with symbolic shapes through AOTAutograd and compares them with eager (the C++
autograd keeps itself traceable: csrc/trace_safe.h).
"""
import pytest
import torch
from torch.library import opcheck

import mlpolar.ops as ops
from mlpolar import ops_fake

D = torch.float64
N = 7
CORE = ("test_schema", "test_faketensor")


def _positions(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.8 * torch.rand(n, 3, generator=g, dtype=D)


def _box():
    return torch.tensor([[2.0, 0.0, 0.0], [0.3, 2.1, 0.0], [-0.2, 0.4, 2.2]], dtype=D)


def _fast_energy_args(pos, frag):
    """Arguments of fast_energy as a frozen fast MLPolar passes them (two fragments, MM features)."""
    from mlpolar.model import MLPolar, MLPolarConfig
    torch.manual_seed(0)
    model = MLPolar(MLPolarConfig(elements=[1, 8], variant="fast", channels=8, contraction_channels=2)).double()
    index = torch.tensor([1, 0, 0, 1, 0, 0, 0])
    g = torch.Generator().manual_seed(2)
    targets = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=D)
    inv_count = torch.tensor([1 / 3] * 3 + [1 / 4] * 4, dtype=D)
    return (pos, model.widths_of(index).detach(), index, frag, targets, inv_count, torch.randn(N, generator=g, dtype=D),
            torch.randn(N, 3, generator=g, dtype=D), torch.tensor([1.0, 0.0, 2.0], dtype=D),
            [w.detach() for w in model._fused_weights()], 2, 2, 0, model.coulomb, model.feature_length, model.cutoff,
            model.radial_basis, model.envelope_power, model.energy_scale, model.charge_blocks[0].norm, True)


def _cases():
    g = torch.Generator().manual_seed(1)
    pos = _positions()
    ptr, idx = ops.exclusions_to_csr(torch.tensor([[0, 1], [2, 3]]), N, pos.device)
    w = torch.full((N,), 0.08, dtype=D)
    c1 = torch.randn(N, 4, generator=g, dtype=D)
    c0 = torch.randn(N, 1, generator=g, dtype=D)
    mm = 1.5 * torch.rand(11, 3, generator=g, dtype=D)
    grid = [16, 16, 16]
    u = torch.rand(N, 3, generator=g, dtype=D) * 16
    frag = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    fast = _fast_energy_args(pos, frag)
    return {
        "fast_energy": [fast, fast[:-1] + (False,), fast + (True,)],   # CPU loops, forward only, ATen path
        "multipole_field": [(pos, c1, w, None, ptr, idx, 0.0, 0.0, 1, False),
                            (pos, c0, None, _box(), ptr, idx, 0.9, 3.0, 2, False)],
        "multipole_field2": [(pos, c1, c0, w, None, ptr, idx, 0.0, 0.0, 0, 1, False)],
        "multipole_virial": [(pos, c1, w, _box(), ptr, idx, 0.9, 3.0, False, torch.randn(N, 4, generator=g, dtype=D))],
        "pme_spread": [(u, c1, grid, 8)],
        "pme_gather": [(u, torch.randn(*grid, generator=g, dtype=D), 2, 8)],
        "fukui_equilibrate": [(torch.randn(N, 2, generator=g, dtype=D), torch.randn(N, 2, generator=g, dtype=D),
                               torch.randn(2, 2, generator=g, dtype=D), frag)],
        "fukui_equilibrate_backward": [(torch.randn(N, 2, generator=g, dtype=D), torch.randn(N, 2, generator=g, dtype=D),
                                        torch.randn(N, 2, generator=g, dtype=D), torch.randn(2, 2, generator=g, dtype=D),
                                        frag)],
        "embedding_field": [(pos, mm, torch.randn(11, 1, generator=g, dtype=D), w, None, None,
                             torch.zeros(0, 2, dtype=torch.long), 1.2, 0.1, 0.0, 2),
                            (pos, mm, torch.randn(11, 1, generator=g, dtype=D), w, None, _box(),
                             torch.tensor([[0, 3]]), 0.9, 0.1, 3.0, 3)],
        "embedding_features": [(pos, w, mm, torch.randn(11, generator=g, dtype=D), None,
                                torch.zeros(0, 2, dtype=torch.long), 1.2, 0.1, 3),
                               (pos, None, mm, torch.randn(11, generator=g, dtype=D), _box(),
                                torch.tensor([[0, 3]]), 0.9, 0.2, 1)],
    }


def test_every_library_operator_has_a_fake_kernel():
    missing = ops_fake.missing_fake_kernels()
    assert not missing, (f"operators without a fake kernel: {missing}; add a shape-only function for each to "
                         "FAKES in python/mlpolar/ops_fake.py (same output shapes and dtypes as the real kernel)")
    assert not ops_fake.unavailable_operators(), ops_fake.unavailable_operators()
    assert set(_cases()) == set(ops_fake.FAKES), "every fake kernel needs an opcheck case here"


@pytest.mark.parametrize("name", sorted(ops_fake.FAKES))
def test_fake_kernel_matches_real(name):
    op = getattr(torch.ops.mlpolar, name).default
    for args in _cases()[name]:
        opcheck(op, args, test_utils=CORE)


# floating arguments that the model differentiates through, per operator and case
GRAD_ARGS = {
    "multipole_field": [(0, 1, 2), (0, 1)],         # positions, coefficients (and widths, open case)
    "multipole_field2": [()],                        # not differentiable (first-order backward only)
    "multipole_virial": [()],                        # its backward raises (no second box derivative)
    "pme_spread": [(0, 1)],
    "pme_gather": [(0, 1)],
    "fukui_equilibrate": [(0, 1, 2)],
    "fukui_equilibrate_backward": [(0, 1, 2, 3)],
    "embedding_field": [(0, 1, 2, 3), (0, 1, 2)],    # ML and MM positions, MM charges, ML widths
    "embedding_features": [(0, 1, 2, 3), (0, 2, 3)],  # ML positions and widths, MM positions and charges
    "fast_energy": [(), (), ()],                      # returns its own gradients (model.mlpolar._FastEnergy)
}


def _with_grad(name, case):
    args = list(_cases()[name][case])
    for k in GRAD_ARGS[name][case]:
        args[k] = args[k].clone().requires_grad_(True)
    return tuple(args)


@pytest.mark.parametrize("name", sorted(ops_fake.FAKES))
def test_opcheck_with_autograd_and_symbolic_shapes(name):
    """Every opcheck test, test_aot_dispatch_dynamic included: forward and the C++ backward traced by
    AOTAutograd with symbolic sizes (csrc/trace_safe.h) and compared with eager."""
    op = getattr(torch.ops.mlpolar, name).default
    for case in range(len(_cases()[name])):
        opcheck(op, _with_grad(name, case))
