"""Electrostatics of Gaussian-smeared multipoles: open boundaries and Ewald/PME."""
from .ewald_parameters import ewald_parameters
from .gaussian_multipoles import GaussianMultipoles
from .multipoles import receiver_coefficients, split_derivatives

__all__ = ["GaussianMultipoles", "ewald_parameters", "receiver_coefficients", "split_derivatives"]
from .embedding import MMFeatures, mm_features  # noqa: E402

__all__ += ["MMFeatures", "mm_features"]
