"""MM environment as seen by the model: Taylor features T0..T3 of the MM charges' potential at the
ML atoms (embedding operator, docs/interfaces.md), damped by each ML atom's Gaussian width.

Open boundaries: MM charges inside `cutoff` with a smooth switch over the last `switch_width`;
under a box: the full Ewald potential of all MM charges and their images (long range).
"""
from typing import Optional, Tuple

import torch
from torch import nn

from ..electrostatics import mm_features


class MMTaylor(nn.Module):
    def __init__(self, cutoff: float, switch_width: float, max_order: int, ewald_cutoff: Optional[float] = None):
        super().__init__()
        self.cutoff = float(cutoff)
        # real-space cutoff under a box (Ewald: the sum is exact whatever the split)
        self.ewald_cutoff = float(ewald_cutoff) if ewald_cutoff is not None else float(cutoff)
        self.switch_width = float(switch_width)
        self.max_order = int(max_order)

    def forward(self, positions: torch.Tensor, widths: torch.Tensor, mm_positions: torch.Tensor,
                mm_charges: torch.Tensor, box: Optional[torch.Tensor], tolerance: Optional[float] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(T0 [n], T1 [n,3], T2 [n,3,3], T3 [n,3,3,3] or None); orders above max_order are zeros/None.
        Interaction of an ML site (q, μ, Θ) with the MM charges: q T0 + μ·T1 + ⅓ Θ:T2.
        tolerance: Ewald accuracy of the long range (None: mm_features' default)."""
        n = positions.shape[0]
        cutoff = self.cutoff if box is None else self.ewald_cutoff
        # Learned widths get their gradient through the ML-MM term too (the operator's analytic
        # width derivative, docs/embedding_design.md).
        if tolerance is None:
            T = mm_features(positions, widths, mm_positions, mm_charges, box, cutoff,
                            self.max_order, self.switch_width, None, True)
        else:
            T = mm_features(positions, widths, mm_positions, mm_charges, box, cutoff,
                            self.max_order, self.switch_width, None, True, tolerance)
        T1 = positions.new_zeros(n, 3)
        T2 = positions.new_zeros(n, 3, 3)
        t1, t2 = T.T1, T.T2   # locals, so that TorchScript refines the Optionals
        if t1 is not None:
            T1 = t1
        if t2 is not None:
            T2 = t2
        return T.T0, T1, T2, T.T3
