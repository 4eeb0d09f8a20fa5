"""Loads the compiled operator library (libmlpolar_ops.so) into torch.ops.mlpolar."""
from pathlib import Path

import torch

_HERE = Path(__file__).parent


def library_path() -> Path:
    """Path of the compiled operator library (also loadable from C++ for TorchForce)."""
    found = sorted(_HERE.glob("libmlpolar_ops*.so"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1]  # the most recent build
    raise ImportError(
        f"mlpolar's operator library is not built (no libmlpolar_ops.so in {_HERE}); "
        "install the package with `pip install --no-build-isolation -e .` from the source tree")


torch.ops.load_library(str(library_path()))


def cuda_available() -> bool:
    """True when the library was built with CUDA kernels and a GPU is visible."""
    if not torch.cuda.is_available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("mlpolar::multipole_field", "CUDA")
