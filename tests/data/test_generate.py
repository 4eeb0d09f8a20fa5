"""The Dask driver end to end: real LocalCluster (2 worker processes), real PySCF (tiny
level), real HDF5 files; resume without recomputation; failures are reported, not stored."""
import dataclasses
import json

import numpy as np
import pytest

from mlpolar.data import generate
from mlpolar.data.qmmm import TINY_LEVEL
from mlpolar.data.store import LabelStore


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _cfg(tmp_path, cache_dir, traj, **kw):
    cfg = dict(system="pxylene_water", cache_dir=str(cache_dir), trajectory=str(traj),
               output=str(tmp_path / "labels.h5"), radius_nm=0.35,
               level=dataclasses.asdict(TINY_LEVEL), retries=0, progress=False)
    cfg.update(kw)
    return cfg


def test_dask_resume_without_recompute(client, tmp_path, cache_dir, traj):
    cfg = _cfg(tmp_path, cache_dir, traj)
    # "killed" after one configuration
    s1 = generate.run({**cfg, "max_new": 1}, client=client)
    assert s1["n_new"] == 1
    with LabelStore(cfg["output"], mode="r") as s:
        (first,) = s.done_indices()
        before = s.read(first)
    s2 = generate.run(cfg, client=client)           # restart: the two others only
    assert s2["n_done_before"] == 1 and s2["n_new"] == 2 and s2["n_failed"] == 0
    with LabelStore(cfg["output"], mode="r") as s:
        assert s.done_indices() == {0, 1, 2}
        again = s.read(first)
        assert again["task_wall_s"] == before["task_wall_s"]   # not recomputed
        assert json.loads(s.attrs["level"])["basis"] == "sto-3g"
        assert "hirshfeld" in s.attrs["hirshfeld_scheme"].lower()
        r = s.read(2)
        assert r["qm_forces"].shape == (18, 3) and np.isfinite(r["energy"])
        assert r["mm_forces"].shape == r["mm_positions"].shape
    s3 = generate.run(cfg, client=client)
    assert s3["n_new"] == 0 and s3["n_done_before"] == 3


def test_failures_are_reported_not_stored(client, tmp_path, cache_dir, traj):
    lvl = dataclasses.asdict(dataclasses.replace(TINY_LEVEL, max_cycle=1, conv_tol=1e-14))
    cfg = _cfg(tmp_path, cache_dir, traj, level=lvl, indices=[0])
    s = generate.run(cfg, client=client)
    assert s["n_failed"] == 1 and "converge" in s["failed"][0]
    with LabelStore(cfg["output"], mode="r") as st:
        assert len(st) == 0


def test_config_errors(tmp_path, cache_dir, traj):
    with pytest.raises(ValueError, match="required keys"):
        generate.load_config({"system": "pxylene_water"})
    with pytest.raises(ValueError, match="unknown keys"):
        generate.load_config({**_cfg(tmp_path, cache_dir, traj), "wrokers": 2})
    with pytest.raises(ValueError, match="out of range"):
        generate.parse_indices([5], 3)
    assert generate.parse_indices("1:3", 3) == [1, 2]
    p = tmp_path / "c.yaml"
    import yaml
    p.write_text(yaml.safe_dump(_cfg(tmp_path, cache_dir, traj)))
    assert generate.load_config(p)["level"] == TINY_LEVEL


def test_trajectory_continued_from_a_restart_state(client, tmp_path, cache_dir):
    """A trajectory file that continues a restart state (first_frame > 0): the frames before it
    that were never labelled are gone and skipped with a message; later frames are labelled under
    their continued indices."""
    from mlpolar.data.sampling import sample
    from mlpolar.data.systems import prepare_system
    pxw = prepare_system("pxylene_water", cache_dir)
    kw = dict(stride=5, equilibration_steps=5, seed=5, minimize_max_iterations=20, platform="CPU",
              threads=1)
    restart = tmp_path / "state.npz"
    sample(pxw, tmp_path / "old.h5", n_frames=2, restart=restart, **kw)
    new = tmp_path / "new.h5"
    sample(pxw, new, n_frames=3, restart=restart, **kw)
    lines = []
    s = generate.run(_cfg(tmp_path, cache_dir, new), client=client, log=lines.append)
    assert s["n_new"] == 1 and s["n_failed"] == 0
    assert any("2 unlabelled frames before frame 2 are gone" in ln for ln in lines)
    with LabelStore(str(tmp_path / "labels.h5"), mode="r") as st:
        assert st.done_indices() == {2}
