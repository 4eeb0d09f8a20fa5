"""The MD runner with real OpenMM: a short end-to-end run on CPU, and restart from a checkpoint
after a crash continuing bit for bit on the Reference platform (positions, velocities, every
trajectory frame, every CSV energy)."""
import json

import mdtraj
import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pandas
import pytest

from mlpolar.data.systems import openmmtools_data_dir
from mlpolar.workflows.inputs import load_input
from mlpolar.workflows.md import MDConfig, final_state, run_md


class Crash(Exception):
    pass


class CrashAt:
    """A reporter that kills the run at a given step (after the other reporters of that step)."""

    def __init__(self, step):
        self.step = step

    def describeNextReport(self, sim):
        steps = self.step - sim.currentStep if sim.currentStep < self.step else 10**9
        return dict(steps=steps, periodic=None, include=[])

    def report(self, sim, state):
        raise Crash(f"simulated crash at step {sim.currentStep}")


@pytest.fixture(scope="module")
def ligand():
    d = openmmtools_data_dir()
    return load_input(prmtop=d / "ligand.prmtop", inpcrd=d / "ligand.crd")


@pytest.fixture(scope="module")
def water():
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    mod = app.Modeller(app.Topology(), [])
    mod.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(1.5, 1.5, 1.5) * u.nanometer)
    system = ff.createSystem(mod.topology, nonbondedMethod=app.PME,
                             nonbondedCutoff=0.7 * u.nanometer, constraints=app.HBonds)
    box = np.diag([1.5, 1.5, 1.5])
    return mod.topology, system, np.asarray(mod.positions.value_in_unit(u.nanometer)), box


def _frames(path, topology):
    return mdtraj.load(str(path), top=mdtraj.Topology.from_openmm(topology))


def _csv(path):
    return pandas.read_csv(path).drop(columns=["Speed (ns/day)"])


def test_end_to_end_cpu_run(water, tmp_path):
    top, system, pos, box = water
    cfg = MDConfig(steps=300, equilibration_steps=100, report_interval=50,
                   checkpoint_interval=100, platform="CPU", minimise_max_iterations=100,
                   platform_properties={"Threads": "1"}, progress=False, seed=4)
    r = run_md(top, system, pos, tmp_path, cfg, box_vectors=box)
    assert r.finished and r.step == 400 and r.ns_per_day > 0 and r.resumed_from is None
    df = pandas.read_csv(tmp_path / "state.csv")
    assert list(df['#"Step"']) == list(range(50, 401, 50))
    # the thermostat holds ~300 K once equilibrated (from a minimised start the first reports sit
    # near 200 K: half the drawn kinetic energy flows into the potential)
    assert df[df['#"Step"'] > 100]["Temperature (K)"].between(200, 400).all()
    assert df["Potential Energy (kJ/mole)"].max() < 0
    t = _frames(tmp_path / "trajectory.dcd", top)
    assert t.n_frames == 6  # production only: steps 150..400
    np.testing.assert_allclose(t.unitcell_lengths, 1.5, atol=1e-5)
    for f in ("minimised.pdb", "final.pdb", "checkpoint.chk", "md.json"):
        assert (tmp_path / f).stat().st_size > 0
    meta = json.loads((tmp_path / "md.json").read_text())
    assert meta["finished"] and meta["step"] == 400
    # a finished run called again does nothing more
    r2 = run_md(top, system, pos, tmp_path, cfg, box_vectors=box)
    assert r2.step == 400 and r2.resumed_from == 400
    assert _frames(tmp_path / "trajectory.dcd", top).n_frames == 6


@pytest.mark.parametrize("fmt", ["dcd", "xtc"])
def test_restart_after_crash_is_bit_for_bit_on_reference(water, tmp_path, fmt):
    top, system, pos, box = water
    cfg = MDConfig(steps=60, equilibration_steps=20, report_interval=10,
                   checkpoint_interval=20, platform="Reference", minimise_max_iterations=20,
                   trajectory_format=fmt, progress=False, seed=7)
    a, b = tmp_path / "straight", tmp_path / "crashed"
    run_md(top, system, pos, a, cfg, box_vectors=box)
    with pytest.raises(Crash):  # dies at step 50: frames/rows of steps 50 (> checkpoint 40)
        run_md(top, system, pos, b, cfg, box_vectors=box, extra_reporters=[CrashAt(50)])
    assert json.loads((b / "md.json").read_text())["step"] == 40
    assert _frames(b / f"trajectory.{fmt}", top).n_frames == 3  # 30, 40 and the orphan 50
    r = run_md(top, system, pos, b, cfg, box_vectors=box)
    assert r.resumed_from == 40 and r.finished and r.step == 80
    sa, sb = final_state(a, top, system), final_state(b, top, system)
    for get in ("getPositions", "getVelocities"):
        np.testing.assert_array_equal(getattr(sa, get)(asNumpy=True)._value,
                                      getattr(sb, get)(asNumpy=True)._value)
    ta, tb = _frames(a / f"trajectory.{fmt}", top), _frames(b / f"trajectory.{fmt}", top)
    assert ta.n_frames == tb.n_frames == 6
    np.testing.assert_array_equal(ta.xyz, tb.xyz)
    np.testing.assert_array_equal(ta.time, tb.time)
    pandas.testing.assert_frame_equal(_csv(a / "state.csv"), _csv(b / "state.csv"))


def test_stop_and_extend(ligand, tmp_path):
    cfg = MDConfig(steps=40, equilibration_steps=20, report_interval=10, checkpoint_interval=20,
                   platform="Reference", progress=False)
    r = run_md(ligand.topology, ligand.system, ligand.positions, tmp_path, cfg,
               stop_after_steps=30)
    assert not r.finished and r.step == 30
    r = run_md(ligand.topology, ligand.system, ligand.positions, tmp_path, cfg)
    assert r.finished and r.step == 60 and r.resumed_from == 30
    longer = MDConfig(**{**cfg.__dict__, "steps": 80})
    r = run_md(ligand.topology, ligand.system, ligand.positions, tmp_path, longer)
    assert r.finished and r.step == 100
    assert len(pandas.read_csv(tmp_path / "state.csv")) == 10
    other = MDConfig(**{**cfg.__dict__, "temperature_K": 310.0})
    with pytest.raises(ValueError, match="temperature_K"):
        run_md(ligand.topology, ligand.system, ligand.positions, tmp_path, other)


def test_context_parameters_are_set(tmp_path):
    # a System with a global parameter: the run must see the value given
    system = openmm.System()
    system.addParticle(12.0)
    f = openmm.CustomExternalForce("0.5*kspring*(x^2+y^2+z^2)")
    f.addGlobalParameter("kspring", 0.0)
    f.addParticle(0, [])
    system.addForce(f)
    top = app.Topology()
    res = top.addResidue("X", top.addChain())
    top.addAtom("C", app.element.carbon, res)
    cfg = MDConfig(steps=20, equilibration_steps=0, report_interval=10, checkpoint_interval=10,
                   platform="Reference", progress=False, minimise=False)
    run_md(top, system, np.array([[0.1, 0.0, 0.0]]), tmp_path, cfg,
           context_parameters={"kspring": 1000.0})
    df = pandas.read_csv(tmp_path / "state.csv")
    assert (df["Potential Energy (kJ/mole)"] > 0).all()


def test_config_errors(ligand, tmp_path):
    for bad, match in ((dict(checkpoint_interval=15, report_interval=10), "multiple"),
                       (dict(timestep_ps=0.01), "timestep_ps"),
                       (dict(trajectory_format="pdb"), "trajectory_format"),
                       (dict(steps=-1), "steps"),
                       (dict(platform="NoSuchPlatform"), "NoSuchPlatform")):
        with pytest.raises(ValueError, match=match):
            run_md(ligand.topology, ligand.system, ligand.positions, tmp_path / "x",
                   MDConfig(**bad))
    with pytest.raises(ValueError, match="positions"):
        run_md(ligand.topology, ligand.system, ligand.positions[:3], tmp_path / "y", MDConfig())
