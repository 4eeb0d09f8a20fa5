"""Fake (shape-only) kernels of the mlpolar operators, for torch.compile / torch.export tracing.

FakeTensor tracing (AOTAutograd, inductor) needs each operator's output shapes and dtypes without
running it. The library's C++ Meta kernels give them too; these Python registrations are the
documented path (torch.library.register_fake), cover every operator in one place and are checked
by torch.library.opcheck in tests/model/test_ops_fake.py. Each mirrors the real kernel's output:
same dtype and device as the named input, shapes from the schema's sizes and degrees.

An operator added to the library later needs an entry in FAKES; `missing_fake_kernels()` lists the
operators of the `mlpolar` namespace that have none (the test fails naming them), and an entry whose
operator the loaded library lacks is reported by `unavailable_operators()` instead of failing import.
"""
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import _library  # noqa: F401  (loads torch.ops.mlpolar)


def _ncart(degree: int) -> int:
    """Packed Cartesian monomials of degree <= `degree` (ops.ncart; repeated to avoid an import cycle)."""
    return (degree + 1) * (degree + 2) * (degree + 3) // 6


def _field(positions, coeffs, widths, box, exclusion_ptr, exclusion_idx, cutoff, beta, deg_out, include_self):
    return positions.new_empty(positions.shape[0], _ncart(deg_out))


def _field2(positions, coeffs1, coeffs2, widths, box, exclusion_ptr, exclusion_idx, cutoff, beta, deg1, deg2,
            include_self):
    n = positions.shape[0]
    return positions.new_empty(n, _ncart(deg1)), positions.new_empty(n, _ncart(deg2))


def _virial(positions, coeffs, widths, box, exclusion_ptr, exclusion_idx, cutoff, beta, include_self, grad_field):
    return positions.new_empty(3, 3)


def _spread(grid_positions, coeffs, grid_size: Sequence[int], order):
    return coeffs.new_empty(grid_size[0], grid_size[1], grid_size[2])


def _gather(grid_positions, grid, deg, order):
    return grid.new_empty(grid_positions.shape[0], _ncart(deg))


def _fukui(charges, logits, targets, fragments):
    return torch.empty_like(charges)


def _fukui_backward(grad_out, charges, logits, targets, fragments):
    return torch.empty_like(charges), torch.empty_like(charges), torch.empty_like(targets)


def _embedding(recv_positions, src_positions, coeffs, recv_widths, src_widths, box, exclusions, cutoff,
               switch_width, beta, deg_out, width_derivative=0):
    return recv_positions.new_empty(recv_positions.shape[0], _ncart(deg_out))


def _features(ml_positions, ml_widths, mm_positions, mm_charges, box, exclusions, cutoff, switch_width, max_order):
    n = ml_positions.shape[0]
    return tuple(ml_positions.new_empty((n,) + (3,) * k) if k <= max_order else ml_positions.new_empty(0)
                 for k in range(4))


def _fast_energy(positions, widths, species_index, fragments, targets, inv_count, T0, T1, field, weights, n_blocks,
                 n_updates, head, coulomb, feature_length, cutoff, radial_basis, envelope_power, energy_scale, norm,
                 need_grad, portable=False):
    n = positions.shape[0] if need_grad else 0
    return (positions.new_empty(6), positions.new_empty(positions.shape[0], 2), positions.new_empty(n, 3),
            positions.new_empty(n), positions.new_empty(n, 3))


FAKES: Dict[str, Callable] = {
    "multipole_field": _field,
    "multipole_field2": _field2,
    "multipole_virial": _virial,
    "pme_spread": _spread,
    "pme_gather": _gather,
    "fukui_equilibrate": _fukui,
    "fukui_equilibrate_backward": _fukui_backward,
    "embedding_field": _embedding,
    "embedding_features": _features,
    "fast_energy": _fast_energy,
}


def library_operators() -> List[str]:
    """Names (without namespace) of every operator the loaded library defines in `mlpolar`."""
    return sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("mlpolar::"))


def unavailable_operators() -> List[str]:
    """Operators with a fake kernel here that the loaded library does not define (an older build)."""
    have = set(library_operators())
    return sorted(name for name in FAKES if name not in have)


def missing_fake_kernels() -> List[str]:
    """Operators of the library without a fake kernel here: add them to FAKES."""
    return sorted(name for name in library_operators() if name not in FAKES)


def _register(names: Optional[List[str]] = None) -> None:
    have = set(library_operators())
    for name in names if names is not None else list(FAKES):
        if name in have:
            torch.library.register_fake(f"mlpolar::{name}")(FAKES[name])


_register()
