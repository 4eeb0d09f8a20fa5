"""The MLPolar learned potential (contract: docs/interfaces.md, "Model")."""
from .config import MLPolarConfig
from .fukui import fukui_equilibrate
from .forces import energy_and_forces
from .mlpolar import MLPolar
from .serialization import FORMAT_VERSION, load_model, save_model

__all__ = ["MLPolar", "MLPolarConfig", "energy_and_forces", "save_model", "load_model", "fukui_equilibrate",
           "FORMAT_VERSION"]
