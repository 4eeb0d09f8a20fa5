"""Input checks of the OpenMM layer, run before any Force or System is built.

Each raises ValueError (or TypeError for a wrong type) that names the argument and the fix.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u


def ml_atom_list(ml_atoms, n_particles: int) -> List[int]:
    """ml_atoms as a list of distinct in-range ints (order kept: the model's atom i is ml_atoms[i])."""
    if isinstance(ml_atoms, (str, bytes)) or not isinstance(ml_atoms, Iterable):
        raise TypeError(f"ml_atoms must be a sequence of particle indices, got {type(ml_atoms).__name__}")
    atoms = []
    for a in ml_atoms:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"ml_atoms must hold integer particle indices, got {a!r} ({type(a).__name__})")
        atoms.append(int(a))
    if not atoms:
        raise ValueError("ml_atoms is empty; give the indices of the atoms the model describes")
    bad = [a for a in atoms if a < 0 or a >= n_particles]
    if bad:
        raise ValueError(f"ml_atoms {bad[:5]} are out of range for a System of {n_particles} particles")
    seen, dup = set(), []
    for a in atoms:
        if a in seen:
            dup.append(a)
        seen.add(a)
    if dup:
        raise ValueError(f"ml_atoms contains duplicates {sorted(set(dup))[:5]}; list each atom once")
    return atoms


def nonbonded_force(system: openmm.System, required: bool, why: str) -> Optional[openmm.NonbondedForce]:
    nbs = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    if len(nbs) > 1:
        raise ValueError(f"system has {len(nbs)} NonbondedForce objects; mlpolar needs one (merge them)")
    if not nbs:
        if required:
            raise ValueError(f"system has no NonbondedForce, which is needed {why}; build the System with a "
                             "force field that has one (e.g. ForceField.createSystem)")
        return None
    return nbs[0]


def species_of(ml_atoms: Sequence[int], system: openmm.System, topology: Optional[app.Topology]) -> List[int]:
    """Atomic numbers of the ML atoms, from the Topology when given, else from the particle masses."""
    if topology is not None:
        if topology.getNumAtoms() != system.getNumParticles():
            raise ValueError(f"topology has {topology.getNumAtoms()} atoms but system has "
                             f"{system.getNumParticles()} particles; pass the matching pair")
        atoms = list(topology.atoms())
        out = []
        for a in ml_atoms:
            el = atoms[a].element
            if el is None:
                raise ValueError(f"ml_atoms holds atom {a} ({atoms[a].name}) which has no element (a virtual site "
                                 "or extra particle); remove it from ml_atoms")
            out.append(el.atomic_number)
        return out
    out = []
    for a in ml_atoms:
        m = system.getParticleMass(a).value_in_unit(u.dalton)
        el = app.Element.getByMass(m) if m > 0 else None
        if el is None or abs(el.mass.value_in_unit(u.dalton) - m) > 0.1:
            raise ValueError(f"cannot tell the element of ML atom {a} from its mass {m:.3f} Da (virtual site or "
                             "repartitioned hydrogen mass); pass topology=")
        out.append(el.atomic_number)
    return out


def check_elements(species: Sequence[int], ml_atoms: Sequence[int], model) -> None:
    supported = getattr(model, "elements", None)
    if supported is None:
        return
    supported = set(int(z) for z in supported)
    bad = [(a, z) for a, z in zip(ml_atoms, species) if z not in supported]
    if bad:
        names = sorted({app.Element.getByAtomicNumber(z).symbol for _, z in bad})
        raise ValueError(f"ML region contains elements {names} (e.g. atom {bad[0][0]}) that the model does not "
                         f"support (it knows Z = {sorted(supported)}); move those atoms to the MM region or use "
                         "a model trained on them")


def check_charge_multiplicity(species: Sequence[int], charge: int, multiplicity: int) -> None:
    if isinstance(charge, bool) or not float(charge).is_integer():
        raise ValueError(f"charge must be an integer number of e, got {charge!r}")
    if isinstance(multiplicity, bool) or not float(multiplicity).is_integer() or int(multiplicity) < 1:
        raise ValueError(f"multiplicity must be a positive integer 2S+1, got {multiplicity!r}")
    electrons = int(sum(species)) - int(charge)
    unpaired = int(multiplicity) - 1
    if electrons < 0:
        raise ValueError(f"charge {charge} leaves {electrons} electrons in the ML region; check the charge")
    if unpaired > electrons or (electrons - unpaired) % 2:
        raise ValueError(f"charge {charge} and multiplicity {multiplicity} are inconsistent: the ML region has "
                         f"{electrons} electrons, which cannot have {unpaired} unpaired; an even electron count "
                         "needs an odd multiplicity (1 = singlet) and an odd count an even one (2 = doublet)")


def covalent_ml_mm_pairs(ml_atoms: Sequence[int], system: openmm.System,
                         topology: Optional[app.Topology]) -> List[tuple]:
    """(ml, mm) pairs joined by a Topology bond, a HarmonicBondForce bond or a constraint."""
    mlset = set(ml_atoms)
    pairs = set()

    def add(i, j):
        if (i in mlset) != (j in mlset):
            pairs.add((i, j) if i in mlset else (j, i))

    if topology is not None:
        for b in topology.bonds():
            add(b.atom1.index, b.atom2.index)
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for k in range(f.getNumBonds()):
                i, j = f.getBondParameters(k)[:2]
                add(i, j)
    for k in range(system.getNumConstraints()):
        i, j = system.getConstraintParameters(k)[:2]
        add(i, j)
    return sorted(pairs)


def check_no_link_bonds(ml_atoms, system, topology) -> None:
    pairs = covalent_ml_mm_pairs(ml_atoms, system, topology)
    if pairs:
        i, j = pairs[0]
        desc = f"{i}-{j}"
        if topology is not None:
            atoms = list(topology.atoms())
            a, b = atoms[i], atoms[j]
            desc = f"{a.residue.name}{a.residue.id}:{a.name} ({i}) - {b.residue.name}{b.residue.id}:{b.name} ({j})"
        raise ValueError(f"ML region is covalently bonded to MM atoms ({len(pairs)} bond(s), first {desc}); link "
                         "atoms are not supported yet: choose whole molecules as the ML region")


def check_cutoff_box(cutoff: float, system: openmm.System, what: str = "model.mm_cutoff") -> None:
    if not system.usesPeriodicBoundaryConditions():
        return
    a, b, c = (v.value_in_unit(u.nanometer) for v in system.getDefaultPeriodicBoxVectors())
    half = 0.5 * min(a[0], b[1], c[2])
    if cutoff > half:
        raise ValueError(f"{what} = {cutoff} nm is more than half the smallest periodic box width "
                         f"({2 * half:.4g} nm); use a larger box or a model with a shorter cutoff")
