"""Energy and forces (−∂E/∂x on ML and MM atoms) of an MLPolar model by autograd."""
from typing import Optional, Tuple

import torch


def energy_and_forces(model, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                      multiplicity: torch.Tensor, fragments: Optional[torch.Tensor] = None,
                      mm_positions: Optional[torch.Tensor] = None, mm_charges: Optional[torch.Tensor] = None,
                      box: Optional[torch.Tensor] = None, external_field: Optional[torch.Tensor] = None,
                      head: Optional[str] = None, create_graph: bool = False
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(energy [] kJ/mol, ML forces [n,3], MM forces [m,3]) in kJ/mol/nm; MM forces are an empty
    [0, 3] tensor without MM atoms. Works for the eager and the scripted model; `create_graph=True`
    keeps the graph for force training."""
    pos = positions.detach().requires_grad_(True)
    inputs = [pos]
    mm_pos: Optional[torch.Tensor] = None
    if mm_positions is not None:
        mm_pos = mm_positions.detach().requires_grad_(True)
        inputs.append(mm_pos)
    # a frozen fast model's fused operator differentiates once: second derivatives take the composed path
    fused = getattr(model, "fused_inference", None)
    if create_graph and fused:
        model.fused_inference = False
    try:
        with torch.enable_grad():
            out = model(species, pos, total_charge, multiplicity, fragments, mm_pos, mm_charges, box, external_field,
                        head)
            energy = out["energy"]
            grads = torch.autograd.grad(energy, inputs, create_graph=create_graph, allow_unused=True)
    finally:
        if create_graph and fused:
            model.fused_inference = fused
    f_ml = -grads[0] if grads[0] is not None else torch.zeros_like(pos)
    if mm_pos is None:
        f_mm = positions.new_zeros(0, 3)
    else:
        f_mm = -grads[1] if grads[1] is not None else torch.zeros_like(mm_pos)
    if not create_graph:
        energy, f_ml, f_mm = energy.detach(), f_ml.detach(), f_mm.detach()
    return energy, f_ml, f_mm
