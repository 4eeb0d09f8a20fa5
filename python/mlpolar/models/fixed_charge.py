"""Fixed-charge model: the MM force field's own description of the ML region, behind the model
interface (docs/interfaces.md, "Model").

It carries the ML atoms' force-field charges, their Lennard-Jones pairs (including the scaled
1-4 pairs) and their bonded terms (harmonic bonds and angles, periodic torsions), read once from
an OpenMM System. Its energy is

    E = E_bonded(ML) + E_LJ(ML-ML) + E_Coulomb(ML-ML) + E_Coulomb(ML-MM),

the Coulomb parts with all periodic images through Ewald/PME (mlpolar.electrostatics) under a
box, plain Coulomb without one. That is exactly what `create_mixed_system` removes from the MM
System, so a mixed System driven by this model reproduces the original MM energy and forces to
the PME tolerance: the test that nothing is counted twice or dropped. It is also the
fixed-charge (non-polarisable, mechanical-charge) baseline of the free-energy workflows.

Exception semantics follow OpenMM's NonbondedForce: an exception pair (1-2, 1-3, scaled 1-4)
is removed from the Ewald sum (mlpolar removes the pair's minimum image) and interacts instead
through its own charge product and LJ parameters as plain Coulomb + LJ without cutoff; the other
ML-ML pairs get LJ with the force field's cutoff and switching function.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
import openmm
import torch

from ..electrostatics import GaussianMultipoles
from ..electrostatics.multipoles import receiver_coefficients
from ..units import ONE_4PI_EPS0

_SUPPORTED_NB = (openmm.NonbondedForce.NoCutoff, openmm.NonbondedForce.Ewald, openmm.NonbondedForce.PME)
_BONDED = (openmm.HarmonicBondForce, openmm.HarmonicAngleForce, openmm.PeriodicTorsionForce)


def minimum_image(d: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
    """Displacements [.., 3] reduced to the minimum image of a reduced triclinic box (rows a, b, c);
    OpenMM's order: c, then b, then a."""
    if box is None:
        return d
    d = d - torch.round(d[..., 2:3] / box[2, 2]) * box[2]
    d = d - torch.round(d[..., 1:2] / box[1, 1]) * box[1]
    d = d - torch.round(d[..., 0:1] / box[0, 0]) * box[0]
    return d


class FixedChargeModel(torch.nn.Module):
    """The MM description of an ML region as an mlpolar model (see the module docstring).

    Build it with :meth:`from_system`. Tensors are float64 buffers; `forward` follows the model
    interface and returns "energy" (kJ/mol) and its parts, and "charges".
    """

    def __init__(self, elements: List[int], charges, lj_pairs, lj_params, exception_pairs, exception_charge_prods,
                 bonds, bond_params, angles, angle_params, torsions, torsion_params,
                 mm_cutoff: float = 1.0, ewald_tolerance: float = 5e-4, lj_cutoff: float = 0.0,
                 lj_switch: float = 0.0, lj_cut_pairs=None):
        super().__init__()
        f64 = torch.float64
        self.elements = sorted(set(int(z) for z in elements))
        self.heads = ["mm"]
        self.mm_cutoff = float(mm_cutoff)
        self.ewald_tolerance = float(ewald_tolerance)
        self.register_buffer("ml_charges", torch.as_tensor(charges, dtype=f64).reshape(-1))
        self.register_buffer("lj_pairs", torch.as_tensor(lj_pairs, dtype=torch.int64).reshape(-1, 2))
        self.register_buffer("lj_params", torch.as_tensor(lj_params, dtype=f64).reshape(-1, 2))   # sigma, epsilon
        self.register_buffer("exception_pairs", torch.as_tensor(exception_pairs, dtype=torch.int64).reshape(-1, 2))
        self.register_buffer("exception_charge_prods", torch.as_tensor(exception_charge_prods, dtype=f64).reshape(-1))
        self.register_buffer("bonds", torch.as_tensor(bonds, dtype=torch.int64).reshape(-1, 2))
        self.register_buffer("bond_params", torch.as_tensor(bond_params, dtype=f64).reshape(-1, 2))       # r0, k
        self.register_buffer("angles", torch.as_tensor(angles, dtype=torch.int64).reshape(-1, 3))
        self.register_buffer("angle_params", torch.as_tensor(angle_params, dtype=f64).reshape(-1, 2))     # theta0, k
        self.register_buffer("torsions", torch.as_tensor(torsions, dtype=torch.int64).reshape(-1, 4))
        self.register_buffer("torsion_params", torch.as_tensor(torsion_params, dtype=f64).reshape(-1, 3))  # n, phase, k
        # LJ cutoff (0: none) and switch start (0: no switch) for the pairs flagged in lj_cut_pairs
        self.lj_cutoff = float(lj_cutoff)
        self.lj_switch = float(lj_switch)
        flags = [False] * len(self.lj_pairs) if lj_cut_pairs is None else list(lj_cut_pairs)
        self.register_buffer("lj_cut_pairs", torch.as_tensor(flags, dtype=torch.bool).reshape(-1))
        self.electrostatics = GaussianMultipoles(cutoff=self.mm_cutoff, tolerance=self.ewald_tolerance)

    @classmethod
    def from_system(cls, system: openmm.System, ml_atoms, species=None) -> "FixedChargeModel":
        """Read the ML atoms' charges, LJ pairs and bonded terms from an MM System.

        Args:
            system: the original MM System (one NonbondedForce with NoCutoff, Ewald or PME).
            ml_atoms: indices of the ML atoms; the model's atom i is ml_atoms[i].
            species: atomic numbers of the ML atoms (for `elements`); None: guessed from masses.
        """
        ml = [int(i) for i in ml_atoms]
        local = {a: k for k, a in enumerate(ml)}
        nbs = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
        if len(nbs) != 1:
            raise ValueError(f"system must have exactly one NonbondedForce for the fixed-charge model, found {len(nbs)}")
        nb = nbs[0]
        if nb.getNonbondedMethod() not in _SUPPORTED_NB:
            raise ValueError("the fixed-charge model supports NonbondedForce methods NoCutoff, Ewald and PME; "
                             f"got method {nb.getNonbondedMethod()} (reaction field is not an Ewald sum)")
        params = [nb.getParticleParameters(a) for a in ml]
        q = [p[0].value_in_unit(openmm.unit.elementary_charge) for p in params]
        sig = [p[1].value_in_unit(openmm.unit.nanometer) for p in params]
        eps = [p[2].value_in_unit(openmm.unit.kilojoule_per_mole) for p in params]
        exc: Dict[tuple, tuple] = {}
        for k in range(nb.getNumExceptions()):
            i, j, qq, s, e = nb.getExceptionParameters(k)
            if i in local and j in local:
                key = (min(local[i], local[j]), max(local[i], local[j]))
                exc[key] = (qq.value_in_unit(openmm.unit.elementary_charge ** 2),
                            s.value_in_unit(openmm.unit.nanometer), e.value_in_unit(openmm.unit.kilojoule_per_mole))
        lj_pairs, lj_params, lj_cut = [], [], []
        for a in range(len(ml)):
            for b in range(a + 1, len(ml)):
                s, e = exc[(a, b)][1:] if (a, b) in exc else (0.5 * (sig[a] + sig[b]), math.sqrt(eps[a] * eps[b]))
                if e != 0.0:
                    lj_pairs.append((a, b))
                    lj_params.append((s, e))
                    lj_cut.append((a, b) not in exc)   # exceptions have no cutoff in OpenMM
        exc_pairs = sorted(exc)
        exc_qq = [exc[p][0] for p in exc_pairs]

        bonds, bond_p, angles, angle_p, tors, tors_p = [], [], [], [], [], []
        for force in system.getForces():
            if isinstance(force, openmm.HarmonicBondForce):
                for k in range(force.getNumBonds()):
                    i, j, r0, kb = force.getBondParameters(k)
                    if i in local and j in local:
                        bonds.append((local[i], local[j]))
                        bond_p.append((r0.value_in_unit(openmm.unit.nanometer),
                                       kb.value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.nanometer ** 2)))
            elif isinstance(force, openmm.HarmonicAngleForce):
                for k in range(force.getNumAngles()):
                    i, j, l, t0, ka = force.getAngleParameters(k)
                    if i in local and j in local and l in local:
                        angles.append((local[i], local[j], local[l]))
                        angle_p.append((t0.value_in_unit(openmm.unit.radian),
                                        ka.value_in_unit(openmm.unit.kilojoule_per_mole / openmm.unit.radian ** 2)))
            elif isinstance(force, openmm.PeriodicTorsionForce):
                for k in range(force.getNumTorsions()):
                    i, j, l, m, per, ph, kt = force.getTorsionParameters(k)
                    if all(a in local for a in (i, j, l, m)):
                        tors.append((local[i], local[j], local[l], local[m]))
                        tors_p.append((per, ph.value_in_unit(openmm.unit.radian),
                                       kt.value_in_unit(openmm.unit.kilojoule_per_mole)))
            elif isinstance(force, openmm.CMAPTorsionForce) and force.getNumTorsions() > 0:
                for k in range(force.getNumTorsions()):
                    atoms = force.getTorsionParameters(k)[1:]
                    if any(a in local for a in atoms):
                        raise ValueError("the fixed-charge model does not implement CMAP terms; choose an ML region "
                                         "without CMAP torsions")
        if species is None:
            species = [openmm.app.Element.getByMass(system.getParticleMass(a)).atomic_number for a in ml]
        cutoff = nb.getCutoffDistance().value_in_unit(openmm.unit.nanometer)
        periodic = nb.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff
        switch = nb.getSwitchingDistance().value_in_unit(openmm.unit.nanometer) \
            if periodic and nb.getUseSwitchingFunction() else 0.0
        return cls(species, q, lj_pairs, lj_params, exc_pairs, exc_qq, bonds, bond_p, angles, angle_p, tors, tors_p,
                   mm_cutoff=cutoff, ewald_tolerance=nb.getEwaldErrorTolerance(),
                   lj_cutoff=cutoff if periodic else 0.0, lj_switch=switch, lj_cut_pairs=lj_cut)

    def forward(self, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                multiplicity: torch.Tensor, fragments: Optional[torch.Tensor] = None,
                mm_positions: Optional[torch.Tensor] = None, mm_charges: Optional[torch.Tensor] = None,
                box: Optional[torch.Tensor] = None, external_field: Optional[torch.Tensor] = None,
                head: Optional[str] = None) -> Dict[str, torch.Tensor]:
        n = positions.shape[0]
        if n != self.ml_charges.shape[0]:
            raise ValueError(f"positions has {n} atoms but this fixed-charge model was built for "
                             f"{self.ml_charges.shape[0]} ML atoms")
        dt = positions.dtype
        q = self.ml_charges.to(dt)
        zero = positions.new_zeros(())
        e_bonded = self._bonded(positions, box)
        e_lj, e_exc = self._pairs(positions, box)
        elec = self.electrostatics
        if n > 1 or box is not None:
            # ML-ML: Ewald (or open) sum with the exception pairs removed, plus their own Coulomb
            e_mlml = elec.energy(positions, q, box=box, exclusions=self.exception_pairs) + e_exc
        else:
            e_mlml = zero
        e_emb = zero
        if mm_positions is not None and mm_positions.shape[0] > 0:
            if mm_charges is None:
                raise ValueError("mm_charges are required with mm_positions")
            # potential of the MM charges (and all their images) at the ML atoms: the ML sources are
            # given zero charge so only MM densities contribute
            pos = torch.cat([positions, mm_positions.to(dt)])
            src = torch.cat([torch.zeros_like(q), mm_charges.to(dt)])
            V = elec.field_derivatives(pos, receiver_coefficients(src, None, None), 0, src, None, box, None)
            e_emb = (q * V[:n, 0]).sum()
        if external_field is not None:
            e_ext = -(q[:, None] * positions * external_field.to(dt)).sum()
        else:
            e_ext = zero
        energy = e_bonded + e_lj + e_mlml + e_emb + e_ext
        return {"energy": energy, "energy_reference": zero, "energy_local": e_bonded + e_lj,
                "energy_electrostatic": e_mlml, "energy_embedding": e_emb, "energy_external": e_ext,
                "energy_nonlocal": zero, "charges": q}

    def _pairs(self, x: torch.Tensor, box: Optional[torch.Tensor]):
        e_lj = x.new_zeros(())
        if self.lj_pairs.shape[0]:
            d = minimum_image(x[self.lj_pairs[:, 1]] - x[self.lj_pairs[:, 0]], box)
            r = d.norm(dim=-1)
            sr6 = (self.lj_params[:, 0].to(x.dtype) / r) ** 6
            e = 4.0 * self.lj_params[:, 1].to(x.dtype) * (sr6 * sr6 - sr6)
            if self.lj_cutoff > 0.0:
                # OpenMM: S = 1 - 6t^5 + 15t^4 - 10t^3, t = (r - r_s)/(r_c - r_s), then zero past r_c
                s = torch.ones_like(r)
                if self.lj_switch > 0.0:
                    t = ((r - self.lj_switch) / (self.lj_cutoff - self.lj_switch)).clamp(0.0, 1.0)
                    s = 1.0 - t ** 3 * (10.0 - 15.0 * t + 6.0 * t * t)
                s = torch.where(r < self.lj_cutoff, s, torch.zeros_like(s))
                e = torch.where(self.lj_cut_pairs, e * s, e)
            e_lj = e.sum()
        e_exc = x.new_zeros(())
        if self.exception_pairs.shape[0]:
            d = minimum_image(x[self.exception_pairs[:, 1]] - x[self.exception_pairs[:, 0]], box)
            r = d.norm(dim=-1)
            e_exc = ONE_4PI_EPS0 * (self.exception_charge_prods.to(x.dtype) / r).sum()
        return e_lj, e_exc

    def _bonded(self, x: torch.Tensor, box: Optional[torch.Tensor]) -> torch.Tensor:
        e = x.new_zeros(())
        if self.bonds.shape[0]:
            r = minimum_image(x[self.bonds[:, 1]] - x[self.bonds[:, 0]], box).norm(dim=-1)
            r0, k = self.bond_params.to(x.dtype).unbind(1)
            e = e + (0.5 * k * (r - r0) ** 2).sum()
        if self.angles.shape[0]:
            a = minimum_image(x[self.angles[:, 0]] - x[self.angles[:, 1]], box)
            b = minimum_image(x[self.angles[:, 2]] - x[self.angles[:, 1]], box)
            # atan2 keeps the gradient finite at 0 and pi
            theta = torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))
            t0, k = self.angle_params.to(x.dtype).unbind(1)
            e = e + (0.5 * k * (theta - t0) ** 2).sum()
        if self.torsions.shape[0]:
            t = self.torsions
            b1 = minimum_image(x[t[:, 1]] - x[t[:, 0]], box)
            b2 = minimum_image(x[t[:, 2]] - x[t[:, 1]], box)
            b3 = minimum_image(x[t[:, 3]] - x[t[:, 2]], box)
            n1 = torch.linalg.cross(b1, b2)
            n2 = torch.linalg.cross(b2, b3)
            # Blondel & Karplus: phi = atan2(|b2| b1.(b2 x b3), (b1 x b2).(b2 x b3)), IUPAC sign
            phi = torch.atan2(b2.norm(dim=-1) * (b1 * n2).sum(-1), (n1 * n2).sum(-1))
            per, ph, k = self.torsion_params.to(x.dtype).unbind(1)
            # OpenMM: k (1 + cos(n phi - phase))
            e = e + (k * (1.0 + torch.cos(per * phi - ph))).sum()
        return e
