"""NVE energy conservation of ML/MM with electrostatic embedding: alanine dipeptide in a 2.4 nm
TIP3P box (Lennard-Jones switched from 0.8 nm), 0.5 fs velocity Verlet, rigid water.

- fixed-charge model: the ML/MM System is the force field again, so the trajectory must follow
  OpenMM's own MM run (force plumbing, Ewald embedding and System surgery together);
- a small untrained MLPolar (polarisation iterations, Ewald ML-ML sum, MM embedding operator) with
  the ML region's MM bonded terms kept: energy must be conserved as well as in the MM run.

- the trained shipped model ("default"; measured with pxylene-t4l99a-v2) on p-xylene in a 2.5 nm TIP3P box from the
  project's own preparation, the ligand's X-H bonds free and no MM bonded terms: the model alone
  holds the molecule together, and energy must be conserved as well as in the MM run.

The CI runs are 0.03 ps (60 steps); benchmarks/mlmm_nve.py runs 5 ps (``--system pxylene`` for the
shipped model) and docs/performance.md reports the drift."""
import numpy as np
import pytest

from mlmm_cases import nve_run, small_solvated_dipeptide, small_solvated_pxylene, tiny_mlpolar

STEPS = 60


@pytest.fixture(scope="module")
def case():
    return small_solvated_dipeptide(switch_nm=0.8)


@pytest.fixture(scope="module")
def mm_run(case):
    return nve_run(case, steps=STEPS, report_every=10, mlmm=False)


def _fluct(total):
    return np.abs(total - total[0]).max()


@pytest.mark.slow
def test_nve_fixed_charge_follows_mm(case, mm_run):
    times, total, kinetic = nve_run(case, steps=STEPS, report_every=10)
    _, total_mm, _ = mm_run
    print(f"NVE {times[-1]:.3f} ps: ML/MM max |E - E0| = {_fluct(total):.4f} kJ/mol, MM {_fluct(total_mm):.4f}; "
          f"max |E_mlmm - E_mm| = {np.abs(total - total_mm).max():.4f} kJ/mol")
    assert kinetic.mean() > 100.0                   # the system moves
    # the same trajectory (the fixed-charge model is the force field) conserves energy as well as
    # OpenMM's own MM; what is left is the real-space cutoff of PME at tolerance 5e-4 in both
    assert _fluct(total) < 2.0 * _fluct(total_mm) + 0.2
    assert np.abs(total - total_mm).max() < 0.5


@pytest.mark.slow
def test_nve_mlpolar_conserves_energy(case, mm_run):
    times, total, kinetic = nve_run(case, steps=STEPS, report_every=10, model=tiny_mlpolar(), keep_ml_bonded=True)
    _, total_mm, _ = mm_run
    print(f"NVE MLPolar {times[-1]:.3f} ps: max |E - E0| = {_fluct(total):.4f} kJ/mol (MM {_fluct(total_mm):.4f})")
    assert kinetic.mean() > 100.0 and np.all(np.isfinite(total))
    # forces that were not the gradient of the energy (or a discontinuous energy) would show here
    assert _fluct(total) < 2.0 * _fluct(total_mm) + 0.5


@pytest.fixture(scope="module")
def pxylene(tmp_path_factory):
    return small_solvated_pxylene(cache_dir=tmp_path_factory.mktemp("systems"))


@pytest.mark.slow
def test_nve_shipped_model_pxylene_conserves_energy(pxylene):
    import mlpolar
    _, total_mm, _ = nve_run(pxylene, steps=STEPS, report_every=5, mlmm=False)
    times, total, kinetic = nve_run(pxylene, steps=STEPS, report_every=5, model=mlpolar.load_model("default"))
    paired = np.abs((total - total[0]) - (total_mm - total_mm[0])).max()
    print(f"NVE shipped model, p-xylene {times[-1]:.3f} ps: max |E - E0| = {_fluct(total):.4f} kJ/mol "
          f"(MM {_fluct(total_mm):.4f}); max |(E - E0) - (E_mm - E_mm0)| = {paired:.4f} kJ/mol")
    assert kinetic.mean() > 100.0 and np.all(np.isfinite(total))
    # k from measurements (2026-12-06, this start, seeds 11 and 1-5, 60 steps): fluctuation / MM's =
    # 0.93-1.11 (5 ps: 2.98 / 3.39 = 0.88, docs/performance.md); k = 1.3 and 0.2 kJ/mol leave room for
    # platform noise. Both runs start from the same state and the same water, so the first 10 fs of
    # Verlet error (kinetic energy relaxing from 300 K at the minimum), which dominates both, is common
    # and cancels in E - E0 taken against the MM run's: 0.10-0.21 kJ/mol over those seeds, while a
    # model with no MM back-forces (MM positions detached) gave 0.64-1.08 and one whose forces are
    # 1.02x its energy gradient 0.65-0.95 (both within the first bound): hence 0.4 kJ/mol.
    assert _fluct(total) < 1.3 * _fluct(total_mm) + 0.2
    assert paired < 0.4
