import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest

from mlpolar.data import systems as S


def _energy(system, positions, box=None):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference" if system.getNumParticles() < 100 else "CPU"))
    if box is not None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in box])
    ctx.setPositions(positions)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)


def test_ligand_parameters_exact_in_forcefield_system():
    """The ligand built through the generated template + copied bonded terms has exactly the
    prmtop energy (vacuum, no cutoff, no constraints)."""
    ff, prmtop = S.make_forcefield()
    crd = app.AmberInpcrdFile(str(S.openmmtools_data_dir() / "ligand.crd"))
    pos = crd.getPositions(asNumpy=True).value_in_unit(u.nanometer)
    ref = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)
    mine, lig = S.build_system(prmtop.topology, ff, prmtop, periodic=False, constraints=None)
    assert list(lig) == list(range(18))
    e_ref, e_mine = _energy(ref, pos), _energy(mine, pos)
    assert np.isfinite(e_ref)
    assert e_mine == pytest.approx(e_ref, abs=1e-6, rel=1e-9)
    # and it is not trivially equal: perturb a charge -> energy changes
    nb = [f for f in mine.getForces() if isinstance(f, openmm.NonbondedForce)][0]
    q, s, e = nb.getParticleParameters(0)
    nb.setParticleParameters(0, q + 0.1 * u.elementary_charge, s, e)
    assert abs(_energy(mine, pos) - e_ref) > 1e-3


def test_pxylene_water(pxw, cache_dir):
    prm = S.ligand_prmtop()
    names = [a.name for a in prm.topology.atoms()]
    atoms = list(pxw.topology.atoms())
    assert [atoms[i].name for i in pxw.ligand_indices] == names
    assert all(atoms[i].residue.name == "TMP" for i in pxw.ligand_indices)
    n_wat = sum(1 for r in pxw.topology.residues() if r.name == "HOH")
    assert pxw.n_atoms == 18 + 3 * n_wat + sum(1 for r in pxw.topology.residues()
                                               if r.name in ("NA", "CL"))
    assert n_wat > 1000
    q = pxw.charges()
    ref_q = S.nonbonded_charges(prm.createSystem())
    np.testing.assert_allclose(q[pxw.ligand_indices], ref_q, atol=1e-12)
    assert abs(q.sum()) < 1e-3
    np.testing.assert_allclose(np.diag(pxw.box_vectors), 3.6)
    # every O-H in water and every ligand X-H bond constrained
    assert pxw.system.getNumConstraints() == 3 * n_wat + 10
    e = _energy(pxw.system, pxw.positions, pxw.box_vectors)
    assert np.isfinite(e) and e < 0
    again = S.prepare_system("pxylene_water", cache_dir)  # from the cache
    np.testing.assert_allclose(again.positions, pxw.positions, atol=2e-4)
    assert again.n_atoms == pxw.n_atoms
    np.testing.assert_array_equal(again.ligand_indices, pxw.ligand_indices)
    assert _energy(again.system, again.positions, again.box_vectors) == pytest.approx(e, rel=1e-3)


def test_t4_lysozyme_complex(cache_dir):
    p = S.prepare_system("t4l99a_pxylene_water", cache_dir)
    atoms = list(p.topology.atoms())
    assert [atoms[i].name for i in p.ligand_indices] == [a.name for a in S.ligand_prmtop().topology.atoms()]
    protein = [r for r in p.topology.residues() if r.name not in ("HOH", "NA", "CL", "TMP")]
    assert len(protein) == 162
    q = p.charges()
    prot_q = sum(q[a.index] for r in protein for a in r.atoms())
    n_cl = sum(1 for r in p.topology.residues() if r.name == "CL")
    n_na = sum(1 for r in p.topology.residues() if r.name == "NA")
    assert round(prot_q) == n_cl - n_na and abs(prot_q - round(prot_q)) < 1e-3
    assert abs(q.sum()) < 1e-3
    assert p.n_atoms > 20000
    e = _energy(p.system, p.positions, p.box_vectors)
    assert np.isfinite(e)
    # MM environment of the pocket: whole residues -> integer net charge, protein and water
    from mlpolar.data.qmmm import select_mm_charges
    res = np.array([a.residue.index for a in atoms])
    idx, _ = select_mm_charges(p.positions, p.box_vectors, q, p.ligand_indices, res, 1.2)
    assert abs(q[idx].sum() - round(q[idx].sum())) < 1e-6
    names = {atoms[i].residue.name for i in idx}
    assert "HOH" in names and len(names & {"LEU", "ALA", "PHE", "VAL"}) >= 2
    assert 500 < len(idx) < 5000


def test_bad_name():
    with pytest.raises(ValueError, match="name="):
        S.prepare_system("benzene_in_space")


def test_box_shape(cache_dir):
    """The complex in a rhombic dodecahedron: same padding, fewer atoms than the cube, a reduced
    triclinic box with its own cache entry; bad shapes are refused before any work."""
    cube = S.prepare_system("t4l99a_pxylene_water", cache_dir)
    dodec = S.prepare_system("t4l99a_pxylene_water", cache_dir, box_shape="dodecahedron")
    assert dodec.n_atoms < 0.8 * cube.n_atoms
    b = dodec.box_vectors
    assert b[0, 1] == b[0, 2] == b[1, 2] == 0 and b[2, 0] != 0 and abs(b[2, 0]) <= b[0, 0] / 2 + 1e-9
    assert dodec.metadata["box_shape"] == "dodecahedron"
    assert np.isfinite(_energy(dodec.system, dodec.positions, dodec.box_vectors))
    with pytest.raises(ValueError, match="box_shape"):
        S.prepare_system("t4l99a_pxylene_water", cache_dir, box_shape="sphere")
    with pytest.raises(ValueError, match="box_shape"):
        S.prepare_system("pxylene_water", cache_dir, box_shape="dodecahedron")
