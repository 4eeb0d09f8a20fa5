"""The two kinds of free-energy task, each a plain function of picklable arguments (a serialised
System, coordinates, numbers) returning a dict of numpy arrays, so Dask can run it on any worker.

Both drive one global Context parameter (``lambda_interpolate`` for ML/MM: 0 = MM, 1 = ML/MM)
and return reduced quantities (units of kT, kT = R·T).

* :func:`sample_window` — equilibrium sampling at λ_k; every ``steps_per_sample`` steps the
  reduced potential of the configuration at *every* λ_l (u_kln row for MBAR) and ∂u/∂λ at λ_k.
  A barostat's pV term is the same at every λ for a given sample, so it cancels in MBAR and is
  left out.
* :func:`switch` — non-equilibrium switching: equilibrate at the first λ of the protocol, then
  alternate "change λ by one increment" (work done on the system: u(λ_j, x) − u(λ_{j−1}, x)) and
  "one integrator step at fixed λ" (no work). The work is the sum of those energy differences
  and, where the System declares the parameter derivative, also the trapezoid integral of
  ∂u/∂λ over the same increments (equal when u is linear in λ, as for λ-interpolation).

Seeds fix the Langevin noise and initial velocities, so a task that is re-run (a worker died)
reproduces the same result on the Reference platform.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import openmm
import openmm.unit as u

R_KJ_PER_MOL_K = u.MOLAR_GAS_CONSTANT_R.value_in_unit(u.kilojoule_per_mole / u.kelvin)


def kT_kj_per_mol(temperature_K: float) -> float:
    return R_KJ_PER_MOL_K * float(temperature_K)


def _context(system_xml: str, positions, box, temperature_K: float, friction_per_ps: float,
             timestep_ps: float, seed: int, platform: Optional[str], threads: int):
    system = openmm.XmlSerializer.deserialize(system_xml)
    integ = openmm.LangevinMiddleIntegrator(temperature_K * u.kelvin,
                                            friction_per_ps / u.picosecond,
                                            timestep_ps * u.picosecond)
    integ.setRandomNumberSeed(int(seed) + 1)
    props = {}
    if platform == "CPU" and threads:
        props["Threads"] = str(int(threads))
    plat = openmm.Platform.getPlatformByName(platform) if platform else None
    ctx = (openmm.Context(system, integ, plat, props) if plat is not None
           else openmm.Context(system, integ))
    if box is not None:
        ctx.setPeriodicBoxVectors(*[openmm.Vec3(*v) for v in np.asarray(box, dtype=float)])
    ctx.setPositions(np.asarray(positions, dtype=float))
    return ctx, integ


def _has_derivative(ctx: openmm.Context, parameter: str) -> bool:
    try:
        names = ctx.getState(getParameterDerivatives=True).getEnergyParameterDerivatives()
        return parameter in names
    except Exception:  # platforms/forces without derivative support
        return False


def _energy(ctx, derivative: Optional[str] = None) -> tuple[float, float]:
    st = ctx.getState(getEnergy=True, getParameterDerivatives=derivative is not None)
    e = st.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
    d = st.getEnergyParameterDerivatives()[derivative] if derivative is not None else np.nan
    return e, d


def _equilibrated_context(system_xml, positions, box, parameter: str, lam: float,
                          equilibration_steps: int, temperature_K: float, friction_per_ps: float,
                          timestep_ps: float, minimise: bool, seed: int, platform, threads: int):
    """Context at parameter = lam, optionally minimised, velocities drawn, equilibrated; returns
    (context, integrator, the parameter's name if the System reports dE/dparameter else None)."""
    ctx, integ = _context(system_xml, positions, box, temperature_K, friction_per_ps,
                          timestep_ps, seed, platform, threads)
    ctx.setParameter(parameter, lam)
    deriv = parameter if _has_derivative(ctx, parameter) else None
    if minimise:
        openmm.LocalEnergyMinimizer.minimize(ctx)
    ctx.setVelocitiesToTemperature(temperature_K * u.kelvin, int(seed) + 3)
    if equilibration_steps:
        integ.step(int(equilibration_steps))
    return ctx, integ, deriv


def sample_window(system_xml: str, positions, box, *, parameter: str, lambdas: Sequence[float],
                  k: int, n_samples: int, steps_per_sample: int, equilibration_steps: int,
                  temperature_K: float, friction_per_ps: float = 1.0,
                  timestep_ps: float = 0.002, minimise: bool = False, seed: int = 0,
                  platform: Optional[str] = None, threads: int = 1) -> dict:
    """Sample window k (λ = lambdas[k]); see the module doc. Returns dict(u_ln [L, n] reduced
    potentials at every λ, dudl_n [n] (kT per unit λ; NaN without derivative), positions,
    box, wall_s)."""
    t0 = time.time()
    kT = kT_kj_per_mol(temperature_K)
    lam = np.asarray(lambdas, dtype=float)
    ctx, integ, deriv = _equilibrated_context(system_xml, positions, box, parameter, float(lam[k]),
                                              equilibration_steps, temperature_K, friction_per_ps,
                                              timestep_ps, minimise, seed, platform, threads)
    u_ln = np.empty((len(lam), n_samples))
    dudl = np.full(n_samples, np.nan)
    for n in range(n_samples):
        integ.step(int(steps_per_sample))
        for l, x in enumerate(lam):
            ctx.setParameter(parameter, float(x))
            e, d = _energy(ctx, deriv if l == k else None)
            u_ln[l, n] = e / kT
            if l == k:
                dudl[n] = d / kT
        ctx.setParameter(parameter, float(lam[k]))
    st = ctx.getState(getPositions=True)
    return dict(u_ln=u_ln, dudl_n=dudl,
                positions=st.getPositions(asNumpy=True).value_in_unit(u.nanometer),
                box=np.asarray(st.getPeriodicBoxVectors().value_in_unit(u.nanometer)),
                wall_s=np.float64(time.time() - t0))


def switch(system_xml: str, positions, box, *, parameter: str, start: float, end: float,
           switching_steps: int, equilibration_steps: int, temperature_K: float,
           friction_per_ps: float = 1.0, timestep_ps: float = 0.002, minimise: bool = False,
           seed: int = 0, platform: Optional[str] = None, threads: int = 1) -> dict:
    """One switching run from λ=start to λ=end in ``switching_steps`` equal increments, after
    ``equilibration_steps`` at λ=start. Returns dict(work (kT, energy differences), work_dudl
    (kT, trapezoid ∂u/∂λ; NaN without derivative), lambda_j [S+1], cumulative_work [S+1],
    wall_s)."""
    t0 = time.time()
    kT = kT_kj_per_mol(temperature_K)
    ctx, integ, deriv = _equilibrated_context(system_xml, positions, box, parameter, float(start),
                                              equilibration_steps, temperature_K, friction_per_ps,
                                              timestep_ps, minimise, seed, platform, threads)
    lam = np.linspace(float(start), float(end), int(switching_steps) + 1)
    cum = np.zeros(len(lam))
    w, w_d = 0.0, 0.0
    e_prev, d_prev = _energy(ctx, deriv)
    for j in range(1, len(lam)):
        ctx.setParameter(parameter, float(lam[j]))
        e_new, d_new = _energy(ctx, deriv)
        w += (e_new - e_prev) / kT
        w_d += 0.5 * (d_prev + d_new) * (lam[j] - lam[j - 1]) / kT
        cum[j] = w
        integ.step(1)
        if j < len(lam) - 1:
            e_prev, d_prev = _energy(ctx, deriv)
    return dict(work=np.float64(w), work_dudl=np.float64(w_d if deriv else np.nan),
                lambda_j=lam, cumulative_work=cum, wall_s=np.float64(time.time() - t0))
