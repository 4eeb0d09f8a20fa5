"""Builds the mlpolar operator library with CMake against the installed torch.

CUDA kernels are built when torch is a CUDA build and a CUDA toolkit (nvcc) is found
(CUDA_HOME, /usr/local/cuda, or nvcc on PATH); otherwise a CPU-only build, said aloud.
Set MLPOLAR_CUDA=0 to force a CPU-only build, MLPOLAR_CUDA_ARCH="80;90" to choose targets.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def find_nvcc():
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]) / "bin" / "nvcc")
    candidates += [Path("/usr/local/cuda-13.0/bin/nvcc"), Path("/usr/local/cuda/bin/nvcc")]
    for c in candidates:
        if c.exists():
            return c
    found = shutil.which("nvcc")
    return Path(found) if found else None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch
        import torch.utils.cpp_extension as cpp

        target = Path(self.get_ext_fullpath(ext.name)).resolve()  # .../mlpolar/libmlpolar_ops.<abi>.so
        out = target.parent
        out.mkdir(parents=True, exist_ok=True)
        build = Path(self.build_temp).resolve() / "cmake"
        build.mkdir(parents=True, exist_ok=True)

        want_cuda = os.environ.get("MLPOLAR_CUDA", "1") != "0"
        nvcc = find_nvcc() if want_cuda else None
        with_cuda = bool(want_cuda and torch.version.cuda and nvcc)
        if not with_cuda:
            why = ("MLPOLAR_CUDA=0" if not want_cuda else
                   "torch is a CPU-only build" if not torch.version.cuda else
                   "no CUDA toolkit (nvcc) found; set CUDA_HOME")
            print(f"mlpolar: building CPU kernels only ({why})", file=sys.stderr)
        else:
            print(f"mlpolar: building CPU and CUDA kernels with {nvcc}", file=sys.stderr)

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}",
            f"-DMLPOLAR_OUTPUT_NAME={target.name[:-len('.so')] if target.name.endswith('.so') else target.stem}",
            f"-DTORCH_INCLUDE_DIRS={';'.join(cpp.include_paths())}",
            f"-DTORCH_LIBRARY_DIR={Path(torch.__file__).parent / 'lib'}",
            f"-DTORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-DMLPOLAR_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
            "-G", "Ninja",
        ]
        if with_cuda:
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}",
                     f"-DCUDAToolkit_ROOT={nvcc.parent.parent}",
                     f"-DMLPOLAR_CUDA_ARCHITECTURES={os.environ.get('MLPOLAR_CUDA_ARCH', '80;90')}"]
        subprocess.check_call(["cmake", str(ROOT)] + args, cwd=build)
        jobs = os.environ.get("MLPOLAR_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.check_call(["cmake", "--build", ".", "-j", jobs], cwd=build)


setup(
    ext_modules=[CMakeExtension("mlpolar.libmlpolar_ops")],
    cmdclass={"build_ext": CMakeBuild},
)
