import h5py
import numpy as np
import pytest

import openmm
import openmm.unit as unit

from mlpolar.data.sampling import first_frame, make_simulation_context, n_frames, read_frame, sample
from mlpolar.data.systems import add_constrained_bond_terms


def test_trajectory_written(traj, pxw):
    assert n_frames(traj) == 3
    with h5py.File(traj) as f:
        np.testing.assert_array_equal(f["step"][:], [20, 30, 40])
        np.testing.assert_array_equal(f["ligand_indices"][:], pxw.ligand_indices)
    pos, box = read_frame(traj, 2)
    assert pos.shape == (pxw.n_atoms, 3) and np.all(np.isfinite(pos))
    np.testing.assert_allclose(np.diag(box), 3.6)
    # molecules whole (not wrapped): every water O-H within 0.11 nm
    ow = [a.index for a in pxw.topology.atoms() if a.residue.name == "HOH" and a.name == "O"]
    ow = np.array(ow)
    assert np.linalg.norm(pos[ow + 1] - pos[ow], axis=1).max() < 0.11


def test_resume_and_truncate(pxw, tmp_path):
    path = tmp_path / "t.h5"
    kw = dict(stride=5, equilibration_steps=0, seed=7, minimize_max_iterations=20,
              platform="CPU", threads=1)
    sample(pxw, path, n_frames=2, **kw)
    with h5py.File(path) as f:
        first = f["positions"][:2].copy()
    # simulate a run killed after writing a frame but before its checkpoint: extra frame
    with h5py.File(path, "a") as f:
        for k in ("positions", "box", "step"):
            f[k].resize(3, axis=0)
        f["step"][2] = -1
    sample(pxw, path, n_frames=4, **kw)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["step"][:], [5, 10, 15, 20])
        np.testing.assert_array_equal(f["positions"][:2], first)
    with pytest.raises(ValueError, match="seed"):
        sample(pxw, path, n_frames=5, **{**kw, "seed": 8})
    with pytest.raises(ValueError, match="stride"):
        sample(pxw, path, n_frames=5, **{**kw, "stride": 0})


def test_file_cut_off_before_its_first_checkpoint_starts_anew(pxw, tmp_path):
    """A run killed during the equilibration leaves a trajectory file without a checkpoint (and,
    with the file still open, possibly no valid HDF5 header): the next run starts it anew."""
    path = tmp_path / "t.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 2352)  # a header cut off, as seen after a kill
    kw = dict(stride=5, equilibration_steps=0, seed=7, minimize_max_iterations=20, platform="CPU", threads=1)
    with pytest.warns(UserWarning, match="no checkpoint"):
        sample(pxw, path, n_frames=2, **kw)
    assert n_frames(path) == 2
    # a readable file is never replaced: with its checkpoint it resumes
    sample(pxw, path, n_frames=3, **kw)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["step"][:], [5, 10, 15])


def test_restart_state_continues_in_a_new_file(pxw, tmp_path):
    """A fresh checkout has neither the trajectory nor its OpenMM checkpoint, only the committed
    restart state: the new file continues the old trajectory (frame indices, steps, positions)
    without a new minimisation or equilibration, and the lost frames say so."""
    kw = dict(stride=5, equilibration_steps=10, seed=7, minimize_max_iterations=20,
              platform="CPU", threads=1)
    old, restart = tmp_path / "old.h5", tmp_path / "state.npz"
    sample(pxw, old, n_frames=2, restart=restart, **kw)
    with h5py.File(old) as f:
        last_old = f["positions"][1].astype(np.float64)
        steps_old = f["step"][:].tolist()
    with np.load(restart) as z:
        assert int(z["n_frames"]) == 2 and int(z["step"]) == steps_old[-1]
        assert z["positions"].dtype == np.float32 and z["velocities"].shape == (pxw.n_atoms, 3)
        np.testing.assert_allclose(z["positions"], last_old, atol=1e-6)

    new = tmp_path / "new.h5"                # the old file and its checkpoint are gone
    sample(pxw, new, n_frames=4, restart=restart, **kw)
    assert n_frames(new) == 4
    with h5py.File(new) as f:
        assert int(f.attrs["first_frame"]) == 2 and f["positions"].shape[0] == 2
        assert f["step"][:].tolist() == [steps_old[-1] + 5, steps_old[-1] + 10]
    pos2, box2 = read_frame(new, 2)
    # 5 steps of 2 fs after the restart state (the step count above shows that no minimisation
    # or equilibration ran): thermal displacements, ~0.005 nm on average, a fast H up to ~0.06
    d = np.linalg.norm(pos2 - last_old, axis=1)
    assert d.mean() < 0.015 and d.max() < 0.12
    assert box2.shape == (3, 3)
    with pytest.raises(IndexError, match="gone"):
        read_frame(new, 1)
    with np.load(restart) as z:
        assert int(z["n_frames"]) == 4
    # resuming the new file itself works as before (its own checkpoint)
    sample(pxw, new, n_frames=5, restart=restart, **kw)
    assert n_frames(new) == 5 and first_frame(new) == 2

    # settings must match the restart state's, and a damaged file is refused
    with pytest.raises(ValueError, match="seed"):
        sample(pxw, tmp_path / "other.h5", n_frames=6, restart=restart, **{**kw, "seed": 8})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a restart file")
    with pytest.raises(ValueError, match="not a restart file"):
        sample(pxw, tmp_path / "other2.h5", n_frames=1, restart=bad, **kw)


def test_hydrogen_mass_repartitioning(pxw, tmp_path):
    """HMR for the sampling: solute hydrogens get the requested mass, their heavy partners lose it,
    water keeps its masses, the total mass is unchanged; a 4 fs trajectory records the setting and
    refuses to resume without it."""
    import openmm
    from mlpolar.data.sampling import repartition_hydrogen_mass
    system = openmm.XmlSerializer.clone(pxw.system)
    masses = lambda s: np.array([s.getParticleMass(i)._value for i in range(s.getNumParticles())])
    before = masses(system)
    repartition_hydrogen_mass(system, pxw.topology, 4.0)
    after = masses(system)
    assert after.sum() == pytest.approx(before.sum(), rel=1e-12)
    atoms = list(pxw.topology.atoms())
    lig_h = [i for i in pxw.ligand_indices if atoms[i].element.symbol == "H"]
    water = [a.index for a in atoms if a.residue.name == "HOH"]
    np.testing.assert_allclose(after[lig_h], 4.0)
    np.testing.assert_array_equal(after[water], before[water])
    with pytest.raises(ValueError, match="hydrogen_mass_amu"):
        repartition_hydrogen_mass(system, pxw.topology, 7.0)
    path = tmp_path / "hmr.h5"
    kw = dict(stride=5, equilibration_steps=0, seed=7, minimize_max_iterations=20, platform="CPU",
              threads=1, timestep_ps=0.004, hydrogen_mass_amu=4.0)
    sample(pxw, path, n_frames=2, **kw)
    with h5py.File(path) as f:
        assert f.attrs["hydrogen_mass_amu"] == 4.0 and f.attrs["timestep_ps"] == 0.004
        assert np.all(np.isfinite(f["positions"][:]))
    with pytest.raises(ValueError, match="hydrogen_mass_amu"):
        sample(pxw, path, n_frames=3, **{**kw, "hydrogen_mass_amu": None})


def test_flexible_ligand_stretches_its_bonds(pxw, tmp_path):
    """Without the ligand's constraints its C-H lengths vary from frame to frame (with them they
    sit at the force field's values); the setting is recorded, must match on resume, and needs a
    step of at most 2 fs."""
    lig = list(pxw.ligand_indices)
    ch = [(a.index, b.index) for a, b in pxw.topology.bonds()
          if a.index in lig and b.index in lig and {a.element.symbol, b.element.symbol} == {"C", "H"}]
    assert len(ch) == 10
    kw = dict(stride=10, equilibration_steps=20, seed=5, minimize_max_iterations=20,
              platform="CPU", threads=1)

    def spread(path):
        pos = np.stack([read_frame(path, k)[0] for k in range(n_frames(path))])
        r = np.array([np.linalg.norm(pos[:, i] - pos[:, j], axis=1) for i, j in ch])
        return r.std(axis=1).max()  # over frames, per bond
    sample(pxw, tmp_path / "rigid.h5", n_frames=3, **kw)
    sample(pxw, tmp_path / "flex.h5", n_frames=3, flexible_ligand=True, **kw)
    assert spread(tmp_path / "rigid.h5") < 1e-5
    assert spread(tmp_path / "flex.h5") > 1e-3
    # ... and they stay bonds: the constraints are replaced by the force field's bond terms
    # (removing them alone set the hydrogens free: 6 nm apart within 40 ps, Dec 2026)
    for k in range(n_frames(tmp_path / "flex.h5")):
        pos = read_frame(tmp_path / "flex.h5", k)[0]
        r = np.array([np.linalg.norm(pos[i] - pos[j]) for i, j in ch])
        assert np.all(np.abs(r - 0.109) < 0.012), r
    system = openmm.XmlSerializer.clone(pxw.system)
    assert add_constrained_bond_terms(system, pxw.ligand_indices) == 10
    assert add_constrained_bond_terms(system, pxw.ligand_indices) == 0   # already there
    ctx = make_simulation_context(pxw, flexible_ligand=True, platform="Reference")
    system = ctx.getSystem()
    assert not any({system.getConstraintParameters(k)[0],
                    system.getConstraintParameters(k)[1]} <= set(lig)
                   for k in range(system.getNumConstraints()))
    bonds = next(f for f in system.getForces() if f.getName() == "ligand_xh_bonds")
    got = {tuple(sorted(bonds.getBondParameters(k)[:2])): bonds.getBondParameters(k)[2:]
           for k in range(bonds.getNumBonds())}
    assert set(got) == {tuple(sorted(b)) for b in ch}
    for key, (r0, kk) in got.items():
        constrained = [pxw.system.getConstraintParameters(k) for k in
                       range(pxw.system.getNumConstraints())
                       if tuple(sorted(pxw.system.getConstraintParameters(k)[:2])) == key]
        assert r0.value_in_unit(unit.nanometer) == pytest.approx(
            constrained[0][2].value_in_unit(unit.nanometer), rel=1e-6)
        # GAFF C-H: 2 x 337-344 kcal/mol/A^2
        assert 2.7e5 < kk.value_in_unit(unit.kilojoule_per_mole / unit.nanometer ** 2) < 3.0e5
    with h5py.File(tmp_path / "flex.h5") as f:
        assert bool(f.attrs["flexible_ligand"])
    with pytest.raises(ValueError, match="flexible_ligand"):
        sample(pxw, tmp_path / "flex.h5", n_frames=4, **kw)
    with pytest.raises(ValueError, match="timestep_ps"):
        sample(pxw, tmp_path / "flex4.h5", n_frames=1, flexible_ligand=True, timestep_ps=0.004,
               hydrogen_mass_amu=4.0, **kw)
