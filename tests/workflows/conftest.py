"""Fixtures for the workflow tests: one Dask LocalCluster of 2 worker processes per module
(real Dask, started once because a start costs seconds on a small machine)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harmonic.py


@pytest.fixture(scope="module")
def client():
    from mlpolar.workflows.campaign import dask_client
    with dask_client(n_workers=2) as c:
        yield c
