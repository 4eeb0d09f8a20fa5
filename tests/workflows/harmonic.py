"""The exact case for the free-energy engine: N independent 3-D harmonic oscillators whose spring
constant is switched by the global parameter ``lambda_interpolate`` (the parameter the ML/MM
workflows drive), as a real OpenMM System.

    U(x; λ) = ½ k(λ) Σ_i |x_i|²,   k(λ) = k0 + λ (k1 − k0)

Configurational partition function Z(λ) = (2π kT / k(λ))^{3N/2} (momenta cancel), so

    ΔG(0 → 1) = −kT ln Z(1)/Z(0) = −kT ln (k0/k1)^{3N/2} = (3N/2) kT ln(k1/k0).
"""
import numpy as np
import openmm

PARAM = "lambda_interpolate"


def harmonic_system(n: int = 5, k0: float = 1000.0, k1: float = 1500.0,
                    mass: float = 12.0) -> openmm.System:
    system = openmm.System()
    # CustomCompoundBondForce (one particle per "bond") rather than CustomExternalForce: it can
    # declare the energy derivative with respect to λ
    f = openmm.CustomCompoundBondForce(1, f"0.5*({k0}+{PARAM}*({k1}-{k0}))*(x1*x1+y1*y1+z1*z1)")
    f.addGlobalParameter(PARAM, 0.0)
    f.addEnergyParameterDerivative(PARAM)
    for i in range(n):
        system.addParticle(mass)
        f.addBond([i], [])
    system.addForce(f)
    return system


def exact_dg_kT(n: int = 5, k0: float = 1000.0, k1: float = 1500.0) -> float:
    return 1.5 * n * np.log(k1 / k0)


def start_positions(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.03, size=(n, 3))
