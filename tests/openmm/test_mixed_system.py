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


def _with_custom_nonbonded(case):
    """The Case's System plus two CustomNonbondedForces of the kinds force fields use: an NBFIX-like
    Lennard-Jones table (Discrete2DFunction of atom types) with cutoff, switch and long-range
    correction, and a pair term restricted by interaction groups (ML region + first waters vs all).
    Exclusions follow the NonbondedForce's exceptions, as the CPU platform requires."""
    system = copy.deepcopy(case.system)
    nb = _nb(system)
    periodic = system.usesPeriodicBoundaryConditions()
    n = system.getNumParticles()
    excluded = [nb.getExceptionParameters(k)[:2] for k in range(nb.getNumExceptions())]
    table = openmm.CustomNonbondedForce("acoef(t1, t2)/r^12 - bcoef(t1, t2)/r^6")
    table.addPerParticleParameter("t")
    # three types: 0 H, 1 heavy atoms of the solute, 2 water oxygen; acoef = 4 eps sigma^12, bcoef = 4 eps sigma^6
    sig = np.array([[0.15, 0.25, 0.22], [0.25, 0.33, 0.32], [0.22, 0.32, 0.315]])
    eps = np.array([[0.05, 0.1, 0.1], [0.1, 0.4, 0.5], [0.1, 0.5, 0.64]])
    table.addTabulatedFunction("acoef", openmm.Discrete2DFunction(3, 3, list((4 * eps * sig ** 12).T.ravel())))
    table.addTabulatedFunction("bcoef", openmm.Discrete2DFunction(3, 3, list((4 * eps * sig ** 6).T.ravel())))
    for a in case.topology.atoms():
        table.addParticle([0 if a.element.symbol == "H" else (2 if a.residue.name == "HOH" else 1)])
    groups = openmm.CustomNonbondedForce("c*exp(-r/0.2); c=sqrt(c1*c2)")
    groups.addPerParticleParameter("c")
    for i in range(n):
        groups.addParticle([1.0 + 0.1 * (i % 7)])
    groups.addInteractionGroup(set(case.ml_atoms) | set(range(len(case.ml_atoms), min(n, len(case.ml_atoms) + 30))),
                               set(range(n)))
    for f in (table, groups):
        for i, j in excluded:
            f.addExclusion(i, j)
        if periodic:
            f.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
            f.setCutoffDistance(0.9)
        system.addForce(f)
    table.setUseSwitchingFunction(periodic)
    table.setSwitchingDistance(0.8)
    table.setUseLongRangeCorrection(periodic)
    return system


@pytest.mark.parametrize("case, platform", [("vacuum", "Reference"), ("solvated", "Reference")])
def test_lambda_interpolation_with_custom_nonbonded(case, platform, request):
    """With CustomNonbondedForces in the System (CHARMM NBFIX, LJ tables), lambda = 0 is the MM System
    (their ML-ML pairs return in the MM term) and lambda = 1 the ML/MM System without them; dE/dlambda
    is the finite difference. Before the fix the ML-ML pairs were missing at lambda = 0. (The CPU
    platform, which demands equal exclusions of all nonbonded forces in each Context, is covered by
    the CHARMM36 test below.)"""
    c = request.getfixturevalue(case)
    system = _with_custom_nonbonded(c)
    model = copy.deepcopy(c.model)
    model.ml_charges.mul_(0.8)       # an ML/MM description that differs from MM
    E_mm, F_mm, _ = evaluate(system, c.positions, platform)
    E_ml, F_ml, _ = evaluate(create_mixed_system(c.topology, system, c.ml_atoms, model), c.positions, platform)
    mixed = create_mixed_system(c.topology, system, c.ml_atoms, model, interpolate=True)
    ctx = context(mixed, c.positions, platform)
    E0, F0, d0 = state_values(ctx, {LAMBDA: 0.0})
    E1, F1, _ = state_values(ctx, {LAMBDA: 1.0})
    rel = 1e-11 if platform == "Reference" else 1e-6
    scale = max(abs(E_mm), 1.0)
    assert abs(E0 - E_mm) <= rel * scale, (E0, E_mm)
    np.testing.assert_allclose(F0, F_mm, rtol=0, atol=rel * np.abs(F_mm).max())
    assert abs(E1 - E_ml) <= rel * scale
    np.testing.assert_allclose(F1, F_ml, rtol=0, atol=rel * np.abs(F_mm).max())
    # the custom terms' ML-ML pairs matter: without them lambda = 0 would be off by more than this
    cnb_only = copy.deepcopy(system)
    for k in reversed(range(cnb_only.getNumForces())):
        if not isinstance(cnb_only.getForce(k), openmm.CustomNonbondedForce):
            cnb_only.removeForce(k)
    plain = create_mixed_system(c.topology, system, c.ml_atoms, model)   # owns the forces read below
    ml_only = [f for f in plain.getForces() if isinstance(f, openmm.CustomNonbondedForce)]
    excluded = openmm.System()
    for i in range(system.getNumParticles()):
        excluded.addParticle(system.getParticleMass(i))
    excluded.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
    for f in ml_only:
        excluded.addForce(copy.deepcopy(f))
    missing = evaluate(cnb_only, c.positions)[0] - evaluate(excluded, c.positions)[0]
    assert abs(missing) > 1.0
    # dE/dlambda: E is linear in lambda
    h = 0.1
    Ep = state_values(ctx, {LAMBDA: 0.5 + h})[0]
    Em = state_values(ctx, {LAMBDA: 0.5 - h})[0]
    dmid = state_values(ctx, {LAMBDA: 0.5})[2][LAMBDA]
    tol = (1e-9 if platform == "Reference" else 1e-5) * scale / h
    assert abs(dmid - (Ep - Em) / (2 * h)) < tol
    assert abs(d0[LAMBDA] - (E_ml - E_mm)) < tol


def test_parameter_offsets_on_ml_atoms(open_water):
    """NonbondedForce parameter offsets (addParticleParameterOffset / addExceptionParameterOffset, the
    alchemical handles of a force field) must not put charge back on the ML atoms or Coulomb/LJ back
    on ML-ML pairs: the mixed System with offsets (their parameter at 0.5) equals the one built from a
    System with the offsets folded into the parameters. The LJ part of an ML atom's offset stays
    (ML-MM LJ is MM's); lambda = 0 keeps the original offsets. ML-MM charge-product offsets and MM
    charge offsets (which the model cannot see) are refused before any work."""
    c = open_water
    ml = c.ml_atoms
    value = 0.5

    def with_offsets():
        s = copy.deepcopy(c.system)
        nb = _nb(s)
        nb.addGlobalParameter("lambda_charge", value)
        for a in ml:   # charge decoupling of the ligand, q(1 - lambda)
            q = nb.getParticleParameters(a)[0].value_in_unit(u.elementary_charge)
            nb.addParticleParameterOffset("lambda_charge", a, -q, 0.0, 0.0 if a != ml[5] else 0.3)
        k14 = next(k for k in range(nb.getNumExceptions())
                   if {*nb.getExceptionParameters(k)[:2]} <= set(ml) and nb.getExceptionParameters(k)[2]._value != 0)
        nb.addExceptionParameterOffset("lambda_charge", k14, 0.2, 0.0, 0.4)
        return s

    def folded():
        s = copy.deepcopy(c.system)
        nb = _nb(s)
        assert nb.getNumParticleParameterOffsets() == 0   # the test System has no offsets of its own
        source = with_offsets()   # owns the force read below
        ref = _nb(source)
        for k in range(ref.getNumParticleParameterOffsets()):
            _, a, qs, ss, es = ref.getParticleParameterOffset(k)
            q, sig, eps = nb.getParticleParameters(a)
            nb.setParticleParameters(a, q + value * qs * u.elementary_charge, sig, eps + value * es * u.kilojoule_per_mole)
        for k in range(ref.getNumExceptionParameterOffsets()):
            _, e, qqs, ss, es = ref.getExceptionParameterOffset(k)
            i, j, qq, sig, eps = nb.getExceptionParameters(e)
            nb.setExceptionParameters(e, i, j, qq + value * qqs * u.elementary_charge ** 2, sig,
                                      eps + value * es * u.kilojoule_per_mole)
        return s

    system, baked = with_offsets(), folded()
    model = FixedChargeModel.from_system(baked, ml, topology=c.topology)
    mixed = create_mixed_system(c.topology, system, ml, model)
    E_off, F_off, _ = evaluate(mixed, c.positions)
    E_ref, F_ref, _ = evaluate(create_mixed_system(c.topology, baked, ml, model), c.positions)
    assert abs(E_off - E_ref) < 1e-8 * abs(E_ref)
    np.testing.assert_allclose(F_off, F_ref, rtol=0, atol=1e-8 * np.abs(F_ref).max())
    nb = _nb(mixed)
    offsets = [nb.getParticleParameterOffset(k) for k in range(nb.getNumParticleParameterOffsets())]
    assert all(o[2] == 0.0 for o in offsets) and any(o[4] == 0.3 for o in offsets)   # LJ part kept
    # the model's ML/MM is what the folded parameters give: the fixed-charge model reproduces MM
    E_mm = evaluate(system, c.positions)[0]
    assert abs(E_off - E_mm) < 1e-4 and abs(E_mm - evaluate(c.system, c.positions)[0]) > 1.0
    # lambda = 0 is the original System with its offsets
    mixed_l = create_mixed_system(c.topology, system, ml, model, interpolate=True)
    E0 = evaluate(mixed_l, c.positions, parameters={LAMBDA: 0.0})[0]
    assert abs(E0 - E_mm) < 1e-11 * abs(E_mm)
    # an offset scaling an ML-MM charge product: not representable, refused
    bad = copy.deepcopy(c.system)
    nbb = _nb(bad)
    nbb.addGlobalParameter("lambda_charge", 0.0)
    e = nbb.addException(ml[0], len(ml) + 3, 0.0, 0.3, 0.0)
    nbb.addExceptionParameterOffset("lambda_charge", e, 0.1, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"exception parameter offset 0 \(global parameter 'lambda_charge'.*ML-MM"):
        create_mixed_system(c.topology, bad, ml, model)
    # a charge offset on an MM atom: the model would not see it change
    bad = copy.deepcopy(c.system)
    nbb = _nb(bad)
    nbb.addGlobalParameter("lambda_charge", 0.0)
    nbb.addParticleParameterOffset("lambda_charge", len(ml) + 3, 0.2, 0.0, 0.0)
    with pytest.raises(ValueError, match=f"changes the charge of MM atom {len(ml) + 3}"):
        MLPolarForce(model, ml, bad, topology=c.topology)
    with pytest.raises(ValueError, match="changes the charge of MM atom"):
        create_mixed_system(c.topology, bad, ml, model)


@pytest.fixture(scope="module")
def charmm_dipeptide():
    """Alanine dipeptide (openmmtools' coordinates) in CHARMM36 (OpenMM's bundled charmm36.xml and
    charmm36/water.xml) in a 2.2 nm TIP3P box, PME, flexible solute. CHARMM36 brings a CMAP term, a
    CustomNonbondedForce (its Lennard-Jones with NBFIX tables), Urey-Bradley and CustomTorsionForce
    impropers. The dipeptide is one residue with CHARMM's own template ALAD (the ACE/NME patches do
    not match openmmtools' three residues, and ALAD and AANM would both match the merged molecule)."""
    import openmm.app as app
    from openmmtools.testsystems import AlanineDipeptideVacuum
    vac = AlanineDipeptideVacuum()
    top = app.Topology()
    res = top.addResidue("ALAD", top.addChain())
    atoms = [top.addAtom(a.name, a.element, res) for a in vac.topology.atoms()]
    for b in vac.topology.bonds():
        top.addBond(atoms[b.atom1.index], atoms[b.atom2.index])
    ff = app.ForceField("charmm36.xml", "charmm36/water.xml")
    modeller = app.Modeller(top, vac.positions)
    modeller.addSolvent(ff, model="tip3p", boxSize=openmm.Vec3(2.2, 2.2, 2.2) * u.nanometer,
                        residueTemplates={res: "ALAD"})
    peptide = next(modeller.topology.residues())
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * u.nanometer,
                             constraints=None, rigidWater=True, residueTemplates={peptide: "ALAD"})

    class T:
        pass
    t = T()
    t.topology, t.system, t.positions = modeller.topology, system, modeller.positions
    return t


@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_charmm36_cmap_removed_and_lambda_zero_is_mm(charmm_dipeptide, platform):
    """CHARMM36 dipeptide as the ML region (an MLPolar model: the fixed-charge model has no CMAP):
    the intra-ML CMAP term is gone from the mixed System, and with interpolate=True lambda = 0 gives
    the CHARMM energy and forces (CMAP, the NBFIX CustomNonbondedForce and the other ML terms return
    in the MM term) while lambda = 1 is the ML/MM System."""
    from mlmm_cases import tiny_mlpolar
    t = charmm_dipeptide
    system = t.system
    positions = np.asarray(t.positions.value_in_unit(u.nanometer))
    ml = [a.index for a in t.topology.atoms() if a.residue.name != "HOH"]
    assert len(ml) == 22
    names = [type(f).__name__ for f in system.getForces()]
    assert "CustomNonbondedForce" in names
    cmap = next(f for f in system.getForces() if isinstance(f, openmm.CMAPTorsionForce))
    assert cmap.getNumTorsions() == 1 and set(cmap.getTorsionParameters(0)[1:]) <= set(ml)
    model = tiny_mlpolar()
    mixed = create_mixed_system(t.topology, system, ml, model)
    for f in mixed.getForces():
        if isinstance(f, openmm.CMAPTorsionForce):
            assert f.getNumTorsions() == 0
    mixed_l = create_mixed_system(t.topology, system, ml, model, interpolate=True)
    assert sum(f.getNumTorsions() for f in mixed_l.getForces() if isinstance(f, openmm.CMAPTorsionForce)) == 0
    E_mm, F_mm, _ = evaluate(system, positions, platform)
    E_ml, F_ml, _ = evaluate(mixed, positions, platform)
    ctx = context(mixed_l, positions, platform)
    E0, F0, d0 = state_values(ctx, {LAMBDA: 0.0})
    E1, F1, _ = state_values(ctx, {LAMBDA: 1.0})
    rel = 1e-11 if platform == "Reference" else 1e-6
    assert abs(E0 - E_mm) <= rel * abs(E_mm), (E0, E_mm)
    np.testing.assert_allclose(F0, F_mm, rtol=0, atol=rel * np.abs(F_mm).max())
    assert abs(E1 - E_ml) <= rel * abs(E_mm)
    np.testing.assert_allclose(F1, F_ml, rtol=0, atol=rel * np.abs(F_mm).max())
    assert abs(d0[LAMBDA] - (E_ml - E_mm)) <= 10 * rel * abs(E_mm)
    # the CMAP term is in the MM end: its energy is part of what lambda = 0 restores
    only_cmap = openmm.System()
    for i in range(system.getNumParticles()):
        only_cmap.addParticle(system.getParticleMass(i))
    only_cmap.addForce(copy.deepcopy(cmap))
    assert abs(evaluate(only_cmap, positions)[0]) > 1e-3
