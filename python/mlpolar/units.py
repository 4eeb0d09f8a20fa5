"""The one unit table of mlpolar. Everything in code and files: nm, kJ/mol, e, ps, K (OpenMM's).

Quantum-chemistry data (Bohr, Hartree) is converted once, where it is read, with these factors.
"""
ONE_4PI_EPS0 = 138.935456          # kJ nm / (mol e^2), OpenMM's value
BOHR_TO_NM = 0.052917721092
HARTREE_TO_KJMOL = 2625.499639
KCAL_TO_KJ = 4.184
ANGSTROM_TO_NM = 0.1
EV_TO_KJMOL = 96.48533212
