"""create_mixed_system: surgery, no double counting, lambda interpolation, bad input."""
import copy

import numpy as np
import openmm
import openmm.unit as u
import pytest
import torch

from mlpolar.models.fixed_charge import FixedChargeModel
from mlpolar.openmm import LAMBDA, MLPolarForce, create_mixed_system

from mlmm_cases import context, evaluate, state_values


def _nb(system):
    return next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))


def test_surgery(solvated):
    c = solvated
    ml = set(c.ml_atoms)
    mixed = create_mixed_system(c.topology, c.system, c.ml_atoms, c.model)
    for f in mixed.getForces():
        if isinstance(f, openmm.HarmonicBondForce):
            assert all(not {*f.getBondParameters(k)[:2]} <= ml for k in range(f.getNumBonds()))
        if isinstance(f, openmm.HarmonicAngleForce):
            assert all(not {*f.getAngleParameters(k)[:3]} <= ml for k in range(f.getNumAngles()))
        if isinstance(f, openmm.PeriodicTorsionForce):
            assert f.getNumTorsions() == 0
    assert mixed.getNumConstraints() == c.system.getNumConstraints() > 0   # rigid water kept
    nb, nb0 = _nb(mixed), _nb(c.system)
    for i in range(mixed.getNumParticles()):
        q, s, e = nb.getParticleParameters(i)
        q0, s0, e0 = nb0.getParticleParameters(i)
        assert (s, e) == (s0, e0)                       # LJ kept for every atom
        assert q.value_in_unit(u.elementary_charge) == (0.0 if i in ml else q0.value_in_unit(u.elementary_charge))
    pairs = {}
    for k in range(nb.getNumExceptions()):
        i, j, qq, s, e = nb.getExceptionParameters(k)
        pairs[min(i, j), max(i, j)] = (qq._value, e._value)
    n_ml = len(c.ml_atoms)
    ml_pairs = {p: v for p, v in pairs.items() if p[0] in ml and p[1] in ml}
    assert len(ml_pairs) == n_ml * (n_ml - 1) // 2 and all(v == (0.0, 0.0) for v in ml_pairs.values())
    assert [type(f).__name__ for f in mixed.getForces()][-1] == "PythonForce"


def test_constraints_removed_only_inside_ml():
    from openmmtools.testsystems import AlanineDipeptideExplicit
    t = AlanineDipeptideExplicit()   # HBonds + rigid water
    ml = [a.index for a in t.topology.atoms() if a.residue.name != "HOH"]
    model = FixedChargeModel.from_system(t.system, ml)
    mixed = create_mixed_system(t.topology, t.system, ml, model)
    mls = set(ml)
    kept = [mixed.getConstraintParameters(k)[:2] for k in range(mixed.getNumConstraints())]
    assert all(i not in mls and j not in mls for i, j in kept)
    n_ml = sum(1 for k in range(t.system.getNumConstraints()) if t.system.getConstraintParameters(k)[0] in mls)
    assert n_ml > 0 and len(kept) == t.system.getNumConstraints() - n_ml


def test_interpolation_without_constraints_needs_bond_terms():
    """An HBonds System has no bond terms for its X-H bonds: removing the ML region's constraints
    would leave its hydrogens held by nothing at lambda = 0. Refused with the fix named; with
    flexibleConstraints=True the MM end keeps the bonds and is the MM System exactly."""
    import openmm.app as app
    from openmmtools.testsystems import AlanineDipeptideVacuum
    t = AlanineDipeptideVacuum(constraints=app.HBonds)
    ml = list(range(t.system.getNumParticles()))
    model = FixedChargeModel.from_system(t.system, ml)
    with pytest.raises(ValueError, match="flexibleConstraints=True"):
        create_mixed_system(t.topology, t.system, ml, model, interpolate=True)
    create_mixed_system(t.topology, t.system, ml, model, interpolate=True, remove_constraints=False)
    create_mixed_system(t.topology, t.system, ml, model)   # no MM end: the model holds the bonds
    ff = app.ForceField("amber14-all.xml")
    flex = ff.createSystem(t.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds,
                           flexibleConstraints=True)
    mixed = create_mixed_system(t.topology, flex, ml, FixedChargeModel.from_system(flex, ml),
                                interpolate=True)
    assert mixed.getNumConstraints() == 0
    pos = t.positions.value_in_unit(u.nanometer)
    stretched = np.array(pos)
    stretched[1] += [0.01, 0.0, 0.0]          # the ACE methyl carbon: its C-H bonds stretch
    unconstrained = copy.deepcopy(flex)
    for k in reversed(range(unconstrained.getNumConstraints())):
        unconstrained.removeConstraint(k)
    ctx = context(mixed, stretched)
    E0 = state_values(ctx, {LAMBDA: 0.0})[0]
    assert E0 == pytest.approx(evaluate(unconstrained, stretched)[0], rel=1e-10)
    assert E0 - state_values(context(mixed, pos), {LAMBDA: 0.0})[0] > 1.0   # the bond is felt


@pytest.mark.parametrize("case", ["open_water", "solvated_tight"])
def test_fixed_charge_model_reproduces_mm(case, request):
    """Nothing counted twice or dropped: the MM force field's own ML-region terms, moved into the
    model (charges through mlpolar's Ewald/PME), give back the MM energy and forces."""
    c = request.getfixturevalue(case)
    E0, F0, _ = evaluate(c.system, c.positions)
    E1, F1, _ = evaluate(create_mixed_system(c.topology, c.system, c.ml_atoms, c.model), c.positions)
    if case == "open_water":
        # exact: mlpolar.units.ONE_4PI_EPS0 is OpenMM 8.6's 138.93545764438198
        assert abs(E1 - E0) < 1e-4
        np.testing.assert_allclose(F1, F0, atol=1e-4)
    else:   # OpenMM's and mlpolar's PME at ewaldErrorTolerance 1e-6
        assert abs(E1 - E0) < 1e-3
        assert np.abs(F1 - F0).max() < 1e-2
    # a wrong model (charges scaled) is seen: the comparison can fail
    bad = copy.deepcopy(c.model)
    bad.ml_charges.mul_(0.9)
    E2, _, _ = evaluate(create_mixed_system(c.topology, c.system, c.ml_atoms, bad), c.positions)
    assert abs(E2 - E0) > 1.0


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_lambda_interpolation(solvated, platform):
    c = solvated
    model = copy.deepcopy(c.model)
    model.ml_charges.mul_(0.8)       # an ML/MM description that differs from MM
    mixed = create_mixed_system(c.topology, c.system, c.ml_atoms, model)
    mixed_l = create_mixed_system(c.topology, c.system, c.ml_atoms, model, interpolate=True)
    E_mm, F_mm, _ = evaluate(c.system, c.positions, platform)
    E_ml, F_ml, _ = evaluate(mixed, c.positions, platform)
    ctx = context(mixed_l, c.positions, platform)
    E0, F0, d0 = state_values(ctx, {LAMBDA: 0.0})
    E1, F1, d1 = state_values(ctx, {LAMBDA: 1.0})
    # lambda = 0 is the original MM System (the same forces, evaluated in the CustomCVForce)
    rel = 1e-12 if platform == "Reference" else 1e-6
    assert abs(E0 - E_mm) <= rel * abs(E_mm)
    np.testing.assert_allclose(F0, F_mm, atol=rel * np.abs(F_mm).max())
    assert abs(E1 - E_ml) <= rel * abs(E_ml)
    np.testing.assert_allclose(F1, F_ml, atol=rel * np.abs(F_mm).max())
    assert abs(E_ml - E_mm) > 10.0
    # dE/dlambda against a central finite difference at lambda = 0.5 (E is linear in lambda)
    h = 0.1
    Ep, _, _ = state_values(ctx, {LAMBDA: 0.5 + h})
    Em, _, _ = state_values(ctx, {LAMBDA: 0.5 - h})
    _, _, dmid = state_values(ctx, {LAMBDA: 0.5})
    fd = (Ep - Em) / (2 * h)
    tol = 1e-9 * abs(E_mm) / h if platform == "Reference" else 1e-5 * abs(E_mm) / h
    assert abs(dmid[LAMBDA] - fd) < tol
    assert abs(d0[LAMBDA] - (E_ml - E_mm)) < tol and abs(d1[LAMBDA] - (E_ml - E_mm)) < tol
    if platform == "CPU":   # the CustomCVForces (with the pickled model inside) survive serialisation
        E_copy, _, d_copy = evaluate(copy.deepcopy(mixed_l), c.positions, platform, {LAMBDA: 0.5})
        assert abs(E_copy - state_values(ctx, {LAMBDA: 0.5})[0]) < 1e-6 * abs(E_mm) and abs(d_copy[LAMBDA] - dmid[LAMBDA]) < 1e-6 * abs(E_mm)


def test_bad_input(solvated, vacuum):
    c = solvated
    top, sys_, ml, model = c.topology, c.system, c.ml_atoms, c.model
    with pytest.raises(ValueError, match="duplicates"):
        create_mixed_system(top, sys_, ml + [ml[0]], model)
    with pytest.raises(ValueError, match="out of range"):
        create_mixed_system(top, sys_, ml + [10 ** 6], model)
    with pytest.raises(TypeError, match="integer"):
        create_mixed_system(top, sys_, [0.5, 1], model)
    with pytest.raises(ValueError, match="empty"):
        create_mixed_system(top, sys_, [], model)
    # unsupported element: a model that knows H and C only
    narrow = copy.deepcopy(model)
    narrow.elements = [1, 6]
    with pytest.raises(ValueError, match=r"elements \['N', 'O'\]"):
        create_mixed_system(top, sys_, ml, narrow)
    # covalent ML-MM bond: half of the dipeptide
    with pytest.raises(ValueError, match="covalently bonded.*ACE1"):
        create_mixed_system(top, sys_, ml[:6], FixedChargeModel.from_system(sys_, ml[:6]), multiplicity=2)
    # charge/multiplicity vs electrons (alanine dipeptide: even electron count)
    with pytest.raises(ValueError, match="inconsistent"):
        create_mixed_system(top, sys_, ml, model, charge=1, multiplicity=1)
    with pytest.raises(ValueError, match="inconsistent"):
        create_mixed_system(top, sys_, ml, model, charge=0, multiplicity=2)
    with pytest.raises(ValueError, match="multiplicity"):
        create_mixed_system(top, sys_, ml, model, multiplicity=0)
    # no NonbondedForce
    bare = copy.deepcopy(sys_)
    bare.removeForce(next(k for k, f in enumerate(bare.getForces()) if isinstance(f, openmm.NonbondedForce)))
    with pytest.raises(ValueError, match="no NonbondedForce"):
        create_mixed_system(top, bare, ml, model)
    with pytest.raises(ValueError, match="no NonbondedForce"):
        MLPolarForce(model, ml, bare)
    # cutoff larger than half the box
    small = copy.deepcopy(sys_)
    small.setDefaultPeriodicBoxVectors(openmm.Vec3(1.8, 0, 0), openmm.Vec3(0, 1.8, 0), openmm.Vec3(0, 0, 1.8))
    with pytest.raises(ValueError, match="more than half the smallest periodic box"):
        create_mixed_system(top, small, ml, model)
    # device: the model on a GPU this machine does not have
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            MLPolarForce(model, ml, sys_, device="cuda")
    # wrong types
    with pytest.raises(TypeError, match="openmm.System"):
        MLPolarForce(model, ml, "system")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        MLPolarForce(object(), ml, sys_)
    with pytest.raises(TypeError, match="Topology"):
        create_mixed_system(None, sys_, ml, model)
    with pytest.raises(ValueError, match="backend"):
        MLPolarForce(model, ml, sys_, backend="jax")


def test_torch_backend_detection(vacuum):
    from mlpolar.openmm import torchforce_status
    ok, message = torchforce_status()
    if ok:
        pytest.skip(f"openmm-torch is usable here ({message}); the detection message is not exercised")
    assert "openmm-torch" in message and "backend='python'" in message
    with pytest.raises(RuntimeError, match="backend='torch' is not available: openmm-torch"):
        MLPolarForce(vacuum.model, vacuum.ml_atoms, vacuum.system, backend="torch")
