"""benchmarks/mlmm_step.py's bookkeeping: the results file follows the settings, a CSV with another
header (an older version's) is refused instead of appended to, and the models follow the platform."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mlmm_step", ROOT / "benchmarks" / "mlmm_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_file_follows_the_settings(bench):
    assert bench.default_out("CPU", 1) == Path("benchmarks/results/mlmm_step_cpu_1thread.csv")
    assert bench.default_out("CPU", 1, 5e-4).name == "mlmm_step_cpu_1thread_ewald5e-4.csv"
    assert bench.default_out("CUDA", 16, None, 1.5e-5).name == "mlmm_step_cuda_16thread_embedding1.5e-5.csv"
    # the files docs/performance.md cites are what the documented commands now write by default
    for name in ("mlmm_step_cpu_1thread.csv", "mlmm_step_cpu_1thread_ewald5e-4.csv"):
        assert (ROOT / "benchmarks" / "results" / name).exists()


def test_stale_header_is_refused(bench, tmp_path):
    stale = tmp_path / "old.csv"
    old_fields = [f for f in bench.FIELDS if f != "embedding_tolerance"]   # the 11-column version
    stale.write_text(",".join(old_fields) + "\nalanine_dipeptide_water,2269,22,mm,-,CPU,2,46.9,14.5,0.9211,\n")
    with pytest.raises(SystemExit, match=r"old\.csv has the columns .*pass --out with a new file name"):
        bench.rows_done(stale, "CPU", 2)
    current = tmp_path / "new.csv"
    current.write_text(",".join(bench.FIELDS) + "\n"
                       "alanine_dipeptide_water,2269,22,mm,-,CPU,1,12.3,11.3,3.5,-,\n"
                       "alanine_dipeptide_water,2269,22,mechanical,fixed-charge,CPU,2,61.1,30.4,0.7,-,\n")
    assert bench.rows_done(current, "CPU", 1) == {("alanine_dipeptide_water", "mm", "-")}
    assert bench.rows_done(tmp_path / "absent.csv", "CPU", 1) == set()
    for name in ("mlmm_step_cpu_1thread.csv", "mlmm_step_cpu_1thread_ewald5e-4.csv"):   # the cited files
        assert bench.rows_done(ROOT / "benchmarks" / "results" / name, "CPU", 1)


def test_models_follow_the_platform(bench):
    model = torch.nn.Linear(2, 2).double()
    assert bench.models_for_platform({"m": model}, "CPU")["m"] is model
    assert next(model.parameters()).device.type == "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the CUDA path (models moved to the GPU) is not exercised")
    moved = bench.models_for_platform({"m": model}, "CUDA")["m"]
    assert next(moved.parameters()).device.type == "cuda"
