"""PySCF QM/MM single points with electrostatic embedding (``pyscf.qmmm.mm_charge``).

For one configuration:

1. :func:`select_mm_charges` -- the MM point charges of every residue (water molecule, ion,
   amino acid) with any atom within ``radius_nm`` of any QM atom; each residue is taken as a
   whole, in the periodic image nearest to the QM centroid (so residues are never cut and the
   selected environment carries integer charge for integer-charge residues).
2. :func:`single_point` -- embedded SCF; energy, gradients on QM atoms (``nuc_grad_method``,
   includes the QM--MM terms), gradients on MM charges (``grad_hcore_mm``: the electron
   density's field at the charges, plus ``grad_nuc_mm``: the QM nuclei's field), Hirshfeld
   charges, dipole; then the vacuum SCF of the same geometry (energy and dipole).

Energies: E(QM/MM) = E_QM[embedded density] + QM nuclei--MM + QM electrons--MM; MM--MM
interactions are *not* included. Forces are -dE/dx of that energy. Everything returned is in
mlpolar units (nm, kJ/mol, kJ/mol/nm, e, e nm), converted here, where PySCF's atomic units are
read, with :mod:`mlpolar.units`.

Hirshfeld charges: q_A = Z_A - int w_A(r) rho(r) dr, w_A = rho_A^0 / sum_B rho_B^0, with
rho_A^0 the spherically averaged, fractionally occupied free-atom Hartree-Fock density in the
same basis (``pyscf.scf.atom_hf.get_atm_nrhf``, the same atoms PySCF uses for its SAD guess),
integrated on a PySCF Becke grid (``hirshfeld_grid_level``). rho is the embedded density.
Dipole: sum_A Z_A (R_A - O) - int rho(r) (r - O), origin O = the centroid of the QM atom
positions (origin-independent for a neutral QM region).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..units import BOHR_TO_NM, HARTREE_TO_KJMOL

FORCE_AU_TO_KJMOL_NM = HARTREE_TO_KJMOL / BOHR_TO_NM


@dataclass(frozen=True)
class Level:
    """Level of theory. ``method``: 'hf' or a PySCF xc name ('b3lyp'); ``disp``: None or
    'd3bj' (via pyscf-dispersion); ``auxbasis``: None for exact 4-centre integrals, else density
    fitting with that auxiliary basis."""
    method: str = "b3lyp"
    basis: str = "def2-svp"
    auxbasis: str | None = "def2-universal-jkfit"
    disp: str | None = "d3bj"
    grid_level: int = 3
    hirshfeld_grid_level: int = 3
    conv_tol: float = 1e-9
    max_cycle: int = 100
    grid_response: bool = False
    max_memory_mb: int = 2000

    def describe(self) -> str:
        d = f"-{self.disp.upper()}" if self.disp else ""
        df = f" with density fitting ({self.auxbasis})" if self.auxbasis else ""
        return f"{self.method.upper()}{d}/{self.basis}{df}"

    @classmethod
    def from_dict(cls, d: dict | None) -> "Level":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"level has unknown keys {sorted(unknown)}; allowed: "
                             f"{sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


PRODUCTION_LEVEL = Level()
TINY_LEVEL = Level(method="hf", basis="sto-3g", auxbasis="def2-universal-jkfit", disp=None,
                   conv_tol=1e-10, hirshfeld_grid_level=1)


# ----------------------------------------------------------------------------- MM environment
def _reduce_to_box(d: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Minimum-image reduction of displacement vectors d (n, 3) for an OpenMM reduced-form
    triclinic box (rows a, b, c with a=(ax,0,0), b=(bx,by,0))."""
    d = d.copy()
    for k in (2, 1, 0):
        d -= np.outer(np.round(d[:, k] / box[k, k]), box[k])
    return d


def select_mm_charges(positions_nm: np.ndarray, box_nm: np.ndarray | None, charges: np.ndarray,
                      qm_indices: np.ndarray, residue_of_atom: np.ndarray,
                      radius_nm: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """MM atoms whose residue has an atom within ``radius_nm`` of a QM atom.

    positions_nm: (N, 3) positions with molecules whole (e.g. OpenMM state with
    enforcePeriodicBox=False); box_nm: (3, 3) box vectors or None for no periodicity;
    charges: (N,) e; qm_indices: QM atoms (excluded from the MM set; the QM region must be one
    whole molecule); residue_of_atom: (N,) residue index of every atom.
    Returns (mm_indices (M,), mm_positions_nm (M, 3)), the latter unwrapped around the QM region.
    """
    pos = np.asarray(positions_nm, dtype=np.float64)
    n = pos.shape[0] if pos.ndim == 2 else -1
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions_nm must have shape (N, 3), got {pos.shape}")
    charges = np.asarray(charges, dtype=np.float64)
    residue_of_atom = np.asarray(residue_of_atom)
    if charges.shape != (n,) or residue_of_atom.shape != (n,):
        raise ValueError(f"charges {charges.shape} and residue_of_atom {residue_of_atom.shape} "
                         f"must both have shape ({n},), one entry per atom")
    qm = np.asarray(qm_indices, dtype=np.int64)
    if qm.size == 0 or qm.min() < 0 or qm.max() >= n:
        raise ValueError(f"qm_indices must be non-empty indices in [0, {n})")
    if not radius_nm > 0:
        raise ValueError(f"radius_nm={radius_nm} must be positive (nm)")
    if box_nm is not None:
        box = np.asarray(box_nm, dtype=np.float64)
        if box.shape != (3, 3):
            raise ValueError(f"box_nm must be (3, 3) box vectors in nm, got {box.shape}")
        half = 0.5 * min(box[0, 0], box[1, 1], box[2, 2])
    is_qm = np.zeros(n, bool)
    is_qm[qm] = True
    center = pos[qm].mean(axis=0)
    mm_all = np.nonzero(~is_qm)[0]
    res = residue_of_atom[mm_all]
    # anchor: first atom of each residue
    uniq, first = np.unique(res, return_index=True)
    anchors = pos[mm_all[first]]
    d = anchors - center
    shift_res = (_reduce_to_box(d, box) - d) if box_nm is not None else np.zeros_like(d)
    inv = np.searchsorted(uniq, res)
    unwrapped = pos[mm_all] + shift_res[inv]
    # minimum distance of each MM atom to the QM atoms
    qpos = pos[qm]
    dmin = np.full(len(mm_all), np.inf)
    for i in range(0, len(mm_all), 20000):
        blk = unwrapped[i:i + 20000]
        dd = np.sqrt(((blk[:, None, :] - qpos[None, :, :]) ** 2).sum(-1)).min(1)
        dmin[i:i + 20000] = dd
    close_res = np.zeros(len(uniq), bool)
    np.logical_or.at(close_res, inv, dmin < radius_nm)
    sel = close_res[inv]
    if box_nm is not None:
        ext = np.sqrt(((qpos - center) ** 2).sum(-1)).max()
        if ext + radius_nm > half:
            import warnings
            warnings.warn(f"radius_nm + QM extent = {ext + radius_nm:.2f} nm exceeds half the "
                          f"box ({half:.2f} nm): some residues are seen in one image only; use a "
                          "larger box or a smaller radius_nm", stacklevel=2)
    return mm_all[sel], unwrapped[sel]


# ----------------------------------------------------------------------------- PySCF
def build_mol(atomic_numbers, positions_nm, *, basis: str, charge: int = 0, spin: int = 0,
              max_memory_mb: int = 2000, verbose: int = 0):
    from pyscf import gto
    z = np.asarray(atomic_numbers, dtype=np.int64)
    xyz = np.asarray(positions_nm, dtype=np.float64) / BOHR_TO_NM
    if xyz.shape != (len(z), 3):
        raise ValueError(f"positions_nm must have shape ({len(z)}, 3), got {xyz.shape}")
    mol = gto.Mole()
    mol.atom = [(int(zi), tuple(p)) for zi, p in zip(z, xyz)]
    mol.unit = "Bohr"
    mol.basis = basis
    mol.charge = int(charge)
    mol.spin = int(spin)
    mol.verbose = verbose
    mol.max_memory = max_memory_mb
    try:
        mol.build()
    except RuntimeError as e:
        raise ValueError(f"cannot build the QM molecule with charge={charge}, spin={spin} "
                         f"(spin = 2S = number of unpaired electrons): {e}") from e
    return mol


def make_scf(mol, level: Level):
    from pyscf import dft, scf
    unrestricted = mol.spin != 0
    if level.method.lower() == "hf":
        mf = scf.UHF(mol) if unrestricted else scf.RHF(mol)
    else:
        mf = dft.UKS(mol) if unrestricted else dft.RKS(mol)
        mf.xc = level.method
        mf.grids.level = level.grid_level
    if level.disp:
        try:
            import pyscf.dispersion  # noqa: F401
        except ImportError as e:
            raise ImportError("level.disp needs pyscf-dispersion: `pip install pyscf-dispersion`") from e
        mf.disp = level.disp
    if level.auxbasis:
        mf = mf.density_fit(auxbasis=level.auxbasis)
    mf.conv_tol = level.conv_tol
    mf.max_cycle = level.max_cycle
    mf.max_memory = level.max_memory_mb
    return mf


def _dipole_au(mol, dm, origin_bohr):
    with mol.with_common_orig(origin_bohr):
        ao = mol.intor_symmetric("int1e_r", comp=3)
    el = -np.einsum("xij,ji->x", ao, dm).real
    nuc = np.einsum("i,ix->x", mol.atom_charges(), mol.atom_coords() - origin_bohr)
    return el + nuc


def _total_dm(mf):
    dm = mf.make_rdm1()
    if dm.ndim == 3:
        dm = dm[0] + dm[1]
    return dm


def hirshfeld_charges(mol, dm, grid_level: int = 3) -> np.ndarray:
    """Hirshfeld charges (e) of the density ``dm`` (AO basis, total) of ``mol``; free atoms are
    PySCF's spherically averaged HF atoms in the same basis."""
    from pyscf import dft, gto
    from pyscf.scf import atom_hf
    if mol.has_ecp():
        raise NotImplementedError("Hirshfeld charges with ECPs are not implemented; use an "
                                  "all-electron basis")
    free = atom_hf.get_atm_nrhf(mol)
    grids = dft.gen_grid.Grids(mol)
    grids.level = grid_level
    grids.build(with_non0tab=False)
    coords, weights = grids.coords, grids.weights
    ni = dft.numint.NumInt()
    atoms = []
    for ia in range(mol.natm):
        sym = mol.atom_pure_symbol(ia)
        _, _, c, occ = free[sym] if sym in free else free[mol.atom_symbol(ia)]
        am = gto.Mole()
        am.atom = [(sym, tuple(mol.atom_coord(ia)))]
        am.unit = "Bohr"
        am.basis = {sym: mol._basis[mol.atom_symbol(ia)]}
        am.cart = mol.cart
        z = int(mol.atom_charge(ia))
        am.spin = z % 2
        am.verbose = 0
        am.build()
        atoms.append((am, (c * occ) @ c.T))
    pop = np.zeros(mol.natm)
    for i0 in range(0, len(weights), 20000):
        cb, wb = coords[i0:i0 + 20000], weights[i0:i0 + 20000]
        ao = ni.eval_ao(mol, cb)
        rho = ni.eval_rho(mol, ao, dm, xctype="LDA")
        rho0 = np.empty((mol.natm, len(wb)))
        for ia, (am, dma) in enumerate(atoms):
            aoa = am.eval_gto("GTOval", cb)
            rho0[ia] = np.einsum("gi,ij,gj->g", aoa, dma, aoa)
        tot = rho0.sum(0)
        w = np.where(tot > 1e-30, rho0 / np.where(tot > 1e-30, tot, 1.0), 0.0)
        pop += (w * (rho * wb)[None, :]).sum(1)
    return mol.atom_charges() - pop


def single_point(atomic_numbers, qm_positions_nm, mm_positions_nm, mm_charges, *,
                 level: Level = PRODUCTION_LEVEL, charge: int = 0, spin: int = 0,
                 vacuum: bool = True, charges: bool = True, dm0=None) -> dict:
    """Embedded single point (+ the vacuum energy of the same geometry). Returns a dict in
    mlpolar units: energy (kJ/mol), qm_forces (n_qm, 3) and mm_forces (n_mm, 3) kJ/mol/nm,
    hirshfeld_charges (e), dipole (e nm, about the QM centroid), energy_vacuum, dipole_vacuum,
    energy_dispersion (kJ/mol, included in both energies), and timings/convergence info."""
    from pyscf import qmmm
    if not isinstance(level, Level):
        raise TypeError("level must be a mlpolar.data.qmmm.Level (Level.from_dict for dicts)")
    t0 = time.perf_counter()
    mm_pos = np.asarray(mm_positions_nm, dtype=np.float64).reshape(-1, 3)
    mm_q = np.asarray(mm_charges, dtype=np.float64).reshape(-1)
    if mm_pos.shape[0] != mm_q.shape[0]:
        raise ValueError(f"mm_positions_nm has {mm_pos.shape[0]} rows but mm_charges has "
                         f"{mm_q.shape[0]} entries; give one charge per MM position")
    mol = build_mol(atomic_numbers, qm_positions_nm, basis=level.basis, charge=charge,
                    spin=spin, max_memory_mb=level.max_memory_mb)
    origin = mol.atom_coords().mean(axis=0)
    mf = qmmm.mm_charge(make_scf(mol, level), mm_pos / BOHR_TO_NM, mm_q, unit="Bohr")
    e = mf.kernel(dm0=dm0)
    if not mf.converged:
        raise RuntimeError(f"embedded SCF did not converge in {level.max_cycle} cycles")
    t_scf = time.perf_counter() - t0
    g = mf.nuc_grad_method()
    if hasattr(g, "grid_response"):
        g.grid_response = level.grid_response
    g_qm = g.kernel()
    dm = _total_dm(mf)
    g_mm = g.grad_hcore_mm(dm) + g.grad_nuc_mm() if len(mm_q) else np.zeros((0, 3))
    t_grad = time.perf_counter() - t0 - t_scf
    out = dict(
        energy=float(e) * HARTREE_TO_KJMOL,
        qm_forces=-np.asarray(g_qm) * FORCE_AU_TO_KJMOL_NM,
        mm_forces=-np.asarray(g_mm) * FORCE_AU_TO_KJMOL_NM,
        dipole=_dipole_au(mol, dm, origin) * BOHR_TO_NM,
        energy_dispersion=float(mf.scf_summary.get("dispersion", 0.0)) * HARTREE_TO_KJMOL,
        scf_cycles=int(mf.cycles) if hasattr(mf, "cycles") else -1,
    )
    if charges:
        out["hirshfeld_charges"] = hirshfeld_charges(mol, dm, level.hirshfeld_grid_level)
    if vacuum:
        mfv = make_scf(mol, level)
        ev = mfv.kernel(dm0=mf.make_rdm1())
        if not mfv.converged:
            raise RuntimeError(f"vacuum SCF did not converge in {level.max_cycle} cycles")
        out["energy_vacuum"] = float(ev) * HARTREE_TO_KJMOL
        out["dipole_vacuum"] = _dipole_au(mol, _total_dm(mfv), origin) * BOHR_TO_NM
    out["wall_s"] = time.perf_counter() - t0
    out["wall_scf_s"], out["wall_grad_s"] = t_scf, t_grad
    return out


# ----------------------------------------------------------------------------- one configuration
MAX_NEIGHBOUR_NM = 0.25


def check_qm_region_whole(qm_positions_nm: np.ndarray, max_neighbour_nm: float = MAX_NEIGHBOUR_NM) -> None:
    """Refuse a QM region with an atom farther than ``max_neighbour_nm`` from every other QM atom:
    a molecule split by periodic wrapping or an atom that left its molecule (a bond without a
    bond term) would otherwise be labelled as a radical pair, at full DFT cost."""
    x = np.asarray(qm_positions_nm, dtype=np.float64)
    if len(x) < 2:
        return
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.min(axis=1)
    far = np.flatnonzero(nearest > max_neighbour_nm)
    if far.size:
        raise ValueError(f"QM atoms {far[:5].tolist()} are {nearest[far[:5]].round(3).tolist()} nm "
                         f"from their nearest QM neighbour (> {max_neighbour_nm} nm): the QM region is "
                         "not whole (a molecule split across the box, or an atom that left its "
                         "molecule); check the sampling (unwrapped positions, bond terms)")


def label_configuration(positions_nm, box_nm, charges, qm_indices, atomic_numbers,
                        residue_of_atom, *, radius_nm: float = 1.2,
                        level: Level = PRODUCTION_LEVEL, qm_charge: int = 0,
                        qm_spin: int = 0) -> dict:
    """Select the MM charges around the QM region of one configuration and run
    :func:`single_point`. Returns the single-point dict plus qm/mm indices and positions."""
    qm = np.asarray(qm_indices, dtype=np.int64)
    check_qm_region_whole(np.asarray(positions_nm, dtype=np.float64)[qm])
    mm_idx, mm_pos = select_mm_charges(positions_nm, box_nm, charges, qm, residue_of_atom,
                                       radius_nm)
    qm_pos = np.asarray(positions_nm, dtype=np.float64)[qm]
    res = single_point(np.asarray(atomic_numbers)[qm], qm_pos, mm_pos,
                       np.asarray(charges)[mm_idx], level=level, charge=qm_charge, spin=qm_spin)
    res.update(qm_indices=qm, qm_atomic_numbers=np.asarray(atomic_numbers)[qm],
               qm_positions=qm_pos, mm_indices=mm_idx, mm_positions=mm_pos,
               mm_charges=np.asarray(charges, dtype=np.float64)[mm_idx])
    return res
