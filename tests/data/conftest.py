"""Fixtures for the data-generation tests: a prepared p-xylene/water system and a short
trajectory in temporary folders (real OpenMM, real files)."""
import numpy as np
import pytest

from mlpolar.data.sampling import sample
from mlpolar.data.systems import prepare_system


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("systems")


@pytest.fixture(scope="session")
def pxw(cache_dir):
    return prepare_system("pxylene_water", cache_dir)


@pytest.fixture(scope="session")
def traj(pxw, tmp_path_factory):
    path = tmp_path_factory.mktemp("traj") / "pxw.h5"
    sample(pxw, path, n_frames=3, stride=10, equilibration_steps=10, seed=3,
           minimize_max_iterations=50, platform="CPU", threads=1)
    return path


@pytest.fixture(scope="session")
def atom_arrays(pxw):
    atoms = list(pxw.topology.atoms())
    z = np.array([a.element.atomic_number for a in atoms])
    res = np.array([a.residue.index for a in atoms])
    return z, res, pxw.charges()
