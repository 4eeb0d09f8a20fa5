"""The MLPolar potential: local Cartesian backbone, spin-resolved Gaussian multipoles, Fukui
equilibration, K non-self-consistent polarisation iterations and explicit electrostatics.

    model = MLPolar(MLPolarConfig(elements=[1, 6, 8]))
    out = model(species, positions, total_charge, multiplicity, fragments, mm_positions, mm_charges,
                box, external_field, head)

Energy (kJ/mol) = per-species reference + local (learned, of the final atomic state)
+ ML–ML electrostatics of the final Gaussian density (self term removed; Ewald/PME under a box)
+ ML–MM embedding (q T0 + μ·T1 + ⅓ Θ:T2) + external-field term + learned non-local term of the final
charges and potentials. Contract: docs/interfaces.md ("Model").
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..electrostatics import GaussianMultipoles
from ..electrostatics.multipoles import receiver_coefficients, split_derivatives
from ..units import ONE_4PI_EPS0
from .blocks import CartesianBlock, ChargeBlock, mlp
from .config import MLPolarConfig
from .coulomb import DENSE_MAX, dense_geometry, potential, potential_and_gradient
from .fukui import check_arguments as check_fukui_arguments
from .fukui import centre_on_fragments, fragment_centring, spin_channel_targets
from .geometry import bessel_basis, neighbour_pairs
from .mm import MMTaylor
from .polarisation import ChargeUpdate, EquivariantUpdate

WIDTH_MIN = 0.02   # nm; learned widths stay in (WIDTH_MIN, WIDTH_MAX) so the Ewald
WIDTH_MAX = 0.12   # real-space cutoff (0.9 nm at 1e-5) always contains the Gaussians' overlap


class MLPolar(nn.Module):
    def __init__(self, config: MLPolarConfig):
        super().__init__()
        if not isinstance(config, MLPolarConfig):
            raise TypeError(f"config must be an MLPolarConfig, got {type(config).__name__}")
        self.config = config
        self.config_json: str = config.to_json()
        self.elements: List[int] = list(config.elements)
        self.heads: List[str] = list(config.heads)
        self.mm_cutoff: float = float(config.mm_cutoff)
        # Under a box the ML–MM potential is a full Ewald sum, whose result does not depend on its
        # real-space cutoff beyond the tolerance: it is chosen for speed and to fit small boxes, apart
        # from the open-boundary mm_cutoff (which must reach every MM charge of a cluster label).
        self.mm_ewald_cutoff: float = float(config.mm_ewald_cutoff)
        self.mm_switch_width: float = float(config.mm_switch_width)
        self.cutoff: float = float(config.cutoff)
        self.receptive_field: float = float(config.receptive_field)
        self.equivariant: bool = config.variant == "equivariant"
        self.quadrupoles: bool = bool(config.quadrupoles)
        self.iterations: int = int(config.iterations)
        self.radial_basis: int = int(config.radial_basis)
        self.envelope_power: int = int(config.envelope_power)
        self.feature_length: float = float(config.feature_length)
        self.energy_scale: float = float(config.energy_scale)
        self.elec_cutoff: float = float(config.electrostatics_cutoff)
        self.coulomb: float = ONE_4PI_EPS0
        self.dense_max: int = DENSE_MAX
        # a frozen fast model (no parameter requiring grad) without a box evaluates through one fused
        # operator (csrc/fast_model.cpp); False keeps the composed path (e.g. to differentiate twice)
        self.fused_inference: bool = True
        C, S, H = config.channels, len(config.elements), len(config.heads)

        index = torch.full((119,), -1, dtype=torch.long)
        for k, z in enumerate(config.elements):
            index[z] = k
        self.register_buffer("species_index", index)
        self.register_buffer("atomic_numbers", torch.tensor(config.elements, dtype=torch.long))
        self.embedding = nn.Embedding(S, C)
        self.learned_widths: bool = config.widths == "learned"
        self.width_min: float = WIDTH_MIN
        self.width_max: float = WIDTH_MAX
        if self.learned_widths:
            if not WIDTH_MIN < config.width < WIDTH_MAX:
                raise ValueError(f"width must lie in ({WIDTH_MIN}, {WIDTH_MAX}) nm for learned widths, got {config.width}")
            x = (config.width - WIDTH_MIN) / (WIDTH_MAX - WIDTH_MIN)
            self.width_logits = nn.Parameter(torch.full((S,), math.log(x / (1.0 - x))))
        else:
            self.width_logits = nn.Parameter(torch.zeros(S), requires_grad=False)
        self.register_buffer("fixed_width", torch.full((S,), float(config.width)))

        # one variant's lists are empty (both are typed, so TorchScript compiles both branches)
        eq, K, L = self.equivariant, config.iterations, config.layers
        self.cartesian_blocks = nn.ModuleList([CartesianBlock(C, config.radial_basis, config.avg_neighbours)
                                               for _ in range(L if eq else 0)])
        self.equivariant_updates = nn.ModuleList([EquivariantUpdate(C, config.contraction_channels,
                                                                    config.quadrupoles) for _ in range(K if eq else 0)])
        self.charge_blocks = nn.ModuleList([ChargeBlock(C, config.radial_basis, config.avg_neighbours)
                                            for _ in range(0 if eq else L)])
        self.charge_updates = nn.ModuleList([ChargeUpdate(C, config.contraction_channels)
                                             for _ in range(0 if eq else K)])
        self.charge_head = nn.Linear(C, 4)    # initial (q_α, q_β, Fukui logits α, β)
        self.mu_head = nn.Linear(C, 2 if eq else 1, bias=False)
        self.theta_head = nn.Linear(C, 2 if eq else 1, bias=False)
        # multipole heads start small: a random model then has chemically sized charges (~0.1 e) and
        # dipoles (~0.01 e nm), so its fields, features and energies stay in a sane range
        with torch.no_grad():
            self.charge_head.weight.mul_(0.1)
            self.charge_head.bias.mul_(0.1)
            for update in self.equivariant_updates:
                update.head.weight.mul_(0.1)
                update.head.bias.mul_(0.1)
            for update in self.charge_updates:
                update.head.weight.mul_(0.1)
                update.head.bias.mul_(0.1)
            for block in self.charge_blocks:
                block.charge_head.weight.mul_(0.1)
                block.charge_head.bias.mul_(0.1)
        self.local_energy = mlp(C, C, H)
        self.nonlocal_energy = mlp(C + 4, C, H)
        self.reference_energy = nn.Parameter(torch.zeros(H, S))
        self.electrostatics = GaussianMultipoles(cutoff=config.electrostatics_cutoff, tolerance=config.tolerance)
        self.mm = MMTaylor(config.mm_cutoff, config.mm_switch_width, 3 if self.equivariant else 1,
                          config.mm_ewald_cutoff)

    # ------------------------------------------------------------------ helpers
    def widths_of(self, index: torch.Tensor) -> torch.Tensor:
        """Gaussian widths σ (nm) of atoms with species indices `index`."""
        if self.learned_widths:
            return self.width_min + (self.width_max - self.width_min) * torch.sigmoid(self.width_logits[index])
        return self.fixed_width[index]

    def head_index(self, head: Optional[str]) -> int:
        if head is None:
            return 0
        for k, name in enumerate(self.heads):
            if name == head:
                return k
        raise ValueError(f"head '{head}' is not one of this model's heads {self.heads}")

    def _ml_field(self, positions: torch.Tensor, q: torch.Tensor, mu: Optional[torch.Tensor],
                  theta: Optional[torch.Tensor], widths: torch.Tensor, box: Optional[torch.Tensor],
                  deg_out: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(receiver coefficients d, packed potential derivatives V) of the ML density at each atom,
        the atom's own Gaussian excluded."""
        d = receiver_coefficients(q, mu, theta)
        V = self.electrostatics.field_derivatives(positions, d, deg_out, q, widths, box, None)
        return d, V

    def _equilibrate(self, q: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
                     frag: torch.Tensor) -> torch.Tensor:
        """Fukui equilibration with arguments checked once per step (forward)."""
        return torch.ops.mlpolar.fukui_equilibrate(q, logits, targets, frag)

    # ------------------------------------------------------------------ forward
    def forward(self, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                multiplicity: torch.Tensor, fragments: Optional[torch.Tensor] = None,
                mm_positions: Optional[torch.Tensor] = None, mm_charges: Optional[torch.Tensor] = None,
                box: Optional[torch.Tensor] = None, external_field: Optional[torch.Tensor] = None,
                head: Optional[str] = None, mm_tolerance: Optional[float] = None) -> Dict[str, torch.Tensor]:
        # mm_tolerance: Ewald accuracy of the ML-MM long range (None: mm_features' default); the
        # OpenMM layer passes the force field's ewaldErrorTolerance. ML-ML terms keep config.tolerance.
        dtype, device = positions.dtype, positions.device
        # the networks see potentials without their fragment mean (gauge, fukui.centre_on_fragments):
        # inv_count holds 1/N_f of each atom's fragment
        if torch.jit.is_scripting():
            index, frag = self._validate(species, positions, total_charge, multiplicity, fragments, mm_positions,
                                         mm_charges, box, external_field)
            targets = spin_channel_targets(total_charge.to(dtype), multiplicity).to(dtype)
            inv_count = fragment_centring(frag, targets.shape[0], dtype)
        else:
            # one eager call under torch.compile: the checks read values (a graph break each otherwise)
            index, frag, targets, inv_count = _validate_eagerly(self, species, positions, total_charge, multiplicity,
                                                                fragments, mm_positions, mm_charges, box,
                                                                external_field)
        h = self.head_index(head)
        n = positions.shape[0]
        k = self.coulomb
        ell = self.feature_length

        widths = self.widths_of(index)
        # fast variant without a box: the ML–ML pair geometry of all five charge-field evaluations and
        # the local pairs come from one n×n pass (coulomb.py); otherwise each evaluation calls the core
        dense = (not self.equivariant) and box is None and n <= self.dense_max

        # MM Taylor features (φ, ∇φ, ∇∇φ, ∇∇∇φ of the MM charges at the ML atoms) and the external field
        T0 = positions.new_zeros(n)
        T1 = positions.new_zeros(n, 3)
        T2 = positions.new_zeros(n, 3, 3)
        T3: Optional[torch.Tensor] = None
        if mm_positions is not None and mm_charges is not None:
            T0, T1, T2, T3 = self.mm(positions, widths, mm_positions, mm_charges, box, mm_tolerance)
        if dense and not torch.jit.is_scripting() and self._fused_applies(widths):
            return self._fused_forward(index, frag, positions, widths, targets, inv_count, T0, T1, external_field, h)

        W = positions.new_zeros(0, 0, 0)
        if dense:
            W, i, j, r, dist = dense_geometry(positions, widths, k, self.cutoff)
        else:
            i, j, r = neighbour_pairs(positions, self.cutoff, box)
            dist = r.norm(p=2, dim=1)
        u = r / dist[:, None]
        basis, env = bessel_basis(dist, self.cutoff, self.radial_basis, self.envelope_power)
        ext_grad = positions.new_zeros(3)
        if external_field is not None:
            ext_grad = -external_field.to(dtype)   # uniform field E = −∇φ_ext

        s = self.embedding(index)
        mu: Optional[torch.Tensor] = None      # spin-resolved [n, 3, 2]
        theta: Optional[torch.Tensor] = None   # spin-resolved [n, 3, 3, 2]
        if self.equivariant:
            v = positions.new_zeros(n, 3, s.shape[1])
            t = positions.new_zeros(n, 3, 3, s.shape[1])
            for block in self.cartesian_blocks:
                s, v, t = block(s, v, t, i, j, u, basis, env)
            out = self.charge_head(s)
            q = self._equilibrate(out[:, 0:2], out[:, 2:4], targets, frag)
            # dipoles in units of e·ℓ and quadrupoles of e·ℓ² (ℓ = feature_length)
            mu = self.mu_head(v) * (0.1 * ell)
            if self.quadrupoles:
                theta = self.theta_head(t) * (0.1 * ell * ell)
            for update in self.equivariant_updates:
                tot_mu = mu.sum(2) if mu is not None else None
                tot_th = theta.sum(3) if theta is not None else None
                _, V = self._ml_field(positions, q.sum(1), tot_mu, tot_th, widths, box, 2)
                phi, grad, hess = split_derivatives(V)
                phi = centre_on_fragments(phi + T0, frag, inv_count) * (ell / k)
                grad = (grad + T1 + ext_grad) * (ell ** 2 / k)
                hess = (hess + T2) * (ell ** 3 / k)
                t3 = T3 * (ell ** 4 / k) if T3 is not None else None
                s, dq, logits, dmu, dth = update(s, v, t, q, phi, grad, hess, t3)
                q = self._equilibrate(q + dq, logits, targets, frag)
                if mu is not None:
                    mu = mu + dmu * ell
                if theta is not None and dth is not None:
                    theta = theta + dth * (ell * ell)
        else:
            out = self.charge_head(s)
            q = self._equilibrate(out[:, 0:2], out[:, 2:4], targets, frag)
            for block in self.charge_blocks:
                # MPNICE: the block sees the current charges and their potential, then re-equilibrates
                if dense:
                    phi0 = potential(W, q.sum(1))
                else:
                    phi0 = self._ml_field(positions, q.sum(1), None, None, widths, box, 0)[1][:, 0]
                s, out = block(s, q, centre_on_fragments(phi0 + T0, frag, inv_count) * (ell / k), i, j, basis, env)
                q = self._equilibrate(out[:, 0:2], out[:, 2:4], targets, frag)
            # the MM + external part of (φ, ∇φ), added to the ML part in one operation per iteration
            outer = torch.cat([T0[:, None], T1 + ext_grad], dim=1)
            for update in self.charge_updates:
                if dense:
                    V = potential_and_gradient(W, q.sum(1))
                else:
                    V = self._ml_field(positions, q.sum(1), None, None, widths, box, 1)[1]
                F = (V + outer) * (ell ** 2 / k)     # dimensionless: φ ℓ/k, ∇φ ℓ²/k
                s, dq, logits = update(s, q, centre_on_fragments(F[:, 0], frag, inv_count) / ell, F[:, 1:4])
                q = self._equilibrate(q + dq, logits, targets, frag)

        # final density: charges q, dipoles μ, quadrupoles Θ (sums of the spin channels)
        charges = q.sum(1)
        dipoles = mu.sum(2) if mu is not None else positions.new_zeros(n, 3)
        quads = theta.sum(3) if theta is not None else None
        if dense:
            V = potential_and_gradient(W, charges)
            e_elec = 0.5 * (charges * V[:, 0]).sum()
        else:
            d, V = self._ml_field(positions, charges, dipoles if mu is not None else None, quads, widths, box,
                                  2 if self.equivariant else 1)
            e_elec = 0.5 * (d * V[:, :d.shape[1]]).sum()
        e_emb = (charges * T0).sum()
        if mu is not None:
            e_emb = e_emb + (dipoles * T1).sum()
        if quads is not None:
            e_emb = e_emb + (quads * T2).sum() / 3.0
        e_ext = positions.new_zeros(())
        if external_field is not None:
            E = external_field.to(dtype)
            e_ext = -(charges[:, None] * positions * E).sum() - (dipoles * E).sum()

        # the non-local term sees the ML and MM potentials but not the uniform external field, whose
        # energy is explicit: without polarisation iterations −∂E/∂F is then exactly the dipole
        phi = centre_on_fragments(V[:, 0] + T0, frag, inv_count) * (ell / k)
        grad = (V[:, 1:4] + T1) * (ell ** 2 / k)
        nl_in = torch.cat([s, q, phi[:, None], (grad * grad).sum(1, keepdim=True)], dim=1)
        e_nonlocal = self.energy_scale * self.nonlocal_energy(nl_in)[:, h].sum()
        e_local = self.energy_scale * self.local_energy(s)[:, h].sum()
        e_ref = self.reference_energy[h][index].sum()
        energy = e_ref + e_local + e_elec + e_emb + e_ext + e_nonlocal
        result: Dict[str, torch.Tensor] = {
            "energy": energy, "energy_reference": e_ref, "energy_local": e_local,
            "energy_electrostatic": e_elec, "energy_embedding": e_emb, "energy_external": e_ext,
            "energy_nonlocal": e_nonlocal, "charges": charges, "spin_charges": q, "dipoles": dipoles,
            "widths": widths,
        }
        if quads is not None:
            result["quadrupoles"] = quads
        return result

    # ------------------------------------------------------------------ fused inference path
    @torch.jit.unused
    def _fused_applies(self, widths: torch.Tensor) -> bool:
        """The fused operator replaces the fast branch of forward for a frozen model (no parameter
        requires grad: MD, evaluation), eager only; training and torch.compile use the composed path."""
        if not self.fused_inference or torch.compiler.is_compiling() or widths.requires_grad:
            return False
        return not any(p.requires_grad for p in self._fused_cache()[0])

    @torch.jit.unused
    def _fused_cache(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(all parameters, the fused operator's weight list), gathered once: walking the module tree
        costs ~0.25 ms per step. The lists hold the Parameter objects, which keep their identity
        through .to(), .double() and load_state_dict (the module structure is fixed at construction)."""
        cache = self.__dict__.get("_fused_lists")
        if cache is None:
            cache = (list(self.parameters()), self._fused_weights())
            self.__dict__["_fused_lists"] = cache
        return cache

    @torch.jit.unused
    def _fused_weights(self) -> List[torch.Tensor]:
        """Every weight of the fast variant, in the order csrc/fast_model.cpp reads them."""
        def lin(m: nn.Linear) -> List[torch.Tensor]:
            return [m.weight] if m.bias is None else [m.weight, m.bias]

        def two(m: nn.Sequential) -> List[torch.Tensor]:
            return lin(m[0]) + lin(m[2])

        w = [self.embedding.weight] + lin(self.charge_head)
        for b in self.charge_blocks:
            w += two(b.radial) + lin(b.mix) + two(b.update) + lin(b.charge_head)
        for u in self.charge_updates:
            w += lin(u.lin_q) + two(u.update) + lin(u.head)
        return w + two(self.local_energy) + two(self.nonlocal_energy) + [self.reference_energy]

    @torch.jit.unused
    def _fused_forward(self, index: torch.Tensor, frag: torch.Tensor, positions: torch.Tensor, widths: torch.Tensor,
                       targets: torch.Tensor, inv_count: torch.Tensor, T0: torch.Tensor, T1: torch.Tensor,
                       external_field: Optional[torch.Tensor], head: int) -> Dict[str, torch.Tensor]:
        """forward's fast branch as one operator (energy and its gradients): the same outputs; only
        the energy is differentiable (charges and energy terms are detached) and only once."""
        field = external_field.to(positions.dtype) if external_field is not None else None
        norm = self.charge_blocks[0].norm if len(self.charge_blocks) else 1.0
        args = (widths.detach(), index, frag, targets, inv_count, field, self._fused_cache()[1],
                len(self.charge_blocks), len(self.charge_updates), head, self.coulomb, self.feature_length,
                self.cutoff, self.radial_basis, self.envelope_power, self.energy_scale, norm)
        energy, terms, q = _FastEnergy.apply(positions, T0, T1, args)
        charges = q.sum(1)
        return {"energy": energy, "energy_reference": terms[0], "energy_local": terms[1],
                "energy_electrostatic": terms[2], "energy_embedding": terms[3], "energy_external": terms[4],
                "energy_nonlocal": terms[5], "charges": charges, "spin_charges": q,
                "dipoles": positions.new_zeros(positions.shape[0], 3), "widths": widths}

    # ------------------------------------------------------------------ checks
    def _validate(self, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                  multiplicity: torch.Tensor, fragments: Optional[torch.Tensor], mm_positions: Optional[torch.Tensor],
                  mm_charges: Optional[torch.Tensor], box: Optional[torch.Tensor],
                  external_field: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(species indices [n], fragment ids [n]) after every check, the charge/multiplicity/electron-count
        parity included, so that the Fukui equilibrations of the step need no checks of their own."""
        index = self._check_inputs(species, positions, total_charge, multiplicity, fragments, mm_positions,
                                   mm_charges, box, external_field)
        n = positions.shape[0]
        frag_ids = fragments if fragments is not None else torch.zeros(n, dtype=torch.long, device=positions.device)
        n_electrons = torch.zeros_like(total_charge, dtype=torch.long).index_add(0, frag_ids, species)
        frag = check_fukui_arguments(positions.new_zeros(n, 2), positions.new_zeros(n, 2),
                                     total_charge.to(positions.dtype), multiplicity, fragments, n_electrons)
        return index, frag

    def _check_inputs(self, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                      multiplicity: torch.Tensor, fragments: Optional[torch.Tensor],
                      mm_positions: Optional[torch.Tensor], mm_charges: Optional[torch.Tensor],
                      box: Optional[torch.Tensor], external_field: Optional[torch.Tensor]) -> torch.Tensor:
        """Validates every argument before any work; returns the species indices [n]."""
        self._check_positions(positions)
        n = positions.shape[0]
        if species.dtype != torch.long or species.dim() != 1 or species.shape[0] != n:
            raise ValueError(f"species must be an int64 tensor [n] = [{n}] of atomic numbers, got "
                             f"{species.dtype} {list(species.shape)}")
        if bool((species < 0).any()) or bool((species > 118).any()):
            raise ValueError("species must hold atomic numbers 1..118")
        index = self.species_index[species]
        if bool((index < 0).any()):
            bad = int(species[torch.nonzero(index < 0)[0, 0]])
            raise ValueError(f"element {bad} is not one of this model's elements {self.elements}")
        if total_charge.dim() != 1 or total_charge.shape[0] < 1:
            raise ValueError(f"total_charge must have shape [F] (one charge per fragment), got {list(total_charge.shape)}")
        if multiplicity.dim() != 1 or multiplicity.shape[0] != total_charge.shape[0] or multiplicity.dtype != torch.long:
            raise ValueError(f"multiplicity must be an int64 tensor [F] = [{total_charge.shape[0]}], got "
                             f"{multiplicity.dtype} {list(multiplicity.shape)}")
        if fragments is not None:
            if fragments.dtype != torch.long or fragments.dim() != 1 or fragments.shape[0] != n:
                raise ValueError(f"fragments must be an int64 tensor [n] = [{n}] of ids in 0..F-1, got "
                                 f"{fragments.dtype} {list(fragments.shape)}")
        self._check_environment(positions, mm_positions, mm_charges, box, external_field)
        return index

    def _check_positions(self, positions: torch.Tensor):
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape [n, 3] (nm), got {list(positions.shape)}")
        if positions.shape[0] < 1:
            raise ValueError("positions is empty: the ML region needs at least one atom")
        pdtype = self.reference_energy.dtype
        if positions.dtype != pdtype:
            raise TypeError(f"positions have dtype {positions.dtype} but the model is {pdtype}; "
                            f"convert the inputs or the model (model.to({pdtype}) / model.double())")
        if positions.device != self.reference_energy.device:
            raise ValueError(f"positions are on {positions.device} but the model on {self.reference_energy.device}")
        if not _all_finite(positions):
            raise ValueError("positions contain NaN or infinite values")

    def _check_environment(self, positions: torch.Tensor, mm_positions: Optional[torch.Tensor],
                           mm_charges: Optional[torch.Tensor], box: Optional[torch.Tensor],
                           external_field: Optional[torch.Tensor]):
        """The arguments that change from step to step besides the positions: MM atoms, box, field."""
        pdtype = self.reference_energy.dtype
        if (mm_positions is None) != (mm_charges is None):
            raise ValueError("mm_positions and mm_charges must be given together (or both None)")
        if mm_positions is not None and mm_charges is not None:
            if mm_positions.dim() != 2 or mm_positions.shape[1] != 3 or mm_positions.dtype != pdtype:
                raise ValueError(f"mm_positions must be a {pdtype} tensor [m, 3] (nm), got "
                                 f"{mm_positions.dtype} {list(mm_positions.shape)}")
            if mm_charges.dim() != 1 or mm_charges.shape[0] != mm_positions.shape[0] or mm_charges.dtype != pdtype:
                raise ValueError(f"mm_charges must be a {pdtype} tensor [m] = [{mm_positions.shape[0]}] (e), got "
                                 f"{mm_charges.dtype} {list(mm_charges.shape)}")
            if not _all_finite(mm_positions):
                raise ValueError("mm_positions contain NaN or infinite values")
        if box is not None:
            if box.shape != (3, 3) or box.dtype != pdtype:
                raise ValueError(f"box must be a {pdtype} tensor [3, 3] whose rows are the box vectors (nm)")
            if external_field is not None:
                raise ValueError("a uniform external field is only defined with open boundaries (box=None); "
                                 "drop external_field or box")
            a, b, c = box[0], box[1], box[2]
            if not (float(a[1]) == 0.0 and float(a[2]) == 0.0 and float(b[2]) == 0.0):
                raise ValueError("box must be in OpenMM's reduced form: a = (ax,0,0), b = (bx,by,0), c = (cx,cy,cz)")
            half = 0.5 * float(torch.min(torch.stack([a[0], b[1], c[2]])))
            need = max(self.cutoff, self.elec_cutoff)
            if mm_positions is not None:
                need = max(need, self.mm_ewald_cutoff)
            if need > half:
                raise ValueError(f"the box is too small: its smallest width is {2 * half} nm but the model's "
                                 f"cutoffs need at least {2 * need} nm (twice the largest of cutoff, electrostatics_cutoff and, with MM atoms, mm_ewald_cutoff); "
                                 "use a larger box or build the model with a smaller electrostatics_cutoff")
        if external_field is not None:
            if external_field.shape != (3,) or external_field.dtype != pdtype:
                raise ValueError(f"external_field must be a {pdtype} tensor [3] (kJ/mol/nm/e)")


class _FastEnergy(torch.autograd.Function):
    """Energy of the fast variant with its gradients computed in the same operator call
    (csrc/fast_model.cpp); the backward only scales them."""

    @staticmethod
    def forward(ctx, positions, T0, T1, args):
        (widths, index, frag, targets, inv_count, field, weights, n_blocks, n_updates, head, coulomb, ell, cutoff,
         radial_basis, envelope_power, energy_scale, norm) = args
        need_grad = any(ctx.needs_input_grad[:3])
        terms, q, gx, g0, g1 = torch.ops.mlpolar.fast_energy(
            positions, widths, index, frag, targets, inv_count, T0, T1, field, weights, n_blocks, n_updates, head,
            coulomb, ell, cutoff, radial_basis, envelope_power, energy_scale, norm, need_grad)
        ctx.save_for_backward(gx, g0, g1)
        ctx.mark_non_differentiable(terms, q)
        return terms.sum(), terms, q

    @staticmethod
    def backward(ctx, grad_energy, grad_terms, grad_q):
        if torch.is_grad_enabled():   # create_graph=True: the saved gradients are constants
            raise RuntimeError("the fused path of a frozen fast model is differentiable once (energy -> forces); for "
                               "second derivatives set model.fused_inference = False (energy_and_forces(..., "
                               "create_graph=True) does so itself)")
        gx, g0, g1 = ctx.saved_tensors
        return grad_energy * gx, grad_energy * g0, grad_energy * g1, None


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in t. The sum is finite exactly when every element is (NaN and ±inf
    propagate) unless it overflows, which the exact test then settles: one reduction per step
    instead of four elementwise passes over 25k MM positions (~0.1-0.3 ms)."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _versions(tensors: Tuple[Optional[torch.Tensor], ...]) -> Optional[Tuple[int, ...]]:
    """Version counters of the tensors (-1 for None); None when one keeps none (inference mode)."""
    try:
        return tuple(-1 if t is None else t._version for t in tensors)
    except RuntimeError:
        return None


@torch.compiler.disable
def _validate_eagerly(model: MLPolar, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                      multiplicity: torch.Tensor, fragments: Optional[torch.Tensor],
                      mm_positions: Optional[torch.Tensor], mm_charges: Optional[torch.Tensor],
                      box: Optional[torch.Tensor], external_field: Optional[torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(species indices, fragment ids, spin-channel targets, 1/fragment sizes) after every check.

    The system's constants (species, charges, multiplicities, fragments) are checked once: the
    results are kept with the tensors themselves and their version counters, and reused while the
    very same tensor objects come back unmodified (an MD run: ~60 small ops and host syncs less per
    step). Positions, MM atoms, box and field are checked at every call.
    """
    constants = (species, total_charge, multiplicity, fragments)
    versions = _versions(constants)
    setting = (positions.shape[0], positions.dtype, positions.device)
    cached = model.__dict__.get("_checked_constants")
    if (cached is not None and versions is not None and cached[1] == versions and cached[2] == setting
            and all(a is b for a, b in zip(cached[0], constants))):
        model._check_positions(positions)
        model._check_environment(positions, mm_positions, mm_charges, box, external_field)
        return cached[3]
    index, frag = model._validate(species, positions, total_charge, multiplicity, fragments, mm_positions, mm_charges,
                                  box, external_field)
    dtype = positions.dtype
    targets = spin_channel_targets(total_charge.to(dtype), multiplicity).to(dtype)
    result = (index, frag, targets, fragment_centring(frag, targets.shape[0], dtype))
    model.__dict__["_checked_constants"] = (constants, versions, setting, result) if versions is not None else None
    return result
