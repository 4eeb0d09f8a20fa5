#!/usr/bin/env python
"""Benchmark of periodic electrostatics (energy + forces) at water density.

Compares, side by side on the same configurations,

  mlpolar-f32 / mlpolar-f64   mlpolar.electrostatics.GaussianMultipoles (Ewald + smooth PME,
                              cutoff 0.9 nm, tolerance 5e-4), energy + autograd forces
  openmm                      OpenMM NonbondedForce PME (CPU platform, or CUDA with
                              --device cuda), point charges only, ewaldErrorTolerance 5e-4,
                              cutoff 0.9 nm, LJ off; timed call: getState(energy, forces)
  torchpme-f32 / -f64         torch-pme 0.5 PMECalculator (parameters from its own tune_pme at
                              the same target accuracy, tuned once on the smallest box and
                              reused, as torch-pme recommends), half neighbour list from
                              matscipy (its construction is inside the timed region)
  graph_longrange-f32 / -f64  graph_longrange.energy.GTOElectrostaticEnergy, the dense k-space
                              Gaussian-multipole energy used by MACE-POLAR (pbc handling
                              "pbc", MACE's default k-space cutoff heuristic)

for two cases

  charges   point charges (TIP3P-like water charges); peers: openmm, torchpme
  dipoles   Gaussian charges + Gaussian dipoles of width sigma (default 0.1 nm = 1 A, the
            MACE-POLAR default smearing width); peer: graph_longrange

Every (case, method, N) runs in a fresh subprocess so that its peak RSS (ru_maxrss) belongs to
that case alone; on CUDA the peak is torch.cuda.max_memory_allocated.  Accuracy is measured
against a common high-accuracy reference per (case, N):

  charges  OpenMM Reference platform PME, double precision, ewaldErrorTolerance 1e-7
           (--ref-tolerance; at 100k atoms 1e-7 needs a 735^3 grid, use 1e-6 there)
  dipoles  an independent float64 Ewald sum done entirely in k-space (exact for Gaussians,
           truncated where exp(-k^2 sigma^2) < 2e-9), written in this file
  above --ref-max-n: mlpolar-f64 at tolerance 1e-7 (--ref-tolerance; a self-consistency check
           only, marked so)

Timing: one warm-up call (its result is the one checked for accuracy), then at least --repeats
calls, more for cheap cases until --min-time seconds; the median is reported, in wall-clock
and in process CPU time (the robust figure on a shared machine with --threads 1).  The column 'other'
is the share of the machine's CPUs that *other* processes used while the case ran: on a shared
machine, treat rows with other > ~0.1 as contaminated (--wait-idle S waits for a quiet machine
before each case).  The parameters each method used (alpha, grid, k-vectors, ...) are in the
CSV's params column.

Usage (from the repository root):

  PYTHONPATH=python python benchmarks/electrostatics.py            # default, ~7-10 min on 2 cores
  PYTHONPATH=python python benchmarks/electrostatics.py --sizes 1000,3000,10000,30000,100000 \
      --ref-max-n charges=100000 --ref-tolerance 1e-6   # 1e-7 would need a 735^3 grid (several GB) at 100k
  OMP_NUM_THREADS=1 PYTHONPATH=python python benchmarks/electrostatics.py --threads 1 ...   # CPU-time table
  PYTHONPATH=python python benchmarks/electrostatics.py --cases dipoles --sizes 10000 \
      --methods graph_longrange-f32 --max-peer-n graph_longrange=10000 --repeats 1   # ~14 GB
  PYTHONPATH=python python benchmarks/electrostatics.py --replot benchmarks/results/electrostatics_cpu.csv
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 with torch >= 2.6

import numpy as np

ONE_4PI_EPS0 = 138.93545764438198  # kJ nm / (mol e^2), OpenMM's value
EV_TO_KJMOL = 96.48533212331002    # graph_longrange works in e, V, A
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CUTOFF = 0.9                        # nm
TOLERANCE = 5e-4                    # OpenMM's default ewaldErrorTolerance
ATOM_DENSITY = 100.0                # atoms / nm^3 (water: 33.4 molecules / nm^3)

ALL_METHODS = {
    "charges": ["mlpolar-f32", "mlpolar-f64", "openmm", "torchpme-f32", "torchpme-f64"],
    "dipoles": ["mlpolar-f32", "mlpolar-f64", "graph_longrange-f32", "graph_longrange-f64"],
}
PEERS = ["openmm", "torchpme", "graph_longrange"]


# ----------------------------------------------------------------------------- configurations
def water_box(n_atoms: int, seed: int = 0, sigma: float = 0.1):
    """Random but physical water-like box: TIP3P geometry and charges, molecules on a jittered
    cubic lattice (O-O >= ~0.25 nm) with random orientations, 100 atoms/nm^3, neutral.
    Returns positions [N,3] (nm, wrapped into the box), box [3,3], charges [N] (e),
    dipoles [N,3] (e nm, random, |mu| ~ 0.009 e nm ~ 0.4 D), widths [N] (nm)."""
    rng = np.random.default_rng(seed + 7919 * n_atoms)
    n_mol = max(1, int(round(n_atoms / 3)))
    n = 3 * n_mol
    length = (n / ATOM_DENSITY) ** (1.0 / 3.0)
    m = int(math.ceil(n_mol ** (1.0 / 3.0) - 1e-9))
    spacing = length / m
    sites = rng.choice(m ** 3, size=n_mol, replace=False)
    ijk = np.stack(np.unravel_index(sites, (m, m, m)), axis=1).astype(np.float64)
    oxygen = (ijk + 0.5) * spacing + rng.uniform(-0.02, 0.02, size=(n_mol, 3))
    r_oh, theta = 0.09572, math.radians(104.52)
    local = np.array([[r_oh * math.sin(theta / 2), 0.0, r_oh * math.cos(theta / 2)],
                      [-r_oh * math.sin(theta / 2), 0.0, r_oh * math.cos(theta / 2)]])
    q = rng.normal(size=(n_mol, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    rot = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)                                              # [n_mol, 3, 3]
    hydrogens = oxygen[:, None, :] + np.einsum("mij,hj->mhi", rot, local)
    pos = np.concatenate([oxygen[:, None, :], hydrogens], axis=1).reshape(n, 3)
    pos = np.mod(pos, length)
    box = np.eye(3) * length
    charges = np.tile([-0.834, 0.417, 0.417], n_mol)
    dipoles = rng.normal(scale=0.005, size=(n, 3))
    widths = np.full(n, sigma)
    return dict(positions=pos, box=box, charges=charges, dipoles=dipoles, widths=widths)


# ----------------------------------------------------------------------------- methods
# Each builder returns (compute, info): compute() -> (energy kJ/mol, forces [N,3] kJ/mol/nm as
# float64 numpy, after any device synchronisation); info: dict of the parameters used.

def _torch_setup(device, threads):
    import torch
    torch.set_num_threads(threads)
    if device == "cuda":
        torch.cuda.init()
    return torch


def _sync(torch, device):
    if device == "cuda":
        torch.cuda.synchronize()


def build_mlpolar(cfg, case, dtype_name, device, threads, tolerance=TOLERANCE, cutoff=CUTOFF):
    torch = _torch_setup(device, threads)
    from mlpolar.electrostatics import GaussianMultipoles
    dtype = {"f32": torch.float32, "f64": torch.float64}[dtype_name]
    t = lambda a: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
    pos0, box, charges = t(cfg["positions"]), t(cfg["box"]), t(cfg["charges"])
    dipoles = t(cfg["dipoles"]) if case == "dipoles" else None
    widths = t(cfg["widths"]) if case == "dipoles" else None
    elec = GaussianMultipoles(cutoff=cutoff, tolerance=tolerance)
    degree = 1 if dipoles is not None else 0
    try:                                      # the PME order can depend on the multipole degree
        alpha, grid, order = elec.parameters(box, widths, degree=degree)
    except TypeError:
        alpha, grid, order = elec.parameters(box, widths)
    info = dict(alpha=float(alpha), grid="x".join(str(int(g)) for g in grid), order=int(order),
                cutoff=float(cutoff))
    plan = getattr(elec, "reciprocal_plan", None)            # reciprocal="auto" may skip PME
    if plan is not None:
        direct, rc, a_direct = plan(pos0.shape[0], box, alpha, grid)
        if direct:
            info.update(reciprocal="direct sum", cutoff=float(rc), alpha=float(a_direct), grid="-")

    def compute():
        pos = pos0.clone().requires_grad_(True)
        energy = elec.energy(pos, charges, dipoles=dipoles, widths=widths, box=box)
        energy.backward()
        forces = -pos.grad
        _sync(torch, device)
        return float(energy.detach()), forces.detach().double().cpu().numpy()
    return compute, info


def _openmm_system(cfg, tolerance):
    import openmm
    n = len(cfg["charges"])
    system = openmm.System()
    box = cfg["box"]
    system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    nb.setCutoffDistance(CUTOFF)
    nb.setEwaldErrorTolerance(tolerance)
    nb.setUseDispersionCorrection(False)
    nb.setUseSwitchingFunction(False)
    for i in range(n):
        system.addParticle(16.0 if i % 3 == 0 else 1.0)
        nb.addParticle(float(cfg["charges"][i]), 0.1, 0.0)      # LJ off (epsilon = 0)
    system.addForce(nb)
    return system, nb


def build_openmm(cfg, device, threads, platform_name=None, tolerance=TOLERANCE, properties=None):
    import openmm
    from openmm import unit
    system, nb = _openmm_system(cfg, tolerance)
    if platform_name is None:
        platform_name = "CUDA" if device == "cuda" else "CPU"
    platform = openmm.Platform.getPlatformByName(platform_name)
    if properties is None:
        properties = {"Threads": str(threads)} if platform_name == "CPU" else {}
        if platform_name == "CUDA":
            properties = {"Precision": "mixed"}
    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, platform, properties)
    context.setPositions(cfg["positions"] * unit.nanometer)
    # one evaluation first: on the CPU platform getPMEParametersInContext can throw
    # std::bad_cast before the PME kernel has run (seen with OpenMM 8.6.1)
    context.getState(getEnergy=True)
    alpha, nx, ny, nz = nb.getPMEParametersInContext(context)
    info = dict(alpha=float(alpha.value_in_unit(unit.nanometer ** -1)) if hasattr(alpha, "value_in_unit")
                else float(alpha), grid=f"{nx}x{ny}x{nz}", order=5, platform=platform_name,
                properties=";".join(f"{k}={v}" for k, v in properties.items()))
    fu = unit.kilojoule_per_mole / unit.nanometer

    def compute():
        state = context.getState(getEnergy=True, getForces=True)
        e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        f = state.getForces(asNumpy=True).value_in_unit(fu)
        return float(e), np.asarray(f, dtype=np.float64)
    compute._keepalive = (context, integrator, system)
    return compute, info


def build_openmm_reference(cfg, device, threads, tolerance=1e-7):
    return build_openmm(cfg, device, threads, platform_name="Reference", tolerance=tolerance,
                        properties={})


def tune_torchpme(cfg, threads):
    """torch-pme's own tune_pme at the accuracy matching ewaldErrorTolerance 5e-4.

    torch-pme's `accuracy` is an absolute RMS force-error estimate (Kolafa-Perram) in units of
    e^2/nm^2 (prefactor 1); OpenMM's tolerance is a relative one, so the target is 5e-4 times
    the RMS force of the configuration (in the same units), computed here once."""
    import torch
    import torchpme
    from torchpme.tuning import tune_pme
    torch.set_num_threads(threads)
    dtype = torch.float64
    pos = torch.tensor(cfg["positions"], dtype=dtype)
    cell = torch.tensor(cfg["box"], dtype=dtype)
    q = torch.tensor(cfg["charges"], dtype=dtype).unsqueeze(1)
    idx, dist = _matscipy_half_list(cfg["positions"], cfg["box"], CUTOFF, torch, dtype, pos, cell)
    # RMS force (prefactor 1) from a well-converged torch-pme evaluation
    smearing0 = CUTOFF / 6.0
    calc = torchpme.PMECalculator(torchpme.CoulombPotential(smearing=smearing0),
                                  mesh_spacing=smearing0 / 4, interpolation_nodes=6)
    calc.to(dtype=dtype)
    p = pos.clone().requires_grad_(True)
    idx2, dist2 = _matscipy_half_list(cfg["positions"], cfg["box"], CUTOFF, torch, dtype, p, cell)
    e = (q * calc(q, cell, p, idx2, dist2)).sum()
    e.backward()
    f_rms = float(p.grad.pow(2).sum(1).mean().sqrt())
    accuracy = TOLERANCE * f_rms
    t0 = time.perf_counter()
    smearing, params, _ = tune_pme(q, cell, pos, CUTOFF, idx, dist, accuracy=accuracy)
    return dict(smearing=float(smearing), mesh_spacing=float(params["mesh_spacing"]),
                interpolation_nodes=int(params["interpolation_nodes"]), accuracy=accuracy,
                f_rms=f_rms, tune_seconds=time.perf_counter() - t0)


def _matscipy_half_list(pos_np, box_np, cutoff, torch, dtype, pos_t, cell_t):
    from matscipy.neighbours import neighbour_list
    i, j, s = neighbour_list("ijS", positions=pos_np, cell=box_np, pbc=[True] * 3, cutoff=cutoff)
    keep = i < j
    i, j, s = i[keep], j[keep], s[keep]
    dev = pos_t.device
    idx = torch.from_numpy(np.stack([i, j], 1)).to(dev)
    shifts = torch.from_numpy(s.astype(np.float64)).to(device=dev, dtype=dtype)
    vec = pos_t[idx[:, 1]] - pos_t[idx[:, 0]] + shifts @ cell_t
    return idx, torch.linalg.norm(vec, dim=1)


def build_torchpme(cfg, dtype_name, device, threads, tuned):
    torch = _torch_setup(device, threads)
    import torchpme
    dtype = {"f32": torch.float32, "f64": torch.float64}[dtype_name]
    pos0 = torch.tensor(cfg["positions"], dtype=dtype, device=device)
    cell = torch.tensor(cfg["box"], dtype=dtype, device=device)
    q = torch.tensor(cfg["charges"], dtype=dtype, device=device).unsqueeze(1)
    calc = torchpme.PMECalculator(
        torchpme.CoulombPotential(smearing=tuned["smearing"], prefactor=ONE_4PI_EPS0),
        mesh_spacing=tuned["mesh_spacing"], interpolation_nodes=tuned["interpolation_nodes"])
    calc.to(device=device, dtype=dtype)
    from torchpme.lib.kvectors import get_ns_mesh
    ns = get_ns_mesh(cell, tuned["mesh_spacing"]).tolist()
    info = dict(smearing=tuned["smearing"], mesh_spacing=tuned["mesh_spacing"],
                grid="x".join(str(int(v)) for v in ns), order=tuned["interpolation_nodes"],
                accuracy=tuned["accuracy"], neighbour_list="matscipy (timed)")

    def compute():
        pos = pos0.clone().requires_grad_(True)
        pos_np = cfg["positions"]
        idx, dist = _matscipy_half_list(pos_np, cfg["box"], CUTOFF, torch, dtype, pos, cell)
        energy = (q * calc(q, cell, pos, idx, dist)).sum()
        energy.backward()
        forces = -pos.grad
        _sync(torch, device)
        return float(energy.detach()), forces.detach().double().cpu().numpy()
    return compute, info


def graph_longrange_kspace_cutoff(sigma_angstrom: float, max_l: int) -> float:
    """PolarMACE's heuristic: kspace_cutoff_factor (1.5) * gto_basis_kspace_cutoff."""
    from graph_longrange.gto_utils import gto_basis_kspace_cutoff
    return 1.5 * gto_basis_kspace_cutoff([sigma_angstrom, sigma_angstrom], max_l)


def build_graph_longrange(cfg, case, dtype_name, device, threads, kspace_cutoff=None):
    """kspace_cutoff (1/A): graph_longrange's accuracy knob (k-vectors with |k| <= it are summed;
    their number grows as its cube); None = PolarMACE's default heuristic."""
    torch = _torch_setup(device, threads)
    from graph_longrange.energy import GTOElectrostaticEnergy
    from graph_longrange.kspace import compute_k_vectors_flat
    dtype = {"f32": torch.float32, "f64": torch.float64}[dtype_name]
    sigma = float(cfg["widths"][0]) * 10.0                 # A
    if not np.allclose(cfg["widths"], cfg["widths"][0]) or sigma <= 0:
        raise ValueError("graph_longrange needs one common Gaussian width > 0")
    max_l = 1 if case == "dipoles" else 0
    kcut = graph_longrange_kspace_cutoff(sigma, max_l) if kspace_cutoff is None else float(kspace_cutoff)
    module = GTOElectrostaticEnergy(density_max_l=max_l, density_smearing_width=sigma,
                                    kspace_cutoff=kcut, include_self_interaction=False,
                                    pbc_handling="pbc").to(device=device, dtype=dtype)
    t = lambda a: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
    pos0 = t(cfg["positions"] * 10.0)
    cell = t(cfg["box"] * 10.0)
    rcell = 2 * math.pi * torch.linalg.inv(cell.mT)
    feats = [t(cfg["charges"])[:, None]]
    if max_l == 1:
        mu = t(cfg["dipoles"] * 10.0)                      # e A, e3nn order (y, z, x)
        feats.append(mu[:, [1, 2, 0]])
    source = torch.cat(feats, dim=1)
    n = pos0.shape[0]
    batch = torch.zeros(n, dtype=torch.long, device=device)
    volume = torch.abs(torch.linalg.det(cell)).reshape(1)
    pbc = torch.ones(1, 3, dtype=torch.bool, device=device)
    kv = compute_k_vectors_flat(kcut, cell[None], rcell[None])
    info = dict(sigma_A=sigma, kspace_cutoff_inv_A=kcut, n_kvectors=int(kv[0].shape[0]), max_l=max_l)

    def compute():
        pos = pos0.clone().requires_grad_(True)
        k_vectors, k_norm2, k_batch, k0 = compute_k_vectors_flat(kcut, cell[None], rcell[None])
        energy = module(k_vectors=k_vectors, k_norm2=k_norm2, k_vector_batch=k_batch, k0_mask=k0,
                        source_feats=source, node_positions=pos, batch=batch, volume=volume,
                        pbc=pbc).sum()
        energy.backward()
        forces = -pos.grad * (EV_TO_KJMOL * 10.0)
        _sync(torch, device)
        return float(energy.detach()) * EV_TO_KJMOL, forces.detach().double().cpu().numpy()
    return compute, info


def build_kspace_reference(cfg, case, device, threads, decay=20.0, chunk=None):
    """Independent float64 Ewald sum for Gaussian multipoles done entirely in reciprocal space.

    E = (2 pi / V) k_e sum_{k != 0} exp(-k^2 sigma^2) / k^2 |S(k)|^2 - self energies,
    S(k) = sum_j (q_j - i k.mu_j) exp(-i k.r_j) (one common width sigma, tin-foil, neutral).
    The pair kernel exp(-k^2 (s_i^2 + s_j^2) / 2) = exp(-k^2 sigma^2) is truncated where it
    drops below exp(-decay).  The self energy of a Gaussian (interaction of the density with
    itself through erf(r / (2 sigma)) / r) is k_e (q^2 / (2 sqrt(pi) sigma) + |mu|^2 /
    (12 sqrt(pi) sigma^3))."""
    torch = _torch_setup(device, threads)
    dtype = torch.float64
    t = lambda a: torch.tensor(a, dtype=dtype, device=device)  # noqa: E731
    sigma = float(cfg["widths"][0])
    if not np.allclose(cfg["widths"], sigma) or sigma <= 0:
        raise ValueError("the k-space reference needs one common Gaussian width > 0")
    box = t(cfg["box"])
    pos0, q = t(cfg["positions"]), t(cfg["charges"])
    mu = t(cfg["dipoles"]) if case == "dipoles" else torch.zeros_like(pos0)
    volume = float(torch.det(box))
    recip = 2 * math.pi * torch.linalg.inv(box).T             # rows b_i, a_i . b_j = 2 pi d_ij
    kmax = math.sqrt(decay) / sigma
    nmax = [int(math.ceil(kmax / float(2 * math.pi / torch.linalg.norm(box[i]).item()
                                        * 1.0))) + 1 for i in range(3)]
    # enumerate a half space of integer triples
    rng = [torch.arange(-m, m + 1, device=device, dtype=dtype) for m in nmax]
    g = torch.cartesian_prod(*rng)
    half = (g[:, 0] > 0) | ((g[:, 0] == 0) & (g[:, 1] > 0)) | \
           ((g[:, 0] == 0) & (g[:, 1] == 0) & (g[:, 2] > 0))
    kvec = g[half] @ recip
    k2 = (kvec * kvec).sum(1)
    keep = k2 <= kmax * kmax
    kvec, k2 = kvec[keep], k2[keep]
    weight = 2.0 * (2 * math.pi / volume) * ONE_4PI_EPS0 * torch.exp(-k2 * sigma * sigma) / k2
    self_energy = ONE_4PI_EPS0 * float(
        (q * q).sum() / (2 * math.sqrt(math.pi) * sigma)
        + (mu * mu).sum() / (12 * math.sqrt(math.pi) * sigma ** 3))
    info = dict(sigma_nm=sigma, kmax_inv_nm=kmax, n_kvectors=int(kvec.shape[0]))
    if chunk is None:
        chunk = max(64, int(4e6 // pos0.shape[0]))

    def compute():
        # two passes over chunks of k-vectors, analytic forces (no autograd, bounded memory):
        # E = sum_k w_k |S_k|^2,  dE/dr_j = sum_k 2 w_k Re(conj(S_k) dS_k/dr_j) k-weighted
        pos = pos0
        s_re = torch.empty(kvec.shape[0], dtype=dtype, device=device)
        s_im = torch.empty_like(s_re)
        for s in range(0, kvec.shape[0], chunk):
            k = kvec[s:s + chunk]
            phase = k @ pos.T                                # [K, N]
            c, sn = torch.cos(phase), torch.sin(phase)
            kmu = k @ mu.T                                   # [K, N]
            # S = sum_j (q_j - i k.mu_j) (cos - i sin): the transform of q g - mu.grad g
            s_re[s:s + chunk] = c @ q - (sn * kmu).sum(1)
            s_im[s:s + chunk] = -(sn @ q) - (c * kmu).sum(1)
        energy = float((weight * (s_re * s_re + s_im * s_im)).sum())
        grad = torch.zeros_like(pos)
        for s in range(0, kvec.shape[0], chunk):
            k = kvec[s:s + chunk]
            phase = k @ pos.T
            c, sn = torch.cos(phase), torch.sin(phase)
            kmu = k @ mu.T
            x = q * c - kmu * sn                             # (q - i k.mu)(cos - i sin) = x + i y
            y = -(q * sn + kmu * c)
            # dS/dr_j = -i k (x + i y);  Re(conj(S) (y - i x)) = S_re y - S_im x
            g = 2 * weight[s:s + chunk, None] * (s_re[s:s + chunk, None] * y - s_im[s:s + chunk, None] * x)
            grad += g.T @ k
        _sync(torch, device)
        return energy - self_energy, (-grad).double().cpu().numpy()
    return compute, info


# ----------------------------------------------------------------------------- worker
def _rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(spec):
    """Runs one (case, method, N): returns timings, peak memory and where the result lies."""
    data = np.load(spec["config"])
    cfg = {k: data[k] for k in data.files}
    case, method, device, threads = spec["case"], spec["method"], spec["device"], spec["threads"]
    if method == "tune-torchpme":
        return dict(tuned=tune_torchpme(cfg, threads))
    # import what the method needs first, so that the memory baseline excludes the libraries
    # but includes everything the calculator allocates (grids, contexts, k-vectors)
    if method.startswith("openmm"):
        import openmm  # noqa: F401
    else:
        _torch_setup(device, threads)
        if method.startswith("mlpolar"):
            import mlpolar.electrostatics  # noqa: F401
        elif method.startswith("torchpme"):
            import torchpme  # noqa: F401
            import matscipy.neighbours  # noqa: F401
        elif method.startswith("graph_longrange"):
            import graph_longrange.energy  # noqa: F401
    cuda_mem = device == "cuda" and not method.startswith("openmm")
    if cuda_mem:
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    rss_base = _rss_bytes()
    t_setup = time.perf_counter()
    if method.startswith("mlpolar-"):
        if method == "mlpolar-f64-tight":
            compute, info = build_mlpolar(cfg, case, "f64", device, threads,
                                          tolerance=spec.get("ref_tolerance", 1e-7))
        else:
            compute, info = build_mlpolar(cfg, case, method.split("-")[1], device, threads,
                                          tolerance=spec.get("tolerance", TOLERANCE),
                                          cutoff=spec.get("cutoff", CUTOFF))
    elif method == "openmm":
        compute, info = build_openmm(cfg, device, threads)
    elif method == "openmm-reference":
        compute, info = build_openmm_reference(cfg, device, threads,
                                               tolerance=spec.get("ref_tolerance", 1e-7))
    elif method.startswith("torchpme-"):
        compute, info = build_torchpme(cfg, method.split("-")[1], device, threads, spec["tuned"])
    elif method.startswith("graph_longrange-"):
        compute, info = build_graph_longrange(cfg, case, method.split("-")[1], device, threads,
                                              kspace_cutoff=spec.get("kspace_cutoff"))
    elif method == "kspace-reference":
        compute, info = build_kspace_reference(cfg, case, device, threads)
    else:
        raise ValueError(f"unknown method {method}")
    t_setup = time.perf_counter() - t_setup
    times = []
    t0 = time.perf_counter()
    energy, forces = compute()                                # warm-up (also the result)
    t_first = time.perf_counter() - t0
    # at least `repeats` timed calls; cheap calls are repeated until ~min_time s have passed
    budget_end = time.perf_counter() + spec.get("min_time", 1.0)
    cpu_times = []  # process CPU time (all threads): robust to other jobs when --threads 1
    while len(times) < spec["repeats"] or (
            spec["repeats"] > 0 and time.perf_counter() < budget_end and len(times) < 50):
        t0, c0 = time.perf_counter(), time.process_time()
        e, _f = compute()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        del _f
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/loadavg") as fh:
        load_after = float(fh.read().split()[0])
    out = dict(energy=energy, times=times, cpu_times=cpu_times, first_call_s=t_first, setup_s=t_setup, info=info,
               load_before=spec.get("load_before"), load_after=load_after,
               peak_rss_mb=peak_rss / 2**20, rss_base_mb=rss_base / 2**20,
               peak_delta_mb=max(0.0, (peak_rss - rss_base) / 2**20))
    if cuda_mem:
        import torch
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - cuda_base) / 2**20
    np.save(spec["forces_out"], forces)
    return out


# ----------------------------------------------------------------------------- driver
def run_worker(spec, timeout):
    spec_path = Path(spec["workdir"]) / f"spec_{spec['tag']}.json"
    result_path = Path(spec["workdir"]) / f"result_{spec['tag']}.json"
    spec["result_out"] = str(result_path)
    spec["load_before"] = loadavg()
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    env.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    if spec.get("wait_idle", 0) > 0:
        wait_until_idle(spec["wait_idle"])
    busy0 = _cpu_busy_seconds()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timeout after {timeout:.0f} s")
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    others = _cpu_busy_seconds() - busy0 - ours
    other_frac = max(0.0, others / (wall * (os.cpu_count() or 1)))
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"rc={proc.returncode}"
        return dict(error=f"{why}: {' | '.join(tail)[-300:]}")
    res = json.loads(result_path.read_text())
    res["worker_wall_s"] = wall
    res["other_cpu"] = other_frac
    return res


def _cpu_busy_seconds():
    """Busy CPU seconds of the whole machine so far (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_cpu_fraction(seconds=1.0):
    """Fraction of the machine's CPUs busy over `seconds` while this process sleeps."""
    b0 = _cpu_busy_seconds()
    time.sleep(seconds)
    return (_cpu_busy_seconds() - b0) / (seconds * (os.cpu_count() or 1))


def wait_until_idle(max_wait, threshold=0.15):
    """Waits (up to max_wait s) until other processes use < threshold of the machine."""
    t_end = time.perf_counter() + max_wait
    frac = other_cpu_fraction(0.5)
    while frac > threshold and time.perf_counter() < t_end:
        frac = other_cpu_fraction(2.0)
    return frac


def provenance():
    """git HEAD (+ '-dirty') of the source tree and a hash of the operator library in use."""
    import hashlib
    out = []
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "python", "csrc", "cuda"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out.append(f"git {head}{'-dirty' if dirty else ''}")
    except (OSError, subprocess.SubprocessError):
        pass
    lib = REPO / "python" / "mlpolar" / "libmlpolar_ops.so"
    if lib.exists():
        digest = hashlib.sha256(lib.read_bytes()).hexdigest()[:12]
        out.append(f"libmlpolar_ops.so sha256 {digest} ({time.strftime('%Y-%m-%d %H:%M', time.gmtime(lib.stat().st_mtime))} UTC)")
    return ", ".join(out) or "unknown"


def loadavg():
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:
        return float("nan")


def accuracy(energy, forces, ref_energy, ref_forces):
    de = abs(energy - ref_energy) / abs(ref_energy)
    df = np.sqrt(np.mean(np.sum((forces - ref_forces) ** 2, axis=1)) /
                 np.mean(np.sum(ref_forces ** 2, axis=1)))
    return de, df


def parse_peer_caps(text, default_caps):
    caps = dict(default_caps)
    if not text:
        return caps
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            k, v = item.split("=")
            caps[k.strip()] = int(float(v))
        else:
            for k in caps:
                caps[k] = int(float(item))
    return caps


def fit_exponent(ns, ts):
    ns, ts = np.asarray(ns, float), np.asarray(ts, float)
    ok = np.isfinite(ts) & (ts > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns[ok]), np.log(ts[ok]), 1)[0])


def fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,3000,10000,30000", help="comma list of atom counts")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up call")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch intra-op threads and OpenMM CPU Threads")
    p.add_argument("--cases", default="charges,dipoles")
    p.add_argument("--methods", default="", help="explicit comma list of methods (overrides --peers)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma list from {PEERS} ('' for none)")
    p.add_argument("--no-mlpolar", action="store_true", help="leave mlpolar out (harness testing)")
    p.add_argument("--max-peer-n", default="",
                   help="skip peers above this N: an int for all peers, or peer=N,... "
                        "(default openmm=100000,torchpme=30000,graph_longrange=3000; on cuda "
                        "graph_longrange=10000)")
    p.add_argument("--ref-max-n", default="charges=30000,dipoles=10000",
                   help="largest N with an independent reference (int, or case=N,...); above "
                        "it mlpolar-f64 at --ref-tolerance is the (self-consistency) reference")
    p.add_argument("--ref-tolerance", type=float, default=1e-7,
                   help="tolerance of the references (OpenMM Reference PME for charges, mlpolar-f64 "
                        "above --ref-max-n); 1e-7 needs a 735^3 grid at 100k atoms, 1e-6 a 432^3 one")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="cheap calls are repeated (up to 50) until this many seconds have passed")
    p.add_argument("--sigma", type=float, default=0.1, help="Gaussian width (nm) of the dipoles case")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per subprocess")
    p.add_argument("--csv", default=str(HERE / "results" / "electrostatics_cpu.csv"))
    p.add_argument("--png", default=str(HERE / "results" / "electrostatics_cpu.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each timed case wait up to this many seconds for other processes "
                        "to leave the CPUs idle (< 15%% busy); 0 = don't wait")
    p.add_argument("--replot", metavar="CSV",
                   help="print the table and exponents and draw --png from an existing CSV; runs nothing")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.replot:
        rows = read_csv(args.replot)
        args.csv = ""
        if rows:
            args.device = rows[0]["device"]
            args.threads = rows[0]["threads"]
        report(rows, args, f"(from {args.replot})")
        return 0

    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        res = worker(spec)
        Path(spec["result_out"]).write_text(json.dumps(res))
        return 0

    sizes = sorted(int(float(s)) for s in args.sizes.split(",") if s.strip())
    ref_caps = parse_peer_caps(args.ref_max_n, {"charges": 30000, "dipoles": 10000})
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    default_caps = {"openmm": 100000, "torchpme": 30000,
                    "graph_longrange": 10000 if args.device == "cuda" else 3000}
    caps = parse_peer_caps(args.max_peer_n, default_caps)

    def methods_for(case):
        if args.methods:
            wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
            return [m for m in wanted if m in ALL_METHODS[case] or m == "mlpolar-f64-tight"]
        out = []
        for m in ALL_METHODS[case]:
            family = m.split("-")[0]
            if family == "mlpolar":
                if not args.no_mlpolar:
                    out.append(m)
            elif family in peers:
                out.append(m)
        return out

    workdir = Path(tempfile.mkdtemp(prefix="mlpolar_bench_"))
    rows = []
    tuned = None
    cmdline = "PYTHONPATH=python python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:])
    print(f"# {cmdline}", flush=True)
    print(f"# mlpolar: {provenance()}", flush=True)
    busy0 = other_cpu_fraction(1.0)
    if busy0 > 0.1:
        print(f"# WARNING: other processes keep {100 * busy0:.0f}% of the CPUs busy before starting; "
              f"timings will be noisy (column 'other' gives the share during each case)", flush=True)
    print(f"# device={args.device} threads={args.threads} repeats={args.repeats} "
          f"cutoff={CUTOFF} nm tolerance={TOLERANCE} sigma(dipoles)={args.sigma} nm", flush=True)
    try:
        for n in sizes:
            cfg = water_box(n, seed=args.seed, sigma=args.sigma)
            n_actual = len(cfg["charges"])
            cfg_path = workdir / f"config_{n}.npz"
            np.savez(cfg_path, **cfg)
            for case in cases:
                methods = methods_for(case)
                if not methods:
                    continue
                # reference
                if n_actual <= ref_caps.get(case, 0):
                    ref_method = "openmm-reference" if case == "charges" else "kspace-reference"
                    ref_label = (f"OpenMM Reference PME tol {args.ref_tolerance:g} (double)" if case == "charges"
                                 else f"float64 k-space Ewald sum (exp(-k^2 s^2) > 2e-9)")
                else:
                    ref_method = "mlpolar-f64-tight"
                    ref_label = f"mlpolar-f64 tol {args.ref_tolerance:g} (self-consistency only)"
                    if args.no_mlpolar:
                        ref_method, ref_label = None, "none"
                ref = None
                if ref_method:
                    spec = dict(case=case, method=ref_method, device=args.device, threads=args.threads,
                                repeats=0, ref_tolerance=args.ref_tolerance, config=str(cfg_path), workdir=str(workdir),
                                tag=f"{case}_{n}_ref", forces_out=str(workdir / f"F_{case}_{n}_ref.npy"))
                    t0 = time.perf_counter()
                    ref = run_worker(spec, args.timeout)
                    if "error" in ref:
                        print(f"  reference {ref_method} N={n_actual} failed: {ref['error']}", flush=True)
                        ref = None
                        ref_label = "none (reference failed)"
                    else:
                        ref["forces"] = np.load(spec["forces_out"])
                        print(f"  reference {case} N={n_actual}: {ref_label}, E={ref['energy']:.6f} kJ/mol "
                              f"({time.perf_counter() - t0:.1f} s)", flush=True)
                for method in methods:
                    family = method.split("-")[0]
                    row = dict(case=case, method=method, n=n_actual, device=args.device,
                               threads=args.threads, reference=ref_label)
                    if family in caps and n_actual > caps[family]:
                        row["status"] = f"skipped (N > max-peer-n {caps[family]})"
                        rows.append(row)
                        continue
                    spec = dict(case=case, method=method, device=args.device, threads=args.threads,
                                repeats=args.repeats, min_time=args.min_time, wait_idle=args.wait_idle,
                                config=str(cfg_path),
                                workdir=str(workdir), tag=f"{case}_{n}_{method}",
                                forces_out=str(workdir / f"F_{case}_{n}_{method}.npy"))
                    if family == "torchpme":
                        if tuned is None:
                            tspec = dict(spec, method="tune-torchpme", tag="tune", repeats=0)
                            tres = run_worker(tspec, args.timeout)
                            if "error" in tres:
                                print(f"  torch-pme tuning failed: {tres['error']}", flush=True)
                                tuned = {}
                            else:
                                tuned = tres["tuned"]
                                print(f"  torch-pme tune_pme on N={n_actual} box (reused for all N): "
                                      f"{json.dumps(tuned)}", flush=True)
                        if not tuned:
                            row["status"] = "skipped (tuning failed)"
                            rows.append(row)
                            continue
                        spec["tuned"] = tuned
                    res = run_worker(spec, args.timeout)
                    if "error" in res:
                        row["status"] = res["error"]
                        print(f"  {case:8s} {method:20s} N={n_actual:7d}  FAILED: {res['error']}", flush=True)
                        rows.append(row)
                        continue
                    forces = np.load(spec["forces_out"])
                    row.update(status="ok", median_s=float(np.median(res["times"])),
                               median_cpu_s=float(np.median(res["cpu_times"])),
                               min_s=float(np.min(res["times"])), first_call_s=res["first_call_s"],
                               setup_s=res["setup_s"], peak_rss_mb=res["peak_rss_mb"],
                               peak_delta_mb=res["peak_delta_mb"], cuda_peak_mb=res.get("cuda_peak_mb"),
                               energy=res["energy"], params=json.dumps(res["info"], sort_keys=True),
                               n_calls=len(res["times"]), other_cpu=res.get("other_cpu"),
                               load_before=res.get("load_before"),
                               load_after=res.get("load_after"))
                    if ref is not None:
                        de, df = accuracy(res["energy"], forces, ref["energy"], ref["forces"])
                        row.update(rel_energy_err=de, rel_rms_force_err=df, ref_energy=ref["energy"])
                    rows.append(row)
                    print(f"  {case:8s} {method:20s} N={n_actual:7d}  {row['median_s']:9.4f} s  "
                          f"peak {row['peak_delta_mb']:8.1f} MB  dE/E {fmt(row.get('rel_energy_err'), '.1e')}"
                          f"  dF/F {fmt(row.get('rel_rms_force_err'), '.1e')}  {res['info']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report(rows, args, cmdline)
    return 0


def report(rows, args, cmdline):
    mem_col = "cuda_peak_mb" if args.device == "cuda" else "peak_delta_mb"
    header = (f"{'case':8s} {'method':20s} {'N':>7s} {'median s':>10s} {'min s':>10s} {'cpu s':>10s} "
              f"{'peak MB':>9s} {'RSS MB':>8s} {'rel dE':>9s} {'rel dF':>9s} {'calls':>5s} {'other':>5s}  "
              f"reference / status")
    print()
    print(f"# {cmdline}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if r.get("status") != "ok":
            print(f"{r['case']:8s} {r['method']:20s} {r['n']:7d} {r.get('status')}")
            continue
        print(f"{r['case']:8s} {r['method']:20s} {r['n']:7d} {r['median_s']:10.4f} {r['min_s']:10.4f} "
              f"{fmt(r.get('median_cpu_s'), '10.4f')} "
              f"{fmt(r.get(mem_col), '9.1f')} {r['peak_rss_mb']:8.0f} "
              f"{fmt(r.get('rel_energy_err'), '9.1e')} {fmt(r.get('rel_rms_force_err'), '9.1e')} "
              f"{r['n_calls']:5d} {fmt(r.get('other_cpu'), '5.2f')}  {r['reference']}")
    # scaling exponents
    print()
    # least-squares fit over all N and the end-to-end exponent log(t_last/t_first)/log(N_last/N_first),
    # of the wall clock, the process CPU time (the robust one with --threads 1 on a shared machine)
    # and the peak memory above the baseline (which includes a fixed part: the end-to-end slope in
    # bytes per atom is the linear term)
    for case in sorted({r["case"] for r in rows}):
        for method in sorted({r["method"] for r in rows if r["case"] == case}):
            ok = sorted((r for r in rows if r["case"] == case and r["method"] == method
                         and r.get("status") == "ok"), key=lambda r: r["n"])
            if len(ok) < 2:
                continue
            ns = [r["n"] for r in ok]
            parts = []
            for key, name in (("median_s", "wall"), ("median_cpu_s", "cpu"), (mem_col, "mem")):
                vals = [r.get(key) for r in ok]
                if any(v is None or not math.isfinite(float(v)) or float(v) <= 0 for v in vals):
                    continue
                end = math.log(vals[-1] / vals[0]) / math.log(ns[-1] / ns[0])
                parts.append(f"{name} ~ N^{fit_exponent(ns, vals):.2f} (end-to-end {end:.2f})")
                if name == "mem":
                    parts.append(f"{(vals[-1] - vals[0]) * 2**20 / (ns[-1] - ns[0]):.0f} B/atom")
            print(f"scaling exponent  {case:8s} {method:20s} " + ", ".join(parts)
                  + f"   (N = {ns[0]} .. {ns[-1]})")
    if args.csv:
        path = Path(args.csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = ["case", "method", "n", "device", "threads", "status", "median_s", "min_s", "median_cpu_s", "n_calls",
                  "first_call_s", "setup_s", "peak_delta_mb", "peak_rss_mb", "cuda_peak_mb",
                  "energy", "ref_energy", "rel_energy_err", "rel_rms_force_err", "reference", "params",
                  "other_cpu", "load_before", "load_after"]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(r)
        print(f"wrote {path}")
    if args.png:
        plot(rows, args)


COLOURS = {"mlpolar-f32": "tab:blue", "mlpolar-f64": "tab:cyan", "openmm": "tab:green",
           "torchpme-f32": "tab:red", "torchpme-f64": "tab:pink",
           "graph_longrange-f32": "tab:orange", "graph_longrange-f64": "tab:brown"}


def read_csv(path):
    """Rows of a CSV written by this script, numbers converted (for --replot)."""
    rows = []
    with open(path) as fh:
        for r in csv.DictReader(fh):
            for k, v in list(r.items()):
                if v == "":
                    r[k] = None
                elif k in ("n", "threads", "n_calls"):
                    r[k] = int(v)
                elif k not in ("case", "method", "device", "status", "reference", "params"):
                    try:
                        r[k] = float(v)
                    except ValueError:
                        pass
            rows.append(r)
    return rows


def plot(rows, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = sorted({r["case"] for r in rows})
    fig, axes = plt.subplots(1, len(cases), figsize=(6.5 * len(cases), 5), squeeze=False)
    for ax, case in zip(axes[0], cases):
        for method in sorted({r["method"] for r in rows if r["case"] == case}):
            pts = sorted((r["n"], r["median_s"]) for r in rows
                         if r["case"] == case and r["method"] == method and r.get("status") == "ok")
            if not pts:
                continue
            ns, ts = zip(*pts)
            style = "-" if method.startswith("mlpolar") else "--"
            ax.loglog(ns, ts, style, marker="o", label=method, color=COLOURS.get(method))
        ax.set_xlabel("atoms N")
        ax.set_ylabel("median wall time, energy + forces (s)")
        title = "point charges" if case == "charges" else f"Gaussian charges + dipoles (sigma={args.sigma} nm)"
        ax.set_title(f"{title}, {args.device}, {args.threads} threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(args.png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
