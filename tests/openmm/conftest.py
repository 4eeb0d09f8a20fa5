"""Fixtures of the OpenMM-layer tests (helpers in mlmm_cases.py)."""
import pytest
import torch

from mlmm_cases import Case


@pytest.fixture(scope="module")
def mlpolar_model():
    """A small random MLPolar (H, C, N, O; float64) for the OpenMM-layer tests."""
    pytest.importorskip("mlpolar.model")
    from mlpolar.model import MLPolar, MLPolarConfig
    torch.manual_seed(0)
    return MLPolar(MLPolarConfig(elements=[1, 6, 7, 8], channels=8, layers=1, radial_basis=4,
                                 contraction_channels=4)).double()


@pytest.fixture(scope="session")
def solvated():
    """2269 atoms, PME at OpenMM's default tolerance (fast)."""
    from openmmtools.testsystems import AlanineDipeptideExplicit
    return Case(AlanineDipeptideExplicit(constraints=None, ewaldErrorTolerance=5e-4))


@pytest.fixture(scope="session")
def solvated_tight():
    """The same with ewaldErrorTolerance 1e-6, where OpenMM's and mlpolar's PME agree closely."""
    from openmmtools.testsystems import AlanineDipeptideExplicit
    return Case(AlanineDipeptideExplicit(constraints=None, ewaldErrorTolerance=1e-6))


@pytest.fixture(scope="session")
def open_water():
    """The solvated dipeptide without periodic boundaries (NoCutoff): open-boundary ML/MM."""
    import openmm.app as app
    from openmmtools.testsystems import AlanineDipeptideExplicit
    return Case(AlanineDipeptideExplicit(constraints=None, nonbondedMethod=app.NoCutoff))


@pytest.fixture(scope="session")
def vacuum():
    """The dipeptide alone: every atom ML."""
    from openmmtools.testsystems import AlanineDipeptideVacuum
    return Case(AlanineDipeptideVacuum(constraints=None))
