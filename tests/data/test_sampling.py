import h5py
import numpy as np
import pytest

from mlpolar.data.sampling import n_frames, read_frame, sample


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
