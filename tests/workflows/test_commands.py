"""`mlpolar md` and `mlpolar fe` through mlpolar.cli.main, and the ML/MM wiring of the engine:
the fixed-charge model (the MM charges behind the model interface) in a λ-interpolated mixed
System reproduces MM at every λ, so the MM → ML/MM free energy must be zero."""
import json

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pandas
import pytest

from harmonic import exact_dg_kT, harmonic_system, start_positions
from mlpolar.cli import main
from mlpolar.data.systems import openmmtools_data_dir
from mlpolar.workflows.fe import FEConfig, Leg, run_fe
from mlpolar.workflows.inputs import load_input, select_ml_atoms
from mlpolar.workflows.ml_region import make_ml_system

LIG = openmmtools_data_dir()
AMBER = ["--prmtop", str(LIG / "ligand.prmtop"), "--inpcrd", str(LIG / "ligand.crd")]


def test_md_without_arguments_needs_the_shipped_model(capsys, monkeypatch, tmp_path):
    # an installation without shipped models (an empty shipped/ folder)
    import mlpolar.models
    monkeypatch.setattr(mlpolar.models, "SHIPPED_DIR", tmp_path)
    assert main(["md"]) == 2
    err = capsys.readouterr().err
    assert "no shipped mlpolar model" in err and "--model" in err
    assert main(["fe", "--no-progress"]) == 2  # fails before preparing the example systems
    assert "no shipped mlpolar model" in capsys.readouterr().err


def test_default_names_the_only_shipped_model(monkeypatch, tmp_path):
    import shutil
    import mlpolar.models
    from mlpolar.workflows.ml_region import resolve_model
    shipped = mlpolar.models.available()
    if not shipped:
        pytest.skip("no model shipped")
    shutil.copy(mlpolar.models.SHIPPED_DIR / f"{shipped[0]}.pt", tmp_path / "only.pt")
    monkeypatch.setattr(mlpolar.models, "SHIPPED_DIR", tmp_path)
    assert resolve_model("default").heads == resolve_model("only").heads
    shutil.copy(tmp_path / "only.pt", tmp_path / "other.pt")
    with pytest.raises(ValueError, match="none named 'default'"):
        resolve_model("default")


def test_md_command_ml_mm_at_lambda(tmp_path, capsys):
    out = tmp_path / "md"
    rc = main(["md", *AMBER, "--ml-resname", "TMP", "--model", "fixed-charge",
               "--lambda", "0.5", "--steps", "40", "--equilibration-steps", "20",
               "--report-interval", "10", "--checkpoint-interval", "20",
               "--platform", "Reference", "--format", "xtc", "--output", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "md.json").read_text())
    assert meta["finished"] and meta["settings"]["context_parameters"] == {
        "lambda_interpolate": 0.5}
    assert len(pandas.read_csv(out / "state.csv")) == 6
    assert (out / "trajectory.xtc").stat().st_size > 0
    assert "finished at step 60" in capsys.readouterr().out


def test_command_errors_are_clear(capsys):
    assert main(["md", *AMBER, "--mm-only", "--model", "fixed-charge"]) == 2
    assert "--mm-only" in capsys.readouterr().err
    assert main(["md", *AMBER, "--model", "fixed-charge"]) == 2
    assert "ML region" in capsys.readouterr().err
    assert main(["md", *AMBER, "--model", "no-such-model", "--ml-resname", "TMP"]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert main(["fe", "--legs", "gas"]) == 2
    assert "--legs" in capsys.readouterr().err
    assert main(["fe", *AMBER, "--ml-resname", "TMP", "--lambdas", "1"]) == 2
    assert "lambdas" in capsys.readouterr().err


def test_fe_command_on_a_serialised_system(tmp_path, capsys):
    system = harmonic_system(4, 1000.0, 1500.0)
    xml, pdb = tmp_path / "h.xml", tmp_path / "h.pdb"
    xml.write_text(openmm.XmlSerializer.serialize(system))
    top = app.Topology()
    res = top.addResidue("OSC", top.addChain())
    for i in range(4):
        top.addAtom(f"C{i}", app.element.carbon, res)
    with open(pdb, "w") as fh:
        app.PDBFile.writeFile(top, start_positions(4) * 10 * u.angstrom, fh)
    out = tmp_path / "fe"
    rc = main(["fe", "--system-xml", str(xml), "--pdb", str(pdb), "--lambdas", "3",
               "--samples", "150", "--steps-per-sample", "50", "--equilibration-steps", "100",
               "--forward", "6", "--reverse", "6", "--switching-steps", "100",
               "--switch-equilibration-steps", "100", "--friction", "10", "--no-minimise",
               "--platform", "Reference", "--workers", "1", "--output", str(out),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    kT = res["kT_kj_per_mol"]
    m = res["legs"]["system"]["mbar"]
    assert abs(m["dg"] - exact_dg_kT(4, 1000.0, 1500.0) * kT) < 4 * m["ddg"]
    assert "MBAR" in capsys.readouterr().out


def test_fixed_charge_ml_mm_free_energy_is_zero(client, tmp_path):
    """Engine + create_mixed_system + MLPolarForce on Dask workers (the PythonForce travels
    inside the serialised System): E(λ) is the MM energy at every λ, so ΔG = 0."""
    inp = load_input(prmtop=LIG / "ligand.prmtop", inpcrd=LIG / "ligand.crd")
    ml = select_ml_atoms(inp.topology, resname="TMP")
    mixed = make_ml_system(inp.topology, inp.system, ml, "fixed-charge", interpolate=True)
    cfg = FEConfig(lambdas=[0.0, 1.0], n_samples=4, steps_per_sample=5, equilibration_steps=5,
                   n_forward=2, n_reverse=2, switching_steps=4, switch_equilibration_steps=5,
                   platform="Reference", progress=False)
    res = run_fe({"ligand": Leg(mixed, inp.positions)}, tmp_path, cfg, client=client,
                 log=lambda *a: None)
    r = res["legs"]["ligand"]
    assert res["tasks"]["failed"] == {} and res["tasks"]["new"] == 6
    assert abs(r["mbar"]["dg"]) < 1e-4 and abs(r["ti"]["dg"]) < 1e-4
    assert abs(r["switching"]["bar"]) < 1e-4
    assert r["switching"]["max_work_difference_energy_vs_dudl"] < 1e-6


def test_ml_constraints_are_kept_unless_asked():
    """The ligand's H-bond constraints stay in the ML/MM System by default (the shipped models
    never saw a stretched X-H bond) and go with ml_constraints="remove"."""
    inp = load_input(prmtop=LIG / "ligand.prmtop", inpcrd=LIG / "ligand.crd")
    ml = set(select_ml_atoms(inp.topology, resname="TMP"))

    def ml_constraints(system):
        return sorted((i, j) for i, j, _ in (system.getConstraintParameters(k)
                                             for k in range(system.getNumConstraints()))
                      if i in ml and j in ml)
    mm = ml_constraints(inp.system)
    assert len(mm) == 10  # p-xylene's C-H bonds
    # built with flexibleConstraints: the constrained bonds keep their bond terms, which hold
    # them at lambda = 0 once the constraints are gone
    import openmm
    bonded = {tuple(sorted(f.getBondParameters(k)[:2])) for f in inp.system.getForces()
              if isinstance(f, openmm.HarmonicBondForce) for k in range(f.getNumBonds())}
    assert {tuple(sorted(p)) for p in mm} <= bonded
    assert ml_constraints(make_ml_system(inp.topology, inp.system, sorted(ml), "fixed-charge")) == mm
    assert ml_constraints(make_ml_system(inp.topology, inp.system, sorted(ml), "fixed-charge",
                                         ml_constraints="remove")) == []
    with pytest.raises(ValueError, match="ml_constraints='rigid'"):
        make_ml_system(inp.topology, inp.system, sorted(ml), "fixed-charge", ml_constraints="rigid")


def test_ml_mm_restart_is_bit_for_bit_on_reference(tmp_path):
    """Checkpoint/resume with the model's force in the System (fixed-charge model, λ = 1)."""
    from mlpolar.workflows.md import MDConfig, final_state, run_md
    inp = load_input(prmtop=LIG / "ligand.prmtop", inpcrd=LIG / "ligand.crd")
    ml = select_ml_atoms(inp.topology, resname="TMP")
    mixed = make_ml_system(inp.topology, inp.system, ml, "fixed-charge", interpolate=False)
    cfg = MDConfig(steps=30, equilibration_steps=10, report_interval=10, checkpoint_interval=10,
                   platform="Reference", minimise=False, progress=False, seed=3)
    run_md(inp.topology, mixed, inp.positions, tmp_path / "a", cfg)
    r = run_md(inp.topology, mixed, inp.positions, tmp_path / "b", cfg, stop_after_steps=20)
    assert r.step == 20 and not r.finished
    run_md(inp.topology, mixed, inp.positions, tmp_path / "b", cfg)
    sa, sb = (final_state(tmp_path / d, inp.topology, mixed) for d in ("a", "b"))
    for get in ("getPositions", "getVelocities"):
        np.testing.assert_array_equal(getattr(sa, get)(asNumpy=True)._value,
                                      getattr(sb, get)(asNumpy=True)._value)
