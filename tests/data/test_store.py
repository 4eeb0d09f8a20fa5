import h5py
import numpy as np
import pytest

from mlpolar.data.store import LabelStore


def _result(rng, n_qm=3, n_mm=5):
    return dict(qm_indices=np.arange(n_qm), qm_atomic_numbers=np.array([8, 1, 1][:n_qm]),
                qm_positions=rng.normal(size=(n_qm, 3)), mm_indices=np.arange(n_mm) + n_qm,
                mm_positions=rng.normal(size=(n_mm, 3)), mm_charges=rng.normal(size=n_mm),
                qm_forces=rng.normal(size=(n_qm, 3)), mm_forces=rng.normal(size=(n_mm, 3)),
                hirshfeld_charges=rng.normal(size=n_qm), dipole=rng.normal(size=3),
                dipole_vacuum=rng.normal(size=3), box=np.eye(3) * 3.0,
                energy=-1000.5, energy_vacuum=-990.25, energy_dispersion=-3.0)


def test_round_trip_and_append_only(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.h5"
    lvl = {"method": "hf", "basis": "sto-3g"}
    r = {i: _result(rng) for i in (0, 4, 7)}
    with LabelStore(path, level=lvl, system="toy", metadata={"radius_nm": 1.2}) as s:
        for i, res in r.items():
            s.write(i, res, attrs={"wall_s": 1.5})
        with pytest.raises(ValueError, match="append-only"):
            s.write(4, r[4])
        bad = dict(r[0], mm_forces=np.zeros((2, 3)))
        with pytest.raises(ValueError, match="mm_forces"):
            s.write(9, bad)
        assert 9 not in s.done_indices()
    with LabelStore(path, mode="r") as s:
        assert s.done_indices() == {0, 4, 7}
        assert s.level() == lvl and s.attrs["system"] == "toy"
        assert s.attrs["radius_nm"] == 1.2
        back = s.read(4)
        for k, v in r[4].items():
            np.testing.assert_allclose(back[k], v)
        assert back["wall_s"] == 1.5 and back["complete"] == 1
    with pytest.raises(ValueError, match="level"):
        LabelStore(path, level={"method": "b3lyp", "basis": "def2-svp"})
    with pytest.raises(ValueError, match="system"):
        LabelStore(path, level=lvl, system="other")


def test_partial_write_is_discarded(tmp_path):
    """A writer killed mid-configuration leaves a /staging group: reopening drops it."""
    rng = np.random.default_rng(1)
    path = tmp_path / "s.h5"
    with LabelStore(path) as s:
        s.write(0, _result(rng))
    with h5py.File(path, "a") as f:  # what a kill between create and move leaves behind
        g = f.create_group("staging/00000001")
        g.create_dataset("qm_positions", data=np.zeros((3, 3)))
    with LabelStore(path) as s:
        assert s.done_indices() == {0}
        s.write(1, _result(rng))
        assert s.done_indices() == {0, 1}
    with h5py.File(path) as f:
        assert "staging" not in f


def test_one_writer_and_live_reader(tmp_path):
    """While one process writes, another gets a clear error for writing and can read."""
    import subprocess
    import sys
    rng = np.random.default_rng(2)
    path = tmp_path / "s.h5"
    code = ("import sys; from mlpolar.data.store import LabelStore\n"
            "try:\n    LabelStore(sys.argv[1])\nexcept RuntimeError as e:\n    print('ERR', e)\n"
            "with LabelStore(sys.argv[1], mode='r') as s:\n    print('DONE', sorted(s.done_indices()))\n")
    with LabelStore(path) as s:
        s.write(3, _result(rng))
        import os
        from pathlib import Path
        import mlpolar
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(mlpolar.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, timeout=60, env=env)
    assert "ERR" in out.stdout and "another process" in out.stdout, out.stderr
    assert "DONE [3]" in out.stdout
