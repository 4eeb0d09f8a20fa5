"""mlpolar: polarisable machine-learned potentials with electrostatic embedding for OpenMM."""
from ._library import cuda_available, library_path

__version__ = "0.1.0"
__all__ = ["cuda_available", "library_path", "__version__"]
