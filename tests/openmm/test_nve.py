"""NVE energy conservation of ML/MM with electrostatic embedding (fixed-charge model, so the run
exercises the force plumbing, the Ewald embedding and the System surgery together): alanine
dipeptide in a 2.4 nm TIP3P box, 0.5 fs velocity Verlet, rigid water. The CI run is 0.03 ps (60 steps);
benchmarks/mlmm_nve.py runs longer and docs/performance.md reports the drift."""
import numpy as np
import pytest

from mlmm_cases import nve_run, small_solvated_dipeptide


@pytest.mark.slow
def test_nve_energy_conservation():
    case = small_solvated_dipeptide()
    steps = 60
    times, total, kinetic = nve_run(case, steps=steps, report_every=10)
    _, total_mm, _ = nve_run(case, steps=steps, report_every=10, mlmm=False)
    fluct = np.abs(total - total[0]).max()
    fluct_mm = np.abs(total_mm - total_mm[0]).max()
    print(f"NVE {times[-1]:.3f} ps, {case.system.getNumParticles()} atoms: ML/MM max |E - E0| = {fluct:.4f} kJ/mol, "
          f"MM {fluct_mm:.4f} kJ/mol, <KE> = {kinetic.mean():.1f} kJ/mol")
    assert kinetic.mean() > 100.0                   # the system moves
    # the same trajectory (the fixed-charge model is the force field) conserves energy as well as
    # OpenMM's own MM; what is left is the real-space cutoff of PME at tolerance 5e-4 in both
    assert fluct < 2.0 * fluct_mm + 0.2
    assert np.abs(total - total_mm).max() < 0.5
