"""Atom pairs of an ``openmm.System`` that the data and OpenMM layers both ask about: which pairs
have a harmonic bond term and which are constrained. Plain OpenMM, no torch (the data layer
imports it)."""
from __future__ import annotations

from typing import Iterable, List, Set, Tuple

import openmm

Pair = Tuple[int, int]


def bond_term_pairs(system: openmm.System) -> Set[Pair]:
    """(i, j), i < j, of every HarmonicBondForce term."""
    out = set()
    for f in system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for k in range(f.getNumBonds()):
                i, j = f.getBondParameters(k)[:2]
                out.add((min(i, j), max(i, j)))
    return out


def constrained_pairs(system: openmm.System, atoms: Iterable[int]) -> List[Pair]:
    """(i, j), i < j, of the constraints with both atoms in ``atoms``, in constraint order."""
    s = {int(a) for a in atoms}
    out = []
    for k in range(system.getNumConstraints()):
        i, j, _ = system.getConstraintParameters(k)
        if i in s and j in s:
            out.append((min(i, j), max(i, j)))
    return out
