#!/usr/bin/env bash
# Creates .venv, installs the dependencies and builds mlpolar's operator library (CPU, and CUDA
# when a CUDA toolkit is present). Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME=$d; break; fi
  done
fi
python -m pip install -q --no-build-isolation -e .
# pip -q hides the build's own "CPU-only build" message: say here what was built
python - <<'PY'
import torch
import mlpolar
built = torch._C._dispatch_has_kernel_for_dispatch_key("mlpolar::multipole_field", "CUDA")
print("mlpolar", mlpolar.__version__, "library", mlpolar.library_path())
if built:
    print("CUDA kernels: built;", "GPU visible, in use" if mlpolar.cuda_available() else "no GPU visible here")
else:
    print("CUDA kernels: NOT built (CPU-only build: torch", torch.__version__, "cuda", torch.version.cuda,
          "- needs a CUDA build of torch and nvcc via CUDA_HOME, /usr/local/cuda or PATH)")
PY
