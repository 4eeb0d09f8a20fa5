"""`mlpolar train CONFIG` and `mlpolar evaluate MODEL DATA` as a user runs them (subprocess)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlpolar.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"),
                                                        str(ROOT / "tests" / "train")])}
    return subprocess.run([sys.executable, "-m", "mlpolar.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_then_evaluate(make_config, store_path, tmp_path, monkeypatch, capsys):
    cfg = make_config(run="cli_run", epochs=2)
    cfg["run_dir"] = "cli_run"   # relative: to the config file's folder
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(cfg))
    r = _run(["train", "train.yaml", "--stop-after", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped after epoch 1" in r.stdout
    # the rest in-process through the same entry point (one subprocess start is slow enough)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "train.yaml", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out and "epoch    2" in out
    run = tmp_path / "cli_run"
    assert {"checkpoint.pt", "best.pt", "log.csv", "split.json", "metrics.json"} <= \
        {p.name for p in run.iterdir()}

    assert main(["evaluate", str(run / "checkpoint.pt"), str(store_path), "--indices", "5:8",
                 "--out", "eval"]) == 0
    out = capsys.readouterr().out
    for key in ("energy_mae_kcal", "qm_force_mae_kcal_A", "mm_force_mae_kcal_A",
                "interaction_mae_kcal", "baseline_interaction_mae_kcal",
                "interaction_mae_ratio_to_baseline"):
        assert key in out
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())[str(store_path)]
    assert m["n_configurations"] == 3
    for name in ("energy", "qm_forces", "mm_forces", "interaction_energy"):
        png = tmp_path / "eval" / f"pxylene_water_8_parity_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"

    # --split: each store's part of the run's split, as the run's own metrics.json has it
    assert main(["evaluate", str(run / "checkpoint.pt"), "--split", str(run / "split.json"),
                 "--part", "test", "--out", "eval_split"]) == 0
    capsys.readouterr()
    split = json.loads((run / "split.json").read_text())
    n_test = len(split["stores"][0]["test"]) + sum(len(s.get("test_file", [])) for s in split["stores"])
    got = json.loads((tmp_path / "eval_split" / "metrics.json").read_text())
    assert sum(v["n_configurations"] for v in got.values()) == n_test
    run_metrics = json.loads((run / "metrics.json").read_text())
    inner = got[split["stores"][0]["path"]]   # the first entry; the held-out copy is "[2]"
    assert inner["n_configurations"] == run_metrics["test"]["n_configurations"]
    assert abs(inner["energy_mae_kcal"] - run_metrics["test"]["energy_mae_kcal"]) < 1e-9
    with pytest.raises(ValueError, match="--part 'tset'"):
        main(["evaluate", str(run / "checkpoint.pt"), "--split", str(run / "split.json"), "--part", "tset"])
    with pytest.raises(ValueError, match="--split and --indices"):
        main(["evaluate", str(run / "checkpoint.pt"), "--split", str(run / "split.json"), "--indices", "0:2"])


def test_bad_config_is_a_clear_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("run_dir: r\ndata: {train: []}\n")
    with pytest.raises(ValueError, match="data.train is empty"):
        main(["train", str(tmp_path / "bad.yaml")])
