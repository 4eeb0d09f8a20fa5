"""MLPolarForce inside OpenMM Contexts: equality with direct model evaluation, finite differences,
checkpoint/restart, serialisation, the openmm-ml route, and the MLPolar model (vacuum)."""
import copy
from typing import Dict, Optional

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as u
import pytest
import torch

from mlpolar.openmm import LAMBDA, MLPolarForce, create_mixed_system

from mlmm_cases import assert_forces_match_fd, context, evaluate, state_values


def _grouped(mixed):
    """The MLPolarForce alone in force group 1."""
    for f in mixed.getForces():
        f.setForceGroup(1 if isinstance(f, openmm.PythonForce) else 0)
    return mixed


def _direct(case, model, periodic, **kw):
    """Energy and forces [N, 3] of the model called directly (autograd), MM charges from the System;
    keyword arguments go to the model (mm_tolerance)."""
    nb = next(f for f in case.system.getForces() if isinstance(f, openmm.NonbondedForce))
    ml = case.ml_atoms
    mm = [i for i in range(case.system.getNumParticles()) if i not in set(ml)
          and nb.getParticleParameters(i)[0]._value != 0.0]
    q = torch.tensor([nb.getParticleParameters(i)[0]._value for i in mm], dtype=torch.float64)
    x = torch.tensor(case.positions, dtype=torch.float64, requires_grad=True)
    box = None
    if periodic:
        box = torch.tensor([[v.value_in_unit(u.nanometer) for v in b] for b in [
            case.system.getDefaultPeriodicBoxVectors()[k] for k in range(3)]], dtype=torch.float64)
    species = torch.tensor([a.element.atomic_number for a in case.topology.atoms()])[ml]
    out = model(species, x[ml], torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.int64), None,
                x[mm] if mm else None, q if mm else None, box, None, None, **kw)
    (g,) = torch.autograd.grad(out["energy"], [x])
    return float(out["energy"].detach()), -g.numpy()


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
@pytest.mark.parametrize("case", ["open_water", "solvated"])
def test_context_equals_direct_evaluation(case, platform, request):
    c = request.getfixturevalue(case)
    mixed = _grouped(create_mixed_system(c.topology, c.system, c.ml_atoms, c.model))
    E, F, _ = evaluate(mixed, c.positions, platform, groups={1})
    E_ref, F_ref = _direct(c, c.model, c.system.usesPeriodicBoundaryConditions())
    assert abs(E - E_ref) <= 1e-9 * abs(E_ref) + 1e-9
    np.testing.assert_allclose(F, F_ref, rtol=0, atol=1e-8 * np.abs(F_ref).max())
    assert np.abs(F_ref[[i for i in range(len(F_ref)) if i not in set(c.ml_atoms)]]).max() > 1.0 


@pytest.mark.parametrize("case, h", [("open_water", 1e-4), ("solvated_tight", 1e-3)])
def test_forces_match_finite_differences(case, h, request):
    """Central differences of the Context energy (MLPolarForce group). Under PBC the real-space cutoff
    makes the energy jump by ~tolerance when pairs cross it, hence the tight-tolerance system."""
    c = request.getfixturevalue(case)
    mixed = _grouped(create_mixed_system(c.topology, c.system, c.ml_atoms, c.model))
    ctx = context(mixed, c.positions)
    _, F, _ = state_values(ctx, groups={1})
    # an ML atom and the MM atom nearest to it
    d = np.linalg.norm(c.positions - c.positions[c.ml_atoms[8]], axis=1)
    mm_near = [int(i) for i in np.argsort(d) if int(i) not in set(c.ml_atoms)][0]
    components = [0, 1, 2] if case == "open_water" else [1]
    assert all(abs(F[atom, k]) > 1.0 for atom in [c.ml_atoms[8], mm_near] for k in components)
    assert_forces_match_fd(ctx, c.positions, F, [c.ml_atoms[8], mm_near], components, h, 1e-3, 0.05)


@pytest.fixture
def one_thread():
    """Bitwise-reproducible torch reductions (the threaded PME spread sums in varying order)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_checkpoint_restart_and_serialisation(solvated, tmp_path, one_thread):
    c = solvated
    mixed = create_mixed_system(c.topology, c.system, c.ml_atoms, c.model)
    # the force pickles: the System survives XmlSerializer (and copy.deepcopy, which uses it)
    clone = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(mixed))

    def simulation(system):
        sim = app.Simulation(c.topology, system, openmm.VerletIntegrator(0.5 * u.femtosecond),
                             openmm.Platform.getPlatformByName("Reference"))
        sim.context.setPositions(c.positions)
        sim.context.setVelocitiesToTemperature(300 * u.kelvin, 7)
        return sim

    sim = simulation(mixed)
    sim.step(1)
    sim.saveState(str(tmp_path / "state.xml"))
    sim.saveCheckpoint(str(tmp_path / "state.chk"))
    sim.step(2)
    s = sim.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
    ref_x, ref_v = s.getPositions(asNumpy=True)._value, s.getVelocities(asNumpy=True)._value
    for system, load in ((clone, "loadState"), (mixed, "loadCheckpoint")):
        sim2 = simulation(system)
        getattr(sim2, load)(str(tmp_path / ("state.xml" if load == "loadState" else "state.chk")))
        sim2.step(2)
        s2 = sim2.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
        np.testing.assert_array_equal(s2.getPositions(asNumpy=True)._value, ref_x)
        np.testing.assert_array_equal(s2.getVelocities(asNumpy=True)._value, ref_v)
        assert s2.getPotentialEnergy() == s.getPotentialEnergy()


@pytest.mark.parametrize("interpolate", [False, True])
def test_openmmml_route_gives_the_same_system(solvated, interpolate):
    from openmmml import MLPotential
    c = solvated
    ours = create_mixed_system(c.topology, c.system, c.ml_atoms, c.model, interpolate=interpolate)
    theirs = MLPotential("mlpolar", model=c.model).createMixedSystem(
        c.topology, c.system, c.ml_atoms, embedding="mlpolar-electrostatic", interpolate=interpolate)
    assert [type(f).__name__ for f in ours.getForces()] == [type(f).__name__ for f in theirs.getForces()]
    assert ours.getNumConstraints() == theirs.getNumConstraints()
    for a, b in zip(ours.getForces(), theirs.getForces()):
        if not isinstance(a, (openmm.PythonForce, openmm.CustomCVForce)):
            assert openmm.XmlSerializer.serialize(a) == openmm.XmlSerializer.serialize(b)
    params = {LAMBDA: 0.7} if interpolate else None
    Ea, Fa, da = evaluate(ours, c.positions, parameters=params)
    Eb, Fb, db = evaluate(theirs, c.positions, parameters=params)
    # identical Systems; only the order of threaded reductions in torch may differ between Contexts
    assert abs(Ea - Eb) <= 1e-10 * abs(Ea)
    assert all(abs(da[k] - db[k]) <= 1e-10 * abs(Ea) for k in da) and set(da) == set(db)
    np.testing.assert_allclose(Fa, Fb, rtol=0, atol=1e-9 * np.abs(Fa).max())
    with pytest.raises(ValueError, match="exactly one of modelPath"):
        MLPotential("mlpolar")
    with pytest.raises(ValueError, match="neither a shipped model"):
        MLPotential("mlpolar", modelPath="/nonexistent/model.pt")


# ---- the MLPolar model (issue 4); its MM path waits for issue 3's mm_features ----------------

def _vacuum_direct(model, c):
    species = torch.tensor([a.element.atomic_number for a in c.topology.atoms()])
    x = torch.tensor(c.positions, requires_grad=True)
    out = model(species, x, torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.int64),
                None, None, None, None, None, None)
    (g,) = torch.autograd.grad(out["energy"], [x])
    return float(out["energy"].detach()), -g.numpy()


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_mlpolar_model_in_vacuum_through_openmmml(vacuum, mlpolar_model, platform):
    """Pure-ML System through openmm-ml: Context == direct call, forces == -grad."""
    from openmmml import MLPotential
    c = vacuum
    system = MLPotential("mlpolar", model=mlpolar_model).createSystem(c.topology)
    E, F, _ = evaluate(system, c.positions, platform)
    E_ref, F_ref = _vacuum_direct(mlpolar_model, c)
    assert abs(E - E_ref) < 1e-9 * abs(E_ref) + 1e-9
    np.testing.assert_allclose(F, F_ref, atol=1e-8 * np.abs(F_ref).max())
    assert np.abs(F).max() > 0


def test_mlpolar_model_from_file(vacuum, mlpolar_model, tmp_path):
    """MLPotential('mlpolar', modelPath=...) and mlpolar.load_model on a saved model."""
    import mlpolar
    from mlpolar.model import save_model
    from openmmml import MLPotential
    path = tmp_path / "tiny.pt"
    try:
        save_model(mlpolar_model, path)
    except RuntimeError as e:   # TorchScript export of the model (issue 4) not complete in this merge
        pytest.skip(f"mlpolar.model.save_model cannot export the model here: {str(e).splitlines()[1][:120]}")
    c = vacuum
    E, F, _ = evaluate(MLPotential("mlpolar", modelPath=str(path)).createSystem(c.topology), c.positions)
    E_ref, F_ref = _vacuum_direct(mlpolar.load_model(str(path)), c)
    assert abs(E - E_ref) < 1e-9 * abs(E_ref) + 1e-9
    np.testing.assert_allclose(F, F_ref, atol=1e-8 * np.abs(F_ref).max())


def test_mlpolar_model_mechanical_embedding(solvated, mlpolar_model):
    """openmm-ml's mechanical embedding with the MLPolar model in water (model in vacuum + PBC)."""
    from openmmml import MLPotential
    c = solvated
    pot = MLPotential("mlpolar", model=mlpolar_model)
    mixed = _grouped(pot.createMixedSystem(c.topology, c.system, c.ml_atoms))
    E, F, _ = evaluate(mixed, c.positions, groups={1})
    assert np.isfinite(E) and np.all(F[[i for i in range(len(F)) if i not in set(c.ml_atoms)]] == 0.0)
    assert np.abs(F[c.ml_atoms]).max() > 0


def test_fixed_charge_model_mechanical_embedding_reproduces_mm(solvated_tight):
    """openmm-ml's mechanical embedding with the fixed-charge model (run without MM charges, ML-ML
    images through its Ewald) also gives back the MM energy: the vacuum path has no double counting."""
    from openmmml import MLPotential
    c = solvated_tight
    mech = MLPotential("mlpolar", model=c.model).createMixedSystem(c.topology, c.system, c.ml_atoms)
    E0, F0, _ = evaluate(c.system, c.positions)
    E1, F1, _ = evaluate(mech, c.positions)
    assert abs(E1 - E0) < 1e-3
    assert np.abs(F1 - F0).max() < 1e-2


class _PointChargeModel(torch.nn.Module):
    """A TorchScript-able model of the interface: fixed ML point charges, plain Coulomb with the MM
    charges and among themselves (open boundaries)."""

    def __init__(self, charges):
        super().__init__()
        self.register_buffer("q", torch.as_tensor(charges, dtype=torch.float64))

    def forward(self, species: torch.Tensor, positions: torch.Tensor, total_charge: torch.Tensor,
                multiplicity: torch.Tensor, fragments: Optional[torch.Tensor] = None,
                mm_positions: Optional[torch.Tensor] = None, mm_charges: Optional[torch.Tensor] = None,
                box: Optional[torch.Tensor] = None, external_field: Optional[torch.Tensor] = None,
                head: Optional[str] = None) -> Dict[str, torch.Tensor]:
        n = positions.shape[0]
        iu = torch.triu_indices(n, n, 1)
        r = torch.linalg.vector_norm(positions[iu[0]] - positions[iu[1]], dim=-1)
        e = 138.93545764438198 * (self.q[iu[0]] * self.q[iu[1]] / r).sum()
        if mm_positions is not None and mm_charges is not None:
            d = torch.cdist(positions, mm_positions)
            e = e + 138.93545764438198 * (self.q[:, None] * mm_charges[None, :] / d).sum()
        return {"energy": e}


@pytest.mark.parametrize("case", ["vacuum", "open_water"])
def test_torchforce_export_matches_python_backend(case, request):
    """The TorchScript module of backend='torch' (what openmmtorch.TorchForce would run) gives the
    PythonForce evaluator's energy and, through autograd, its forces; openmm-torch itself is not
    importable here (see test_torch_backend_detection)."""
    from mlpolar.openmm.force import prepare_evaluator, torchforce_module
    c = request.getfixturevalue(case)
    model = _PointChargeModel(c.model.ml_charges)
    module, _ = torchforce_module(model, c.ml_atoms, c.system, topology=c.topology)
    x = torch.tensor(c.positions, requires_grad=True)
    E_script = module(x, None)
    (g,) = torch.autograd.grad(E_script, [x])
    ev = prepare_evaluator(model, c.ml_atoms, c.system, topology=c.topology)
    E_python, grads = ev.evaluate(torch.tensor(c.positions), None)
    assert abs(float(E_script) - float(E_python)) < 1e-10 * abs(float(E_python)) + 1e-10
    np.testing.assert_allclose(g[c.ml_atoms].numpy(), grads[0].numpy(), atol=1e-9)
    if case == "open_water":
        np.testing.assert_allclose(g[ev.mm_atoms].numpy(), grads[1].numpy(), atol=1e-9)


def test_torchforce_export_of_mlpolar(vacuum, mlpolar_model):
    from mlpolar.openmm.force import prepare_evaluator, torchforce_module
    c = vacuum
    try:
        scripted = torch.jit.script(mlpolar_model)
    except RuntimeError as e:   # the model's TorchScript export (issue 4) broken in this merge
        pytest.skip(f"MLPolar does not script here: {str(e).strip().splitlines()[0][:120]}")
    module, _ = torchforce_module(scripted, c.ml_atoms, c.system, topology=c.topology)
    x = torch.tensor(c.positions)
    E_python = float(prepare_evaluator(mlpolar_model, c.ml_atoms, c.system, topology=c.topology).evaluate(x, None)[0])
    assert abs(float(module(x, None)) - E_python) < 1e-9 * abs(E_python) + 1e-9


def test_mlpolar_model_electrostatic_embedding(solvated, mlpolar_model):
    """MLPolar with electrostatic embedding in water under PBC: Context (Reference) == direct model
    call with the ML-MM long range at the NonbondedForce's tolerance (the default), and central
    differences of the Context energy for an ML and an MM atom."""
    c = solvated
    mixed = _grouped(create_mixed_system(c.topology, c.system, c.ml_atoms, mlpolar_model))
    ctx = context(mixed, c.positions)
    E, F, _ = state_values(ctx, groups={1})
    E_ref, F_ref = _direct(c, mlpolar_model, periodic=True, mm_tolerance=5e-4)
    assert abs(E - E_ref) <= 1e-9 * abs(E_ref) + 1e-9
    np.testing.assert_allclose(F, F_ref, rtol=0, atol=1e-8 * np.abs(F_ref).max())
    mm = [i for i in range(len(F)) if i not in set(c.ml_atoms)]
    assert np.abs(F[mm]).max() > 0.1            # the MM atoms feel the polarised ML region
    d = np.linalg.norm(c.positions - c.positions[c.ml_atoms[8]], axis=1)
    mm_near = [int(i) for i in np.argsort(d) if int(i) not in set(c.ml_atoms)][0]
    # small h: under PBC the Ewald real-space cutoffs make the energy jump by ~tolerance as pairs
    # cross them, so larger steps see more jumps (at h = 1e-3 the error was 0.02-0.1 kJ/mol/nm)
    h = 1e-4
    for atom in (c.ml_atoms[8], mm_near):
        x = c.positions.copy()
        x[atom, 1] += h
        ctx.setPositions(x)
        Ep = state_values(ctx, groups={1})[0]
        x[atom, 1] -= 2 * h
        ctx.setPositions(x)
        Em = state_values(ctx, groups={1})[0]
        fd = -(Ep - Em) / (2 * h)
        assert abs(fd - F[atom, 1]) < 2e-3 * abs(F[atom, 1]) + 0.05, (atom, fd, F[atom, 1])


@pytest.fixture(scope="module")
def droplet():
    """Alanine dipeptide with the waters whose oxygen lies within 0.5 nm of it (openmmtools' solvated
    coordinates), Amber14/TIP3P without cutoff and without a box: a small open-boundary ML/MM system."""
    from openmmtools.testsystems import AlanineDipeptideExplicit
    from mlmm_cases import Case
    t = AlanineDipeptideExplicit(constraints=None)
    x = np.asarray(t.positions.value_in_unit(u.nanometer))
    peptide = [a.index for a in t.topology.atoms() if a.residue.name != "HOH"]
    far = []
    for r in t.topology.residues():
        if r.name == "HOH":
            o = next(a.index for a in r.atoms() if a.element.symbol == "O")
            if np.linalg.norm(x[peptide] - x[o], axis=1).min() > 0.5:
                far.append(r)
    modeller = app.Modeller(t.topology, t.positions)
    modeller.delete(far)
    modeller.topology.setPeriodicBoxVectors(None)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)

    class T:
        pass
    d = T()
    d.topology, d.system, d.positions = modeller.topology, system, modeller.positions
    return Case(d)


def test_mlpolar_model_open_boundaries_cpu_platform(droplet, mlpolar_model):
    """MLPolar with electrostatic embedding without a box (MM charges within the model's mm_cutoff,
    switched) on the CPU platform: the Context's energy and forces equal a direct model call, the MM
    atoms feel the ML region, and central differences of the Context energy match the forces on an
    ML atom and on its nearest MM atom."""
    c = droplet
    assert not c.system.usesPeriodicBoundaryConditions() and 30 < c.system.getNumParticles() - len(c.ml_atoms) < 300
    mixed = _grouped(create_mixed_system(c.topology, c.system, c.ml_atoms, mlpolar_model))
    ctx = context(mixed, c.positions, "CPU")
    E, F, _ = state_values(ctx, groups={1})
    E_ref, F_ref = _direct(c, mlpolar_model, periodic=False)
    assert abs(E - E_ref) <= 1e-9 * abs(E_ref) + 1e-9
    np.testing.assert_allclose(F, F_ref, rtol=0, atol=1e-8 * np.abs(F_ref).max())
    mm = [i for i in range(len(F)) if i not in set(c.ml_atoms)]
    assert np.abs(F[mm]).max() > 0.1
    # the embedding changes the energy (the MM charges reach the model)
    vacuum = MLPolarForce(mlpolar_model, c.ml_atoms, c.system, topology=c.topology, embed=False)
    assert abs(vacuum.evaluator.evaluate(torch.tensor(c.positions), None)[0].item() - E) > 1e-3
    d = np.linalg.norm(c.positions - c.positions[c.ml_atoms[8]], axis=1)
    mm_near = [int(i) for i in np.argsort(d) if int(i) not in set(c.ml_atoms)][0]
    h = 1e-4
    assert_forces_match_fd(ctx, c.positions, F, (c.ml_atoms[8], mm_near), range(3), h, 1e-4, 1e-3)
