"""mlpolar: polarisable machine-learned potentials with electrostatic embedding for OpenMM."""
from ._library import cuda_available, library_path

__version__ = "0.1.0"


def load_model(name_or_path, map_location=None):
    """A shipped model by name (see ``mlpolar.models.available()``) or a model file by path."""
    from .models import load_model as _load
    return _load(name_or_path, map_location=map_location)


__all__ = ["cuda_available", "library_path", "load_model", "__version__"]
