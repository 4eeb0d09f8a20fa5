"""The operator library loads and its CUDA kernels are registered when the build had CUDA."""
import torch

import mlpolar


def test_library_loads_and_registers_ops():
    for op in ("multipole_field", "multipole_virial", "pme_spread", "pme_gather"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mlpolar::{op}", "CPU")
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mlpolar::{op}", "Autograd")


def test_cuda_kernels_registered_when_built_with_cuda():
    # A CUDA build of torch with nvcc present must produce CUDA kernels (the build fails otherwise).
    import shutil
    from pathlib import Path
    has_nvcc = any(Path(p).exists() for p in ("/usr/local/cuda-13.0/bin/nvcc", "/usr/local/cuda/bin/nvcc")) or \
        shutil.which("nvcc") is not None
    if torch.version.cuda and has_nvcc:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("mlpolar::multipole_field", "CUDA")
    assert mlpolar.cuda_available() == (torch.cuda.is_available() and
                                        torch._C._dispatch_has_kernel_for_dispatch_key("mlpolar::multipole_field", "CUDA"))
