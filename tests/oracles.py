"""Independent reference implementations ("oracles") for the electrostatics tests.

Nothing here imports mlpolar.  Three external codes are wrapped so that they speak mlpolar's
conventions (nm, kJ/mol, e; Buckingham quadrupoles Θ = ½ Σ q (3 r⊗r − r² I); a site's energy in a
potential q φ + μ·∇φ + ⅓ Θ:∇∇φ), plus a brute-force direct sum used to check the wrappers:

* OpenMM ``NonbondedForce`` (point charges, PME, Reference platform, double precision): standard
  smooth PME; OpenMM exceptions with chargeProd 0 are pairs that do not interact at all (the
  reciprocal-space part of the pair is subtracted), i.e. mlpolar's ``exclusions``,
* OpenMM ``AmoebaMultipoleForce`` (point charges + dipoles + quadrupoles, PME or NoCutoff),
* graph_longrange (MACE-POLAR-1's electrostatics; Gaussian charges and dipoles).

Conventions found empirically (checked by tests in tests/electrostatics/test_oracles.py against
``direct_multipole_energy`` below):

AmoebaMultipoleForce (OpenMM 8.6.1)
  - ``addMultipole(charge, dipole[3], quadrupole[9], axisType, atomZ, atomX, atomY, thole,
    dampingFactor, polarity)``; with ``axisType=NoAxisType`` the given dipole/quadrupole are used
    as lab-frame moments (no rotation) and the reported forces are −∂E/∂x at fixed lab-frame
    moments (no torque terms).
  - Units: charge e, dipole e·nm, quadrupole e·nm², energy kJ/mol.
  - Quadrupole input is Tinker's internal convention Q = Θ/3 (the energy is q φ + μ·∇φ + Q:∇∇φ),
    i.e. pass ``Θ_Buckingham / 3``.
  - Permanent-permanent interactions are undamped (thole/dampingFactor only affect polarisation);
    with ``polarity = 0`` and ``Direct`` polarisation there are no induced dipoles, so the energy
    is the pure permanent-multipole energy.
  - Without covalent maps every pair interacts with scale 1 (no exclusions); the i == i self term
    is not included; PME includes the Ewald self-energy correction (i.e. only true pairs remain)
    and uses tin-foil boundary conditions and B-spline order 5.
  - Coulomb constant 138.9354576, the same as mlpolar's.
  - Its PME is *not* plain smooth PME: the B-spline moduli are multiplied by Tinker's "optimal
    zeta" alias correction (AmoebaReferencePmeMultipoleForce::initializeBSplineModuli), and for
    odd grid sizes the zeta of the index (K−1)/2 is evaluated at the wrong wave number
    (k = i − K when i > K/2 with integer division).  So at identical (alpha, grid, order) it agrees
    with standard SPME (mlpolar, NonbondedForce) only to the PME discretisation error: measured
    ≲1e-7 in energy and ~1e-8 in forces on even grids at the tolerance-1e-6 grid (96³), but up
    to ~2e-6 (forces) on odd grids (e.g. 96×91×87) and ~2e-4 on a coarse odd grid (45³); both
    codes converge to the same answer (1e-8) on fine grids.

graph_longrange 0.4.4
  - Units: positions Å, charges e, energies eV; 1/(4πε0) = FIELD_CONSTANT/(4π) = 14.3996454 eV·Å
    with ε0 = 5.526349406e-3 e²/(eV·Å) (CODATA 2018); converted here with 1 eV = 96.485332 kJ/mol.
  - ``GTOElectrostaticEnergy(density_max_l, σ, kspace_cutoff, include_self_interaction,
    pbc_handling)``: one σ for all sites; each site's density is a normalised Gaussian charge
    (l = 0) plus a Gaussian dipole (l = 1, ``normalize="multipoles"`` so the coefficient is the
    dipole moment); source features are ordered [q, μ_y, μ_z, μ_x] (e3nn's l = 1 order).
  - ``pbc_handling="pbc"``: a plain Fourier sum over all |k| ≤ kspace_cutoff (no Ewald split, no
    real-space part), k = 0 dropped (tin-foil + neutralising background, but *no* background
    correction term, so only neutral systems are comparable), then subtracts each Gaussian's
    self-energy (½ K q²/(σ√π) + ½ K |μ|²/(6√π σ³), computed by quadrature, accurate to ~1e-15)
    unless include_self_interaction.  Truncation error ~exp(−k_c² σ²): k_c σ ≥ 5.5 gives ≲1e-12.
  - ``pbc_handling="realspace"``: all pairs in the graph (open boundaries) through
    erf(r / 2σ) / (r + 1e-6 Å).  The 1e-6 Å in the denominator limits the relative accuracy to
    ~1e-6 for r ~ Å; we feed coordinates in units of ``GL_LENGTH_UNIT`` = 0.01 Å (energy
    rescaled) to push that below 1e-8.  Dipoles are *not* Gaussian dipoles there: MACE-POLAR
    represents each l = 1 density by displaced Gaussian charges (q − Σμ_a/d at r, μ_a/d at
    r + d ê_a, d = ``offset`` = 0.02 Å by default) -- a first-order finite difference with
    relative error O(d/r).  ``graph_longrange_energy(..., offset=d)`` exposes d; Richardson
    extrapolation (2 E(d/2) − E(d)) removes the leading error.
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 with torch >= 2.6

import numpy as np
import torch

ONE_4PI_EPS0 = 138.93545764438198  # kJ nm / (mol e^2), mlpolar's and OpenMM's value
EV_TO_KJ_PER_MOL = 1.602176634e-19 * 6.02214076e23 / 1000.0  # 96.485332...
GL_LENGTH_UNIT = 0.01  # Å per graph_longrange length unit in the realspace path (see above)


# ----------------------------------------------------------------------------------------------
# Brute-force direct sum (open boundaries) for point or Gaussian multipoles
# ----------------------------------------------------------------------------------------------
def _pair_kernel_derivatives(r: torch.Tensor, s: torch.Tensor | None):
    """Derivatives 0..4 of G(r) = erf(|r|/s)/|r| (or 1/|r| when s is None) for a batch of r."""
    def g(rv, sv):
        d = torch.sqrt((rv * rv).sum())
        return torch.erf(d / sv) / d if sv is not None else 1.0 / d

    from torch.func import jacfwd, vmap
    fns = [g]
    for _ in range(4):
        fns.append(jacfwd(fns[-1], argnums=0))
    if s is None:
        return [vmap(lambda rv, f=f: f(rv, None))(r) for f in fns]
    return [vmap(f)(r, s) for f in fns]


def direct_multipole_energy(positions, charges, dipoles=None, quadrupoles=None, widths=None,
                            exclusions=None) -> torch.Tensor:
    """Open-boundary energy (kJ/mol) by explicit pair sum of derivative tensors, differentiable.

    E_ij = K [q_i + μ_i·∇_i + ⅓Θ_i:∇_i∇_i][q_j + μ_j·∇_j + ⅓Θ_j:∇_j∇_j] G(x_i − x_j),
    G = erf(r/√(2(σ_i²+σ_j²)))/r (1/r for point sites).  O(N²) pairs, meant for N ≲ 100.
    """
    n = positions.shape[0]
    dt = positions.dtype
    mu = dipoles if dipoles is not None else positions.new_zeros(n, 3)
    th = quadrupoles if quadrupoles is not None else positions.new_zeros(n, 3, 3)
    i, j = torch.triu_indices(n, n, 1, device=positions.device)
    if exclusions is not None and len(exclusions):
        ex = torch.as_tensor(exclusions, device=positions.device).reshape(-1, 2)
        bad = set(map(tuple, torch.sort(ex, dim=1).values.tolist()))
        keep = torch.tensor([(a, b) not in bad for a, b in zip(i.tolist(), j.tolist())],
                            dtype=torch.bool, device=positions.device)
        i, j = i[keep], j[keep]
    r = positions[i] - positions[j]
    s = None
    if widths is not None:
        s = torch.sqrt(2.0 * (widths[i] ** 2 + widths[j] ** 2)).to(dt)
    T0, T1, T2, T3, T4 = _pair_kernel_derivatives(r, s)
    qi, qj, mi, mj, ti, tj = charges[i], charges[j], mu[i], mu[j], th[i], th[j]
    # ∇_j = −∇_r acting on G(x_i − x_j): odd orders of j-derivatives flip sign.
    e = qi * qj * T0
    e = e + qi * (-torch.einsum("pa,pa->p", mj, T1)) + qj * torch.einsum("pa,pa->p", mi, T1)
    e = e - torch.einsum("pa,pb,pab->p", mi, mj, T2)
    e = e + (qi * torch.einsum("pab,pab->p", tj, T2) + qj * torch.einsum("pab,pab->p", ti, T2)) / 3
    e = e + (torch.einsum("pa,pbc,pabc->p", mi, tj, T3)
             - torch.einsum("pab,pc,pabc->p", ti, mj, T3)) / 3
    e = e + torch.einsum("pab,pcd,pabcd->p", ti, tj, T4) / 9
    return ONE_4PI_EPS0 * e.sum()


def gaussian_self_energy(charges, dipoles, widths) -> torch.Tensor:
    """Σ_i self-energy of Gaussian charge + dipole densities (kJ/mol): ½K q²/(σ√π) + K μ²/(12√π σ³)."""
    e = 0.5 * charges ** 2 / (widths * math.sqrt(math.pi))
    if dipoles is not None:
        e = e + (dipoles ** 2).sum(-1) / (12 * math.sqrt(math.pi) * widths ** 3)
    return ONE_4PI_EPS0 * e.sum()


# ----------------------------------------------------------------------------------------------
# Random multipoles
# ----------------------------------------------------------------------------------------------
def random_sites(n, box_length, seed, dipole_scale=0.02, quad_scale=0.005, neutral=True,
                 min_dist=0.15):
    """Random positions in [0, L)^3 with a minimum distance, charges, dipoles, traceless Θ."""
    rng = np.random.default_rng(seed)
    pos = []
    while len(pos) < n:
        x = rng.uniform(0, box_length, 3)
        ok = True
        for p in pos:
            d = x - p
            d -= box_length * np.round(d / box_length)
            if np.linalg.norm(d) < min_dist:
                ok = False
                break
        if ok:
            pos.append(x)
    pos = np.array(pos)
    q = rng.normal(0, 0.5, n)
    if neutral:
        q -= q.mean()
    mu = rng.normal(0, dipole_scale, (n, 3))
    a = rng.normal(0, quad_scale, (n, 3, 3))
    a = 0.5 * (a + a.transpose(0, 2, 1))
    a -= np.eye(3)[None] * (np.trace(a, axis1=1, axis2=2) / 3)[:, None, None]
    return pos, q, mu, a


# ----------------------------------------------------------------------------------------------
# OpenMM NonbondedForce (point charges)
# ----------------------------------------------------------------------------------------------
def water_box(shape="cube", size=2.0):
    """TIP3P water box from Modeller.addSolvent (amber14/tip3p.xml); returns (modeller, forcefield).

    shape: "cube" (size = edge, nm) or "dodecahedron" (rhombic dodecahedron, reduced triclinic
    vectors a=(d,0,0), b=(0,d,0), c=(d/2,d/2,d√2/2), size = d).  The vectors are passed
    explicitly: in OpenMM 8.6.1 addSolvent(boxShape='dodecahedron') only acts together with
    padding (with boxSize it silently builds a cube).  Positions come back unwrapped (centred
    on the origin), which also exercises mlpolar's periodic wrapping.
    """
    import openmm as mm
    from openmm import app, unit

    ff = app.ForceField("amber14/tip3p.xml")
    m = app.Modeller(app.Topology(), [])
    d = size
    if shape == "cube":
        vecs = (mm.Vec3(d, 0, 0), mm.Vec3(0, d, 0), mm.Vec3(0, 0, d))
    elif shape == "dodecahedron":
        vecs = (mm.Vec3(d, 0, 0), mm.Vec3(0, d, 0), mm.Vec3(0.5 * d, 0.5 * d, 0.5 * math.sqrt(2) * d))
    else:
        raise ValueError(shape)
    m.addSolvent(ff, boxVectors=tuple(v * unit.nanometer for v in vecs))
    return m, ff


def nonbonded_coulomb_reference(modeller, forcefield, cutoff=0.9, ewald_tolerance=1e-5):
    """Coulomb-only PME energy/forces from OpenMM's NonbondedForce on the Reference platform.

    Returns a dict: positions [N,3] (nm, as given, not wrapped), box [3,3], charges [N],
    exclusions [P,2] (OpenMM exceptions with chargeProd 0), energy (kJ/mol), forces [N,3]
    (kJ/mol/nm), alpha (1/nm), grid (nx, ny, nz), cutoff.
    """
    import openmm as mm
    from openmm import app, unit

    system = forcefield.createSystem(modeller.topology, nonbondedMethod=app.PME,
                                     nonbondedCutoff=cutoff * unit.nanometer,
                                     ewaldErrorTolerance=ewald_tolerance, rigidWater=False)
    for k in reversed(range(system.getNumForces())):
        if not isinstance(system.getForce(k), mm.NonbondedForce):
            system.removeForce(k)
    (nb,) = system.getForces()
    nb.setUseDispersionCorrection(False)
    nb.setUseSwitchingFunction(False)
    charges = []
    for p in range(nb.getNumParticles()):
        q, sig, eps = nb.getParticleParameters(p)
        nb.setParticleParameters(p, q, sig, 0.0)
        charges.append(q.value_in_unit(unit.elementary_charge))
    excl = []
    for k in range(nb.getNumExceptions()):
        a, b, qq, sig, eps = nb.getExceptionParameters(k)
        if qq.value_in_unit(unit.elementary_charge ** 2) != 0.0:
            raise ValueError("exception with non-zero chargeProd: not representable as exclusion")
        nb.setExceptionParameters(k, a, b, qq, sig, 0.0)
        excl.append((a, b))
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(modeller.positions)
    st = ctx.getState(getEnergy=True, getForces=True, getPositions=True)
    alpha, nx, ny, nz = nb.getPMEParametersInContext(ctx)
    box = np.array(st.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    return dict(
        positions=np.array(st.getPositions().value_in_unit(unit.nanometer)),
        box=box,
        charges=np.array(charges),
        exclusions=np.array(excl, dtype=np.int64).reshape(-1, 2),
        energy=st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
        forces=np.array(st.getForces().value_in_unit(unit.kilojoule_per_mole / unit.nanometer)),
        alpha=float(alpha), grid=(int(nx), int(ny), int(nz)), cutoff=cutoff,
    )


def nonbonded_point_charges(positions, charges, box, cutoff=0.9, ewald_tolerance=1e-5, exclusions=None):
    """Coulomb PME energy/forces of point charges from NonbondedForce (Reference platform, double)
    at OpenMM's own choice of (alpha, grid) for ``ewald_tolerance``; exclusions as mlpolar's.

    OpenMM subtracts an excluded pair's reciprocal-space part at the *raw* displacement r_j − r_i
    (no minimum image), mlpolar at the minimum image (docs/electrostatics_api.md).  To give OpenMM
    the same system, sites are moved by lattice vectors (the periodic system is unchanged) so that
    every excluded pair's raw displacement is its minimum image: each group of sites linked by
    exclusions is walked from one site, placing each partner at the image nearest the site it
    was reached from; a placement that leaves some pair off its minimum image raises.  Returns energy (kJ/mol), forces [N,3] (kJ/mol/nm), alpha
    (1/nm) and grid (nx, ny, nz) as OpenMM reports them (the Reference platform does not round
    the grid to FFT-friendly sizes).
    """
    import openmm as mm
    from openmm import unit

    pos = np.array(positions, dtype=np.float64)
    box = np.asarray(box, dtype=np.float64)
    pairs = [] if exclusions is None else [(int(i), int(j)) for i, j in np.asarray(exclusions)]
    inv = np.linalg.inv(box)

    def minimum_image(d):
        # the reduced box's nearest image is among the rounded shift and its neighbours
        base = d - np.round(d @ inv) @ box
        shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)]) @ box
        cand = base[None] + shifts
        return cand[np.argmin((cand ** 2).sum(1))]

    partners = {}
    for i, j in pairs:
        partners.setdefault(i, []).append(j)
        partners.setdefault(j, []).append(i)
    placed = set()
    for root in partners:
        if root in placed:
            continue
        placed.add(root)
        todo = [root]
        while todo:
            i = todo.pop()
            for j in partners[i]:
                if j not in placed:
                    pos[j] = pos[i] + minimum_image(pos[j] - pos[i])
                    placed.add(j)
                    todo.append(j)
    for i, j in pairs:
        if not np.allclose(pos[j] - pos[i], minimum_image(pos[j] - pos[i]), rtol=0, atol=1e-12):
            raise ValueError(f"nonbonded_point_charges: excluded pair ({i}, {j}) cannot be placed at its "
                             "minimum image together with the others")
    system = mm.System()
    nb = mm.NonbondedForce()
    nb.setNonbondedMethod(mm.NonbondedForce.PME)
    nb.setCutoffDistance(cutoff)
    nb.setEwaldErrorTolerance(ewald_tolerance)
    nb.setUseDispersionCorrection(False)
    for q in np.asarray(charges):
        system.addParticle(1.0)
        nb.addParticle(float(q), 0.1, 0.0)
    for i, j in pairs:
        nb.addException(i, j, 0.0, 0.1, 0.0)  # chargeProd 0: the pair does not interact
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*map(float, row)) for row in box])
    system.addForce(nb)
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pos)
    st = ctx.getState(getEnergy=True, getForces=True)
    alpha, nx, ny, nz = nb.getPMEParametersInContext(ctx)
    return dict(energy=st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
                forces=np.array(st.getForces().value_in_unit(unit.kilojoule_per_mole / unit.nanometer)),
                alpha=float(alpha), grid=(int(nx), int(ny), int(nz)))


# ----------------------------------------------------------------------------------------------
# OpenMM AmoebaMultipoleForce (permanent point multipoles)
# ----------------------------------------------------------------------------------------------
def amoeba_multipole_reference(positions, charges, dipoles, quadrupoles, box=None, cutoff=0.8,
                               alpha=None, grid=None, ewald_tolerance=1e-6):
    """Permanent-multipole energy/forces from AmoebaMultipoleForce (Reference platform).

    quadrupoles are mlpolar's Buckingham Θ; AMOEBA gets Θ/3.  box None → NoCutoff.  For PME,
    alpha/grid default to what OpenMM picks for ewald_tolerance; the ones used are returned.
    """
    import openmm as mm
    from openmm import unit

    n = len(charges)
    system = mm.System()
    f = mm.AmoebaMultipoleForce()
    f.setPolarizationType(mm.AmoebaMultipoleForce.Direct)
    if box is None:
        f.setNonbondedMethod(mm.AmoebaMultipoleForce.NoCutoff)
    else:
        f.setNonbondedMethod(mm.AmoebaMultipoleForce.PME)
        f.setCutoffDistance(cutoff)
        f.setEwaldErrorTolerance(ewald_tolerance)
        if alpha is not None:
            f.setPMEParameters(alpha, *grid)
        system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in np.asarray(box)])
    for k in range(n):
        system.addParticle(1.0)
        f.addMultipole(float(charges[k]), [float(x) for x in dipoles[k]],
                       [float(x) for x in (np.asarray(quadrupoles[k]) / 3.0).ravel()],
                       mm.AmoebaMultipoleForce.NoAxisType, -1, -1, -1, 0.39, 1.0, 0.0)
    system.addForce(f)
    ctx = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(np.asarray(positions))
    st = ctx.getState(getEnergy=True, getForces=True)
    out = dict(energy=st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
               forces=np.array(st.getForces().value_in_unit(unit.kilojoule_per_mole / unit.nanometer)))
    if box is not None:
        a, nx, ny, nz = f.getPMEParametersInContext(ctx)
        out.update(alpha=float(a), grid=(int(nx), int(ny), int(nz)), cutoff=cutoff)
    return out


# ----------------------------------------------------------------------------------------------
# graph_longrange (MACE-POLAR-1 electrostatics)
# ----------------------------------------------------------------------------------------------
def graph_longrange_energy(positions_nm, charges, dipoles=None, sigma_nm=0.1, box_nm=None,
                           kspace_cutoff=None, include_self=False, offset=None):
    """Energy (kJ/mol) of equal-width Gaussian charges (+ dipoles) from graph_longrange.

    positions_nm [N,3], charges [N], dipoles [N,3] (e·nm) as float64 torch tensors.
    box_nm None → ``pbc_handling="realspace"`` (open; dipoles as displaced charges with spacing
    ``offset`` Å, default graph_longrange's 0.02 Å), else ``"pbc"`` with |k| ≤ kspace_cutoff
    (1/Å; default 6/σ).  graph_longrange's 1/(4πε0) (≈1e-8 relative above mlpolar's) is
    rescaled to ONE_4PI_EPS0 so that only the electrostatics, not the constants, are compared.
    """
    from graph_longrange.energy import GTOElectrostaticEnergy
    from graph_longrange.kspace import compute_k_vectors_flat
    from graph_longrange.realspace_electrostatics import RealSpaceFiniteDiffereneEnergy

    dt = torch.float64
    old = torch.get_default_dtype()
    torch.set_default_dtype(dt)  # graph_longrange builds its buffers in the default dtype
    try:
        lmax = 0 if dipoles is None else 1
        n = positions_nm.shape[0]
        batch = torch.zeros(n, dtype=torch.long)
        if box_nm is None:
            # open boundaries: rescale lengths (see GL_LENGTH_UNIT) to defeat the +1e-6 in 1/r.
            scale = 10.0 / GL_LENGTH_UNIT
            pos = positions_nm.to(dt) * scale
            sigma = sigma_nm * scale
            feats = charges.to(dt)[:, None]
            if dipoles is not None:
                mu = dipoles.to(dt) * scale
                feats = torch.cat([feats, mu[:, [1, 2, 0]]], dim=1)
            if lmax == 0:
                mod = GTOElectrostaticEnergy(0, sigma, 1.0, include_self, pbc_handling="realspace")
                e = mod.realspace_energy(feats, pos, batch)
            else:
                off = (0.02 if offset is None else offset) / GL_LENGTH_UNIT
                mod = RealSpaceFiniteDiffereneEnergy(1, sigma, include_self, offset=off)
                e = mod(feats, pos, batch)
            return e.sum() * EV_TO_KJ_PER_MOL * scale / 10.0 * (ONE_4PI_EPS0 / _gl_k_kjnm())
        pos = positions_nm.to(dt) * 10.0
        cell = torch.as_tensor(box_nm, dtype=dt) * 10.0
        sigma = sigma_nm * 10.0
        kc = 6.0 / sigma if kspace_cutoff is None else kspace_cutoff
        feats = charges.to(dt)[:, None]
        if dipoles is not None:
            feats = torch.cat([feats, (dipoles.to(dt) * 10.0)[:, [1, 2, 0]]], dim=1)
        mod = GTOElectrostaticEnergy(lmax, sigma, kc, include_self, pbc_handling="pbc")
        rcell = 2 * math.pi * torch.linalg.inv(cell.T)
        kv, kn2, kb, k0 = compute_k_vectors_flat(kc, cell[None], rcell[None])
        vol = torch.linalg.det(cell).reshape(1)
        pbc = torch.ones(1, 3, dtype=torch.bool)
        e = mod(kv, kn2, kb, k0, feats, pos, batch, vol, pbc)
        return e.sum() * EV_TO_KJ_PER_MOL * (ONE_4PI_EPS0 / _gl_k_kjnm())
    finally:
        torch.set_default_dtype(old)


def _gl_k_kjnm():
    """graph_longrange's 1/(4πε0) in kJ nm / (mol e²) (138.93545764...)."""
    from graph_longrange.utils import FIELD_CONSTANT
    return FIELD_CONSTANT / (4 * math.pi) * EV_TO_KJ_PER_MOL / 10.0
