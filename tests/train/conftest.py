"""Fixtures of the training tests: the committed 8-configuration slice of the production
p-xylene/water labels (B3LYP-D3(BJ)/def2-SVP) and a small config around the tiny model."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # tiny_model
FIXTURE = HERE / "data" / "pxylene_water_8.h5"


@pytest.fixture
def store_path():
    return FIXTURE


@pytest.fixture
def make_config(tmp_path):
    """A small training config (dict) in tmp_path; keyword arguments override training keys."""
    def make(run="run", **training):
        t = {"epochs": 2, "batch_size": 2, "optimizer": {"name": "adamw", "lr": 0.01},
             "ema_decay": 0.5, "plots": False}
        t.update(training)
        return {"run_dir": str(tmp_path / run), "seed": 3,
                "model": {"factory": "tiny_model:make", "kwargs": {"hidden": 8}},
                "data": {"train": [{"path": str(FIXTURE), "indices": "0:5"}],
                         "test": [{"path": str(FIXTURE), "indices": "6:8"}],
                         "split": {"train": 0.6, "val": 0.2, "test": 0.2}},
                "training": t}
    return make
