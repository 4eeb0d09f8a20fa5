"""Fukui equilibration of spin-resolved atomic charges (MACE-POLAR-1, AIMNet2's NQE).

Per fragment f and spin channel σ the charge that is missing from the target,
Q_σ − Σ_j q_j^σ, is handed out to the fragment's atoms in proportion to learned Fukui weights:

    q_i^σ ← q_i^σ + f_i^σ (Q_σ − Σ_{j ∈ f} q_j^σ),     f_i^σ = softmax over the fragment of the logits,

so that Σ_{i ∈ f} q_i^σ = Q_σ exactly. The channel targets follow MACE-POLAR-1 (mace-torch,
`PolarMACE`): Q_α = (Q + M − 1)/2 and Q_β = (Q − M + 1)/2, M = 2S + 1. The softmax makes the
weights positive (the reference only guards a zero sum), so no atom is pushed against the
correction. Sums are accumulated in float64 whatever the working precision.
"""
from typing import Optional

import torch

from .. import _library  # noqa: F401  (loads torch.ops.mlpolar)


def spin_channel_targets(total_charge: torch.Tensor, multiplicity: torch.Tensor) -> torch.Tensor:
    """[F, 2] spin-channel charge targets (Q_α, Q_β) = ((Q + M − 1)/2, (Q − M + 1)/2) in e.

    Q_α + Q_β = Q and Q_α − Q_β = M − 1 (twice the spin). Same dtype as `total_charge` when it is
    floating point, float64 otherwise.
    """
    if total_charge.dim() != 1 or multiplicity.dim() != 1 or total_charge.shape[0] != multiplicity.shape[0]:
        raise ValueError(f"total_charge and multiplicity must both have shape [F] (one entry per fragment); got "
                         f"{list(total_charge.shape)} and {list(multiplicity.shape)}")
    q = total_charge if total_charge.is_floating_point() else total_charge.to(torch.float64)
    spin = (multiplicity - 1).to(device=q.device, dtype=q.dtype)
    return torch.stack([0.5 * (q + spin), 0.5 * (q - spin)], dim=1)


def check_arguments(charges: torch.Tensor, fukui_logits: torch.Tensor, total_charge: torch.Tensor,
                    multiplicity: torch.Tensor, fragments: Optional[torch.Tensor],
                    n_electrons: Optional[torch.Tensor]) -> torch.Tensor:
    """Validates everything before any work; returns the [n] int64 fragment ids."""
    if charges.dtype != torch.float32 and charges.dtype != torch.float64:
        raise TypeError(f"charges must be float32 or float64, got {charges.dtype}")
    if charges.dim() != 2 or charges.shape[1] != 2:
        raise ValueError(f"charges must have shape [n, 2] (alpha, beta channels), got {list(charges.shape)}")
    n = charges.shape[0]
    if fukui_logits.dtype != charges.dtype:
        raise TypeError(f"fukui_logits must have the dtype of charges ({charges.dtype}), got {fukui_logits.dtype}; "
                        "convert with .to(charges.dtype)")
    if fukui_logits.shape != charges.shape:
        raise ValueError(f"fukui_logits must have the shape of charges {list(charges.shape)}, "
                         f"got {list(fukui_logits.shape)}")
    if fukui_logits.device != charges.device:
        raise ValueError(f"fukui_logits is on {fukui_logits.device} but charges on {charges.device}; "
                         "move them to one device")
    if total_charge.dim() != 1:
        raise ValueError(f"total_charge must have shape [F] (one entry per fragment), got {list(total_charge.shape)}")
    nfrag = total_charge.shape[0]
    if nfrag < 1:
        raise ValueError("total_charge is empty: give one total charge per fragment (F >= 1)")
    if multiplicity.dim() != 1 or multiplicity.shape[0] != nfrag:
        raise ValueError(f"multiplicity must have shape [F] = [{nfrag}] like total_charge, "
                         f"got {list(multiplicity.shape)}")
    if multiplicity.is_floating_point() or multiplicity.dtype == torch.bool:
        raise TypeError(f"multiplicity must be an integer tensor (2S + 1), got {multiplicity.dtype}")
    if total_charge.device != charges.device or multiplicity.device != charges.device:
        raise ValueError(f"total_charge ({total_charge.device}) and multiplicity ({multiplicity.device}) must be on "
                         f"the device of charges ({charges.device})")
    if bool((multiplicity < 1).any()):
        bad = int(torch.nonzero(multiplicity < 1)[0, 0])
        raise ValueError(f"multiplicity must be >= 1 (M = 2S + 1); fragment {bad} has M = {int(multiplicity[bad])}")
    if fragments is None:
        frag = torch.zeros(n, dtype=torch.long, device=charges.device)
        if nfrag != 1:
            raise ValueError(f"fragments is None (one fragment of all atoms) but total_charge has {nfrag} entries; "
                             "give fragments [n] with ids in 0..F-1")
    else:
        if fragments.dtype != torch.long:
            raise TypeError(f"fragments must be an int64 tensor of fragment ids, got {fragments.dtype}")
        if fragments.dim() != 1 or fragments.shape[0] != n:
            raise ValueError(f"fragments must have shape [n] = [{n}], got {list(fragments.shape)}")
        if fragments.device != charges.device:
            raise ValueError(f"fragments is on {fragments.device} but charges on {charges.device}")
        frag = fragments
    if n == 0:
        raise ValueError("charges has no atoms: every fragment needs at least one atom to take its charge")
    lo, hi = int(frag.min()), int(frag.max())
    if lo < 0 or hi >= nfrag:
        raise ValueError(f"fragments must hold ids in 0..F-1 = 0..{nfrag - 1}, found ids from {lo} to {hi}")
    counts = torch.bincount(frag, minlength=nfrag)
    if bool((counts == 0).any()):
        empty = int(torch.nonzero(counts == 0)[0, 0])
        raise ValueError(f"fragment {empty} has no atoms; every id in 0..F-1 must be used (F = {nfrag} from "
                         "total_charge)")
    if n_electrons is not None:
        if n_electrons.dim() != 1 or n_electrons.shape[0] != nfrag:
            raise ValueError(f"n_electrons must have shape [F] = [{nfrag}], got {list(n_electrons.shape)}")
        if n_electrons.is_floating_point() or n_electrons.dtype == torch.bool:
            raise TypeError(f"n_electrons must be an integer tensor (sum of atomic numbers), got {n_electrons.dtype}")
        q_round = torch.round(total_charge.to(torch.float64))
        if bool((total_charge.to(torch.float64) != q_round).any()):
            bad = int(torch.nonzero(total_charge.to(torch.float64) != q_round)[0, 0])
            raise ValueError(f"with n_electrons the total charge must be an integer; fragment {bad} has "
                             f"Q = {float(total_charge[bad])}")
        electrons = n_electrons.to(device=charges.device, dtype=torch.long) - q_round.to(torch.long)
        unpaired = multiplicity.to(torch.long) - 1
        impossible = (electrons < 0) | (unpaired > electrons) | (torch.remainder(electrons - unpaired, 2) != 0)
        if bool(impossible.any()):
            f = int(torch.nonzero(impossible)[0, 0])
            ne, up = int(electrons[f]), int(unpaired[f])
            raise ValueError(f"fragment {f}: charge {int(q_round[f])} and multiplicity {up + 1} are impossible "
                             f"with {int(n_electrons[f])} electrons in the neutral fragment ({ne} after the charge): "
                             f"M - 1 must be >= 0, <= the electron count and of its parity (e.g. multiplicity "
                             f"{1 + abs(ne) % 2})")
    return frag


def fukui_equilibrate_reference(charges: torch.Tensor, fukui_logits: torch.Tensor, targets: torch.Tensor,
                                fragments: torch.Tensor) -> torch.Tensor:
    """Plain-torch equilibration, everything in float64 (the oracle of the compiled operator).

    targets [F, 2] are the channel charges (spin_channel_targets); fragments [n] int64 ids.
    No argument checks: call fukui_equilibrate for those.
    """
    nfrag = targets.shape[0]
    q = charges.to(torch.float64)
    logits = fukui_logits.to(torch.float64)
    # softmax over each fragment, shifted by the fragment's largest logit so exp cannot overflow
    index = fragments.unsqueeze(1).expand(-1, 2)
    top = torch.full((nfrag, 2), float("-inf"), dtype=torch.float64, device=q.device)
    top = top.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    e = torch.exp(logits - top[fragments])
    norm = torch.zeros(nfrag, 2, dtype=torch.float64, device=q.device).index_add(0, fragments, e)
    weights = e / norm[fragments]
    total = torch.zeros(nfrag, 2, dtype=torch.float64, device=q.device).index_add(0, fragments, q)
    missing = targets.to(torch.float64) - total
    return (q + weights * missing[fragments]).to(charges.dtype)


def fukui_equilibrate(charges: torch.Tensor, fukui_logits: torch.Tensor, total_charge: torch.Tensor,
                      multiplicity: torch.Tensor, fragments: Optional[torch.Tensor] = None,
                      n_electrons: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Spin-resolved charges [n, 2] (α, β; e) that sum to each fragment's channel targets.

    charges [n, 2] float32/float64; fukui_logits [n, 2] (softmax-normalised over each fragment and
    channel); total_charge [F] (e); multiplicity [F] integer (2S + 1); fragments [n] int64 ids in
    0..F-1 (None: one fragment of all atoms); n_electrons [F] integer, optional: the electron count
    of each neutral fragment (sum of atomic numbers), used to reject impossible charge/multiplicity
    pairs. Differentiable (twice) with respect to charges, fukui_logits and a floating total_charge.
    """
    frag = check_arguments(charges, fukui_logits, total_charge, multiplicity, fragments, n_electrons)
    targets = spin_channel_targets(total_charge, multiplicity).to(charges.dtype)
    return torch.ops.mlpolar.fukui_equilibrate(charges, fukui_logits, targets, frag)


def fragment_centring(frag: torch.Tensor, n_fragments: int, dtype: torch.dtype) -> torch.Tensor:
    """[n] weights 1/N_f(i) of each atom's fragment, for :func:`centre_on_fragments`."""
    count = torch.zeros(n_fragments, dtype=dtype, device=frag.device).index_add(
        0, frag, torch.ones(frag.shape[0], dtype=dtype, device=frag.device))
    return (1.0 / count)[frag]


def centre_on_fragments(phi: torch.Tensor, frag: torch.Tensor, inv_count: torch.Tensor) -> torch.Tensor:
    """φ_i − ⟨φ⟩_f(i): the potential with its mean over each fragment removed (`inv_count` from
    :func:`fragment_centring`).

    A uniform potential shift moves every orbital of a fragment alike: it changes neither the charge
    distribution nor any energy but Q_f·φ₀, which the explicit embedding energy Σ q_i T0_i already
    holds exactly. The learned networks therefore see the potential in this gauge. It matters: labels
    keep the MM charges within a radius of the solute, so whole residues are cut and the potential
    offset at p-xylene is 35 ± 28 kJ/mol/e in water but ~780 kJ/mol/e in the T4L99A pocket (protein
    charge +9), while the spread over the molecule is ~20–40 kJ/mol/e in both.
    """
    # fragment ids are < n (every fragment holds an atom), so an [n] accumulator has room for them
    sums = torch.zeros_like(phi).index_add(0, frag, phi * inv_count)
    return phi - sums[frag]
