"""The one unit table of mlpolar. Everything in code and files: nm, kJ/mol, e, ps, K (OpenMM's).

Quantum-chemistry data (Bohr, Hartree) is converted once, where it is read, with these factors.
"""
ONE_4PI_EPS0 = 138.93545764438198  # kJ nm / (mol e^2), OpenMM 8.6's value (CODATA 2018)
BOHR_TO_NM = 0.052917721092
HARTREE_TO_KJMOL = 2625.499639
KCAL_TO_KJ = 4.184
ANGSTROM_TO_NM = 0.1
EV_TO_KJMOL = 96.48533212
