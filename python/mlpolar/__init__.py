"""mlpolar: polarisable machine-learned potentials with electrostatic embedding for OpenMM."""
import warnings

from ._library import cuda_available, library_path

# Model files are TorchScript on purpose (openmm-torch's TorchForce loads them). torch >= 2.10
# warns on every torch.jit.save/load that TorchScript is deprecated, which tells our users
# nothing they can act on; only those two messages are silenced.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.(load|save)` is deprecated",
                        category=FutureWarning)

__version__ = "0.1.0"


def load_model(name_or_path, map_location=None):
    """A shipped model by name (see ``mlpolar.models.available()``) or a model file by path."""
    from .models import load_model as _load
    return _load(name_or_path, map_location=map_location)


__all__ = ["cuda_available", "library_path", "load_model", "__version__"]
