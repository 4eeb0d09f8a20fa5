"""Loading the three input kinds (real Amber files from openmmtools, a real ForceField, a real
serialised System) and choosing the ML region."""
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from mlpolar.data.systems import openmmtools_data_dir
from mlpolar.workflows.inputs import load_input, select_ml_atoms


@pytest.fixture(scope="module")
def amber():
    d = openmmtools_data_dir()
    return d / "ligand.prmtop", d / "ligand.crd"


@pytest.fixture(scope="module")
def water_pdb(tmp_path_factory):
    """A small periodic TIP3P box written as PDB (input for the PDB + force-field route)."""
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    mod = app.Modeller(app.Topology(), [])
    mod.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(1.6, 1.6, 1.6) * u.nanometer)
    path = tmp_path_factory.mktemp("inp") / "water.pdb"
    with open(path, "w") as fh:
        app.PDBFile.writeFile(mod.topology, mod.positions, fh)
    return path


def _energy(system, positions):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def test_amber_input(amber):
    inp = load_input(prmtop=amber[0], inpcrd=amber[1])
    assert inp.n_atoms == 18 and inp.positions.shape == (18, 3) and inp.box_vectors is None
    assert not inp.system.usesPeriodicBoundaryConditions()
    assert np.isfinite(_energy(inp.system, inp.positions))


def test_xml_and_pdb_input_reproduces_energy(amber, tmp_path):
    ref = load_input(prmtop=amber[0], inpcrd=amber[1])
    xml, pdb = tmp_path / "s.xml", tmp_path / "s.pdb"
    xml.write_text(openmm.XmlSerializer.serialize(ref.system))
    with open(pdb, "w") as fh:
        app.PDBFile.writeFile(ref.topology, ref.positions * u.nanometer, fh)
    inp = load_input(system_xml=xml, pdb=pdb)
    # PDB keeps 3 decimals in Å: energies agree to that precision
    assert _energy(inp.system, inp.positions) == pytest.approx(
        _energy(ref.system, inp.positions), abs=1e-9)
    assert np.abs(inp.positions - ref.positions).max() < 1e-4


def test_pdb_and_forcefield_input(water_pdb):
    inp = load_input(pdb=water_pdb, forcefields=["amber14-all.xml", "amber14/tip3p.xml"],
                     cutoff_nm=0.7)
    assert inp.system.usesPeriodicBoundaryConditions()
    np.testing.assert_allclose(np.diag(inp.box_vectors), 1.6, atol=1e-3)
    nb = [f for f in inp.system.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    assert nb.getNonbondedMethod() == openmm.NonbondedForce.PME
    assert nb.getCutoffDistance().value_in_unit(u.nanometer) == pytest.approx(0.7)
    pdb = app.PDBFile(str(water_pdb))
    ref = app.ForceField("amber14-all.xml", "amber14/tip3p.xml").createSystem(
        pdb.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.7 * u.nanometer,
        constraints=app.HBonds, flexibleConstraints=True)   # as load_input builds it
    assert inp.system.getNumConstraints() == ref.getNumConstraints() == 3 * 129
    assert _energy(inp.system, inp.positions) == pytest.approx(_energy(ref, pdb.positions),
                                                               rel=1e-9)


def test_ml_region_selection(amber):
    inp = load_input(prmtop=amber[0], inpcrd=amber[1])
    top = inp.topology
    np.testing.assert_array_equal(select_ml_atoms(top, resname="TMP"), np.arange(18))
    np.testing.assert_array_equal(select_ml_atoms(top, indices=[5, 1, 3]), [1, 3, 5])
    carbons = [a.index for a in top.atoms() if a.element.symbol == "C"]
    np.testing.assert_array_equal(select_ml_atoms(top, selection="element C"), carbons)


def test_input_errors(amber, tmp_path, water_pdb):
    with pytest.raises(ValueError, match="exactly one input kind"):
        load_input(prmtop=amber[0], inpcrd=amber[1], system_xml="x.xml")
    with pytest.raises(ValueError, match="exactly one input kind"):
        load_input()
    with pytest.raises(ValueError, match="both prmtop and inpcrd"):
        load_input(prmtop=amber[0])
    with pytest.raises(FileNotFoundError, match="missing.crd"):
        load_input(prmtop=amber[0], inpcrd=tmp_path / "missing.crd")
    with pytest.raises(ValueError, match="forcefields"):
        load_input(pdb=water_pdb, forcefields="amber14-all.xml")
    xml = tmp_path / "one.xml"
    s = openmm.System()
    s.addParticle(1.0)
    xml.write_text(openmm.XmlSerializer.serialize(s))
    with pytest.raises(ValueError, match="same system"):
        load_input(system_xml=xml, pdb=water_pdb)
    top = load_input(prmtop=amber[0], inpcrd=amber[1]).topology
    with pytest.raises(ValueError, match="exactly one of"):
        select_ml_atoms(top, resname="TMP", indices=[0])
    with pytest.raises(ValueError, match="residue names present"):
        select_ml_atoms(top, resname="LIG")
    with pytest.raises(ValueError, match="out of range"):
        select_ml_atoms(top, indices=[0, 18])
    with pytest.raises(ValueError, match="duplicates"):
        select_ml_atoms(top, indices=[1, 1])
    with pytest.raises(ValueError, match="selects no atoms"):
        select_ml_atoms(top, selection="element N")
    with pytest.raises(ValueError, match="not a valid MDTraj selection"):
        select_ml_atoms(top, selection="resname ((")
