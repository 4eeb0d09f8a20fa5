"""Preparation of the reference systems, in one place (MD, data generation and free-energy
workflows all call :func:`prepare_system`).

Systems (names accepted by :func:`prepare_system`):

``"pxylene_water"``
    p-xylene (residue ``TMP``, GAFF/AM1-BCC parameters from openmmtools'
    ``T4-lysozyme-L99A-implicit/ligand.prmtop``) in a cubic TIP3P box, PME.
``"t4l99a_pxylene_water"``
    T4 lysozyme L99A (Amber ff14SB from ``amber14-all.xml``) with p-xylene in its pocket
    (coordinates from openmmtools' ``complex.pdb``), TIP3P water, neutralising ions, PME.

How the ligand keeps its exact prmtop parameters: a ForceField residue template is generated
from the prmtop-built System with one atom type per ligand atom carrying that atom's charge,
sigma and epsilon (so solvation, ion placement and the NonbondedForce see the exact values).
After ``ForceField.createSystem`` the ligand's bonded terms (bonds, angles, torsions and
constraints) are copied one by one from the prmtop-built System, and the ligand--ligand
exceptions (1-2, 1-3 exclusions and scaled 1-4 pairs) are overwritten with the prmtop's.
``tests/data/test_systems.py`` checks that the ligand's energy in the combined System equals
the prmtop System's energy.

Units: OpenMM's (nm, kJ/mol, e, ps, K). Prepared systems are cached as
``<cache_dir>/<key>.system.xml`` + ``<key>.pdb`` + ``<key>.json`` (metadata, written last),
key = name + box size/padding + ionic strength (e.g. ``pxylene_water_box3.6_ion0``);
preparation runs once per cache directory (default ``data/systems``).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u

from ..system_pairs import bond_term_pairs, constrained_pairs

SYSTEM_NAMES = ("pxylene_water", "t4l99a_pxylene_water")
BOX_SHAPES = ("cube", "dodecahedron", "octahedron")  # OpenMM Modeller.addSolvent boxShape
LIGAND_RESNAME = "TMP"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[3] / "data" / "systems"
_PREP_VERSION = 1


@dataclass
class PreparedSystem:
    """A solvated system ready for MD: OpenMM topology, System, positions (nm, (N, 3) array),
    periodic box vectors (nm, (3, 3)), and the indices of the ligand (ML/QM region) atoms."""
    name: str
    topology: app.Topology
    system: openmm.System
    positions: np.ndarray
    box_vectors: np.ndarray
    ligand_indices: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def n_atoms(self) -> int:
        return self.system.getNumParticles()

    def charges(self) -> np.ndarray:
        """Per-atom partial charges (e) from the System's NonbondedForce."""
        return nonbonded_charges(self.system)


def openmmtools_data_dir() -> Path:
    """The ``data`` folder of the installed openmmtools (found without importing it)."""
    spec = importlib.util.find_spec("openmmtools")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("openmmtools is not installed; `pip install openmmtools` "
                           "(its data folder holds the T4 lysozyme L99A / p-xylene files).")
    d = Path(list(spec.submodule_search_locations)[0]) / "data" / "T4-lysozyme-L99A-implicit"
    if not d.is_dir():
        raise RuntimeError(f"openmmtools data folder {d} is missing; reinstall openmmtools.")
    return d


def nonbonded_charges(system: openmm.System) -> np.ndarray:
    nb = _nonbonded(system)
    return np.array([nb.getParticleParameters(i)[0].value_in_unit(u.elementary_charge)
                     for i in range(nb.getNumParticles())])


def _nonbonded(system: openmm.System) -> openmm.NonbondedForce:
    for f in system.getForces():
        if isinstance(f, openmm.NonbondedForce):
            return f
    raise ValueError("system has no NonbondedForce; pass a System built with an Amber-style "
                     "force field.")


# ----------------------------------------------------------------------------- ligand template
def ligand_prmtop() -> app.AmberPrmtopFile:
    return app.AmberPrmtopFile(str(openmmtools_data_dir() / "ligand.prmtop"))


def ligand_template_xml(prmtop: app.AmberPrmtopFile | None = None) -> str:
    """ForceField XML with one residue template for the ligand, one atom type per atom carrying
    the prmtop's mass, charge, sigma and epsilon. Bonded terms are *not* in the XML; they are
    copied from the prmtop System by :func:`_copy_ligand_bonded`."""
    prmtop = prmtop or ligand_prmtop()
    sys_l = prmtop.createSystem(nonbondedMethod=app.NoCutoff)
    nb = _nonbonded(sys_l)
    atoms = list(prmtop.topology.atoms())
    res = list(prmtop.topology.residues())
    if len(res) != 1:
        raise ValueError("ligand prmtop must contain exactly one residue")
    rname = res[0].name
    types, nbl, ratoms = [], [], []
    for i, a in enumerate(atoms):
        t = f"mlpolar-{rname}-{a.name}"
        m = sys_l.getParticleMass(i).value_in_unit(u.dalton)
        types.append(f'  <Type name="{t}" class="{t}" element="{a.element.symbol}" mass="{m!r}"/>')
        q, s, e = nb.getParticleParameters(i)
        nbl.append(f'  <Atom type="{t}" charge="{q.value_in_unit(u.elementary_charge)!r}" '
                   f'sigma="{s.value_in_unit(u.nanometer)!r}" '
                   f'epsilon="{e.value_in_unit(u.kilojoule_per_mole)!r}"/>')
        ratoms.append(f'   <Atom name="{a.name}" type="{t}"/>')
    bonds = [f'   <Bond atomName1="{b[0].name}" atomName2="{b[1].name}"/>'
             for b in prmtop.topology.bonds()]
    return "\n".join(
        ["<ForceField>", " <AtomTypes>", *types, " </AtomTypes>", " <Residues>",
         f'  <Residue name="{rname}">', *ratoms, *bonds, "  </Residue>", " </Residues>",
         # same 1-4 scales as amber14 (GAFF uses the same); the exceptions are overwritten anyway
         ' <NonbondedForce coulomb14scale="0.8333333333333334" lj14scale="0.5">',
         *nbl, " </NonbondedForce>", "</ForceField>"])


def make_forcefield() -> tuple[app.ForceField, app.AmberPrmtopFile]:
    import io
    prmtop = ligand_prmtop()
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    ff.loadFile(io.StringIO(ligand_template_xml(prmtop)))
    return ff, prmtop


def _copy_ligand_bonded(system: openmm.System, prm_system: openmm.System,
                        lig_idx: np.ndarray) -> None:
    """Copy bonds, angles, torsions and constraints of the prmtop ligand into ``system`` (atom i
    of the prmtop -> atom lig_idx[i]) and overwrite the ligand--ligand exceptions."""
    m = [int(i) for i in lig_idx]
    lig_set = set(m)
    for f in prm_system.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            g = openmm.HarmonicBondForce()
            for k in range(f.getNumBonds()):
                i, j, r0, kk = f.getBondParameters(k)
                g.addBond(m[i], m[j], r0, kk)
        elif isinstance(f, openmm.HarmonicAngleForce):
            g = openmm.HarmonicAngleForce()
            for k in range(f.getNumAngles()):
                i, j, l, a0, kk = f.getAngleParameters(k)
                g.addAngle(m[i], m[j], m[l], a0, kk)
        elif isinstance(f, openmm.PeriodicTorsionForce):
            g = openmm.PeriodicTorsionForce()
            for k in range(f.getNumTorsions()):
                i, j, l, n, per, ph, kk = f.getTorsionParameters(k)
                g.addTorsion(m[i], m[j], m[l], m[n], per, ph, kk)
        else:
            continue
        g.setName(f"ligand_{type(f).__name__}")
        g.setForceGroup(0)
        g.setUsesPeriodicBoundaryConditions(False)
        system.addForce(g)
    # constraints: drop any the ForceField put on ligand atoms, add the prmtop's
    for k in reversed(range(system.getNumConstraints())):
        i, j, _ = system.getConstraintParameters(k)
        if i in lig_set or j in lig_set:
            system.removeConstraint(k)
    for k in range(prm_system.getNumConstraints()):
        i, j, d = prm_system.getConstraintParameters(k)
        system.addConstraint(m[i], m[j], d)
    nb, pnb = _nonbonded(system), _nonbonded(prm_system)
    lookup = {}
    for k in range(nb.getNumExceptions()):
        i, j, *_ = nb.getExceptionParameters(k)
        if i in lig_set and j in lig_set:
            lookup[(min(i, j), max(i, j))] = k
    seen = set()
    for k in range(pnb.getNumExceptions()):
        i, j, qq, s, e = pnb.getExceptionParameters(k)
        key = (min(m[i], m[j]), max(m[i], m[j]))
        seen.add(key)
        if key in lookup:
            nb.setExceptionParameters(lookup[key], key[0], key[1], qq, s, e)
        else:
            nb.addException(key[0], key[1], qq, s, e)
    extra = set(lookup) - seen
    if extra:
        raise RuntimeError(f"ForceField made ligand exceptions the prmtop lacks: {sorted(extra)}")


def build_system(topology: app.Topology, forcefield: app.ForceField, prmtop: app.AmberPrmtopFile,
                 *, periodic: bool = True, cutoff_nm: float = 1.0,
                 constraints=app.HBonds) -> tuple[openmm.System, np.ndarray]:
    """createSystem + exact ligand bonded terms. Returns (system, ligand_indices)."""
    lig = [r for r in topology.residues() if r.name == LIGAND_RESNAME]
    if len(lig) != 1:
        raise ValueError(f"topology must contain exactly one {LIGAND_RESNAME} residue, "
                         f"found {len(lig)}")
    prm_names = [a.name for a in prmtop.topology.atoms()]
    by_name = {a.name: a.index for a in lig[0].atoms()}
    if sorted(by_name) != sorted(prm_names):
        raise ValueError("ligand atom names in the topology do not match ligand.prmtop")
    lig_idx = np.array([by_name[n] for n in prm_names], dtype=np.int64)
    kw = dict(nonbondedMethod=app.PME if periodic else app.NoCutoff, constraints=constraints,
              rigidWater=True)
    if periodic:
        kw["nonbondedCutoff"] = cutoff_nm * u.nanometer
        kw["ewaldErrorTolerance"] = 5e-4
    system = forcefield.createSystem(topology, **kw)
    prm_sys = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=constraints)
    _copy_ligand_bonded(system, prm_sys, lig_idx)
    return system, lig_idx


def ligand_bond_terms(ligand_indices) -> dict:
    """All of the ligand prmtop's harmonic bond terms, none left out for constraints:
    {(i, j): (r0 nm, k kJ/mol/nm^2)} with i < j in the prepared system's atom indices
    (``ligand_indices`` in prmtop order, as :func:`build_system` returns them). A System built
    with HBonds constraints has no bond term for its X-H bonds (the constraint replaces it), so
    sampling without those constraints must put these terms back."""
    prm_sys = ligand_prmtop().createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    m = [int(i) for i in ligand_indices]
    if len(m) != prm_sys.getNumParticles():
        raise ValueError(f"ligand_indices has {len(m)} atoms, ligand.prmtop "
                         f"{prm_sys.getNumParticles()}")
    out = {}
    for f in prm_sys.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            for k in range(f.getNumBonds()):
                i, j, r0, kk = f.getBondParameters(k)
                out[tuple(sorted((m[i], m[j])))] = (
                    r0.value_in_unit(u.nanometer),
                    kk.value_in_unit(u.kilojoule_per_mole / u.nanometer ** 2))
    return out


def add_constrained_bond_terms(system: openmm.System, ligand_indices) -> int:
    """Give the ligand's constrained bonds their force-field bond terms, as
    ``createSystem(flexibleConstraints=True)`` would (one HarmonicBondForce, "ligand_xh_bonds").
    While a constraint holds, its bond term is a constant; once it is removed (flexible sampling,
    ML/MM without the ML region's constraints, whose lambda = 0 end is this MM System) the term
    is what keeps the atoms bonded. Pairs that already have a bond term are left alone. Returns
    the number of terms added."""
    have = bond_term_pairs(system)
    terms = ligand_bond_terms(ligand_indices)
    bonds = openmm.HarmonicBondForce()
    bonds.setName("ligand_xh_bonds")
    for key in constrained_pairs(system, ligand_indices):
        if key not in have:
            if key not in terms:
                raise ValueError(f"ligand constraint {key} has no bond term in ligand.prmtop")
            bonds.addBond(*key, *terms[key])
    if bonds.getNumBonds():
        system.addForce(bonds)
    return bonds.getNumBonds()


# ----------------------------------------------------------------------------- preparation
def _ligand_modeller() -> app.Modeller:
    d = openmmtools_data_dir()
    prmtop = ligand_prmtop()
    crd = app.AmberInpcrdFile(str(d / "ligand.crd"))
    return app.Modeller(prmtop.topology, crd.getPositions())


def _complex_modeller() -> app.Modeller:
    pdb = app.PDBFile(str(openmmtools_data_dir() / "complex.pdb"))
    return app.Modeller(pdb.topology, pdb.positions)


def _prepare(name: str, padding_nm: float, ionic_strength_molar: float,
             box_edge_nm: float, box_shape: str) -> tuple:
    ff, prmtop = make_forcefield()
    if name == "pxylene_water":
        mod = _ligand_modeller()
    else:
        mod = _complex_modeller()
    size = (dict(boxSize=openmm.Vec3(box_edge_nm, box_edge_nm, box_edge_nm) * u.nanometer)
            if name == "pxylene_water" else dict(padding=padding_nm * u.nanometer, boxShape=box_shape))
    mod.addSolvent(ff, model="tip3p", ionicStrength=ionic_strength_molar * u.molar,
                   neutralize=True, **size)
    system, lig_idx = build_system(mod.topology, ff, prmtop)
    pos = np.asarray(mod.positions.value_in_unit(u.nanometer))
    box = np.asarray([v.value_in_unit(u.nanometer)
                      for v in mod.topology.getPeriodicBoxVectors()])
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box])
    meta = dict(name=name, padding_nm=padding_nm, box_edge_nm=box_edge_nm, box_shape=box_shape,
                ionic_strength_molar=ionic_strength_molar,
                water="tip3p", protein_ff="amber14-all.xml" if name != "pxylene_water" else None,
                ligand_params="openmmtools T4-lysozyme-L99A-implicit/ligand.prmtop (GAFF, AM1-BCC)",
                nonbonded="PME, cutoff 1.0 nm, ewaldErrorTolerance 5e-4", constraints="HBonds",
                openmm_version=openmm.__version__, prep_version=_PREP_VERSION)
    return mod.topology, system, pos, box, meta


def prepare_system(name: str, cache_dir: str | os.PathLike | None = None, *,
                   padding_nm: float = 1.0, box_edge_nm: float = 3.6,
                   ionic_strength_molar: float = 0.0, box_shape: str = "cube",
                   rebuild: bool = False) -> PreparedSystem:
    """Prepare (or load from the cache) one of :data:`SYSTEM_NAMES`.

    box_edge_nm: cube edge of the p-xylene water box (default 3.6 nm: half the edge exceeds the
    ligand's extent plus a 1.2 nm MM-charge radius, so every selected charge is one image).
    padding_nm: water padding around the protein complex (default 1.0 nm).
    box_shape: shape of the protein complex's box, one of :data:`BOX_SHAPES` (default "cube"; a
    rhombic "dodecahedron" holds the same padding with ~29% fewer water molecules, so the MD for
    the pocket data runs faster; OpenMM writes it as a reduced triclinic box).
    Both systems are neutralised with Na+/Cl-; ionic_strength_molar adds salt.
    The cache key contains the name and these sizes.
    """
    if name not in SYSTEM_NAMES:
        raise ValueError(f"name={name!r} is not a known system; use one of {SYSTEM_NAMES}")
    if not padding_nm > 0:
        raise ValueError(f"padding_nm={padding_nm} must be positive (nm)")
    if not box_edge_nm > 1.5:
        raise ValueError(f"box_edge_nm={box_edge_nm} must exceed 1.5 nm (twice the 0.6 nm "
                         "minimum PME cutoff plus the solute); use e.g. 3.6")
    if ionic_strength_molar < 0:
        raise ValueError("ionic_strength_molar must be >= 0 (mol/L)")
    if box_shape not in BOX_SHAPES:
        raise ValueError(f"box_shape={box_shape!r} is not supported; use one of {BOX_SHAPES}")
    if name == "pxylene_water" and box_shape != "cube":
        raise ValueError(f"box_shape={box_shape!r}: the p-xylene water box is a cube of edge "
                         "box_edge_nm; box_shape applies to the protein complex only")
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    size = f"box{box_edge_nm:g}" if name == "pxylene_water" else f"pad{padding_nm:g}"
    if box_shape != "cube":  # the cube keeps its historical key
        size += f"_{box_shape}"
    key = f"{name}_{size}_ion{ionic_strength_molar:g}"
    fx, fp, fj = (cache / f"{key}.system.xml", cache / f"{key}.pdb", cache / f"{key}.json")
    if not rebuild and fx.exists() and fp.exists() and fj.exists():
        meta = json.loads(fj.read_text())
        if meta.get("prep_version") == _PREP_VERSION:
            pdb = app.PDBFile(str(fp))
            system = openmm.XmlSerializer.deserialize(fx.read_text())
            pos = np.asarray(pdb.positions.value_in_unit(u.nanometer))
            box = np.asarray([v.value_in_unit(u.nanometer)
                              for v in system.getDefaultPeriodicBoxVectors()])
            pdb.topology.setPeriodicBoxVectors(box * u.nanometer)
            return PreparedSystem(name, pdb.topology, system, pos, box,
                                  np.asarray(meta["ligand_indices"], dtype=np.int64), meta)
    top, system, pos, box, meta = _prepare(name, padding_nm, ionic_strength_molar, box_edge_nm,
                                           box_shape)
    lig = _ligand_indices_from_topology(top)
    meta["ligand_indices"] = lig.tolist()
    meta["n_atoms"] = system.getNumParticles()
    _atomic_write(fx, openmm.XmlSerializer.serialize(system))
    tmp = fp.with_suffix(".pdb.tmp")
    with open(tmp, "w") as fh:
        app.PDBFile.writeFile(top, pos * u.nanometer, fh)
    os.replace(tmp, fp)
    _atomic_write(fj, json.dumps(meta, indent=1))  # written last: marks the cache complete
    return PreparedSystem(name, top, system, pos, box, lig, meta)


def _ligand_indices_from_topology(top: app.Topology) -> np.ndarray:
    prm_names = [a.name for a in ligand_prmtop().topology.atoms()]
    lig = [r for r in top.residues() if r.name == LIGAND_RESNAME][0]
    by_name = {a.name: a.index for a in lig.atoms()}
    return np.array([by_name[n] for n in prm_names], dtype=np.int64)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
