"""Reading a simulation's inputs and choosing its ML region.

Three ways in, all ending in the same :class:`SimulationInput` (topology, System, positions in nm,
box vectors in nm or None):

* an Amber pair: ``prmtop`` + ``inpcrd`` (PME with a 1.0 nm cutoff when the inpcrd has a box,
  otherwise no cutoff; H-bond constraints),
* a serialised OpenMM ``system_xml`` + a ``pdb`` (topology and coordinates),
* a ``pdb`` + ``forcefields`` names for ``openmm.app.ForceField`` (same nonbonded choices).

The ML region is picked by exactly one of residue name, atom indices or an MDTraj selection
string (:func:`select_ml_atoms`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u


@dataclass
class SimulationInput:
    topology: app.Topology
    system: openmm.System
    positions: np.ndarray            # (N, 3) nm
    box_vectors: Optional[np.ndarray]  # (3, 3) nm, rows = a, b, c; None without periodicity

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()


def _exists(path, name: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}={str(path)!r} does not exist or is not a file")
    return p


def _create_kwargs(periodic: bool, cutoff_nm: float) -> dict:
    # flexibleConstraints: constrained bonds keep their bond terms (a constant while constrained),
    # so that an ML/MM run without the ML region's constraints still has them at lambda = 0
    kw = dict(constraints=app.HBonds, rigidWater=True, flexibleConstraints=True)
    if periodic:
        kw.update(nonbondedMethod=app.PME, nonbondedCutoff=cutoff_nm * u.nanometer)
    else:
        kw.update(nonbondedMethod=app.NoCutoff)
    return kw


def _box_nm(vectors) -> Optional[np.ndarray]:
    if vectors is None:
        return None
    return np.asarray([v.value_in_unit(u.nanometer) for v in vectors], dtype=float)


def load_input(*, prmtop=None, inpcrd=None, system_xml=None, pdb=None,
               forcefields: Optional[Sequence[str]] = None,
               cutoff_nm: float = 1.0) -> SimulationInput:
    """Load one of the three input kinds (see the module doc); anything else is a ValueError."""
    kinds = {"prmtop+inpcrd": prmtop is not None or inpcrd is not None,
             "system_xml+pdb": system_xml is not None,
             "pdb+forcefields": forcefields is not None}
    chosen = [k for k, v in kinds.items() if v]
    if len(chosen) != 1:
        raise ValueError("give exactly one input kind: prmtop+inpcrd, system_xml+pdb or "
                         f"pdb+forcefields (got {chosen or 'none'})")
    if not cutoff_nm > 0:
        raise ValueError(f"cutoff_nm={cutoff_nm} must be positive (nm)")
    kind = chosen[0]
    if kind == "prmtop+inpcrd":
        if prmtop is None or inpcrd is None:
            raise ValueError("an Amber input needs both prmtop and inpcrd")
        if pdb is not None:
            raise ValueError("pdb is not used with prmtop+inpcrd; leave it out")
        top_file = app.AmberPrmtopFile(str(_exists(prmtop, "prmtop")))
        crd = app.AmberInpcrdFile(str(_exists(inpcrd, "inpcrd")))
        box = _box_nm(crd.boxVectors)
        if box is not None:
            top_file.topology.setPeriodicBoxVectors(crd.boxVectors)
        system = top_file.createSystem(**_create_kwargs(box is not None, cutoff_nm))
        topology, positions = top_file.topology, crd.getPositions(asNumpy=True)
    else:
        if pdb is None:
            raise ValueError(f"{kind} needs pdb (topology and coordinates)")
        pdb_file = app.PDBFile(str(_exists(pdb, "pdb")))
        topology, positions = pdb_file.topology, pdb_file.getPositions(asNumpy=True)
        box = _box_nm(topology.getPeriodicBoxVectors())
        if kind == "system_xml+pdb":
            system = openmm.XmlSerializer.deserialize(
                _exists(system_xml, "system_xml").read_text())
            if system.getNumParticles() != topology.getNumAtoms():
                raise ValueError(f"system_xml has {system.getNumParticles()} particles but pdb "
                                 f"has {topology.getNumAtoms()} atoms; they must describe the "
                                 "same system")
            if system.usesPeriodicBoundaryConditions():
                box = _box_nm(system.getDefaultPeriodicBoxVectors()) if box is None else box
        else:
            if isinstance(forcefields, str) or not forcefields:
                raise ValueError("forcefields must be a non-empty list of ForceField file names, "
                                 "e.g. ['amber14-all.xml', 'amber14/tip3p.xml']")
            ff = app.ForceField(*forcefields)
            system = ff.createSystem(topology, **_create_kwargs(box is not None, cutoff_nm))
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box])
    return SimulationInput(topology, system, np.asarray(positions.value_in_unit(u.nanometer)),
                           box)


def select_ml_atoms(topology: app.Topology, *, resname: Optional[str] = None,
                    indices: Optional[Sequence[int]] = None,
                    selection: Optional[str] = None) -> np.ndarray:
    """Atom indices (sorted int64) of the ML region, chosen by exactly one of a residue name
    (all residues of that name), explicit atom indices, or an MDTraj selection string."""
    given = [k for k, v in (("resname", resname), ("indices", indices),
                            ("selection", selection)) if v is not None]
    if len(given) != 1:
        raise ValueError("choose the ML region with exactly one of resname, indices or "
                         f"selection (got {given or 'none'})")
    n = topology.getNumAtoms()
    if resname is not None:
        idx = [a.index for a in topology.atoms() if a.residue.name == resname]
        if not idx:
            names = sorted({r.name for r in topology.residues()})
            raise ValueError(f"resname={resname!r} matches no residue; residue names present: "
                             f"{names[:20]}")
    elif indices is not None:
        idx = [int(i) for i in indices]
        if not idx:
            raise ValueError("indices is empty; give at least one atom index")
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"indices {bad[:5]} out of range for {n} atoms (0-based)")
        if len(set(idx)) != len(idx):
            raise ValueError("indices contains duplicates; give each atom once")
    else:
        import mdtraj
        try:
            idx = mdtraj.Topology.from_openmm(topology).select(selection).tolist()
        except Exception as exc:  # mdtraj raises its own parse errors
            raise ValueError(f"selection={selection!r} is not a valid MDTraj selection: "
                             f"{exc}") from exc
        if not idx:
            raise ValueError(f"selection={selection!r} selects no atoms")
    return np.asarray(sorted(idx), dtype=np.int64)
