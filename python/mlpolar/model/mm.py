"""MM environment as seen by the model: Taylor features T0..T3 of the MM charges' potential at the
ML atoms (embedding operator, docs/interfaces.md), damped by each ML atom's Gaussian width."""
from typing import Optional, Tuple

import torch
from torch import nn


class MMTaylor(nn.Module):
    def __init__(self, cutoff: float, switch_width: float, max_order: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.switch_width = float(switch_width)
        self.max_order = int(max_order)

    def forward(self, positions: torch.Tensor, widths: torch.Tensor, mm_positions: torch.Tensor,
                mm_charges: torch.Tensor, box: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(T0 [n], T1 [n,3], T2 [n,3,3], T3 [n,3,3,3] or None); orders above max_order are zeros/None."""
        raise RuntimeError("the MM embedding needs mlpolar.electrostatics.mm_features (issue 3), which this "
                           "build does not have yet; call the model without mm_positions/mm_charges")
